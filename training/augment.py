"""Adaptive discriminator augmentation (ADA): the augment pipe, its presets and the p controller.

`AugmentPipe` applies a fixed chain of random, differentiable, non-leaking augmentations to a batch
`[N, C, H, W]` of float images in about [-1, 1]. Every op is decided per sample with probability
`multiplier * p`; `p` is a buffer (so it is saved with the state dict) that `AdaController` moves up
when the discriminator overfits and down when it does not. Order of the chain:

1. pixel blitting (x-flip, 90-degree rotations, integer translation): exact index remapping with
   reflection at the borders;
2. general geometry (isotropic scale, pre-rotation, anisotropic scale, post-rotation, fractional
   translation): one inverse 3x3 matrix per sample, applied once by reflect-pad -> 2x upsample
   (sym6 low-pass) -> bilinear sampling -> 2x downsample;
3. colour (brightness, contrast, luma flip, hue rotation, saturation): one 4x4 matrix per sample;
4. image-space filtering: random gains of a 4-band octave filter bank built from sym2;
5. additive Gaussian noise; 6. cutout.

Samples left untouched by a stage are passed through bit for bit, and `p == 0` returns the input
tensor itself. Randomness comes from torch's global RNG on the images' device.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from torch_utils.misc import check_choice
from torch_utils.ops import grid_sample as grid_sample_op
from torch_utils.ops import upfirdn2d

__all__ = ["AdaController", "AugmentPipe", "augpipe_specs", "build_augment_pipe", "make_augment"]

# Low-pass decomposition filters of the Daubechies symlets (published constants, orthonormal:
# taps sum to sqrt(2) and their squares to 1).
SYM2_LO = [-0.12940952255092145, 0.22414386804185735, 0.836516303737469, 0.48296291314469025]
SYM6_LO = [0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
           0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
           -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148]

# Expected power of natural images in the four filter-bank octaves (1/f spectrum), lowest band first.
_BAND_POWER = [10 / 13, 1 / 13, 1 / 13, 1 / 13]

_BLIT = {"xflip": 1, "rotate90": 1, "xint": 1}
_GEOM = {"scale": 1, "rotate": 1, "aniso": 1, "xfrac": 1}
_COLOR = {"brightness": 1, "contrast": 1, "lumaflip": 1, "hue": 1, "saturation": 1}
_FILTER = {"imgfilter": 1}
_NOISE = {"noise": 1}
_CUTOUT = {"cutout": 1}

augpipe_specs: dict[str, dict] = {
    "blit": dict(_BLIT),
    "geom": dict(_GEOM),
    "color": dict(_COLOR),
    "filter": dict(_FILTER),
    "noise": dict(_NOISE),
    "cutout": dict(_CUTOUT),
    "bg": {**_BLIT, **_GEOM},
    "bgc": {**_BLIT, **_GEOM, **_COLOR},
    "bgcf": {**_BLIT, **_GEOM, **_COLOR, **_FILTER},
    "bgcfn": {**_BLIT, **_GEOM, **_COLOR, **_FILTER, **_NOISE},
    "bgcfnc": {**_BLIT, **_GEOM, **_COLOR, **_FILTER, **_NOISE, **_CUTOUT},
}


def build_augment_pipe(name: str) -> AugmentPipe:
    """The preset `name` (a key of `augpipe_specs`) as a fresh pipe with p = 0."""
    check_choice("augpipe", name, augpipe_specs)
    return AugmentPipe(**augpipe_specs[name])


# ---------------------------------------------------------------------------------------------------
# Small batched matrix helpers. Entries are tensors [N] or Python numbers; results are [N, k, k].
# Host numbers never travel to the GPU as data: a host-to-device copy waits for the GPU to drain its
# queue (a host sync), while a fill is just another queued kernel.


def _matrix(rows: list[list], n: int, device: torch.device) -> torch.Tensor:
    entries = [v.to(torch.float32).expand(n) if isinstance(v, torch.Tensor)
               else torch.full([n], float(v), dtype=torch.float32, device=device) for row in rows for v in row]
    return torch.stack(entries, dim=1).reshape(n, len(rows), len(rows[0]))


@functools.cache
def _constant(values: tuple, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`torch.tensor(values)` on `device`, copied there once per (values, device, dtype) rather than on
    every call (see above). Shared: never modify the result in place. Never evicted: a captured CUDA
    graph reads it by address for as long as the run lasts (the keys are a handful per image size)."""
    return torch.tensor(values, dtype=dtype, device=device)


def _translate2d(tx, ty, n, device):
    return _matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]], n, device)


def _scale2d(sx, sy, n, device):
    return _matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], n, device)


def _rotate2d(theta: torch.Tensor, n, device):
    c, s = torch.cos(theta), torch.sin(theta)
    return _matrix([[c, -s, 0], [s, c, 0], [0, 0, 1]], n, device)


def _embed3d(m3: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
    """[N,3,3] linear part (+ [N,3] offset) -> [N,4,4] homogeneous colour transform."""
    out = torch.eye(4, device=m3.device).repeat(m3.shape[0], 1, 1)
    out[:, :3, :3] = m3
    if t is not None:
        out[:, :3, 3] = t
    return out


def _is_identity(mats: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """Bool [N]: which of `mats [N, k, k]` are the identity up to rounding (such samples are passed
    through untouched instead of being resampled)."""
    eye = torch.eye(mats.shape[1], device=mats.device, dtype=mats.dtype)
    return (mats - eye).abs().flatten(1).amax(dim=1) <= tol


def _reflect(idx: torch.Tensor, size: int) -> torch.Tensor:
    """Map integer indices into [0, size) by mirroring about the edge pixels (like F.pad 'reflect',
    but for any distance, by repeating the reflection periodically)."""
    if size == 1:
        return torch.zeros_like(idx)
    period = 2 * (size - 1)
    idx = idx.remainder(period)
    return torch.where(idx >= size, period - idx, idx)


def _reflect_pad(x: torch.Tensor, px0: int, px1: int, py0: int, py1: int) -> torch.Tensor:
    """Reflect-pad the last two dims of `x`. Built from index_select, so any derivative order works."""
    h, w = x.shape[2], x.shape[3]
    iy = _reflect(torch.arange(-py0, h + py1, device=x.device), h)
    ix = _reflect(torch.arange(-px0, w + px1, device=x.device), w)
    return x.index_select(2, iy).index_select(3, ix)


def band_gains(draws: torch.Tensor) -> torch.Tensor:
    """Per-band filter gains [N, 4] from per-band draws [N, 4] (1 = band untouched).

    Each band's draw is normalised on its own so that an image with the expected 1/f power spectrum
    (`_BAND_POWER`) keeps its power, and the normalised single-band gain vectors are multiplied — the
    ADA rule, which is not the same as normalising the product once.
    """
    power = _constant(tuple(_BAND_POWER), draws.device, draws.dtype)
    gains = torch.ones_like(draws)
    eye = torch.eye(draws.shape[1], dtype=torch.bool, device=draws.device)
    for band in range(draws.shape[1]):
        t = torch.where(eye[band], draws[:, band:band + 1], torch.ones_like(draws))
        gains = gains * t / torch.sqrt((t.square() * power).sum(dim=1, keepdim=True))
    return gains


def _filter_bank(lo: list[float], num_bands: int = 4) -> np.ndarray:
    """Octave filter bank [num_bands, taps], lowest band first; the bands sum to a unit impulse.

    A(w) = |H(w)|^2 / |H(0)|^2 of an orthonormal low-pass is a zero-phase half-band filter with
    A(w) + A(w + pi) = 1. With A_k(w) = A(2^k w) the bands are A_0 A_1 A_2, A_0 A_1 (1 - A_2),
    A_0 (1 - A_1) and 1 - A_0, which telescope to 1.
    """
    h = np.asarray(lo, dtype=np.float64)
    a = np.convolve(h, h[::-1]) / np.sum(h) ** 2
    halfbands = []
    for k in range(num_bands - 1):  # A_k: `a` with 2^k - 1 zeros between taps
        ak = np.zeros((len(a) - 1) * 2**k + 1)
        ak[:: 2**k] = a
        halfbands.append(ak)
    taps = sum(len(ak) - 1 for ak in halfbands) + 1

    def centred(f: np.ndarray) -> np.ndarray:
        pad = (taps - len(f)) // 2
        return np.pad(f, (pad, pad))

    def delta(length: int) -> np.ndarray:
        d = np.zeros(length)
        d[length // 2] = 1
        return d

    bands = []
    low = np.ones(1)
    for ak in halfbands:  # split off the top octave of what is left, from high to low
        bands.append(centred(np.convolve(low, delta(len(ak)) - ak)))
        low = np.convolve(low, ak)
    bands.append(centred(low))
    return np.stack(bands[::-1])


# ---------------------------------------------------------------------------------------------------
# The pipe.

_MULTIPLIERS = ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac", "brightness", "contrast",
                "lumaflip", "hue", "saturation", "imgfilter", "noise", "cutout")
_STRENGTHS = ("xint_max", "scale_std", "rotate_max", "aniso_std", "xfrac_std", "brightness_std",
              "contrast_std", "hue_max", "saturation_std", "imgfilter_std", "noise_std", "cutout_size")


class AugmentPipe(torch.nn.Module):
    """Random differentiable augmentations for the discriminator's inputs (see module docstring).

    Keyword arguments are per-op probability multipliers (`xflip` ... `cutout`, 0 = op disabled) and
    strengths (`*_std` log2 or absolute standard deviations, `*_max` fractions of the full range).
    `forward(images [N, C, H, W]) -> [N, C, H, W]`. Colour ops need C in {1, 3}; `rotate90` needs
    square images.
    """

    def __init__(self, xflip: float = 0, rotate90: float = 0, xint: float = 0, xint_max: float = 0.125,
                 scale: float = 0, rotate: float = 0, aniso: float = 0, xfrac: float = 0,
                 scale_std: float = 0.2, rotate_max: float = 1, aniso_std: float = 0.2,
                 xfrac_std: float = 0.125, brightness: float = 0, contrast: float = 0, lumaflip: float = 0,
                 hue: float = 0, saturation: float = 0, brightness_std: float = 0.2,
                 contrast_std: float = 0.5, hue_max: float = 1, saturation_std: float = 1,
                 imgfilter: float = 0, imgfilter_bands: list[float] = (1, 1, 1, 1), imgfilter_std: float = 1,
                 noise: float = 0, cutout: float = 0, noise_std: float = 0.1, cutout_size: float = 0.5):
        super().__init__()
        kwargs = dict(locals())
        kwargs = {name: kwargs[name] for name in _MULTIPLIERS + _STRENGTHS}
        for name, value in kwargs.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
            setattr(self, name, float(value))
        bands = [float(b) for b in imgfilter_bands]
        if len(bands) != 4 or any(not math.isfinite(b) or b < 0 for b in bands):
            raise ValueError(f"imgfilter_bands must be 4 finite numbers >= 0, got {imgfilter_bands!r}")
        self.imgfilter_bands = bands
        self.init_kwargs = {**{k: float(v) for k, v in kwargs.items()}, "imgfilter_bands": bands}

        self.register_buffer("p", torch.zeros([]))
        self._p_read: tuple | None = None  # (p tensor, its version, value): see p_value()
        # Geometric ops pad to the largest reach any transform can have instead of this batch's reach:
        # more memory traffic, but no host read of the reach, so a pass can be captured as a CUDA graph.
        self.static_padding = False
        # Constant filters are non-persistent: the state dict holds only `p`.
        self.register_buffer("hz_geom", upfirdn2d.setup_filter(SYM6_LO, separable=True), persistent=False)
        bank = torch.as_tensor(_filter_bank(SYM2_LO), dtype=torch.float32)
        self.register_buffer("filter_bank", bank, persistent=False)

    def p_value(self) -> float:
        """p as a number. Read from p's device only when p changed since the last read (in-place updates
        bump a tensor's version counter; `.to()` makes a new tensor): reading a GPU value is a host
        sync, and the pipe runs on every D pass, while ADA moves p once every few minibatches."""
        p, read = self.p, self._p_read
        if p.is_inference():  # made under torch.inference_mode(): no version counter to watch
            return float(p)
        if read is None or read[0] is not p or read[1] != p._version:
            read = self._p_read = (p, p._version, float(p))
        return read[2]

    def extra_repr(self) -> str:
        active = [f"{n}={getattr(self, n):g}" for n in _MULTIPLIERS if getattr(self, n) > 0]
        return ", ".join(active) or "no ops"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
            raise ValueError(f"images must be a float tensor [N, C, H, W], got "
                             f"{images.dtype if isinstance(images, torch.Tensor) else type(images).__name__} "
                             f"{list(images.shape) if isinstance(images, torch.Tensor) else ''}")
        # p == 0 (the start of every ADA run) must be the exact identity.
        if self.p_value() == 0:
            return images
        p = self.p.to(images.device)
        # Half-precision coordinates would misplace samples by up to a pixel: work in float32.
        x = images if images.dtype in (torch.float32, torch.float64) else images.float()
        if self.xflip > 0 or self.rotate90 > 0 or self.xint > 0:
            x = self._blit(x, p)
        if self.scale > 0 or self.rotate > 0 or self.aniso > 0 or self.xfrac > 0:
            x = self._geometric(x, p)
        if self.brightness > 0 or self.contrast > 0 or self.lumaflip > 0 or self.hue > 0 or self.saturation > 0:
            x = self._color(x, p)
        if self.imgfilter > 0:
            x = self._imgfilter(x, p)
        if self.noise > 0:
            x = self._noise(x, p)
        if self.cutout > 0:
            x = self._cutout(x, p)
        return x.to(images.dtype)

    # -- random draws ---------------------------------------------------------------------------------

    @staticmethod
    def _chosen(prob: torch.Tensor, n: int, device: torch.device, shape: tuple = ()) -> torch.Tensor:
        """Bool [n, 1...] (broadcastable to [n, *shape]): which samples an op with probability `prob` hits."""
        return (torch.rand([n], device=device) < prob).reshape(n, *([1] * len(shape)))

    def _draw(self, values: torch.Tensor, identity: float, prob: torch.Tensor) -> torch.Tensor:
        """Replace `values [N, ...]` by `identity` for the samples the op does not hit."""
        chosen = self._chosen(prob, values.shape[0], values.device, tuple(values.shape[1:]))
        return torch.where(chosen, values, torch.full_like(values, identity))

    # -- 1. pixel blitting ----------------------------------------------------------------------------

    def _blit(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Flip / rotate by 90 degrees / translate by whole pixels, as an exact gather."""
        n, c, h, w = x.shape
        dev = x.device
        g_inv = torch.eye(3, device=dev).repeat(n, 1, 1)  # output pixel -> input pixel (centred coords)
        if self.xflip > 0:
            flip = self._draw(torch.randint(2, [n], device=dev).float(), 0, self.xflip * p)
            g_inv = g_inv @ _scale2d(1 - 2 * flip, 1, n, dev)
        if self.rotate90 > 0:
            if h != w:
                raise ValueError(f"rotate90 needs square images, got {h}x{w}")
            quarter = self._draw(torch.randint(4, [n], device=dev).float(), 0, self.rotate90 * p)
            g_inv = g_inv @ _rotate2d(-quarter * (math.pi / 2), n, dev)
        if self.xint > 0:
            t = self._draw((torch.rand([n, 2], device=dev) * 2 - 1) * self.xint_max, 0, self.xint * p)
            g_inv = g_inv @ _translate2d(-torch.round(t[:, 0] * w), -torch.round(t[:, 1] * h), n, dev)

        # Pixel centres relative to the image centre; these transforms map the grid onto itself.
        ys, xs = torch.meshgrid(torch.arange(h, device=dev) + 0.5 - h / 2,
                                torch.arange(w, device=dev) + 0.5 - w / 2, indexing="ij")
        pts = torch.stack([xs.flatten(), ys.flatten(), torch.ones(h * w, device=dev)])  # [3, HW]
        src = g_inv @ pts  # [N, 3, HW]
        sx = _reflect(torch.round(src[:, 0] + w / 2 - 0.5).long(), w)
        sy = _reflect(torch.round(src[:, 1] + h / 2 - 0.5).long(), h)
        index = (sy * w + sx)[:, None, :].expand(n, c, h * w)
        return x.reshape(n, c, h * w).gather(2, index).reshape(n, c, h, w)

    # -- 2. general geometric transforms --------------------------------------------------------------

    def _geometric_matrix(self, n: int, w: int, h: int, p: torch.Tensor, dev: torch.device) -> torch.Tensor:
        """Inverse transforms [N, 3, 3] mapping output to input pixel coordinates (centred, y down)."""
        g_inv = torch.eye(3, device=dev).repeat(n, 1, 1)
        if self.scale > 0:
            s = self._draw(torch.exp2(torch.randn([n], device=dev) * self.scale_std), 1, self.scale * p)
            g_inv = g_inv @ _scale2d(1 / s, 1 / s, n, dev)
        # Rotation is applied before and after the anisotropic scale (so that scaling happens along a
        # random axis); each with probability 1 - sqrt(1 - P) so that at least one fires with P.
        p_rot = 1 - torch.sqrt(torch.clamp(1 - self.rotate * p, min=0))
        if self.rotate > 0:
            theta = (torch.rand([n], device=dev) * 2 - 1) * (math.pi * self.rotate_max)
            g_inv = g_inv @ _rotate2d(-self._draw(theta, 0, p_rot), n, dev)
        if self.aniso > 0:
            s = self._draw(torch.exp2(torch.randn([n], device=dev) * self.aniso_std), 1, self.aniso * p)
            g_inv = g_inv @ _scale2d(1 / s, s, n, dev)
        if self.rotate > 0:
            theta = (torch.rand([n], device=dev) * 2 - 1) * (math.pi * self.rotate_max)
            g_inv = g_inv @ _rotate2d(-self._draw(theta, 0, p_rot), n, dev)
        if self.xfrac > 0:
            t = self._draw(torch.randn([n, 2], device=dev) * self.xfrac_std, 0, self.xfrac * p)
            g_inv = g_inv @ _translate2d(-t[:, 0] * w, -t[:, 1] * h, n, dev)
        return g_inv

    def _geometric(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Resample every sample through its own inverse matrix: reflect-pad, 2x upsample, bilinear
        sampling of a 2x grid, 2x downsample (the up/down pair is exactly the identity for an
        orthonormal low-pass, so only the sampling itself changes the image)."""
        n, _c, h, w = x.shape
        dev = x.device
        g_inv = self._geometric_matrix(n, w, h, p, dev)
        identity = _is_identity(g_inv)
        taps = self.hz_geom.shape[0]
        ext = taps // 2  # extra 2x-grid pixels on every side: support of the final downsampling

        if self.static_padding:
            # The most the padding below can be (reflection reaches at most size - 1 pixels); the samples
            # that no transform moved come from x at the end.
            px0 = px1 = w - 1
            py0 = py1 = h - 1
        else:
            # How far outside the image the sampled region reaches (+ upsampling filter support).
            cx, cy = w / 2 + ext / 2, h / 2 + ext / 2
            corners = _constant(((-cx, cx, -cx, cx), (-cy, -cy, cy, cy), (1, 1, 1, 1)), dev)
            src = (g_inv @ corners)[:, :2]  # [N, 2, 4]
            reach = torch.cat([-src.amin(dim=2), src.amax(dim=2)], dim=1)  # [N, 4]: left, top, right, bottom
            reach = torch.where(identity[:, None], torch.zeros_like(reach), reach)
            reach = reach - _constant((w / 2, h / 2, w / 2, h / 2), dev) + (taps // 4 + 1)
            limit = _constant((w - 1, h - 1, w - 1, h - 1), dev)
            reach = torch.minimum(torch.ceil(reach).clamp(min=0), limit).amax(dim=0)
            *pads, any_moved = torch.cat([reach, (~identity).any().float()[None]]).tolist()  # one sync
            if not any_moved:
                return x
            px0, py0, px1, py1 = (int(v) for v in pads)

        y = _reflect_pad(x, px0, px1, py0, py1)
        y = upfirdn2d.upsample2d(y, self.hz_geom.to(x.dtype), up=2)
        # Output 2x-grid pixel k sits at (k - ext + 0.5) / 2 output pixels; map it to the input and
        # express it in grid_sample's [-1, 1] span of the padded (equivalently, upsampled) image.
        gy, gx = torch.meshgrid((torch.arange(2 * h + 2 * ext, device=dev) - ext + 0.5) / 2 - h / 2,
                                (torch.arange(2 * w + 2 * ext, device=dev) - ext + 0.5) / 2 - w / 2,
                                indexing="ij")
        pts = torch.stack([gx.flatten(), gy.flatten(), torch.ones_like(gx).flatten()])
        src = g_inv @ pts  # [N, 3, hw]
        u = (src[:, 0] + w / 2 + px0) * (2 / (w + px0 + px1)) - 1
        v = (src[:, 1] + h / 2 + py0) * (2 / (h + py0 + py1)) - 1
        grid = torch.stack([u, v], dim=2).reshape(n, 2 * h + 2 * ext, 2 * w + 2 * ext, 2).to(x.dtype)
        y = grid_sample_op.grid_sample(y, grid)
        y = upfirdn2d.downsample2d(y, self.hz_geom.to(x.dtype), down=2, padding=-ext, flip_filter=True)
        return torch.where(identity[:, None, None, None], x, y)

    # -- 3. colour ------------------------------------------------------------------------------------

    def _color_matrix(self, n: int, num_channels: int, p: torch.Tensor, dev: torch.device) -> torch.Tensor:
        """Forward colour transforms [N, 4, 4] acting on homogeneous (r, g, b, 1)."""
        c_mat = torch.eye(4, device=dev).repeat(n, 1, 1)
        eye3 = torch.eye(3, device=dev)
        v = torch.full([3], 1 / math.sqrt(3), device=dev)  # luma axis
        vvt = torch.outer(v, v)
        if self.brightness > 0:
            b = self._draw(torch.randn([n], device=dev) * self.brightness_std, 0, self.brightness * p)
            c_mat = _embed3d(eye3.expand(n, 3, 3), b[:, None].expand(n, 3)) @ c_mat
        if self.contrast > 0:
            s = self._draw(torch.exp2(torch.randn([n], device=dev) * self.contrast_std), 1, self.contrast * p)
            c_mat = _embed3d(eye3 * s[:, None, None]) @ c_mat
        if self.lumaflip > 0:
            # Householder reflection: negates the luma component, keeps the chroma.
            flip = self._draw(torch.randint(2, [n], device=dev).float(), 0, self.lumaflip * p)
            c_mat = _embed3d(eye3 - 2 * vvt * flip[:, None, None]) @ c_mat
        if num_channels == 3 and self.hue > 0:
            theta = self._draw((torch.rand([n], device=dev) * 2 - 1) * (math.pi * self.hue_max), 0, self.hue * p)
            cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
            a = 1 / math.sqrt(3)
            cross = _constant(((0, -a, a), (a, 0, -a), (-a, a, 0)), dev)  # [v]_x
            rot = eye3 * cos + cross * sin + vvt * (1 - cos)  # Rodrigues: rotation about the luma axis
            c_mat = _embed3d(rot) @ c_mat
        if num_channels == 3 and self.saturation > 0:
            s = self._draw(torch.exp2(torch.randn([n], device=dev) * self.saturation_std), 1,
                           self.saturation * p)
            c_mat = _embed3d(vvt + (eye3 - vvt) * s[:, None, None]) @ c_mat
        return c_mat

    def _color(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if c not in (1, 3):
            raise ValueError(f"colour augmentations need 1 or 3 channels, got images of shape {list(x.shape)}")
        c_mat = self._color_matrix(n, c, p, x.device)
        identity = _is_identity(c_mat)
        c_mat = c_mat.to(x.dtype)
        if c == 3:
            y = c_mat[:, :3, :3] @ x.reshape(n, 3, h * w) + c_mat[:, :3, 3:]
        else:
            # A grey pixel g is (g, g, g); the luma of its image is g * sum(M) / 3 + mean(t).
            gain = c_mat[:, :3, :3].sum(dim=(1, 2)) / 3
            y = x.reshape(n, 1, h * w) * gain[:, None, None] + c_mat[:, :3, 3].mean(dim=1)[:, None, None]
        return torch.where(identity[:, None, None, None], x, y.reshape(n, c, h, w))

    # -- 4. image-space filtering ---------------------------------------------------------------------

    def _imgfilter(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Amplify/attenuate the 4 octaves by lognormal gains, keeping the expected image power."""
        n, c, h, w = x.shape
        dev = x.device
        draws = torch.ones([n, 4], device=dev)
        for band, mult in enumerate(self.imgfilter_bands):
            if mult > 0:
                draws[:, band] = self._draw(torch.exp2(torch.randn([n], device=dev) * self.imgfilter_std), 1,
                                            self.imgfilter * mult * p)
        changed = (draws != 1).any(dim=1)
        gains = band_gains(draws)
        filt = (gains @ self.filter_bank.to(dev, torch.float32)).to(x.dtype)  # [N, K] zero-phase 1-D filters, applied along x then y
        k = filt.shape[1]
        weight = filt.repeat_interleave(c, dim=0)[:, None, None, :]  # [N*C, 1, 1, K]
        y = _reflect_pad(x, k // 2, k // 2, k // 2, k // 2).reshape(1, n * c, h + k - 1, w + k - 1)
        y = F.conv2d(y, weight, groups=n * c)
        y = F.conv2d(y, weight.transpose(2, 3), groups=n * c)
        return torch.where(changed[:, None, None, None], y.reshape(n, c, h, w), x)

    # -- 5. noise, 6. cutout --------------------------------------------------------------------------

    def _noise(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        sigma = self._draw(torch.randn([n], device=x.device).abs() * self.noise_std, 0, self.noise * p)
        y = x + torch.randn_like(x) * sigma.to(x.dtype)[:, None, None, None]
        return torch.where((sigma > 0)[:, None, None, None], y, x)

    def _cutout(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        dev = x.device
        size = self._draw(torch.full([n], self.cutout_size, device=dev), 0, self.cutout * p)
        centre = torch.rand([n, 2], device=dev)
        xs = (torch.arange(w, device=dev) + 0.5) / w
        ys = (torch.arange(h, device=dev) + 0.5) / h
        outside_x = (xs[None, :] - centre[:, :1]).abs() >= size[:, None] / 2  # [N, W]
        outside_y = (ys[None, :] - centre[:, 1:]).abs() >= size[:, None] / 2  # [N, H]
        keep = outside_x[:, None, None, :] | outside_y[:, None, :, None]  # [N, 1, H, W]
        return torch.where(keep, x, torch.zeros_like(x))


# ---------------------------------------------------------------------------------------------------
# Adaptive p.


class AdaController:
    """Moves `pipe.p` so that r_t = E[sign(D(real))] tracks `target`.

    Call `accumulate(real_logits)` for every real batch D sees and `step()` once per minibatch.
    Every `interval` steps: p <- clamp(p + sign(r_t - target) * batch_size * interval / (kimg * 1000),
    0, 1), so p can traverse [0, 1] in `kimg` thousand images. The [sum of signs, count] accumulator
    passes through `reduce_fn` (default identity; e.g. an all-reduce across ranks, in place or
    returning the result) before use. `state_dict()` holds everything needed for an exact resume
    except p itself, which lives in the pipe's state dict.
    """

    def __init__(self, pipe: AugmentPipe, target: float = 0.6, interval: int = 4, kimg: float = 500, *,
                 batch_size: int, reduce_fn: Callable[[torch.Tensor], torch.Tensor | None] | None = None):
        if not isinstance(pipe, AugmentPipe):
            raise TypeError(f"pipe must be an AugmentPipe, got {type(pipe).__name__}")
        _check_target(target)
        for name, value in (("interval", interval), ("batch_size", batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(kimg, bool) or not isinstance(kimg, (int, float)) or not kimg > 0 or not math.isfinite(kimg):
            raise ValueError(f"kimg must be a positive number, got {kimg!r}")
        self.pipe = pipe
        self.target = float(target)
        self.interval = interval
        self.kimg = float(kimg)
        self.batch_size = batch_size
        self.reduce_fn = reduce_fn
        self.batch_idx = 0  # minibatches seen; adjustments happen when it reaches a multiple of interval
        self.rt: torch.Tensor | None = None  # last r_t (0-d tensor), for logging
        self._stats: torch.Tensor | None = None  # float64 [sum of signs, count], on the logits' device

    @property
    def p(self) -> float:
        return self.pipe.p_value()

    def accumulate(self, real_logits: torch.Tensor) -> None:
        """Add sign(D(real)) of a batch of real logits (any shape) to the running statistics."""
        signs = real_logits.detach().sign().to(torch.float64).flatten()
        batch = torch.stack([signs.sum(), signs.new_full([], signs.numel())])  # a fill: no host-to-device copy
        self._stats = batch if self._stats is None else self._stats + batch.to(self._stats.device)

    def step(self) -> bool:
        """Count one minibatch; every `interval` of them update p (no host sync). Returns True then."""
        self.batch_idx += 1
        if self.batch_idx % self.interval != 0:
            return False
        stats = self._stats if self._stats is not None else torch.zeros(2, dtype=torch.float64,
                                                                        device=self.pipe.p.device)
        stats = stats.clone()
        reduced = self.reduce_fn(stats) if self.reduce_fn is not None else None
        stats = stats if reduced is None else reduced
        total, count = stats[0], stats[1]
        rt = total / count.clamp(min=1)
        speed = self.batch_size * self.interval / (self.kimg * 1000)
        adjust = torch.where(count > 0, torch.sign(rt - self.target), torch.zeros_like(rt)) * speed
        p = self.pipe.p
        p.copy_((p.to(torch.float64) + adjust.to(p.device)).clamp(0, 1).to(p.dtype))
        self.rt = rt.to(torch.float32)
        self._stats = None
        return True

    def gather_pending(self, keep: bool) -> None:
        """Sum the pending [sum of signs, count] over ranks (`reduce_fn`) and keep the total on one rank
        only (`keep=True` there), so the next update sees the same sum while `state_dict()` of that rank
        holds all of it (a resume restores it there and zeros on the others: see `clear_pending`)."""
        stats = self._stats if self._stats is not None else torch.zeros(2, dtype=torch.float64,
                                                                        device=self.pipe.p.device)
        reduced = self.reduce_fn(stats.clone()) if self.reduce_fn is not None else None
        self._stats = (stats if reduced is None else reduced) if keep else None

    def clear_pending(self) -> None:
        """Forget the pending statistics (a resumed rank other than the one holding the saved total)."""
        self._stats = None

    def state_dict(self) -> dict:
        stats = [0.0, 0.0] if self._stats is None else [float(v) for v in self._stats.tolist()]
        return {"sum": stats[0], "count": stats[1], "batch_idx": self.batch_idx}

    def load_state_dict(self, state: dict) -> None:
        missing = {"sum", "count", "batch_idx"} - set(state)
        if missing:
            raise ValueError(f"AdaController state is missing {sorted(missing)}")
        self.batch_idx = int(state["batch_idx"])
        self._stats = None
        if state["count"] != 0 or state["sum"] != 0:
            self._stats = torch.tensor([state["sum"], state["count"]], dtype=torch.float64,
                                       device=self.pipe.p.device)


def _check_target(target) -> None:
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target < 1:
        raise ValueError(f"target must be in (0, 1), got {target!r}")


AUGMENT_MODES = ("noaug", "ada", "fixed")


def make_augment(mode: str, augpipe: str = "bgc", p: float | None = None, target: float = 0.6, *,
                 batch_size: int | None = None, interval: int = 4, kimg: float = 500,
                 reduce_fn: Callable[[torch.Tensor], torch.Tensor | None] | None = None,
                 ) -> tuple[AugmentPipe | None, AdaController | None]:
    """Build (pipe, controller) for `mode`: 'noaug' -> (None, None); 'fixed' -> (pipe with p, None);
    'ada' -> (pipe with p = 0, controller). `p` is required for and only allowed with 'fixed';
    `batch_size` (the global batch) is required for 'ada'. `target` only matters for 'ada'."""
    check_choice("mode", mode, AUGMENT_MODES)
    _check_target(target)
    if mode == "fixed":
        if p is None:
            raise ValueError("p is required with mode='fixed'")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ValueError(f"p must be in [0, 1], got {p!r}")
    elif p is not None:
        raise ValueError(f"p={p!r} is only allowed with mode='fixed', got mode={mode!r}")
    if mode == "noaug":
        return None, None
    pipe = build_augment_pipe(augpipe)
    if mode == "fixed":
        pipe.p.fill_(float(p))
        return pipe, None
    if batch_size is None:
        raise ValueError("batch_size is required with mode='ada'")
    return pipe, AdaController(pipe, target=target, interval=interval, kimg=kimg, batch_size=batch_size,
                               reduce_fn=reduce_fn)
