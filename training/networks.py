"""StyleGAN2 generator and discriminator (config-for-config equal to StyleGAN2-ADA), with the
SpatialGAN spatial encodings wired in (`training/spatial_encoding.py`).

Layout, from small to large:
    FullyConnectedLayer, Conv2dLayer          equalised-lr building blocks
    MappingNetwork                            z, c -> ws [N, num_ws, w_dim]
    modulated_conv2d                          the style-modulated convolution (fused / non-fused)
    SynthesisLayer, ToRGBLayer, SynthesisBlock, SynthesisNetwork, Generator
    DiscriminatorBlock, MinibatchStdLayer, DiscriminatorEpilogue, Discriminator

Equalised learning rate: every weight is stored N(0, 1) (FC weights divided by their lr multiplier)
and scaled at run time by 1/sqrt(fan_in) (times the lr multiplier), so Adam sees the same effective
step size for every layer. Mixed precision: the top `num_fp16_res` resolutions run in float16 on CUDA
only; on CPU, or with `force_fp32=True`, everything is float32.

Top-level networks (`MappingNetwork`, `SynthesisNetwork`, `Generator`, `Discriminator`) keep a
JSON-able deep copy of their constructor arguments in `self.init_kwargs`: `cls(**init_kwargs)` rebuilds
them (snapshots store nothing else about the architecture).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from torch_utils import misc
from torch_utils.ops import bias_act, conv2d_resample, fma, upfirdn2d
from training import spatial_encoding as se

__all__ = [
    "normalize_2nd_moment", "FullyConnectedLayer", "Conv2dLayer", "MappingNetwork", "modulated_conv2d",
    "SynthesisLayer", "ToRGBLayer", "SynthesisBlock", "SynthesisNetwork", "Generator",
    "DiscriminatorBlock", "MinibatchStdLayer", "DiscriminatorEpilogue", "Discriminator",
]

RESAMPLE_FILTER = [1, 3, 3, 1]
G_ARCHITECTURES = ("orig", "skip", "resnet")
D_ARCHITECTURES = ("orig", "skip", "resnet")
NOISE_MODES = ("random", "const", "none")


def _store_init_kwargs(module: nn.Module, **kwargs) -> None:
    """Keep a deep copy of the constructor arguments (JSON-able) for `cls(**init_kwargs)`."""
    module.init_kwargs = copy.deepcopy(kwargs)


def _channels_fn(channel_base: int, channel_max: int):
    return lambda res: min(channel_base // res, channel_max)


def _check_channels(channels, img_resolution: int, channel_base: int) -> None:
    if channels(img_resolution) < 1:
        raise ValueError(f"channel_base={channel_base} gives 0 channels at img_resolution={img_resolution}")


def _check_resolution(img_resolution) -> int:
    misc.check_power_of_two("img_resolution", img_resolution, minimum=4)
    return int(np.log2(img_resolution))


def _fp16_threshold(img_resolution: int, num_fp16_res: int) -> int:
    """Resolutions >= this run in float16 (on CUDA): the top `num_fp16_res` ones, never below 8."""
    return max(2 ** (int(np.log2(img_resolution)) + 1 - num_fp16_res), 8)


def _block_dtype(use_fp16: bool, device: torch.device, force_fp32: bool) -> torch.dtype:
    """float16 only where requested, on CUDA, and not forced off (CPU half convs are slow/unsupported)."""
    return torch.float16 if (use_fp16 and not force_fp32 and device.type == "cuda") else torch.float32


def _block_memory_format(channels_last: bool, force_fp32: bool) -> torch.memory_format:
    """channels_last for the fp16 blocks when asked (tensor cores read NHWC without transposes); kept
    on any device so that the layout change itself is testable on CPU, and off with `force_fp32`."""
    return torch.channels_last if (channels_last and not force_fp32) else torch.contiguous_format


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) along `dim` (puts z and label embeddings on the unit sphere * sqrt(d))."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


# ---------------------------------------------------------------------------------------------------
# Equalised-lr building blocks.


class FullyConnectedLayer(nn.Module):
    """y = act(x @ (W * lr_mul / sqrt(in)).T + b * lr_mul). x [N, in] -> [N, out]."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act.bias_act(x.matmul(w.t()), b, act=self.activation)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, activation={self.activation}"


class Conv2dLayer(nn.Module):
    """Equalised-lr conv with optional FIR up/down-sampling, bias, activation and clamp.

    x [N, in, H, W] -> [N, out, H*up/down, W*up/down]. `forward(x, gain)` multiplies the activation
    output (and the clamp) by `gain` (the resnet branches use sqrt(0.5)).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", up: int = 1, down: int = 1,
                 resample_filter: Sequence[int] = RESAMPLE_FILTER, conv_clamp: float | None = None):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.activation, self.up, self.down, self.conv_clamp = activation, up, down, conv_clamp
        self.register_buffer("resample_filter", upfirdn2d.setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.act_gain = bias_act.activation_funcs[activation].def_gain
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None

    def forward(self, x: torch.Tensor, gain: float = 1) -> torch.Tensor:
        w = (self.weight * self.weight_gain).to(x.dtype)
        flip_weight = self.up == 1  # Transposed convs want the mirrored kernel; identical in law.
        x = conv2d_resample.conv2d_resample(x, w, f=self.resample_filter, up=self.up, down=self.down,
                                            padding=self.padding, flip_weight=flip_weight)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        b = self.bias.to(x.dtype) if self.bias is not None else None
        return bias_act.bias_act(x, b, act=self.activation, gain=self.act_gain * gain, clamp=clamp)

    def extra_repr(self) -> str:
        return (f"in={self.in_channels}, out={self.out_channels}, k={self.kernel_size}, "
                f"activation={self.activation}, up={self.up}, down={self.down}")


# ---------------------------------------------------------------------------------------------------
# Mapping network.


class MappingNetwork(nn.Module):
    """z [N, z_dim], c [N, c_dim] -> ws [N, num_ws, w_dim] (or [N, w_dim] when num_ws is None).

    z and the label embedding are each normalised to unit second moment and concatenated; then
    `num_layers` FC layers with lr multiplier 0.01. `w_avg` tracks the mean w (beta 0.995) for the
    truncation trick `w_avg.lerp(w, psi)`. `heatmap_dim > 0` (the "flatten" ablation) appends a
    flattened heatmap vector to the normalised z; it must then be passed as `heatmap_vec`.
    """

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int | None, num_layers: int = 8,
                 embed_features: int | None = None, layer_features: int | None = None,
                 activation: str = "lrelu", lr_multiplier: float = 0.01, w_avg_beta: float | None = 0.995,
                 heatmap_dim: int = 0):
        super().__init__()
        _store_init_kwargs(self, z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=num_ws, num_layers=num_layers,
                           embed_features=embed_features, layer_features=layer_features,
                           activation=activation, lr_multiplier=lr_multiplier, w_avg_beta=w_avg_beta,
                           heatmap_dim=heatmap_dim)
        misc.check_positive_int("num_layers", num_layers)
        misc.check_choice("activation", activation, bias_act.activation_funcs)
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.num_layers, self.w_avg_beta, self.heatmap_dim = num_layers, w_avg_beta, heatmap_dim
        embed_features = w_dim if embed_features is None else embed_features
        embed_features = embed_features if c_dim > 0 else 0
        layer_features = w_dim if layer_features is None else layer_features
        features = [z_dim + heatmap_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(features[idx], features[idx + 1], activation=activation,
                                        lr_multiplier=lr_multiplier)
            setattr(self, f"fc{idx}", layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def _input(self, z, c, heatmap_vec) -> torch.Tensor:
        parts = []
        if self.z_dim > 0:
            misc.assert_shape(z, [None, self.z_dim], "z")
            parts.append(normalize_2nd_moment(z.to(torch.float32)))
        if self.heatmap_dim > 0:
            if heatmap_vec is None:
                raise ValueError("heatmap_vec is required: this mapping network encodes flattened heatmaps "
                                 f"(heatmap_dim={self.heatmap_dim})")
            misc.assert_shape(heatmap_vec, [None, self.heatmap_dim], "heatmap_vec")
            parts.append(heatmap_vec.to(torch.float32))
        if self.c_dim > 0:
            if c is None:
                raise ValueError(f"c is required: c_dim={self.c_dim}")
            misc.assert_shape(c, [None, self.c_dim], "c")
            parts.append(normalize_2nd_moment(self.embed(c.to(torch.float32))))
        if len({p.shape[0] for p in parts}) > 1:
            raise ValueError(f"z, c and heatmap_vec batch sizes differ: {[p.shape[0] for p in parts]}")
        return torch.cat(parts, dim=1)

    def forward(self, z: torch.Tensor | None, c: torch.Tensor | None, truncation_psi: float = 1,
                truncation_cutoff: int | None = None, update_emas: bool = False,
                heatmap_vec: torch.Tensor | None = None) -> torch.Tensor:
        x = self._input(z, c, heatmap_vec)
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if update_emas and self.w_avg_beta is not None and self.num_ws is not None:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is None:
            return x
        x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            if self.w_avg_beta is None:
                raise ValueError("truncation needs w_avg, but this mapping network has w_avg_beta=None")
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            head = self.w_avg.lerp(x[:, :cutoff], truncation_psi)
            x = torch.cat([head, x[:, cutoff:]], dim=1)
        return x

    def extra_repr(self) -> str:
        return (f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}, "
                f"heatmap_dim={self.heatmap_dim}")


# ---------------------------------------------------------------------------------------------------
# Modulated convolution.


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                     noise: torch.Tensor | None = None, up: int = 1, padding: int = 0,
                     resample_filter: torch.Tensor | None = None, demodulate: bool = True,
                     flip_weight: bool = True, fused_modconv: bool = True) -> torch.Tensor:
    """Convolve x [N, I, H, W] with weight [O, I, k, k] modulated per sample by styles [N, I].

    w'_{n,o,i} = W_{o,i} * s_{n,i}; with `demodulate`, output channel o of sample n is divided by
    sqrt(sum_{i,k} w'^2 + 1e-8). The fused path runs one grouped conv with per-sample weights; the
    non-fused path scales x by s, runs the shared conv and scales the output by the demod coefficient
    (cheaper for large batches in training). Both compute the same function. noise [N, 1, H', W'] is
    added after the conv. Returns [N, O, H*up, W*up].
    """
    batch = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    misc.assert_shape(styles, [batch, in_channels], "styles")
    if x.dtype == torch.float16 and demodulate:
        # Pre-scale so that intermediate products stay in fp16 range; demodulation undoes it.
        weight = weight * (1 / math.sqrt(in_channels * kh * kw)
                           / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)

    w = dcoefs = None
    if fused_modconv:
        w = weight.unsqueeze(0) * styles.reshape(batch, 1, -1, 1, 1)      # [N, O, I, k, k]
    if demodulate:
        # sum_{i,k} (W_oik s_ni)^2 = sum_i s_ni^2 sum_k W_oik^2: one [N, I] x [I, O] matmul instead of
        # materialising the [N, O, I, k, k] modulated weights (which the non-fused path never needs).
        dcoefs = (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()  # [N, O]

    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(batch, -1, 1, 1)
        x = conv2d_resample.conv2d_resample(x, weight.to(x.dtype), f=resample_filter, up=up,
                                            padding=padding, flip_weight=flip_weight)
        if demodulate and noise is not None:
            return fma.fma(x, dcoefs.to(x.dtype).reshape(batch, -1, 1, 1), noise.to(x.dtype))
        if demodulate:
            return x * dcoefs.to(x.dtype).reshape(batch, -1, 1, 1)
        return x + noise.to(x.dtype) if noise is not None else x

    if demodulate:
        w = w * dcoefs.reshape(batch, -1, 1, 1, 1)
    x = x.reshape(1, -1, *x.shape[2:])                                     # samples become groups
    w = w.reshape(-1, in_channels, kh, kw)
    x = conv2d_resample.conv2d_resample(x, w.to(x.dtype), f=resample_filter, up=up, padding=padding,
                                        groups=batch, flip_weight=flip_weight)
    x = x.reshape(batch, -1, *x.shape[2:])
    return x + noise.to(x.dtype) if noise is not None else x


# ---------------------------------------------------------------------------------------------------
# Synthesis network.


class SynthesisLayer(nn.Module):
    """[SEL] -> modulated 3x3 conv (optionally up=2) -> + noise -> bias + lrelu + clamp.

    x [N, in, r/up, r/up], w [N, w_dim] -> [N, out, r, r]. Optional SpatialGAN parts: `sel` (a
    SEL_norm/SEL_concat module applied to the *input* feature map) or `spatial_style=True`
    (SEL_indoor: the style becomes a per-pixel map built from per-object latents and heatmaps).
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int,
                 kernel_size: int = 3, up: int = 1, use_noise: bool = True, activation: str = "lrelu",
                 resample_filter: Sequence[int] = RESAMPLE_FILTER, conv_clamp: float | None = None,
                 sel: nn.Module | None = None, spatial_style: bool = False):
        super().__init__()
        self.in_channels, self.out_channels, self.resolution = in_channels, out_channels, resolution
        self.up, self.use_noise, self.activation, self.conv_clamp = up, use_noise, activation, conv_clamp
        self.spatial_style = spatial_style
        self.register_buffer("resample_filter", upfirdn2d.setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.act_gain = bias_act.activation_funcs[activation].def_gain
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.sel = sel

    def _noise(self, x: torch.Tensor, noise_mode: str) -> torch.Tensor | None:
        if not self.use_noise or noise_mode == "none":
            return None
        if noise_mode == "random":
            shape = [x.shape[0], 1, self.resolution, self.resolution]
            return torch.randn(shape, device=x.device, dtype=torch.float32) * self.noise_strength
        return self.noise_const * self.noise_strength

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random",
                fused_modconv: bool = True, gain: float = 1, heat: torch.Tensor | None = None,
                object_w: torch.Tensor | None = None) -> torch.Tensor:
        """heat: SEL input (sel) or per-object maps [N, K, r_in, r_in] (spatial_style);
        object_w: [N, K, w_dim] per-object latents (spatial_style)."""
        misc.assert_shape(x, [None, self.in_channels, self.resolution // self.up, self.resolution // self.up],
                          "x")
        if self.sel is not None:
            x = self.sel(x, heat)
        noise = self._noise(x, noise_mode)
        flip_weight = self.up == 1
        if self.spatial_style:
            styles = se.spatial_styles(self.affine, w, object_w, heat)
            x = se.spatially_modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up,
                                              padding=self.padding, resample_filter=self.resample_filter,
                                              flip_weight=flip_weight)
        else:
            x = modulated_conv2d(x, self.weight, self.affine(w), noise=noise, up=self.up, padding=self.padding,
                                 resample_filter=self.resample_filter, flip_weight=flip_weight,
                                 fused_modconv=fused_modconv)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act.bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=self.act_gain * gain,
                                 clamp=clamp)

    def extra_repr(self) -> str:
        return (f"in={self.in_channels}, out={self.out_channels}, resolution={self.resolution}, up={self.up}, "
                f"spatial_style={self.spatial_style}")


class ToRGBLayer(nn.Module):
    """[SEL] -> 1x1 modulated conv without demodulation (style * 1/sqrt(in)), bias, clamp.
    -> [N, img_channels, r, r]. A `sel` (conference code) changes only what this layer sees: the block's
    feature path continues without it."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1,
                 conv_clamp: float | None = None, spatial_style: bool = False, sel: nn.Module | None = None):
        super().__init__()
        self.in_channels, self.out_channels, self.conv_clamp = in_channels, out_channels, conv_clamp
        self.spatial_style = spatial_style
        self.sel = sel
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True,
                heat: torch.Tensor | None = None, object_w: torch.Tensor | None = None) -> torch.Tensor:
        if self.sel is not None:
            x = self.sel(x, heat)
        if self.spatial_style:
            styles = se.spatial_styles(self.affine, w, object_w, heat).scaled(self.weight_gain)
            x = se.spatially_modulated_conv2d(x, self.weight, styles, demodulate=False)
        else:
            styles = self.affine(w) * self.weight_gain
            x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused_modconv=fused_modconv)
        return bias_act.bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)

    def extra_repr(self) -> str:
        return f"in={self.in_channels}, out={self.out_channels}, spatial_style={self.spatial_style}"


class SynthesisBlock(nn.Module):
    """One resolution r: [const 4x4 | conv0 (up=2)] -> conv1 -> [ToRGB], with skip/resnet/orig wiring.

    forward(x [N, in, r/2, r/2] | None, img [N, C_img, r/2, r/2] | None, ws [N, num_conv + num_torgb, w_dim])
        -> (x [N, out, r, r], img [N, C_img, r, r] | None)
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 is_last: bool, architecture: str = "skip", resample_filter: Sequence[int] = RESAMPLE_FILTER,
                 conv_clamp: float | None = None, use_fp16: bool = False, fp16_channels_last: bool = False,
                 spatial: se.SpatialConfig | None = None, **layer_kwargs):
        super().__init__()
        misc.check_choice("architecture", architecture, G_ARCHITECTURES)
        self.in_channels, self.out_channels, self.w_dim = in_channels, out_channels, w_dim
        self.resolution, self.img_channels, self.is_last = resolution, img_channels, is_last
        self.architecture, self.use_fp16 = architecture, use_fp16
        self.channels_last = use_fp16 and fp16_channels_last
        self.encoded = spatial is not None and spatial.encodes(resolution)
        self.spatial_style = self.encoded and spatial.encoding == "sel_indoor"
        self.register_buffer("resample_filter", upfirdn2d.setup_filter(resample_filter))
        self.num_conv = self.num_torgb = 0

        def sel_for(channels: int):
            return se.build_sel(spatial, resolution, channels) if self.encoded else None

        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp,
                                        sel=sel_for(in_channels), spatial_style=self.spatial_style,
                                        **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp,
                                    sel=sel_for(out_channels), spatial_style=self.spatial_style, **layer_kwargs)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp,
                                    spatial_style=self.spatial_style,
                                    sel=sel_for(out_channels) if self.encoded and spatial.torgb else None)
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=2,
                                    resample_filter=resample_filter)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor,
                heat: se.HeatmapInputs | None = None, object_ws: torch.Tensor | None = None,
                force_fp32: bool = False, fused_modconv: bool | None = None, noise_mode: str = "random"):
        misc.assert_shape(ws, [None, self.num_conv + self.num_torgb, self.w_dim], "ws")
        w_iter = iter(ws.unbind(dim=1))
        o_iter = iter(object_ws.unbind(dim=2)) if (self.spatial_style and object_ws is not None) else None
        dtype = _block_dtype(self.use_fp16, ws.device, force_fp32)
        memory_format = _block_memory_format(self.channels_last, force_fp32)
        if fused_modconv is None:
            fused_modconv = (not self.training) and (dtype == torch.float32 or ws.shape[0] == 1)

        def run(layer, x, **kw):
            extra = {}
            if getattr(layer, "sel", None) is not None or layer.spatial_style:
                extra["heat"] = heat.get(self.resolution, x.shape[-1]) if heat is not None else None
            if o_iter is not None:
                extra["object_w"] = next(o_iter)
            return layer(x, next(w_iter), fused_modconv=fused_modconv, **extra, **kw)

        if self.in_channels == 0:
            x = self.const.to(dtype).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
            x = x.contiguous(memory_format=memory_format)
        else:
            misc.assert_shape(x, [None, self.in_channels, self.resolution // 2, self.resolution // 2], "x")
            x = x.to(dtype=dtype, memory_format=memory_format)

        if self.in_channels == 0:
            x = run(self.conv1, x, noise_mode=noise_mode)
        elif self.architecture == "resnet":
            y = self.skip(x, gain=np.sqrt(0.5))
            x = run(self.conv0, x, noise_mode=noise_mode)
            x = run(self.conv1, x, noise_mode=noise_mode, gain=np.sqrt(0.5))
            x = y + x
        else:
            x = run(self.conv0, x, noise_mode=noise_mode)
            x = run(self.conv1, x, noise_mode=noise_mode)

        if img is not None:
            misc.assert_shape(img, [None, self.img_channels, self.resolution // 2, self.resolution // 2], "img")
            img = upfirdn2d.upsample2d(img, self.resample_filter)
        if self.is_last or self.architecture == "skip":
            y = run(self.torgb, x).to(torch.float32)
            img = img + y if img is not None else y
        return x, img

    def extra_repr(self) -> str:
        return (f"resolution={self.resolution}, architecture={self.architecture}, use_fp16={self.use_fp16}, "
                f"channels_last={self.channels_last}, encoded={self.encoded}")


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] (+ heatmaps for SpatialGAN) -> img [N, img_channels, R, R] in ~[-1, 1].

    Blocks at 4, 8, ..., R; channels(r) = min(channel_base // r, channel_max). Consecutive blocks share
    one w: block r reads ws[idx : idx + num_conv + num_torgb] and advances idx by num_conv, so
    num_ws = 2 log2(R) - 2. `spatial` is the JSON-able dict of `spatial_encoding.SpatialConfig`
    (None = plain StyleGAN2); `layer_kwargs` go to every SynthesisLayer.
    """

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
                 channel_max: int = 512, num_fp16_res: int = 0, conv_clamp: float | None = None,
                 architecture: str = "skip", spatial: dict | None = None, **layer_kwargs):
        super().__init__()
        _store_init_kwargs(self, w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                           channel_base=channel_base, channel_max=channel_max, num_fp16_res=num_fp16_res,
                           conv_clamp=conv_clamp, architecture=architecture, spatial=spatial, **layer_kwargs)
        log2 = _check_resolution(img_resolution)
        misc.check_choice("architecture", architecture, G_ARCHITECTURES)
        misc.check_positive_int("img_channels", img_channels)
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.architecture = architecture
        self.block_resolutions = [2**i for i in range(2, log2 + 1)]
        self.spatial = se.SpatialConfig.from_dict(spatial, img_resolution) if spatial is not None else None
        if self.spatial is not None and self.spatial.encoding == "flatten":
            raise ValueError("encoding='flatten' lives in the mapping network; pass spatial=None to synthesis")
        channels = _channels_fn(channel_base, channel_max)
        _check_channels(channels, img_resolution, channel_base)
        fp16_resolution = _fp16_threshold(img_resolution, num_fp16_res)
        self.num_ws = 0
        for res in self.block_resolutions:
            block = SynthesisBlock(channels(res // 2) if res > 4 else 0, channels(res), w_dim, res, img_channels,
                                   is_last=res == img_resolution, architecture=architecture,
                                   conv_clamp=conv_clamp, use_fp16=res >= fp16_resolution,
                                   spatial=self.spatial, **layer_kwargs)
            self.num_ws += block.num_conv + (block.num_torgb if res == img_resolution else 0)
            setattr(self, f"b{res}", block)
        if self.spatial is not None:
            self.heatmap_encoder = se.HeatmapEncoder(self.spatial)

    def forward(self, ws: torch.Tensor, heatmaps=None, object_ws: torch.Tensor | None = None,
                noise_mode: str = "random", force_fp32: bool = False, return_features: bool = False,
                fused_modconv: bool | None = None):
        """heatmaps: a HeatmapSpec (required when spatial, ignored otherwise);
        object_ws: [N, K, num_ws, w_dim] per-object latents (sel_indoor only).
        Returns img, or (img, {res: block output [N, C, res, res]}) with `return_features`."""
        misc.check_choice("noise_mode", noise_mode, NOISE_MODES)
        if not isinstance(ws, torch.Tensor):
            raise TypeError(f"ws must be a tensor, got {type(ws).__name__}")
        misc.assert_shape(ws, [None, self.num_ws, self.w_dim], "ws")
        heat = self._heatmap_inputs(ws, heatmaps, object_ws)
        ws = ws.to(torch.float32)
        x = img = None
        features = {}
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            count = block.num_conv + block.num_torgb
            block_obj = object_ws.narrow(2, w_idx, count) if object_ws is not None else None
            x, img = block(x, img, ws.narrow(1, w_idx, count), heat=heat, object_ws=block_obj,
                           force_fp32=force_fp32, fused_modconv=fused_modconv, noise_mode=noise_mode)
            features[res] = x
            w_idx += block.num_conv
        return (img, features) if return_features else img

    def _heatmap_inputs(self, ws, heatmaps, object_ws) -> se.HeatmapInputs | None:
        if self.spatial is None:
            return None
        if heatmaps is None:
            raise ValueError("heatmaps (a HeatmapSpec) are required by this spatially encoded synthesis network")
        if not isinstance(heatmaps, se.hm.HeatmapSpec):
            raise TypeError(f"heatmaps must be a HeatmapSpec, got {type(heatmaps).__name__}")
        if heatmaps.batch_size != ws.shape[0]:
            raise ValueError(f"heatmaps has batch size {heatmaps.batch_size}, ws has {ws.shape[0]}")
        if self.spatial.encoding == "sel_indoor":
            if object_ws is None:
                raise ValueError("object_ws [N, K, num_ws, w_dim] is required for encoding='sel_indoor' "
                                 "(see Generator.object_ws)")
            misc.assert_shape(object_ws, [ws.shape[0], self.spatial.num_objects, self.num_ws, self.w_dim],
                              "object_ws")
        return self.heatmap_encoder(heatmaps)

    def noise_buffers(self) -> dict[str, torch.Tensor]:
        """The constant noise maps used by `noise_mode='const'`: {layer name: [r, r]}, one per synthesis
        layer, shared by every sample (not per sample). These are the module's own buffers: changing
        or optimising them (a projector) changes this network; work on a copy to keep the original."""
        return {name[: -len(".noise_const")]: buf for name, buf in self.named_buffers()
                if name.endswith(".noise_const")}

    def extra_repr(self) -> str:
        return (f"w_dim={self.w_dim}, num_ws={self.num_ws}, img_resolution={self.img_resolution}, "
                f"img_channels={self.img_channels}, architecture={self.architecture}")


class Generator(nn.Module):
    """z [N, z_dim], c [N, c_dim] (+ HeatmapSpec) -> img [N, img_channels, R, R].

    `spatial_kwargs=None` is the plain StyleGAN2 generator; otherwise see `spatial_encoding` for the
    keys (encoding, sampler, sampler_kwargs, resolutions, processing, compose, kernel_size, dilation,
    hidden_channels, level_for_resolution).
    """

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, img_resolution: int, img_channels: int,
                 mapping_kwargs: dict | None = None, synthesis_kwargs: dict | None = None,
                 spatial_kwargs: dict | None = None):
        super().__init__()
        mapping_kwargs, synthesis_kwargs = dict(mapping_kwargs or {}), dict(synthesis_kwargs or {})
        _store_init_kwargs(self, z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution,
                           img_channels=img_channels, mapping_kwargs=mapping_kwargs,
                           synthesis_kwargs=synthesis_kwargs, spatial_kwargs=spatial_kwargs)
        for name, v in (("z_dim", z_dim), ("w_dim", w_dim)):
            misc.check_positive_int(name, v)
        misc.check_positive_int("c_dim", c_dim, allow_zero=True)
        _check_resolution(img_resolution)
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.spatial, self.heatmap_sampler = None, None
        if spatial_kwargs is not None:
            self.heatmap_sampler, self.spatial = se.build_spatial(spatial_kwargs, img_resolution)
        encoding = self.spatial.encoding if self.spatial is not None else None
        synth_spatial = self.spatial.to_dict() if encoding not in (None, "flatten") else None
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                          spatial=synth_spatial, **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        heatmap_dim = self.spatial.flatten_dim() if encoding == "flatten" else 0
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws,
                                      heatmap_dim=heatmap_dim, **mapping_kwargs)

    @property
    def encoding(self) -> str | None:
        return self.spatial.encoding if self.spatial is not None else None

    def heatmap_vec(self, spec) -> torch.Tensor | None:
        """Flattened heatmap levels [N, heatmap_dim] for encoding='flatten' (else None)."""
        return se.flatten_heatmaps(spec, self.spatial) if self.encoding == "flatten" else None

    def style_z(self, spec) -> torch.Tensor | None:
        """Per-object z [N, K, z_dim] on the spec's device from `spec.style_seeds` (None unless sel_indoor).

        z_i = np.random.RandomState(seed).randn(z_dim), the generate.py convention, so an object's
        appearance is reproducible from its seed. Drawn on the host: the training loop does it before a
        phase (which then holds GPU work only)."""
        if self.encoding != "sel_indoor":
            return None
        if spec.style_seeds is None:
            raise ValueError("spec.style_seeds is None, but encoding='sel_indoor' needs one seed per object")
        seeds = spec.style_seeds.detach().cpu().numpy()
        z = torch.from_numpy(se.seeds_to_z(seeds, self.z_dim)).to(torch.float32).reshape(*seeds.shape, self.z_dim)
        return misc.to_device(z, spec.device)

    def object_ws(self, spec, c: torch.Tensor | None = None, truncation_psi: float = 1,
                  truncation_cutoff: int | None = None, style_z: torch.Tensor | None = None) -> torch.Tensor | None:
        """Per-object latents [N, K, num_ws, w_dim] (None unless sel_indoor): `style_z` [N, K, z_dim]
        (default: `self.style_z(spec)`) mapped with each sample's label c."""
        if self.encoding != "sel_indoor":
            return None
        z = self.style_z(spec) if style_z is None else style_z
        n, k = z.shape[:2]
        c_rep = c.to(z.device).repeat_interleave(k, dim=0) if (c is not None and self.c_dim > 0) else None
        ws = self.mapping(z.reshape(n * k, self.z_dim), c_rep, truncation_psi=truncation_psi,
                          truncation_cutoff=truncation_cutoff)
        return ws.reshape(n, k, self.num_ws, self.w_dim)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None, heatmaps=None, truncation_psi: float = 1,
                truncation_cutoff: int | None = None, noise_mode: str = "random",
                generator: torch.Generator | int | None = None, update_emas: bool = False,
                **synthesis_kwargs) -> torch.Tensor:
        """heatmaps=None on a spatial G draws a spec from `heatmap_sampler` with `generator`."""
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"z must be a tensor [N, {self.z_dim}], got {type(z).__name__}")
        misc.assert_shape(z, [None, self.z_dim], "z")
        if self.heatmap_sampler is not None and heatmaps is None:
            heatmaps = self.heatmap_sampler(z.shape[0], generator=generator, device=z.device)
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas, heatmap_vec=self.heatmap_vec(heatmaps))
        object_ws = self.object_ws(heatmaps, c, truncation_psi, truncation_cutoff)
        return self.synthesis(ws, heatmaps=heatmaps, object_ws=object_ws, noise_mode=noise_mode,
                              **synthesis_kwargs)

    def extra_repr(self) -> str:
        return (f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}, "
                f"img_resolution={self.img_resolution}, encoding={self.encoding}")


# ---------------------------------------------------------------------------------------------------
# Discriminator.


class DiscriminatorBlock(nn.Module):
    """Resolution r: [fromRGB] -> conv0 3x3 -> conv1 3x3 down=2 (+ resnet 1x1 down=2 skip, both * sqrt(.5)).

    forward(x [N, in, r, r] | None, img [N, C_img, r, r] | None) -> (x [N, out, r/2, r/2], img | None)
    """

    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, resolution: int,
                 img_channels: int, architecture: str = "resnet", activation: str = "lrelu",
                 resample_filter: Sequence[int] = RESAMPLE_FILTER, conv_clamp: float | None = None,
                 use_fp16: bool = False, fp16_channels_last: bool = False):
        super().__init__()
        self.in_channels, self.resolution, self.img_channels = in_channels, resolution, img_channels
        self.architecture, self.use_fp16 = architecture, use_fp16
        self.channels_last = use_fp16 and fp16_channels_last
        self.register_buffer("resample_filter", upfirdn2d.setup_filter(resample_filter))
        conv = dict(activation=activation, conv_clamp=conv_clamp, resample_filter=resample_filter)
        if in_channels == 0 or architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, kernel_size=1, **conv)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, kernel_size=3, **conv)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, kernel_size=3, down=2, **conv)
        if architecture == "resnet":
            self.skip = Conv2dLayer(tmp_channels, out_channels, kernel_size=1, bias=False, down=2,
                                    resample_filter=resample_filter)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, force_fp32: bool = False):
        device = (x if x is not None else img).device
        dtype = _block_dtype(self.use_fp16, device, force_fp32)
        memory_format = _block_memory_format(self.channels_last, force_fp32)
        if x is not None:
            misc.assert_shape(x, [None, self.in_channels, self.resolution, self.resolution], "x")
            x = x.to(dtype=dtype, memory_format=memory_format)
        if self.in_channels == 0 or self.architecture == "skip":
            misc.assert_shape(img, [None, self.img_channels, self.resolution, self.resolution], "img")
            y = self.fromrgb(img.to(dtype=dtype, memory_format=memory_format))
            x = x + y if x is not None else y
            img = upfirdn2d.downsample2d(img, self.resample_filter) if self.architecture == "skip" else None
        if self.architecture == "resnet":
            y = self.skip(x, gain=np.sqrt(0.5))
            x = self.conv0(x)
            x = y + self.conv1(x, gain=np.sqrt(0.5))
        else:
            x = self.conv1(self.conv0(x))
        return x, img

    def extra_repr(self) -> str:
        return (f"resolution={self.resolution}, architecture={self.architecture}, use_fp16={self.use_fp16}, "
                f"channels_last={self.channels_last}")


class MinibatchStdLayer(nn.Module):
    """Append `num_channels` maps holding the std over groups of `group_size` samples. [N,C,H,W] -> [N,C+F,H,W]."""

    def __init__(self, group_size: int | None, num_channels: int = 1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n) if self.group_size is not None else n
        f = self.num_channels
        if n % g:
            raise ValueError(f"batch size {n} must be divisible by the minibatch-std group size {g}")
        if c % f:
            raise ValueError(f"channels {c} must be divisible by mbstd_num_channels={f}")
        y = x.reshape(g, -1, f, c // f, h, w)          # [G, M, F, c, H, W]: sample n = g * M + m
        y = y - y.mean(dim=0)
        y = (y.square().mean(dim=0) + 1e-8).sqrt()     # [M, F, c, H, W]
        y = y.mean(dim=[2, 3, 4]).reshape(-1, f, 1, 1)  # [M, F, 1, 1]
        y = y.repeat(g, 1, h, w)                        # [N, F, H, W]
        return torch.cat([x, y], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"


class DiscriminatorEpilogue(nn.Module):
    """4x4 head (always fp32): [fromRGB] -> mbstd -> conv 3x3 -> FC -> FC to 1 (or cmap_dim, projected)."""

    def __init__(self, in_channels: int, cmap_dim: int, resolution: int, img_channels: int,
                 architecture: str = "resnet", mbstd_group_size: int | None = 4, mbstd_num_channels: int = 1,
                 activation: str = "lrelu", conv_clamp: float | None = None):
        super().__init__()
        self.in_channels, self.cmap_dim, self.resolution = in_channels, cmap_dim, resolution
        self.img_channels, self.architecture = img_channels, architecture
        if architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, in_channels, kernel_size=1, activation=activation)
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, kernel_size=3,
                                activation=activation, conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution**2, in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x: torch.Tensor, img: torch.Tensor | None, cmap: torch.Tensor | None) -> torch.Tensor:
        misc.assert_shape(x, [None, self.in_channels, self.resolution, self.resolution], "x")
        x = x.to(torch.float32)
        if self.architecture == "skip":
            x = x + self.fromrgb(img.to(torch.float32))
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.out(self.fc(x.flatten(1)))
        if self.cmap_dim > 0:
            # Projection discriminator: score = <features, embedding(c)> / sqrt(cmap_dim).
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))
        return x

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, cmap_dim={self.cmap_dim}, architecture={self.architecture}"


def num_block_layers(img_resolution: int, architecture: str) -> int:
    """Layers of D's blocks (fromRGB where there is one, conv0, conv1, the resnet skip): the most that
    Freeze-D can freeze (the epilogue always trains)."""
    blocks = int(np.log2(img_resolution)) - 2
    per_block = 2 + (architecture == "resnet")
    return blocks * per_block + (blocks if architecture == "skip" else 1)


class Discriminator(nn.Module):
    """img [N, C, R, R] in [-1, 1], c [N, c_dim] -> logits [N, 1].

    Blocks from R down to 8 (block r: channels(r) -> channels(r/2)), then the 4x4 epilogue. With
    `return_features=True` also returns {spatial size: block output} (keys R/2, ..., 4; key 4 is the
    epilogue input): the live graph tensors, so `torch.autograd.grad(score, feats[...])` works (GradCAM).
    `freeze_layers` (Freeze-D): the first that many block layers from the input side (`block_layers()`)
    never require grad, whatever `requires_grad_` is asked; they still pass gradients to their inputs.
    """

    def __init__(self, c_dim: int, img_resolution: int, img_channels: int, architecture: str = "resnet",
                 channel_base: int = 32768, channel_max: int = 512, num_fp16_res: int = 0,
                 conv_clamp: float | None = None, cmap_dim: int | None = None, block_kwargs: dict | None = None,
                 mapping_kwargs: dict | None = None, epilogue_kwargs: dict | None = None, freeze_layers: int = 0):
        super().__init__()
        block_kwargs, mapping_kwargs = dict(block_kwargs or {}), dict(mapping_kwargs or {})
        epilogue_kwargs = dict(epilogue_kwargs or {"mbstd_group_size": 4, "mbstd_num_channels": 1})
        _store_init_kwargs(self, c_dim=c_dim, img_resolution=img_resolution, img_channels=img_channels,
                           architecture=architecture, channel_base=channel_base, channel_max=channel_max,
                           num_fp16_res=num_fp16_res, conv_clamp=conv_clamp, cmap_dim=cmap_dim,
                           block_kwargs=block_kwargs, mapping_kwargs=mapping_kwargs,
                           epilogue_kwargs=epilogue_kwargs, freeze_layers=freeze_layers)
        misc.check_power_of_two("img_resolution", img_resolution, minimum=8)  # D needs at least one block
        log2 = _check_resolution(img_resolution)
        misc.check_choice("architecture", architecture, D_ARCHITECTURES)
        misc.check_positive_int("freeze_layers", freeze_layers, allow_zero=True)
        if freeze_layers > num_block_layers(img_resolution, architecture):
            raise ValueError(f"freeze_layers={freeze_layers}, but a {architecture} D at {img_resolution}² has only "
                             f"{num_block_layers(img_resolution, architecture)} block layers")
        self.freeze_layers = freeze_layers
        misc.check_positive_int("c_dim", c_dim, allow_zero=True)
        misc.check_positive_int("img_channels", img_channels)
        self.c_dim, self.img_resolution, self.img_channels = c_dim, img_resolution, img_channels
        self.block_resolutions = [2**i for i in range(log2, 2, -1)]
        channels = _channels_fn(channel_base, channel_max)
        _check_channels(channels, img_resolution, channel_base)
        cmap_dim = (channels(4) if cmap_dim is None else cmap_dim) if c_dim > 0 else 0
        self.cmap_dim = cmap_dim
        fp16_resolution = _fp16_threshold(img_resolution, num_fp16_res)
        for res in self.block_resolutions:
            block = DiscriminatorBlock(channels(res) if res < img_resolution else 0, channels(res),
                                       channels(res // 2), res, img_channels, architecture=architecture,
                                       conv_clamp=conv_clamp, use_fp16=res >= fp16_resolution, **block_kwargs)
            setattr(self, f"b{res}", block)
        if c_dim > 0:
            self.mapping = MappingNetwork(z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None,
                                          **mapping_kwargs)
        self.b4 = DiscriminatorEpilogue(channels(4), cmap_dim=cmap_dim, resolution=4, img_channels=img_channels,
                                        architecture=architecture, conv_clamp=conv_clamp, **epilogue_kwargs)
        assert len(self.block_layers()) == num_block_layers(img_resolution, architecture)
        self.requires_grad_(True)  # applies Freeze-D

    def block_layers(self) -> list[nn.Module]:
        """The blocks' layers from the input side: per block fromRGB (if any), conv0, conv1, skip (if any)."""
        names = ("fromrgb", "conv0", "conv1", "skip")
        return [getattr(block, n) for block in (getattr(self, f"b{r}") for r in self.block_resolutions)
                for n in names if hasattr(block, n)]

    def requires_grad_(self, requires_grad: bool = True) -> "Discriminator":
        """nn.Module's, except that the Freeze-D layers stay frozen (the training loop switches D on and
        off per phase, and must never switch them on)."""
        super().requires_grad_(requires_grad)
        for layer in self.block_layers()[:self.freeze_layers]:
            layer.requires_grad_(False)
        return self

    def forward(self, img: torch.Tensor, c: torch.Tensor | None, return_features: bool = False,
                update_emas: bool = False, force_fp32: bool = False):
        if not isinstance(img, torch.Tensor):
            raise TypeError(f"img must be a tensor, got {type(img).__name__}")
        misc.assert_shape(img, [None, self.img_channels, self.img_resolution, self.img_resolution], "img")
        x = None
        features = {}
        for res in self.block_resolutions:
            x, img = getattr(self, f"b{res}")(x, img, force_fp32=force_fp32)
            features[res // 2] = x
        cmap = None
        if self.c_dim > 0:
            if c is None:
                raise ValueError(f"c is required: c_dim={self.c_dim}")
            misc.assert_shape(c, [x.shape[0], self.c_dim], "c")
            cmap = self.mapping(None, c)
        x = self.b4(x, img, cmap)
        return (x, features) if return_features else x

    def extra_repr(self) -> str:
        return f"c_dim={self.c_dim}, img_resolution={self.img_resolution}, img_channels={self.img_channels}"
