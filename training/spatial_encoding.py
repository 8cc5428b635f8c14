"""SpatialGAN's spatial encoding: how heatmaps (a `HeatmapSpec`) enter the StyleGAN2 generator.

`spatial_kwargs` of `Generator` (None = plain StyleGAN2, no extra parameters):

    encoding              'sel_norm'   paper Eq. 2 + residual (conference internals, peers facts §1.4)
                          'sel_concat' out = F + conv(concat[F, h])
                          'sel_indoor' paper Eq. 3: spatially varying style sum_i s_i H_i(x) + s_bg
                          'flatten'    Table 5 ablation: flattened heatmaps appended to z
    sampler, sampler_kwargs   `training.heatmaps.build_sampler(sampler, **sampler_kwargs)`
                              (default 'hierarchical'; 'multi_object' for sel_indoor)
    resolutions           synthesis block resolutions that are encoded: a list, or "all"
                          (default [4, 8, 16] = paper levels 0-2; "all" for sel_indoor)
    processing            'coarse' (paper): render the heatmap at the layer's resolution, then convolve;
                          'fine' (conference): render at image resolution, two lrelu convs 16 -> 32
                          channels there, then bilinearly down-sample to the layer
    compose               'sum' (H = sum_i H_i, one channel per level, paper) or 'separate'
                          (sub-maps as channels, conference; required by sel_indoor)
    kernel_size, dilation   the SEL's first conv, which reads the heatmap (3, 1)
    fine_kernel_size, fine_dilation   the two 'fine' convs at image resolution (3, 1); train.py's
                          --kernel-size / --dilation set them too with fine processing (paper §4.3's
                          receptive-field ablation enlarges the convs that see the full-size heatmap)
    hidden_channels       channels of the SEL's first conv (64)
    torgb                 also a SEL on the input of every ToRGB of an encoded block, feeding only the
                          RGB branch (conference code; sel_norm / sel_concat only; default False)
    level_for_resolution  {block resolution: level | [levels] | "all"}; default: block 4 -> level 0,
                          8 -> 1, 16 -> 2, ..., and blocks past the last level get all levels concatenated
                          (conference routing; a one-level sampler thus uses level 0 everywhere)

Placement: SEL_norm / SEL_concat act on the *input* of every SynthesisLayer of an encoded block (conv0
sees the block input at half resolution, conv1 the block resolution), and with `torgb` on the input of
its ToRGB; the heatmap for a layer is the block's level(s) at the layer's resolution. SEL_indoor replaces
the style of conv0, conv1 and ToRGB of encoded blocks by a per-pixel style map.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from torch_utils import misc
from torch_utils.ops import bias_act, conv2d_resample, fma
from training import heatmaps as hm

__all__ = [
    "ENCODINGS", "SpatialConfig", "build_spatial", "EqualizedConv2d", "SELNorm", "SELConcat", "build_sel",
    "HeatmapEncoder", "HeatmapInputs", "StyleMap", "spatial_styles", "spatially_modulated_conv2d", "clamped_rsqrt",
    "flatten_heatmaps",
]

ENCODINGS = ("sel_norm", "sel_concat", "sel_indoor", "flatten")
PROCESSINGS = ("coarse", "fine")
COMPOSES = ("sum", "separate")
SPATIAL_KEYS = ("encoding", "sampler", "sampler_kwargs", "resolutions", "processing", "compose", "kernel_size",
                "dilation", "hidden_channels", "level_for_resolution", "torgb", "fine_kernel_size", "fine_dilation")
FINE_CHANNELS = (16, 32)   # conference heatmap projection: in -> 16 -> 32 at image resolution
RESIDUAL_GAIN = 0.1        # SEL_norm residual scale (empirical, for stability; peers facts §1.4)


# ---------------------------------------------------------------------------------------------------
# Configuration.


@dataclass
class SpatialConfig:
    """Resolved spatial-encoding settings (JSON-able via `to_dict`).

    level_sizes: K_l per heatmap level; level_resolutions: each level's native resolution (flatten).
    level_for_resolution: {block res: [levels]} overrides of the default routing.
    """

    encoding: str
    img_resolution: int
    level_sizes: list[int]
    level_resolutions: list[int]
    resolutions: list[int] | str = "all"
    processing: str = "coarse"
    compose: str = "sum"
    kernel_size: int = 3
    dilation: int = 1
    hidden_channels: int = 64
    level_for_resolution: dict[int, list[int]] = field(default_factory=dict)
    torgb: bool = False
    fine_kernel_size: int = 3
    fine_dilation: int = 1

    def __post_init__(self) -> None:
        misc.check_choice("encoding", self.encoding, ENCODINGS)
        misc.check_choice("processing", self.processing, PROCESSINGS)
        misc.check_choice("compose", self.compose, COMPOSES)
        for name in ("kernel_size", "dilation", "hidden_channels", "fine_kernel_size", "fine_dilation"):
            misc.check_positive_int(name, getattr(self, name))
        for name in ("kernel_size", "fine_kernel_size"):
            if getattr(self, name) % 2 == 0:
                raise ValueError(f"{name} must be odd, got {getattr(self, name)}")
        if not isinstance(self.torgb, bool):
            raise ValueError(f"torgb must be true or false, got {self.torgb!r}")
        if self.torgb and self.encoding not in ("sel_norm", "sel_concat"):
            raise ValueError(f"torgb=True adds a SEL_norm / SEL_concat to ToRGB; encoding={self.encoding!r} has none")
        self.resolutions = _parse_resolutions(self.resolutions, self.img_resolution)
        self.level_for_resolution = _parse_routing(self.level_for_resolution, self.num_levels)
        if self.encoding == "sel_indoor":
            if self.compose != "separate":
                raise ValueError(f"encoding='sel_indoor' needs compose='separate' (one map per object), "
                                 f"got compose={self.compose!r}")
            if len(set(self.level_sizes)) != 1:
                raise ValueError(f"encoding='sel_indoor' needs the same object count on every level, "
                                 f"got level_sizes={self.level_sizes}")

    @property
    def num_levels(self) -> int:
        return len(self.level_sizes)

    @property
    def num_objects(self) -> int:
        return self.level_sizes[0]

    def encodes(self, res: int) -> bool:
        return self.resolutions == "all" or res in self.resolutions

    def levels(self, res: int) -> list[int]:
        """Heatmap levels feeding block `res` (concatenated as channels when several)."""
        if res in self.level_for_resolution:
            return self.level_for_resolution[res]
        level = int(round(math.log2(res))) - 2
        return [level] if level < self.num_levels else list(range(self.num_levels))

    def level_channels(self, level: int) -> int:
        return 1 if self.compose == "sum" else self.level_sizes[level]

    def heat_channels(self, res: int) -> int:
        """Channels of the heatmap tensor a SEL at block `res` receives."""
        if self.processing == "fine":
            return FINE_CHANNELS[-1] * len(self.levels(res))
        return sum(self.level_channels(lvl) for lvl in self.levels(res))

    def flatten_dim(self) -> int:
        return sum(self.level_channels(lvl) * r * r for lvl, r in enumerate(self.level_resolutions))

    def used_levels(self) -> list[int]:
        blocks = [2**i for i in range(2, int(math.log2(self.img_resolution)) + 1)]
        return sorted({lvl for res in blocks if self.encodes(res) for lvl in self.levels(res)})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["level_for_resolution"] = {str(k): list(v) for k, v in self.level_for_resolution.items()}
        d.pop("img_resolution")
        return d

    @classmethod
    def from_dict(cls, d: dict, img_resolution: int) -> SpatialConfig:
        return cls(img_resolution=img_resolution, **d)


def _parse_resolutions(resolutions, img_resolution: int) -> list[int] | str:
    if resolutions == "all":
        return "all"
    if not isinstance(resolutions, (list, tuple)) or not resolutions:
        raise ValueError(f"resolutions must be 'all' or a non-empty list of block resolutions, got {resolutions!r}")
    for r in resolutions:
        misc.check_power_of_two("resolutions entry", r, minimum=4)
        if r > img_resolution:
            raise ValueError(f"resolutions entry {r} exceeds img_resolution={img_resolution}")
    return sorted(int(r) for r in resolutions)


def _parse_routing(routing, num_levels: int) -> dict[int, list[int]]:
    if routing is None:
        return {}
    if not isinstance(routing, dict):
        raise ValueError(f"level_for_resolution must be a dict {{resolution: level(s)}}, got {routing!r}")
    out = {}
    for key, value in routing.items():
        res = int(key)
        levels = list(range(num_levels)) if value == "all" else (value if isinstance(value, list) else [value])
        for lvl in levels:
            if not isinstance(lvl, int) or not 0 <= lvl < num_levels:
                raise ValueError(f"level_for_resolution[{key!r}]={value!r}: levels must be in [0, {num_levels - 1}]")
        out[res] = [int(v) for v in levels]
    return out


_DEFAULTS = {
    "sel_norm": dict(sampler="hierarchical", resolutions=[4, 8, 16], compose="sum"),
    "sel_concat": dict(sampler="hierarchical", resolutions=[4, 8, 16], compose="sum"),
    "sel_indoor": dict(sampler="multi_object", resolutions="all", compose="separate"),
    "flatten": dict(sampler="hierarchical", resolutions="all", compose="sum"),
}


def build_spatial(spatial_kwargs: dict, img_resolution: int) -> tuple[hm.HeatmapSampler, SpatialConfig]:
    """Validate `spatial_kwargs`, build its heatmap sampler and probe the level layout from one draw."""
    if not isinstance(spatial_kwargs, dict):
        raise TypeError(f"spatial_kwargs must be a dict or None, got {type(spatial_kwargs).__name__}")
    unknown = sorted(set(spatial_kwargs) - set(SPATIAL_KEYS))
    if unknown:
        raise ValueError(f"spatial_kwargs has unknown keys {unknown}; allowed: {list(SPATIAL_KEYS)}")
    kw = dict(spatial_kwargs)
    encoding = kw.pop("encoding", "sel_norm")
    misc.check_choice("encoding", encoding, ENCODINGS)
    kw = {**_DEFAULTS[encoding], **kw}
    sampler = hm.build_sampler(kw.pop("sampler"), **dict(kw.pop("sampler_kwargs", None) or {}))
    probe = sampler(1, generator=0)
    sizes = probe.centers_per_level
    level_res = list(getattr(sampler, "level_resolutions", ()) or [4 * 2**lvl for lvl in range(len(sizes))])
    if encoding == "sel_indoor" and probe.style_seeds is None:
        raise ValueError(f"encoding='sel_indoor' needs a sampler with per-object style seeds, got {sampler!r}")
    if encoding == "flatten":
        kw["resolutions"] = "all"  # synthesis is unchanged; keep the config valid at any resolution
    cfg = SpatialConfig(encoding=encoding, img_resolution=img_resolution, level_sizes=sizes,
                        level_resolutions=level_res, **kw)
    return sampler, cfg


# ---------------------------------------------------------------------------------------------------
# SEL modules.


class EqualizedConv2d(nn.Module):
    """Stride-1 equalised-lr conv with dilation, 'same' padding, bias and activation.
    [N, in, H, W] -> [N, out, H, W]; weight gain 1/sqrt(in k^2), times `gain`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1,
                 activation: str = "linear", gain: float = 1.0):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.dilation, self.activation, self.gain = dilation, activation, gain
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = (self.weight * self.weight_gain).to(x.dtype)
        x = F.conv2d(x, w, padding=self.dilation * (self.kernel_size // 2), dilation=self.dilation)
        act_gain = bias_act.activation_funcs[self.activation].def_gain * self.gain
        return bias_act.bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=act_gain)

    def extra_repr(self) -> str:
        return (f"in={self.in_channels}, out={self.out_channels}, k={self.kernel_size}, "
                f"dilation={self.dilation}, activation={self.activation}")


def _instance_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(x - mean) / std over H, W per sample and channel (written out: twice differentiable)."""
    mean = x.mean(dim=[2, 3], keepdim=True)
    var = (x - mean).square().mean(dim=[2, 3], keepdim=True)
    return (x - mean) * (var + eps).rsqrt()


class SELNorm(nn.Module):
    """SEL_norm: F [N, C, r, r], h [N, C_h, r, r] -> F + 0.1 conv3x3(lrelu(IN(F) (1 + gamma(h)) + beta(h))).

    gamma and beta are single-channel maps (broadcast over C) from a shared conv(k, dilation) + lrelu
    hidden layer. Computed in float32 (instance norm statistics in fp16 are fragile).
    """

    def __init__(self, channels: int, heat_channels: int, hidden_channels: int = 64, kernel_size: int = 3,
                 dilation: int = 1):
        super().__init__()
        self.channels, self.heat_channels = channels, heat_channels
        self.shared = EqualizedConv2d(heat_channels, hidden_channels, kernel_size, dilation, activation="lrelu")
        self.gamma = EqualizedConv2d(hidden_channels, 1, 3)
        self.beta = EqualizedConv2d(hidden_channels, 1, 3)
        self.out = EqualizedConv2d(channels, channels, 3)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        misc.assert_shape(h, [x.shape[0], self.heat_channels, x.shape[2], x.shape[3]], "heatmap features")
        x32 = x.to(torch.float32)
        a = self.shared(h.to(torch.float32))
        d = _instance_norm(x32) * (1 + self.gamma(a)) + self.beta(a)
        y = x32 + RESIDUAL_GAIN * self.out(F.leaky_relu(d, 0.2))
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, heat_channels={self.heat_channels}"


class SELConcat(nn.Module):
    """SEL_concat: F [N, C, r, r], h [N, C_h, r, r] -> F + conv_k(concat[F, h]) (C + C_h -> C)."""

    def __init__(self, channels: int, heat_channels: int, kernel_size: int = 3, dilation: int = 1):
        super().__init__()
        self.channels, self.heat_channels = channels, heat_channels
        self.conv = EqualizedConv2d(channels + heat_channels, channels, kernel_size, dilation)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        misc.assert_shape(h, [x.shape[0], self.heat_channels, x.shape[2], x.shape[3]], "heatmap features")
        x32 = x.to(torch.float32)
        return (x32 + self.conv(torch.cat([x32, h.to(torch.float32)], dim=1))).to(x.dtype)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, heat_channels={self.heat_channels}"


def build_sel(cfg: SpatialConfig, block_res: int, channels: int) -> nn.Module | None:
    """The SEL module for a layer with `channels` input channels in block `block_res` (None for sel_indoor,
    which changes the style instead)."""
    if cfg.encoding == "sel_norm":
        return SELNorm(channels, cfg.heat_channels(block_res), cfg.hidden_channels, cfg.kernel_size, cfg.dilation)
    if cfg.encoding == "sel_concat":
        return SELConcat(channels, cfg.heat_channels(block_res), cfg.kernel_size, cfg.dilation)
    return None


# ---------------------------------------------------------------------------------------------------
# From HeatmapSpec to per-layer heatmap tensors.


class HeatmapEncoder(nn.Module):
    """Holds the fine-processing convs (one 2-conv stack per used level; none for coarse/sel_indoor).

    forward(spec) -> HeatmapInputs, which renders and caches the per-layer tensors lazily.
    """

    def __init__(self, cfg: SpatialConfig):
        super().__init__()
        self.cfg = cfg
        self.fine = nn.ModuleDict()
        if cfg.processing == "fine" and cfg.encoding in ("sel_norm", "sel_concat"):
            c1, c2 = FINE_CHANNELS
            for lvl in cfg.used_levels():
                self.fine[f"level{lvl}"] = nn.Sequential(
                    EqualizedConv2d(cfg.level_channels(lvl), c1, cfg.fine_kernel_size, cfg.fine_dilation,
                                    activation="lrelu"),
                    EqualizedConv2d(c1, c2, cfg.fine_kernel_size, cfg.fine_dilation, activation="lrelu",
                                    gain=math.sqrt(0.5)))

    def forward(self, spec: hm.HeatmapSpec) -> HeatmapInputs:
        if not isinstance(spec, hm.HeatmapSpec):
            raise TypeError(f"heatmaps must be a HeatmapSpec, got {type(spec).__name__}")
        if spec.centers_per_level != self.cfg.level_sizes:
            raise ValueError(f"heatmaps has centers per level {spec.centers_per_level}, this network was "
                             f"built for {self.cfg.level_sizes}")
        return HeatmapInputs(self, spec)

    def extra_repr(self) -> str:
        c = self.cfg
        return f"encoding={c.encoding}, processing={c.processing}, compose={c.compose}, levels={c.level_sizes}"


class HeatmapInputs:
    """Per-forward cache: `get(block_res, layer_res)` -> the heatmap tensor of that layer.

    sel_norm/concat: [N, heat_channels(block_res), r, r]; sel_indoor: per-object maps [N, K, r, r]
    (the block's levels summed). Fine processing bilinearly resizes from image resolution.
    """

    def __init__(self, encoder: HeatmapEncoder, spec: hm.HeatmapSpec):
        self.encoder, self.cfg, self.spec = encoder, encoder.cfg, spec
        self._cache: dict = {}

    def _memo(self, key, fn):
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    def _level(self, lvl: int, res: int) -> torch.Tensor:
        """Composed level `lvl` at `res` (fine: through the level's convs at image resolution)."""
        def make():
            maps = hm.render(self.spec, res, lvl)
            if self.cfg.encoding == "sel_indoor":
                return maps
            maps = hm.compose(maps, self.cfg.compose)
            return self.encoder.fine[f"level{lvl}"](maps) if self.cfg.processing == "fine" else maps
        return self._memo(("level", lvl, res), make)

    def get(self, block_res: int, layer_res: int) -> torch.Tensor:
        def make():
            levels = self.cfg.levels(block_res)
            res = self.cfg.img_resolution if self.cfg.processing == "fine" else layer_res
            if self.cfg.encoding == "sel_indoor":
                x = sum(self._level(lvl, res) for lvl in levels)
            else:
                x = torch.cat([self._level(lvl, res) for lvl in levels], dim=1)
            if x.shape[-1] != layer_res:
                x = F.interpolate(x, size=(layer_res, layer_res), mode="bilinear", align_corners=True)
            return x
        return self._memo(("layer", block_res, layer_res), make)


def flatten_heatmaps(spec: hm.HeatmapSpec, cfg: SpatialConfig) -> torch.Tensor:
    """The 'flatten' ablation input: every level composed at its native resolution, flattened and
    concatenated -> [N, cfg.flatten_dim()]."""
    if spec is None:
        raise ValueError("heatmaps are required by encoding='flatten'")
    parts = [hm.compose(hm.render(spec, r, lvl), cfg.compose).flatten(1) for lvl, r in enumerate(cfg.level_resolutions)]
    return torch.cat(parts, dim=1)


# ---------------------------------------------------------------------------------------------------
# SEL_indoor: spatially varying styles.


@dataclass
class StyleMap:
    """A per-pixel style s(x) = sum_a maps[:, a](x) * codes[:, a] (Eq. 3, the background being a map of
    ones): codes [N, A, C], maps [N, A, h, w]. Kept factorised because s(x)^2 then expands into
    A(A+1)/2 map products, which makes the per-pixel demodulation cheap and still exact."""

    codes: torch.Tensor
    maps: torch.Tensor

    def dense(self) -> torch.Tensor:
        """[N, C, h, w]."""
        return torch.einsum("nac,nahw->nchw", self.codes, self.maps.to(self.codes.dtype))

    def scaled(self, factor) -> StyleMap:
        """s * factor (a number or a per-sample tensor [N])."""
        if not isinstance(factor, torch.Tensor):  # a number: no tensor copied from the host (a GPU sync)
            return StyleMap(self.codes * factor, self.maps)
        factor = factor.to(self.codes.dtype)
        return StyleMap(self.codes * factor.reshape(-1, 1, 1) if factor.ndim else self.codes * factor, self.maps)


def spatial_styles(affine: nn.Module, w: torch.Tensor, object_w: torch.Tensor, maps: torch.Tensor) -> StyleMap:
    """Eq. 3: s(x) = sum_i affine(w_i) H_i(x) + affine(w).

    w [N, w_dim] (background), object_w [N, K, w_dim], maps [N, K, r, r] (dead objects are zero)."""
    n, k = maps.shape[:2]
    misc.assert_shape(object_w, [n, k, w.shape[1]], "object_w")
    s_bg = affine(w)                                                    # [N, C]
    s_obj = affine(object_w.reshape(n * k, -1)).reshape(n, k, -1)       # [N, K, C]
    ones = torch.ones_like(maps[:, :1], dtype=s_obj.dtype)
    return StyleMap(torch.cat([s_bg[:, None], s_obj], dim=1), torch.cat([ones, maps.to(s_obj.dtype)], dim=1))


def _demod_map(styles: StyleMap, weight: torch.Tensor, flip_weight: bool) -> torch.Tensor:
    """rsqrt(conv(s^2, W^2) + 1e-8): per-pixel, per-output-channel demodulation [N, O, h, w].

    With s = sum_a m_a S_a, conv(s^2, W^2)_o = sum_{a<=b} conv(m_a m_b, M_ab)_o where
    M_ab[o] = (2 - [a == b]) * sum_i W^2[o, i] S_a[i] S_b[i]: a per-sample convolution over A(A+1)/2 map
    products instead of one over all C input channels (C / 10 times cheaper for 3 objects), same maths.
    Replicate padding makes a spatially constant style give exactly the usual per-channel coefficient
    rsqrt(sum_{i,k} (W s_i)^2 + 1e-8), also at the border.
    """
    codes, maps = styles.codes.to(torch.float32), styles.maps.to(torch.float32)
    n, a = codes.shape[:2]
    kh, kw = weight.shape[2:]
    w2 = weight.to(torch.float32).square()
    if not flip_weight:
        w2 = w2.flip([2, 3])
    ia, ib = torch.triu_indices(a, a, device=codes.device)
    pair = codes[:, ia] * codes[:, ib] * (2 - (ia == ib).to(codes.dtype))[None, :, None]   # [N, P, I]
    kernels = torch.einsum("npi,oikl->nopkl", pair, w2)                                 # [N, O, P, kh, kw]
    products = F.pad(maps[:, ia] * maps[:, ib], [kw // 2, kw // 2, kh // 2, kh // 2], mode="replicate")
    h, w = maps.shape[2:]
    # A per-sample conv with P (~10) input channels. Never as one grouped conv (groups=N): oneDNN ran
    # its forward and weight gradient ~15x below its dense rate. Large maps: one dense conv per
    # sample (at 256² 2x faster than im2col in the forward, and it saves the P-channel products for
    # the backward instead of 9x as many columns). Small maps: im2col + one batched matmul, which
    # wins there because the per-call overhead dominates. The products need no gradient.
    if h * w >= DEMOD_LOOP_MIN_PIXELS:
        d = torch.cat([F.conv2d(products[i:i + 1], kernels[i]) for i in range(n)])          # [N, O, h, w]
    else:
        cols = F.unfold(products, (kh, kw))                                             # [N, P kh kw, h w]
        d = torch.bmm(kernels.flatten(2), cols).reshape(n, -1, h, w)                    # [N, O, h, w]
    return clamped_rsqrt(d)


# Map size (h * w) from which _demod_map convolves sample by sample instead of im2col + bmm; both
# orders were timed at 32², 128² and 256² (2 CPU threads): equal at 128², im2col ahead below.
DEMOD_LOOP_MIN_PIXELS = 128 * 128
DEMOD_EPS = 1e-8


def clamped_rsqrt(v: torch.Tensor) -> torch.Tensor:
    """rsqrt(max(v, 0) + 1e-8) of any shape, with the derivative 0 where v <= 0.

    The factorised expansion of s^2 can round a true zero slightly below it (s^2 is never negative), hence
    the clamp. One autograd node with one output buffer instead of clamp/add/rsqrt (three full-size
    tensors per layer forward and again in the backward at 256²), and its derivative is one node too
    (the path-length regulariser differentiates it twice).
    """
    return _ClampedRsqrt.apply(v)


@functools.cache
def _demod_cap(dtype: torch.dtype) -> float:
    """rsqrt(eps) as `dtype` rounds it: the value of clamped_rsqrt wherever v <= 0."""
    return float(torch.tensor(DEMOD_EPS, dtype=dtype).rsqrt())


class _ClampedRsqrt(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v):
        # max(v + eps, eps) == max(v, 0) + eps exactly (rounding is monotonic); clamp and rsqrt then
        # write the add's buffer. Never v's own storage: v is often a view (bmm output reshaped), and a
        # Function that writes a view in place (mark_dirty) is wrapped in CopySlices while also being
        # the saved output's grad_fn, so a double backward ran this node twice and, on a GPU, found
        # its saved output already freed.
        y = v.add(DEMOD_EPS).clamp_min_(DEMOD_EPS).rsqrt_()
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved_tensors
        return _ClampedRsqrtGrad.apply(dy, y)


class _ClampedRsqrtGrad(torch.autograd.Function):
    """dv = dy * (-y^3 / 2) where y < cap (v > 0), else 0. The clamped region is exactly where y equals
    its maximum rsqrt(eps); that also zeroes the rsqrt's singular slope for 0 < v below eps's resolution."""

    @staticmethod
    def forward(ctx, dy, y):
        ctx.save_for_backward(dy, y)
        return y.square().mul_(y).mul_(dy).mul_(-0.5).masked_fill_(y >= _demod_cap(y.dtype), 0)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        # d/d(dy) = -y^3 / 2; d/dy = -3/2 y^2 dy (y's own history then carries it back to v).
        dy, y = ctx.saved_tensors
        clamped = y >= _demod_cap(y.dtype)
        g_dy = g_y = None
        if ctx.needs_input_grad[0]:
            g_dy = y.square().mul_(y).mul_(g).mul_(-0.5).masked_fill_(clamped, 0)
        if ctx.needs_input_grad[1]:
            g_y = y.square().mul_(dy).mul_(g).mul_(-1.5).masked_fill_(clamped, 0)
        return g_dy, g_y


def spatially_modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: StyleMap,
                               noise: torch.Tensor | None = None, up: int = 1, padding: int | None = None,
                               resample_filter: torch.Tensor | None = None, demodulate: bool = True,
                               flip_weight: bool = True) -> torch.Tensor:
    """Modulated conv with a per-pixel style map: x [N, I, h, w], styles (dense [N, I, h, w]) ->
    [N, O, h*up, w*up].

    x' = x * s(x); y = conv(x', W); y_o(x) *= rsqrt(conv(s^2, W^2)_o(x) + 1e-8). For up=2 the demod map is
    computed at the input resolution and nearest-upsampled (exact for a constant style; an approximation
    of the transposed conv's footprint otherwise). Always the non-fused path (the style is not per sample).
    """
    out_channels, in_channels, kh, kw = weight.shape
    misc.assert_shape(styles.codes, [x.shape[0], None, in_channels], "styles.codes")
    misc.assert_shape(styles.maps, [x.shape[0], styles.codes.shape[1], x.shape[2], x.shape[3]], "styles.maps")
    padding = kh // 2 if padding is None else padding
    styles = StyleMap(styles.codes.to(torch.float32), styles.maps.to(torch.float32))
    dense = styles.dense()
    if x.dtype == torch.float16 and demodulate:
        # Keep fp16 products in range; a per-sample scale cancels in the demodulation exactly.
        weight = weight * (1 / math.sqrt(in_channels * kh * kw)
                           / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        scale = 1 / dense.abs().amax(dim=[1, 2, 3])
        styles, dense = styles.scaled(scale), dense * scale.reshape(-1, 1, 1, 1)
    x = x * _as_operand_of(dense, x)
    x = conv2d_resample.conv2d_resample(x, weight.to(x.dtype), f=resample_filter, up=up, padding=padding,
                                        flip_weight=flip_weight)
    if demodulate:
        d = _demod_map(styles, weight, flip_weight)
        if up > 1:
            d = F.interpolate(d, scale_factor=up, mode="nearest")
        if noise is not None:
            return fma.fma(x, _as_operand_of(d, x), noise.to(x.dtype))
        return x * _as_operand_of(d, x)
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


def _as_operand_of(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A full-size map `t [N, C, h, w]` in x's dtype and memory layout (one pass, as the dtype cast alone
    would be): an elementwise op between a channels-last x (the fp16 blocks with --channels-last) and
    an NCHW map walks one of them with a stride of C."""
    channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return t.to(x.dtype, memory_format=torch.channels_last if channels_last else torch.preserve_format)


def seeds_to_z(seeds: np.ndarray, z_dim: int) -> np.ndarray:
    """z per seed with the generate.py convention: np.random.RandomState(seed).randn(z_dim)."""
    return np.stack([np.random.RandomState(int(s) % 2**32).randn(z_dim) for s in np.ravel(seeds)])
