"""Upsample, FIR-filter and downsample 2-D images, per channel (like `scipy.signal.upfirdn` in 2-D).

`upfirdn2d(x, f, up, down, padding)` does, for every channel of `x [N, C, H, W]`:

1. upsample: insert `up - 1` zeros after every sample (length `H -> H * up`, trailing zeros included);
2. pad with zeros (`padding` entries that are negative crop instead);
3. convolve with the FIR filter `f` ("valid" mode, i.e. no implicit border);
4. downsample: keep every `down`-th sample, starting with the first.

Step 3 is a *true convolution* (the filter is mirrored), exactly like `scipy.signal.upfirdn`;
`flip_filter=True` turns it into a correlation. Filters are symmetric in practice, so this only
matters for odd filters. Output size along one axis: `ceil((L * up + p0 + p1 - taps + 1) / down)`.

Filters come from `setup_filter`: a 2-D tensor `[fh, fw]`, or a 1-D tensor `[taps]` standing for the
separable filter `outer(f, f)`.

The implementation is plain PyTorch and never materialises the zero-inserted image. Separable filters
(and 2-D filters that are rank 1 up to rounding, like every `setup_filter` outer product) are split
into their 1-D factors, then, by cost:
- upsampling with short filters (at most 2 taps per output phase, e.g. [1,3,3,1] with up=2): every
  output phase is a `lerp` of two shifted views of the input, written straight into the interleaved
  output (no convolution at all);
- otherwise one depthwise conv per output phase on the input grid (polyphase upsampling), or a single
  strided depthwise conv (filtering + downsampling), either 2-D or as a width and a height pass.
Depthwise convs on CPU reorder their data to a blocked layout and back, so a few elementwise sweeps
beat them for short filters. The public op is an autograd Function whose backward is again
`upfirdn2d` (up/down swapped, filter mirrored), so gradients of any order use the same fast routes;
a filter that requires grad takes plain autograd instead (and gets its gradient).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from torch_utils import ops as _ops

__all__ = ["setup_filter", "upfirdn2d", "filter2d", "upsample2d", "downsample2d"]

_IMPLS = ("ref", "cuda", "auto")
T = TypeVar("T")

# ---------------------------------------------------------------------------------------------------
# Argument parsing.


def _parse_scaling(name: str, value) -> tuple[int, int]:
    """`int` or `[x, y]` -> (sx, sy), each a positive integer."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        sx = sy = int(value)
    elif isinstance(value, Sequence) and len(value) == 2:
        sx, sy = value
    else:
        raise ValueError(f"{name} must be a positive int or [x, y], got {value!r}")
    for s in (sx, sy):
        if not isinstance(s, (int, np.integer)) or isinstance(s, bool) or s < 1:
            raise ValueError(f"{name} must be a positive int or [x, y], got {value!r}")
    return int(sx), int(sy)


def _parse_padding(padding) -> tuple[int, int, int, int]:
    """`int`, `[px, py]` or `[px0, px1, py0, py1]` -> (px0, px1, py0, py1)."""
    if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool):
        p = [int(padding)] * 4
    elif isinstance(padding, Sequence) and len(padding) in (2, 4):
        p = list(padding)
        if len(p) == 2:
            p = [p[0], p[0], p[1], p[1]]
    else:
        raise ValueError(f"padding must be an int, [px, py] or [px0, px1, py0, py1], got {padding!r}")
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in p):
        raise ValueError(f"padding entries must be ints, got {padding!r}")
    px0, px1, py0, py1 = (int(v) for v in p)
    return px0, px1, py0, py1


def _get_filter_size(f: torch.Tensor | None) -> tuple[int, int]:
    """(fw, fh) of a filter; a 1-D (separable) filter has the same size along both axes."""
    if f is None:
        return 1, 1
    if not isinstance(f, torch.Tensor) or f.ndim not in (1, 2):
        raise ValueError(f"f must be None or a 1-D/2-D tensor, got {type(f).__name__} "
                         f"{list(f.shape) if isinstance(f, torch.Tensor) else ''}")
    fw = int(f.shape[-1])
    fh = int(f.shape[0])
    return fw, fh


def _check_impl(impl) -> str:
    if impl is None:
        impl = os.environ.get("SPATIALGAN_OPS", "auto") or "auto"
    if impl not in _IMPLS:
        raise ValueError(f"impl={impl!r} is not one of {list(_IMPLS)} (or None)")
    return impl


# ---------------------------------------------------------------------------------------------------
# Filters.


def setup_filter(f, device=torch.device("cpu"), normalize: bool = True, flip_filter: bool = False,
                 gain: float = 1, separable: bool | None = None) -> torch.Tensor:
    """Turn a list/array/tensor of taps into a float32 filter tensor for `upfirdn2d`.

    A 1-D input stays 1-D (meaning the separable filter `outer(f, f)`) when `separable` is True, or
    when `separable` is None and it has 8 or more taps; otherwise it becomes the 2-D outer product.
    `normalize` scales it to sum 1 (of the full 2-D filter), `flip_filter` mirrors it, and `gain` is
    applied as `gain ** (ndim / 2)` so that the full 2-D filter is scaled by `gain` either way.
    `f=None` gives the identity filter `[1]`.
    """
    if f is None:
        f = 1
    f = torch.as_tensor(f, dtype=torch.float32).detach().clone()
    if f.ndim not in (0, 1, 2):
        raise ValueError(f"f must be a scalar, 1-D or 2-D, got shape {list(f.shape)}")
    if f.numel() == 0:
        raise ValueError("f must have at least one tap")
    if f.ndim == 0:
        f = f[None]
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if separable and f.ndim != 1:
        raise ValueError(f"separable=True needs a 1-D filter, got shape {list(f.shape)}")
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if normalize:
        total = f.sum()
        if total == 0:
            raise ValueError("cannot normalize a filter whose taps sum to zero (pass normalize=False)")
        # A 1-D separable filter is normalised so that the full outer product sums to 1.
        f = f / total
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


def _separable_factors(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Return float64 CPU taps (fx [fw], fy [fh]) with `outer(fy, fx) == f`, or None.

    1-D filters are separable by definition. 2-D filters are factored when they are rank 1 up to
    float32 rounding (every `setup_filter` outer product is). The answer is cached on the tensor.
    """
    if f.ndim == 1:
        return None  # handled by the caller without factoring
    if f.requires_grad:
        return None  # keep the plain 2-D path so gradients w.r.t. the filter stay exact
    return cached_on(f, "factors", lambda: _factorise(f))


def _factorise(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    g = f.detach().to("cpu", torch.float64)
    i = int(g.abs().sum(dim=1).argmax())
    row = g[i]
    j = int(row.abs().argmax())
    if row[j] == 0:
        return None
    col = g[:, j] / row[j]
    err = (torch.outer(col, row) - g).abs().max()
    if err > 8 * max(g.shape) * torch.finfo(f.dtype).eps * g.abs().max():  # not rank 1 up to rounding
        return None
    # Balance the two factors (equal sums when possible): [1,3,3,1]/8 each for the usual filter.
    rs, cs = float(row.sum()), float(col.sum())
    if rs * cs > 0:
        k = math.sqrt(rs * cs)
        row, col = row * (k / rs), col * (k / cs)
    return row, col


def cached_on(f: torch.Tensor, key, make: Callable[[], T]) -> T:
    """`make()`, kept on the filter tensor `f` under `key` until `f` changes in place (its version
    counter moves). Filters are small module buffers passed to every call: whatever is derived from
    them (factors, casts, the kernels' flipped copies) is worth computing once. Computed afresh where
    `f` has no version counter (inference-mode tensors) or takes no attributes."""
    version = _version(f)
    if version is None:
        return make()
    try:
        cache = f.__dict__.setdefault("_upfirdn2d_cache", {})
    except (AttributeError, RuntimeError):  # e.g. tensor subclasses that refuse attributes
        return make()
    hit = cache.get(key)
    if hit is not None and hit[0] == version:
        return hit[1]
    value = make()
    cache[key] = (version, value)
    return value


def _version(f: torch.Tensor) -> int | None:
    """The tensor's version counter, or None where there is none (inference-mode tensors)."""
    try:
        return f._version
    except RuntimeError:
        return None


# ---------------------------------------------------------------------------------------------------
# Core.


def upfirdn2d(x: torch.Tensor, f: torch.Tensor | None, up=1, down=1, padding=0, flip_filter: bool = False,
              gain: float = 1, impl: str | None = None) -> torch.Tensor:
    """Upsample, pad, FIR-filter and downsample every channel of `x [N, C, H, W]` (see module doc).

    Args:
        f: filter from `setup_filter`: `[fh, fw]`, or `[taps]` for a separable one; None = identity.
        up, down: int or `[x, y]`; padding: int, `[px, py]` or `[px0, px1, py0, py1]` (negative crops).
        flip_filter: False = convolution (as scipy), True = correlation.
        gain: multiplies the output.
        impl: None/'auto' (CUDA kernel for CUDA tensors when it builds and passes its self-check),
            'ref' (always this PyTorch implementation) or 'cuda' (kernel required for CUDA tensors).
    Returns `[N, C, (H*up + py0 + py1 - fh) // down + 1, (W*up + px0 + px1 - fw) // down + 1]`.
    """
    impl = _check_impl(impl)
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"x must be a 4-D tensor [N, C, H, W], got "
                         f"{list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    fw, fh = _get_filter_size(f)
    upx, upy = _parse_scaling("up", up)
    downx, downy = _parse_scaling("down", down)
    px0, px1, py0, py1 = _parse_padding(padding)
    out_w = x.shape[3] * upx + px0 + px1 - fw + 1
    out_h = x.shape[2] * upy + py0 + py1 - fh + 1
    if out_w < 1 or out_h < 1:
        raise ValueError(f"upfirdn2d output would be empty: input {list(x.shape)}, filter {fh}x{fw}, "
                         f"up={up}, down={down}, padding={padding}")
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    if x.device.type in _ops.KERNEL_DEVICE_TYPES and impl != "ref" and not f.requires_grad:
        from . import _cuda  # imported lazily: CPU runs never touch the extension machinery

        if _cuda.use_cuda("upfirdn2d", x, impl, reference=_reference_for_cuda):
            return _cuda.upfirdn2d_cuda(x, f, (upx, upy), (downx, downy), (px0, px1, py0, py1),
                                        bool(flip_filter), float(gain))
    args = (upx, upy, downx, downy, px0, px1, py0, py1, bool(flip_filter), float(gain))
    if f.requires_grad:
        return _upfirdn2d_torch(x, f, *args)  # plain autograd: also differentiable w.r.t. the filter
    return _UpFirDn2d.apply(x, f, *args)


def _reference_for_cuda(x, f, up, down, padding, flip_filter, gain):
    """This implementation with `upfirdn2d_cuda`'s signature (for the kernel's self-check)."""
    return upfirdn2d(x, f, list(up), list(down), list(padding), flip_filter, gain, impl="ref")


class _UpFirDn2d(torch.autograd.Function):
    """upfirdn2d whose backward is again an upfirdn2d (up/down swapped, filter flipped).

    Autograd's own backward of the forward's ops would run depthwise transposed convolutions, which
    are far slower on CPU than the strided/polyphase forms used here. The backward calls this same
    Function, so gradients of any order exist.
    """

    @staticmethod
    def forward(ctx, x, f, upx, upy, downx, downy, px0, px1, py0, py1, flip_filter, gain):
        y = _upfirdn2d_torch(x, f, upx, upy, downx, downy, px0, px1, py0, py1, flip_filter, gain)
        if y._base is not None:
            # A custom Function must not return a view (in-place ops on the output would fail). The
            # internal buffer is private, so a dense view can simply be detached from it.
            y = y.detach() if y.is_contiguous() else y.clone()
        ctx.save_for_backward(f)
        ctx.args = (upx, upy, downx, downy, px0, px1, py0, py1, flip_filter, gain)
        ctx.x_hw = x.shape[2:]
        return y

    @staticmethod
    def backward(ctx, dy):
        (f,) = ctx.saved_tensors
        upx, upy, downx, downy, px0, px1, py0, py1, flip_filter, gain = ctx.args
        ih, iw = ctx.x_hw
        oh, ow = dy.shape[2:]
        fw, fh = _get_filter_size(f)
        p = (fw - px0 - 1, iw * upx - ow * downx + px0 - upx + 1,
             fh - py0 - 1, ih * upy - oh * downy + py0 - upy + 1)
        dx = None
        if ctx.needs_input_grad[0]:
            dx = _UpFirDn2d.apply(dy, f, downx, downy, upx, upy, *p, not flip_filter, gain)
        return (dx,) + (None,) * 11


def _upfirdn2d_torch(x, f, upx, upy, downx, downy, px0, px1, py0, py1, flip_filter, gain):
    """Pick the cheapest route: elementwise polyphase, one 2-D pass, or two 1-D passes."""
    num_channels = x.shape[1]
    factors = raw = None
    if f.ndim == 1:
        factors = raw = (f, f)
    elif f.shape[0] > 1 and f.shape[1] > 1:
        factors = raw = _separable_factors(f)
        if factors is not None:
            factors = _cast_factors(f, factors, x)
    if factors is None:  # non-separable 2-D filter (or a single row/column)
        f2 = f.to(x.dtype)
        f2 = f2 * gain if gain != 1 else f2
        return _pass(x, f2, num_channels, (upy, upx), (downy, downx), (py0, py1, px0, px1), flip_filter)

    fx, fy = factors
    kw, kh = fx.numel(), fy.numel()
    axes = ((upx, kw, px0, px1), (upy, kh, py0, py1))
    if downx == downy == 1 and max(upx, upy) > 1 and all(_ew_eligible(*a) for a in axes) and not (
            torch.is_grad_enabled() and (x.requires_grad or f.requires_grad)):
        # The taps as Python numbers, read once per filter (reading a GPU filter is a host sync).
        wx, wy = cached_on(f, "taps", lambda: tuple([float(v) for v in t.detach().cpu().tolist()] for t in raw))
        return _upsample_ew(x, wx, wy, upx, upy, px0, px1, py0, py1, flip_filter, gain)

    fx = fx.to(x.dtype) * gain if gain != 1 else fx.to(x.dtype)
    fy = fy.to(x.dtype)
    # Taps per output sample: one 2-D pass vs. a width pass and a height pass. 1-D passes cost an
    # extra sweep over memory, so they win only for longer filters.
    cost_2d = -(-kh // upy) * -(-kw // upx)
    cost_sep = -(-kw // upx) + -(-kh // upy) + _SEPARABLE_OVERHEAD
    if cost_2d <= cost_sep:
        f2 = torch.outer(fy, fx)
        return _pass(x, f2, num_channels, (upy, upx), (downy, downx), (py0, py1, px0, px1), flip_filter)
    x = _pass(x, fx[None, :], num_channels, (1, upx), (1, downx), (0, 0, px0, px1), flip_filter)
    return _pass(x, fy[:, None], num_channels, (upy, 1), (downy, 1), (py0, py1, 0, 0), flip_filter)


# ---------------------------------------------------------------------------------------------------
# Elementwise polyphase upsampling (no convolution at all).
#
# With up >= taps / 2, every output phase of a separable upsampler mixes at most two neighbouring
# input samples per axis: out[u*q + r] = c0 * x[q - l] + c1 * x[q - l + 1]. That is one `lerp`
# per phase, written straight into the interleaved output, which is a few memory sweeps in total
# (a depthwise conv on CPU also reorders its input and output to a blocked layout). It mutates
# freshly allocated buffers, so it runs only where autograd is not recording (inside
# `_UpFirDn2d.forward`, or under no_grad).


def _ew_eligible(u, k, p0, p1):
    return (u >= 2 and -(-k // u) <= 2) or (u == 1 and k == 1 and p0 == 0 and p1 == 0)


def _upsample_ew(x, wx: list[float], wy: list[float], upx, upy, px0, px1, py0, py1, flip_filter, gain):
    if flip_filter:  # the phases below index the conv_transpose-ordered (= unflipped) filter
        wx, wy = wx[::-1], wy[::-1]
    stages = []
    scale = float(gain)
    for dim, u, w, p0, p1 in ((3, upx, wx, px0, px1), (2, upy, wy, py0, py1)):
        if u == 1:
            scale *= w[0]
            continue
        out_len, q_len, phases = _axis_phases(x.shape[dim], u, len(w), p0, p1)
        taps = [None if ph is None else ([w[i] for i in ph[0]], ph[1]) for ph in phases]
        # Normalise the phases to sum 1 when they share one sum (any sane interpolation filter),
        # and carry that sum to the last stage, so `lerp` needs no extra scaling pass.
        sums = {sum(t[0]) for t in taps if t is not None}
        if len(sums) == 1 and (common := sums.pop()) != 0:
            taps = [None if t is None else ([c / common for c in t[0]], t[1]) for t in taps]
            scale *= common
        stages.append([dim, u, out_len, q_len, taps])
    last = stages[-1][4]
    stages[-1][4] = [None if t is None else ([c * scale for c in t[0]], t[1]) for t in last]
    for dim, u, out_len, q_len, taps in stages:
        x = _ew_stage(x, dim, u, out_len, q_len, taps)
    return x


def _ew_stage(x, dim, u, out_len, q_len, taps):
    """Upsample along `dim` (2 or 3) with per-phase taps from `_axis_phases`."""
    shape = list(x.shape)
    shape[dim] = q_len * u
    out = torch.empty(shape, dtype=x.dtype, device=x.device)
    phases = out.view(shape[:dim] + [q_len, u] + shape[dim + 1:])
    length = x.shape[dim]
    for r, tap in enumerate(taps):
        o = phases.select(dim + 1, r)
        if tap is None:
            o.zero_()
            continue
        c, left = tap
        n = len(c)
        # Interior: every tap inside the input. Edges: a handful of samples, done one by one.
        q0, q1 = min(max(0, left), q_len), max(min(q_len, length - n + 1 + left), 0)
        if q1 > q0:
            xs = [x.narrow(dim, q0 - left + j, q1 - q0) for j in range(n)]
            oi = o.narrow(dim, q0, q1 - q0)
            s = sum(c)
            if n == 2 and s != 0:
                torch.lerp(xs[0], xs[1], c[1] / s, out=oi)
                if abs(s - 1) > 1e-12:
                    oi.mul_(s)
            else:
                torch.mul(xs[0], c[0], out=oi)
                for j in range(1, n):
                    oi.add_(xs[j], alpha=c[j])
        for q in [*range(0, q0), *range(max(q1, q0), q_len)]:
            oq = o.narrow(dim, q, 1)
            oq.zero_()
            for j in range(n):
                i = q - left + j
                if 0 <= i < length:
                    oq.add_(x.narrow(dim, i, 1), alpha=c[j])
    if q_len * u != out_len:
        out = out.narrow(dim, 0, out_len)
    return out


# Extra cost (in taps per output sample) charged to the two-pass separable route.
_SEPARABLE_OVERHEAD = 8


def _cast_factors(f, factors, x):
    """The float64 CPU factors converted to x's dtype/device, cached beside the factorisation."""
    return cached_on(f, ("cast", x.dtype, x.device),
                     lambda: tuple(t.to(device=x.device, dtype=x.dtype) for t in factors))


def _axis_phases(length, u, k, p0, p1):
    """Polyphase decomposition of zero-insert(u) + pad(p0, p1) + filter(k taps) along one axis.

    Output sample n = u * q + r only sees the input through phase r's short kernel. Returns
    (out_len, q_len, phases): phases[r] is None (all-zero phase) or (taps, left) where `taps`
    indexes the conv_transpose-ordered filter w (w = f for convolution semantics) so that
    out[u * q + r] = sum_j x[q - left + j] * w[taps[j]], for q in [0, q_len).
    """
    out_len = length * u + p0 + p1 - k + 1
    q_len = -(-out_len // u)
    phases = []
    for r in range(u):
        s = r + k - 1 - p0
        t_min, t_max = -(s // u), (k - 1 - s) // u
        if t_min > t_max:
            phases.append(None)
        else:
            phases.append(([u * (t_max - j) + s for j in range(t_max - t_min + 1)], t_max))
    return out_len, q_len, phases


def _reversed_slice(taps: list[int], k: int) -> slice:
    """Indices `taps` (falling by a constant step) of a k-long axis, as a slice of that axis reversed."""
    step = taps[0] - taps[1] if len(taps) > 1 else 1
    return slice(k - 1 - taps[0], k - taps[-1], step)


def _pass(x, f, num_channels, up, down, pad, flip_filter):
    """One depthwise upfirdn of `x [N, C, H, W]` with a 2-D kernel `f [kh, kw]` (either may be 1).

    up/down are (y, x) factors and pad is (py0, py1, px0, px1). Without upsampling this is a single
    strided depthwise conv2d. With upsampling, each of the uy * ux output phases is a small depthwise
    conv2d on the *input* grid (polyphase form: no zero-inserted image, no wasted multiplies), and
    the phases are written interleaved into the output.
    """
    kh, kw = f.shape
    (uy, ux), (dy, dx) = up, down
    py0, py1, px0, px1 = pad
    if uy == 1 and ux == 1:
        g = f if flip_filter else f.flip([0, 1])  # conv2d correlates
        return _fir_valid(x, g, num_channels, (dy, dx), pad)

    # A phase's taps index the conv_transpose-ordered filter w = f.flip([0, 1]) if flip_filter else f
    # (see _axis_phases) in steps of -u: a strided slice of w reversed, which is basic indexing, where
    # a list of indices would be an index tensor copied from the host (a host sync on a GPU).
    w_rev = f if flip_filter else f.flip([0, 1])
    n, h, wd = x.shape[0], x.shape[2], x.shape[3]
    oh, qh, phases_y = _axis_phases(h, uy, kh, py0, py1)
    ow, qw, phases_x = _axis_phases(wd, ux, kw, px0, px1)
    out = x.new_empty([n, num_channels, qh * uy, qw * ux])
    phases = out.view(n, num_channels, qh, uy, qw, ux)
    for ry, phy in enumerate(phases_y):
        for rx, phx in enumerate(phases_x):
            if phy is None or phx is None:
                phases[:, :, :, ry, :, rx] = 0
                continue
            (ty, ly), (tx, lx) = phy, phx
            g = w_rev[_reversed_slice(ty, kh), _reversed_slice(tx, kw)]
            gpad = (ly, qh + len(ty) - 1 - ly - h, lx, qw + len(tx) - 1 - lx - wd)
            phases[:, :, :, ry, :, rx] = _fir_valid(x, g, num_channels, (1, 1), gpad)
    if qh * uy != oh or qw * ux != ow:
        out = out[:, :, :oh, :ow]
    return out[:, :, ::dy, ::dx] if dy > 1 or dx > 1 else out


def _fir_valid(x, g, num_channels, stride, pad):
    """Depthwise correlation of zero-padded (or cropped, for negative pads) `x` with `g [kh, kw]`.

    Asymmetric padding is done by conv2d's own symmetric padding plus a cropped view of the result
    (the crop is a whole number of strides), which avoids copying a padded input.
    """
    dy, dx = stride
    py0, py1, px0, px1 = pad
    h, w = x.shape[2], x.shape[3]
    if min(py0, py1, px0, px1) < 0:
        x = x[:, :, max(-py0, 0):h - max(-py1, 0), max(-px0, 0):w - max(-px1, 0)]
        py0, py1, px0, px1 = max(py0, 0), max(py1, 0), max(px0, 0), max(px1, 0)
    kh, kw = g.shape
    conv_pad, crop, extra = [], [], []
    for length, k, d, p0, p1 in ((x.shape[2], kh, dy, py0, py1), (x.shape[3], kw, dx, px0, px1)):
        a = -(-max(p1 - p0, 0) // d)  # extra strides of padding at the start, cropped away again
        p = p0 + a * d
        # oneDNN's depthwise kernels need padding < kernel size, else they fall back to a gemm
        # ~10x slower: pad the rest explicitly.
        e = max(p - (k - 1), 0)
        extra.append(e)
        conv_pad.append(p - e)
        crop.append((a, a + (length + p0 + p1 - k) // d + 1))
    if extra[0] or extra[1]:
        x = F.pad(x, [extra[1], extra[1], extra[0], extra[0]])
    weight = g[None, None].expand(num_channels, 1, kh, kw)
    if kh == 1 and kw == 1 and conv_pad == [0, 0] and dy == 1 and dx == 1:
        y = x * g.reshape([])
    else:
        y = F.conv2d(x, weight, stride=(dy, dx), padding=tuple(conv_pad), groups=num_channels)
    (y0, y1), (x0, x1) = crop
    if y0 != 0 or x0 != 0 or y1 != y.shape[2] or x1 != y.shape[3]:
        y = y[:, :, y0:y1, x0:x1]
    return y


def _pad(x, py0, py1, px0, px1):
    """Zero-pad (positive) or crop (negative) the last two dims."""
    if py0 == 0 and py1 == 0 and px0 == 0 and px1 == 0:
        return x
    h, w = x.shape[2], x.shape[3]
    x = x[:, :, max(-py0, 0):h - max(-py1, 0), max(-px0, 0):w - max(-px1, 0)]
    if max(py0, py1, px0, px1) > 0:
        x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    return x


# ---------------------------------------------------------------------------------------------------
# Helpers with padding chosen for the common cases.


def filter2d(x, f, padding=0, flip_filter=False, gain=1, impl=None):
    """Filter without resampling; output has the input size (plus `padding`)."""
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(x, f, up=2, padding=0, flip_filter=False, gain=1, impl=None):
    """Upsample by `up` with filter `f`; output `[N, C, H * up, W * up]` (plus `padding`).

    The filter is scaled by `up ** 2` (times `gain`) so a constant image keeps its value.
    """
    upx, upy = _parse_scaling("up", up)
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [px0 + (fw + upx - 1) // 2, px1 + (fw - upx) // 2, py0 + (fh + upy - 1) // 2, py1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=up, padding=p, flip_filter=flip_filter, gain=gain * upx * upy, impl=impl)


def downsample2d(x, f, down=2, padding=0, flip_filter=False, gain=1, impl=None):
    """Filter and downsample by `down`; output `[N, C, H // down, W // down]` (plus `padding`)."""
    downx, downy = _parse_scaling("down", down)
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [px0 + (fw - downx + 1) // 2, px1 + (fw - downx) // 2, py0 + (fh - downy + 1) // 2,
         py1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=down, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)
