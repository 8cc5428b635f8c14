"""2-D convolution with optional FIR up/downsampling, using the cheapest equivalent op order.

Semantics (what every fast path below must equal; `test_conv2d_resample.py` checks it):

    conv2d_resample(x, w, f, up, down, padding) ==
        y = upfirdn2d(x, f if up > 1 else None, up=up, padding=P, gain=up**2)   # upsample + pad
        y = conv2d(y, w)                                                          # "valid" conv
        y = upfirdn2d(y, f, down=down)  if down > 1                               # filter + decimate

where `P = padding + the filter padding of upsample2d/downsample2d`, i.e. the conv's own `padding`
is applied at the upsampled resolution and the filter's padding is chosen so that a k x k conv with
`padding = k // 2` maps `H -> H * up / down` exactly. With `flip_weight=True` (default) `w` is
correlated like `torch.nn.functional.conv2d` does; `flip_weight=False` mirrors the kernel (a true
convolution). `flip_filter` is passed to `upfirdn2d`. Everything is differentiable to any order.
"""

from __future__ import annotations

import torch

from . import conv2d_grad
from . import upfirdn2d as _up
from .upfirdn2d import upfirdn2d

__all__ = ["conv2d_resample"]


def _conv(x, w, stride=1, padding=0, groups=1, transpose=False, flip_weight=True):
    """conv2d / conv_transpose2d; `flip_weight=False` mirrors the kernel (true convolution). Through
    conv2d_grad, so the regularisers' double backward stays on cuDNN's gradient kernels."""
    kh, kw = w.shape[2], w.shape[3]
    if not flip_weight and (kh > 1 or kw > 1):
        w = w.flip([2, 3])
    if transpose:
        return conv2d_grad.conv_transpose2d(x, w, stride=stride, padding=padding, groups=groups)
    return conv2d_grad.conv2d(x, w, stride=stride, padding=padding, groups=groups)


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None = None, up: int = 1,
                    down: int = 1, padding=0, groups: int = 1, flip_weight: bool = True,
                    flip_filter: bool = False) -> torch.Tensor:
    """Convolve `x [N, C, H, W]` with `w [O, C // groups, kh, kw]`, with FIR up/downsampling.

    Args:
        f: FIR filter from `upfirdn2d.setup_filter` (None = box of size 1, i.e. plain zero-insertion
           / decimation).
        up, down: positive int factors (at most one of them usually > 1).
        padding: int, `[px, py]` or `[px0, px1, py0, py1]`, at the upsampled resolution.
        groups: conv groups; flip_weight: True = correlation (like `F.conv2d`).
    Returns `[N, O, H', W']`; with `padding = k // 2` for odd k: `H' = H * up // down`.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"x must be a 4-D tensor [N, C, H, W], got "
                         f"{list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not isinstance(w, torch.Tensor) or w.ndim != 4 or w.dtype != x.dtype:
        raise ValueError(f"w must be a 4-D tensor [O, I/groups, kh, kw] of dtype {x.dtype}, got "
                         f"{list(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}")
    for name, v in (("up", up), ("down", down), ("groups", groups)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    out_channels, in_per_group, kh, kw = w.shape
    if out_channels % groups or x.shape[1] != in_per_group * groups:
        raise ValueError(f"w shape {list(w.shape)} does not fit x with {x.shape[1]} channels and "
                         f"groups={groups}")
    fw, fh = _up._get_filter_size(f)
    px0, px1, py0, py1 = _up._parse_padding(padding)

    # Account for the padding the FIR filter needs (same rule as upsample2d / downsample2d).
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2
    pad = [px0, px1, py0, py1]

    # 1x1 kernel, downsampling only: decimate first (fewer pixels to convolve).
    if kw == 1 and kh == 1 and down > 1 and up == 1:
        x = upfirdn2d(x, f, down=down, padding=pad, flip_filter=flip_filter)
        return _conv(x, w, groups=groups, flip_weight=flip_weight)

    # 1x1 kernel, upsampling only: convolve first (at low resolution), then upsample.
    if kw == 1 and kh == 1 and up > 1 and down == 1:
        x = _conv(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d(x, f, up=up, padding=pad, gain=up**2, flip_filter=flip_filter)

    # Downsampling only: filter (with all the padding), then strided convolution.
    if down > 1 and up == 1:
        x = upfirdn2d(x, f, padding=pad, flip_filter=flip_filter)
        return _conv(x, w, stride=down, groups=groups, flip_weight=flip_weight)

    # Upsampling (optionally followed by downsampling): the zero-insertion + conv is a strided
    # transposed convolution; the FIR filter then runs on its output.
    if up > 1:
        if groups == 1:
            wt = w.transpose(0, 1)
        else:
            wt = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
            wt = wt.reshape(groups * in_per_group, out_channels // groups, kh, kw)
        px0 -= kw - 1
        px1 -= kw - up
        py0 -= kh - 1
        py1 -= kh - up
        pxt = max(min(-px0, -px1), 0)
        pyt = max(min(-py0, -py1), 0)
        x = _conv(x, wt, stride=up, padding=[pyt, pxt], groups=groups, transpose=True,
                  flip_weight=not flip_weight)
        x = upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up**2,
                      flip_filter=flip_filter)
        if down > 1:
            x = upfirdn2d(x, f, down=down, flip_filter=flip_filter)
        return x

    # No resampling: plain conv2d when its symmetric padding suffices.
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return _conv(x, w, padding=[py0, px0], groups=groups, flip_weight=flip_weight)
    x = upfirdn2d(x, None, padding=pad)
    return _conv(x, w, groups=groups, flip_weight=flip_weight)
