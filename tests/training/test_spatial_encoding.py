"""Tests for training/spatial_encoding.py and its wiring into the generator (CPU, tiny sizes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from torch_utils.misc import count_params
from training import heatmaps as hm
from training import networks as nets
from training import spatial_encoding as se

SMALL = dict(channel_base=128, channel_max=16)  # channels: 4-8 -> 16, 16 -> 8, 32 -> 4


def tiny_G(res=16, spatial_kwargs=None, **synthesis_kwargs):
    return nets.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=res, img_channels=3,
                          mapping_kwargs=dict(num_layers=2), synthesis_kwargs={**SMALL, **synthesis_kwargs},
                          spatial_kwargs=spatial_kwargs)


VARIANTS = [
    dict(encoding="sel_norm"),
    dict(encoding="sel_norm", processing="fine", resolutions="all", compose="separate"),
    dict(encoding="sel_norm", processing="fine", resolutions="all", compose="separate", torgb=True),
    dict(encoding="sel_concat"),
    dict(encoding="sel_indoor"),
    dict(encoding="flatten"),
]
IDS = ["norm-coarse", "norm-fine-all", "conference", "concat", "indoor", "flatten"]


def _perturbed(spec: hm.HeatmapSpec, dx: float = 0.3) -> hm.HeatmapSpec:
    moved = spec.clone()
    moved.centers = [c + dx for c in moved.centers]
    return moved


# ---------------------------------------------------------------------------------------------------
# Baseline untouched.


def test_baseline_has_no_extra_parameters():
    G = tiny_G(16)
    assert G.heatmap_sampler is None and G.spatial is None and G.encoding is None
    assert not any("sel" in n or "heatmap" in n for n, _ in G.named_parameters())
    torch.manual_seed(0)
    G_spatial = tiny_G(16, dict(encoding="sel_norm"))
    assert count_params(G_spatial) > count_params(G)
    torch.manual_seed(0)
    G_indoor = tiny_G(16, dict(encoding="sel_indoor"))
    assert count_params(G_indoor) == count_params(G)   # Eq. 3 reuses the affine layers


# ---------------------------------------------------------------------------------------------------
# Every variant: shapes, no unused parameters, heatmap sensitivity, reversibility.


@pytest.mark.parametrize("spatial_kwargs", VARIANTS, ids=IDS)
@pytest.mark.parametrize("res", [16, 32])
def test_variant_shapes_and_all_parameters_used(spatial_kwargs, res):
    torch.manual_seed(0)
    G = tiny_G(res, spatial_kwargs)
    img = G(torch.randn(2, 8), None, generator=1)
    assert img.shape == (2, 3, res, res) and torch.isfinite(img).all()
    img.square().mean().backward()
    unused = [n for n, p in G.named_parameters() if p.grad is None]
    assert unused == []   # DDP then needs no find_unused_parameters


@pytest.mark.parametrize("spatial_kwargs", VARIANTS, ids=IDS)
def test_heatmap_changes_output_and_restores_exactly(spatial_kwargs):
    torch.manual_seed(0)
    G = tiny_G(16, spatial_kwargs).eval()
    z = torch.randn(2, 8)
    spec = G.heatmap_sampler(2, generator=3)
    with torch.no_grad():
        a = G(z, None, heatmaps=spec, noise_mode="const")
        b = G(z, None, heatmaps=_perturbed(spec), noise_mode="const")
        again = G(z, None, heatmaps=spec, noise_mode="const")
    assert (a - b).abs().max() > 1e-4
    assert torch.equal(a, again)


@pytest.mark.parametrize("spatial_kwargs", VARIANTS, ids=IDS)
def test_gradients_reach_heatmap_centers(spatial_kwargs):
    torch.manual_seed(0)
    G = tiny_G(16, spatial_kwargs)
    spec = G.heatmap_sampler(2, generator=5)
    for c in spec.centers:
        c.requires_grad_(True)
    img = G(torch.randn(2, 8), None, heatmaps=spec, noise_mode="const")
    img.square().sum().backward()
    grads = [c.grad for c in spec.centers]
    assert all(g is not None for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_sampler_draw_is_seeded_by_generator():
    G = tiny_G(16, dict(encoding="sel_norm")).eval()
    z = torch.randn(2, 8)
    with torch.no_grad():
        a = G(z, None, noise_mode="const", generator=torch.Generator().manual_seed(7))
        b = G(z, None, noise_mode="const", generator=torch.Generator().manual_seed(7))
        c = G(z, None, noise_mode="const", generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.allclose(a, c)


# ---------------------------------------------------------------------------------------------------
# Layout: routing, placement, processing.


def test_default_level_routing():
    _, cfg = se.build_spatial(dict(encoding="sel_norm", resolutions="all"), 64)
    assert [cfg.levels(r) for r in (4, 8, 16, 32, 64)] == [[0], [1], [2], [0, 1, 2], [0, 1, 2]]
    assert [cfg.heat_channels(r) for r in (4, 32)] == [1, 3]
    _, sep = se.build_spatial(dict(encoding="sel_norm", compose="separate", resolutions="all"), 64)
    assert [sep.heat_channels(r) for r in (4, 8, 16, 32)] == [1, 2, 4, 7]
    _, indoor = se.build_spatial(dict(encoding="sel_indoor"), 64)
    assert all(indoor.levels(r) == [0] for r in (4, 8, 64)) and indoor.num_objects == 3
    _, custom = se.build_spatial(dict(encoding="sel_norm", level_for_resolution={"8": 0, 16: "all"}), 64)
    assert custom.levels(8) == [0] and custom.levels(16) == [0, 1, 2]


def test_sel_placement_paper_default():
    G = tiny_G(32, dict(encoding="sel_norm"))
    syn = G.synthesis
    assert syn.b4.conv1.sel is not None and not hasattr(syn.b4, "conv0")
    for res in (8, 16):
        block = getattr(syn, f"b{res}")
        assert block.conv0.sel.channels == block.in_channels     # conv0 sees the block input
        assert block.conv1.sel.channels == block.out_channels
    assert syn.b32.conv0.sel is None and syn.b32.conv1.sel is None   # paper: levels 0-2 only
    assert G.spatial.processing == "coarse" and len(syn.heatmap_encoder.fine) == 0


def test_fine_processing_builds_level_convs_and_differs_from_coarse():
    torch.manual_seed(0)
    G_fine = tiny_G(16, dict(encoding="sel_norm", processing="fine"))
    assert sorted(G_fine.synthesis.heatmap_encoder.fine.keys()) == ["level0", "level1", "level2"]
    assert G_fine.synthesis.b8.conv1.sel.heat_channels == 32
    torch.manual_seed(0)
    G_coarse = tiny_G(16, dict(encoding="sel_norm"))
    assert G_coarse.synthesis.b8.conv1.sel.heat_channels == 1
    spec = G_fine.heatmap_sampler(2, generator=0)
    heat = G_fine.synthesis.heatmap_encoder(spec)
    assert heat.get(16, 8).shape == (2, 32, 8, 8)     # block 16, conv0 at 8 px
    coarse = G_coarse.synthesis.heatmap_encoder(spec).get(16, 8)
    torch.testing.assert_close(coarse, hm.compose(hm.render(spec, 8, 2), "sum"))


def test_fine_processing_kernel_size_and_dilation_reach_the_image_resolution_convs():
    """Paper §4.3 enlarges the receptive field of the convs that see the full-size heatmap
    (fine_kernel_size / fine_dilation); kernel_size / dilation are the SEL's first conv, as before."""
    G = tiny_G(16, dict(encoding="sel_norm", processing="fine", kernel_size=5, dilation=3, fine_kernel_size=7,
                        fine_dilation=2))
    for conv in G.synthesis.heatmap_encoder.fine["level1"]:
        assert (conv.kernel_size, conv.dilation, conv.weight.shape[-1]) == (7, 2, 7)
    assert (G.synthesis.b8.conv1.sel.shared.kernel_size, G.synthesis.b8.conv1.sel.shared.dilation) == (5, 3)
    heat = G.synthesis.heatmap_encoder(G.heatmap_sampler(2, generator=0))
    assert heat.get(16, 16).shape == (2, 32, 16, 16)   # 'same' padding keeps the image size
    older = tiny_G(16, dict(encoding="sel_norm", processing="fine", kernel_size=7, dilation=2))  # no fine_* keys
    assert all((conv.kernel_size, conv.dilation) == (3, 1) for conv in older.synthesis.heatmap_encoder.fine["level1"])
    with pytest.raises(ValueError, match="fine_kernel_size must be odd, got 4"):
        tiny_G(16, dict(encoding="sel_norm", processing="fine", fine_kernel_size=4))


def test_torgb_sel_feeds_only_the_rgb_branch():
    """Conference code: a SEL on every ToRGB input too, whose output reaches the image but not the
    block's feature path (x is what the next block sees)."""
    kwargs = dict(encoding="sel_norm", processing="fine", resolutions="all", compose="separate")
    torch.manual_seed(0)
    plain = tiny_G(16, kwargs).eval()
    torch.manual_seed(0)
    conf = tiny_G(16, dict(kwargs, torgb=True)).eval()
    syn = conf.synthesis
    assert all(getattr(syn, f"b{r}").torgb.sel is not None for r in syn.block_resolutions)
    assert plain.synthesis.b8.torgb.sel is None
    missing, unexpected = conf.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and missing and all(".torgb.sel." in name for name in missing)
    with torch.no_grad():
        for name, p in conf.named_parameters():
            if name.endswith("torgb.sel.out.weight"):
                p.mul_(5)  # make the (small) residual visible in the image
    spec = conf.heatmap_sampler(2, generator=0)
    for res in (4, 8):
        blocks = getattr(plain.synthesis, f"b{res}"), getattr(syn, f"b{res}")
        heats = [g.synthesis.heatmap_encoder(spec) for g in (plain, conf)]
        x_in = None if res == 4 else torch.randn(2, blocks[0].in_channels, res // 2, res // 2)
        img_in = None if res == 4 else torch.randn(2, 3, res // 2, res // 2)
        w = torch.randn(2, blocks[0].num_conv + blocks[0].num_torgb, 8)
        with torch.no_grad():
            (x_a, img_a), (x_b, img_b) = [b(x_in, img_in, w, heat=h, noise_mode="const")
                                          for b, h in zip(blocks, heats)]
        torch.testing.assert_close(x_a, x_b, rtol=0, atol=0)
        assert (img_a - img_b).abs().max() > 1e-4


def test_torgb_sel_only_with_a_sel_encoding():
    with pytest.raises(ValueError, match="torgb=True"):
        tiny_G(16, dict(encoding="sel_indoor", torgb=True))
    with pytest.raises(ValueError, match="torgb must be true or false"):
        tiny_G(16, dict(encoding="sel_norm", torgb="yes"))


def test_sel_norm_is_identity_plus_small_residual():
    torch.manual_seed(0)
    sel = se.SELNorm(channels=4, heat_channels=1, hidden_channels=8)
    x, h = torch.randn(2, 4, 8, 8), torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        sel.out.weight.zero_()
    torch.testing.assert_close(sel(x, h), x)          # residual branch off -> identity
    with torch.no_grad():
        sel.out.weight.normal_()
    y = sel(x, h)
    assert not torch.allclose(y, x)
    assert (y - x).abs().max() < 0.1 * 20                # scaled by the 0.1 residual gain
    with pytest.raises(ValueError, match="heatmap"):
        sel(x, torch.rand(2, 2, 8, 8))


def test_sel_concat_formula():
    torch.manual_seed(0)
    sel = se.SELConcat(channels=4, heat_channels=2, kernel_size=3, dilation=2)
    x, h = torch.randn(1, 4, 8, 8), torch.rand(1, 2, 8, 8)
    w = sel.conv.weight * sel.conv.weight_gain
    expected = x + torch.nn.functional.conv2d(torch.cat([x, h], 1), w, sel.conv.bias, padding=2, dilation=2)
    torch.testing.assert_close(sel(x, h), expected)


# ---------------------------------------------------------------------------------------------------
# SEL_indoor.


@pytest.mark.parametrize("up", [1, 2])
def test_indoor_layer_reduces_to_plain_layer_for_constant_style(up):
    torch.manual_seed(0)
    kw = dict(in_channels=4, out_channels=5, w_dim=6, resolution=8, up=up)
    plain = nets.SynthesisLayer(**kw)
    spatial = nets.SynthesisLayer(**kw, spatial_style=True)
    spatial.load_state_dict(plain.state_dict())
    with torch.no_grad():
        plain.noise_strength.fill_(0.3)
        spatial.noise_strength.fill_(0.3)
    x, w, obj_w = torch.randn(2, 4, 8 // up, 8 // up), torch.randn(2, 6), torch.randn(2, 3, 6)
    # Dead objects (all-zero maps): exactly the background style.
    dead = torch.zeros(2, 3, 8 // up, 8 // up)
    ref = plain(x, w, noise_mode="const", fused_modconv=True)
    torch.testing.assert_close(spatial(x, w, noise_mode="const", heat=dead, object_w=obj_w), ref,
                               atol=1e-5, rtol=1e-5)
    # Spatially constant maps: the plain layer with style s_bg + sum_i c_i s_i.
    maps = torch.tensor([0.2, 0.5, 0.9]).reshape(1, 3, 1, 1).expand(2, 3, 8 // up, 8 // up)
    styles = plain.affine(w) + (plain.affine(obj_w.reshape(6, 6)).reshape(2, 3, 4) * maps[:, :, :1, 0]).sum(1)
    f = plain.resample_filter
    expected = nets.modulated_conv2d(x, plain.weight, styles, noise=plain.noise_const * 0.3, up=up, padding=1,
                                     resample_filter=f, flip_weight=up == 1)
    expected = nets.bias_act.bias_act(expected, plain.bias, act="lrelu", clamp=None)
    torch.testing.assert_close(spatial(x, w, noise_mode="const", heat=maps, object_w=obj_w), expected,
                               atol=1e-5, rtol=1e-5)


def test_indoor_style_map_follows_the_heatmap():
    torch.manual_seed(0)
    affine = nets.FullyConnectedLayer(6, 4, bias_init=1)
    w, obj_w = torch.randn(1, 6), torch.randn(1, 2, 6)
    maps = torch.zeros(1, 2, 4, 4)
    maps[0, 0, 0, 0] = 1.0
    s = se.spatial_styles(affine, w, obj_w, maps).dense()
    assert s.shape == (1, 4, 4, 4)
    torch.testing.assert_close(s[0, :, 3, 3], affine(w)[0])
    torch.testing.assert_close(s[0, :, 0, 0], affine(w)[0] + affine(obj_w[0])[0])


def test_object_ws_follow_style_seeds():
    torch.manual_seed(0)
    G = tiny_G(16, dict(encoding="sel_indoor"))
    assert G.synthesis.b16.torgb.spatial_style and G.synthesis.b4.conv1.spatial_style
    spec = G.heatmap_sampler(2, generator=0)
    ows = G.object_ws(spec, None)
    assert ows.shape == (2, 3, G.num_ws, 8)
    seed = int(spec.style_seeds[1, 2])
    z = torch.from_numpy(np.random.RandomState(seed).randn(1, 8)).float()
    torch.testing.assert_close(ows[1, 2], G.mapping(z, None)[0])
    restyled = spec.clone()
    restyled.style_seeds = spec.style_seeds.clone()
    restyled.style_seeds[0, 0] += 1
    with torch.no_grad():
        z_bg = torch.randn(2, 8)
        a = G(z_bg, None, heatmaps=spec, noise_mode="const")
        b = G(z_bg, None, heatmaps=restyled, noise_mode="const")
    assert not torch.allclose(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="object_ws"):
        G.synthesis(G.mapping(z_bg, None), heatmaps=spec)


def test_demod_map_is_exact_at_borders_for_constant_style():
    torch.manual_seed(0)
    weight, s = torch.randn(3, 4, 3, 3), torch.randn(1, 4)
    d = se._demod_map(se.StyleMap(s[:, None], torch.ones(1, 1, 5, 5)), weight, flip_weight=True)
    expected = ((weight * s.reshape(1, 4, 1, 1)).square().sum([1, 2, 3]) + 1e-8).rsqrt()
    torch.testing.assert_close(d, expected.reshape(1, 3, 1, 1).expand(1, 3, 5, 5))


@pytest.fixture(params=["im2col", "per_sample"])
def demod_route(request, monkeypatch):
    """Both routes of _demod_map: im2col + bmm (small maps) and one conv per sample (large maps)."""
    if request.param == "per_sample":
        monkeypatch.setattr(se, "DEMOD_LOOP_MIN_PIXELS", 1)
    else:
        monkeypatch.setattr(se, "DEMOD_LOOP_MIN_PIXELS", 10**9)
    return request.param


def test_factorised_demod_equals_dense_convolution_of_squared_styles(demod_route):
    """The pairwise expansion must equal rsqrt(conv(s^2, W^2) + eps) on the dense style map."""
    torch.manual_seed(1)
    codes, maps = torch.randn(2, 4, 6), torch.rand(2, 4, 7, 7)
    maps[:, 0] = 1
    weight = torch.randn(5, 6, 3, 3)
    styles = se.StyleMap(codes, maps)
    for flip in (True, False):
        w2 = weight.square() if flip else weight.square().flip([2, 3])
        s2 = F.pad(styles.dense().square(), [1, 1, 1, 1], mode="replicate")
        expected = (F.conv2d(s2, w2) + 1e-8).rsqrt()
        torch.testing.assert_close(se._demod_map(styles, weight, flip_weight=flip), expected, rtol=1e-4, atol=1e-5)


def test_clamped_rsqrt_matches_composed_ops_and_zeroes_clamped_gradient():
    torch.manual_seed(2)
    v = torch.cat([torch.rand(20) + 0.1, -torch.rand(5)]).requires_grad_(True)
    y = se.clamped_rsqrt(v)
    torch.testing.assert_close(y, (v.detach().clamp_min(0) + 1e-8).rsqrt())
    (g,) = torch.autograd.grad(y.sum(), v)
    torch.testing.assert_close(g[:20], -0.5 * y.detach()[:20] ** 3)
    assert torch.equal(g[20:], torch.zeros(5))


def test_demod_map_runs_each_node_once_per_pass_under_double_backward(demod_route, monkeypatch):
    """Path-length regularisation: grad with create_graph, then backward through that grad. Each pass
    must run the clamped rsqrt's node once and give the dense formula's gradients. (Written in place
    into the bmm route's view, it was wrapped in CopySlices and also the saved output's grad_fn: the
    second pass ran it twice and, on a GPU, found its saved output already freed.)"""
    calls = []
    backward = se._ClampedRsqrt.backward
    monkeypatch.setattr(se._ClampedRsqrt, "backward", staticmethod(lambda ctx, dy: calls.append(1) or backward(ctx, dy)))
    torch.manual_seed(6)
    codes0, maps = torch.randn(2, 3, 4, dtype=torch.float64), torch.rand(2, 3, 5, 5, dtype=torch.float64)
    maps[:, 0] = 1
    weight = torch.randn(3, 4, 3, 3, dtype=torch.float64)

    def grads(demod):
        codes = codes0.clone().requires_grad_(True)
        styles = se.StyleMap(codes, maps)
        img = styles.dense()[:, :3] * demod(styles)
        (g,) = torch.autograd.grad(img.square().sum(), codes, create_graph=True)
        passes = [len(calls)]
        (img[:, 0, 0, 0] * 0 + g.square().sum()).mean().backward()
        return g.detach(), codes.grad, passes + [len(calls) - passes[0]]

    g, gg, passes = grads(lambda st: se._demod_map(st, weight, flip_weight=True))
    assert passes == [1, 1]

    def dense(st):  # rsqrt(conv(s^2, W^2) + eps) on the dense map, plain torch ops
        return (F.conv2d(F.pad(st.dense().square(), [1] * 4, mode="replicate"), weight.square()) + 1e-8).rsqrt()

    want_g, want_gg, _ = grads(dense)
    torch.testing.assert_close(g, want_g)
    torch.testing.assert_close(gg, want_gg, rtol=1e-5, atol=1e-8)


def test_clamped_rsqrt_second_derivative_through_a_path_length_like_loss():
    """grad of (grad of <y, r>) against the closed form 3/4 y^5 r r2 (the regulariser's pattern)."""
    torch.manual_seed(6)
    v = (torch.rand(3, 4, dtype=torch.float64) + 0.3).requires_grad_(True)
    r, r2 = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    (g,) = torch.autograd.grad((se.clamped_rsqrt(v) * r).sum(), v, create_graph=True)
    (gg,) = torch.autograd.grad((g * r2).sum(), v)
    y = (v.detach() + 1e-8).rsqrt()
    torch.testing.assert_close(g.detach(), -0.5 * y**3 * r)
    torch.testing.assert_close(gg, 0.75 * y**5 * r * r2)


def test_clamped_rsqrt_first_and_second_derivatives():
    torch.manual_seed(3)
    v = (torch.rand(2, 3, 4, 4, dtype=torch.float64) + 0.2).requires_grad_(True)
    assert torch.autograd.gradcheck(se.clamped_rsqrt, (v,))
    assert torch.autograd.gradgradcheck(se.clamped_rsqrt, (v,))


def test_indoor_conv_gradients_match_autograd_of_the_dense_formula(demod_route):
    """The whole SEL_indoor conv (factorised demodulation, fused noise) against the plain formula
    y = conv(x s, W) rsqrt(conv(pad(s)^2, W^2) + eps) + noise, values and first derivatives."""
    torch.manual_seed(4)
    x = torch.randn(2, 6, 7, 7, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 6, 3, 3, dtype=torch.float64, requires_grad=True)
    codes = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    maps = torch.rand(2, 3, 7, 7, dtype=torch.float64)
    maps[:, 0] = 1
    noise = torch.randn(2, 1, 7, 7, dtype=torch.float64)
    y = se.spatially_modulated_conv2d(x, weight, se.StyleMap(codes, maps), noise=noise)
    dense = torch.einsum("nac,nahw->nchw", codes, maps)
    s2 = F.pad(dense.square(), [1, 1, 1, 1], mode="replicate")
    ref = F.conv2d(x * dense, weight, padding=1) * (F.conv2d(s2, weight.square()) + 1e-8).rsqrt() + noise
    torch.testing.assert_close(y, ref.to(y.dtype), rtol=1e-5, atol=1e-6)
    gy = torch.randn_like(ref)
    got = torch.autograd.grad(y, (x, weight, codes), gy.to(y.dtype))
    want = torch.autograd.grad(ref, (x, weight, codes), gy)
    for g, w, name in zip(got, want, ("x", "weight", "codes")):
        torch.testing.assert_close(g.to(w.dtype), w, rtol=1e-4, atol=1e-5, msg=name)


def test_indoor_conv_keeps_a_channels_last_input_channels_last():
    """With a channels-last x (fp16 blocks under --channels-last) the style and demodulation maps join
    the elementwise ops in x's layout (not walked with a stride of C), the result is channels-last, and
    the values are those of the NCHW input."""
    x = torch.randn(2, 6, 7, 7)
    assert se._as_operand_of(x, x.half()).dtype == torch.float16
    x_cl = x.to(memory_format=torch.channels_last)
    assert se._as_operand_of(x, x_cl).is_contiguous(memory_format=torch.channels_last)
    assert se._as_operand_of(x, x).is_contiguous()
    torch.manual_seed(5)
    weight, codes, maps = torch.randn(5, 6, 3, 3), torch.randn(2, 3, 6), torch.rand(2, 3, 7, 7)
    noise = torch.randn(2, 1, 7, 7)
    y = se.spatially_modulated_conv2d(x, weight, se.StyleMap(codes, maps), noise=noise)
    y_cl = se.spatially_modulated_conv2d(x_cl, weight, se.StyleMap(codes, maps), noise=noise)
    assert y_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y_cl, y, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# Flatten ablation.


def test_flatten_grows_mapping_input_only():
    torch.manual_seed(0)
    G = tiny_G(16, dict(encoding="flatten"))
    assert G.mapping.heatmap_dim == 4 * 4 + 8 * 8 + 16 * 16
    assert G.mapping.fc0.in_features == 8 + 336
    assert count_params(G.synthesis) == count_params(tiny_G(16).synthesis)
    spec = G.heatmap_sampler(2, generator=0)
    assert G.heatmap_vec(spec).shape == (2, 336)
    with pytest.raises(ValueError, match="heatmap_vec"):
        G.mapping(torch.randn(2, 8), None)


# ---------------------------------------------------------------------------------------------------
# Configuration errors and persistence.


@pytest.mark.parametrize("bad,match", [
    (dict(encoding="sel_magic"), "encoding"),
    (dict(encoding="sel_norm", processing="medium"), "processing"),
    (dict(encoding="sel_norm", colour="blue"), "unknown keys"),
    (dict(encoding="sel_norm", resolutions=[4, 12]), "resolutions"),
    (dict(encoding="sel_norm", resolutions=[64]), "resolutions"),
    (dict(encoding="sel_indoor", compose="sum"), "compose"),
    (dict(encoding="sel_indoor", sampler="hierarchical"), "style seeds|object count"),
    (dict(encoding="sel_norm", kernel_size=4), "kernel_size"),
])
def test_bad_spatial_kwargs(bad, match):
    with pytest.raises(ValueError, match=match):
        tiny_G(16, bad)


@pytest.mark.parametrize("spatial_kwargs", VARIANTS, ids=IDS)
def test_spatial_init_kwargs_rebuild(spatial_kwargs):
    G = tiny_G(16, spatial_kwargs)
    kwargs = json.loads(json.dumps(G.init_kwargs))
    rebuilt = nets.Generator(**kwargs)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in G.state_dict().items()}
    syn = nets.SynthesisNetwork(**json.loads(json.dumps(G.synthesis.init_kwargs)))
    assert count_params(syn) == count_params(G.synthesis)


def test_synthesis_requires_heatmaps_when_spatial():
    G = tiny_G(16, dict(encoding="sel_norm"))
    ws = G.mapping(torch.randn(2, 8), None)
    with pytest.raises(ValueError, match="heatmaps"):
        G.synthesis(ws)
    with pytest.raises(ValueError, match="batch size"):
        G.synthesis(ws, heatmaps=G.heatmap_sampler(3, generator=0))
    with pytest.raises(TypeError, match="HeatmapSpec"):
        G.synthesis(ws, heatmaps=torch.zeros(2, 1, 16, 16))


@pytest.mark.parametrize("spatial_kwargs", [dict(encoding="sel_norm", resolutions="all"), dict(encoding="sel_indoor")],
                         ids=["norm", "indoor"])
def test_fp16_blocks_with_spatial_encoding(monkeypatch, spatial_kwargs):
    """SEL and spatial styles inside fp16 blocks (forced on CPU) stay close to the fp32 result."""
    monkeypatch.setattr(nets, "_block_dtype",
                        lambda use_fp16, device, force_fp32: torch.float16 if use_fp16 and not force_fp32
                        else torch.float32)
    torch.manual_seed(0)
    G = tiny_G(16, spatial_kwargs, num_fp16_res=2)
    z, spec = torch.randn(2, 8), G.heatmap_sampler(2, generator=0)
    img, feats = G(z, None, heatmaps=spec, noise_mode="const", return_features=True)
    assert feats[16].dtype == torch.float16 and img.dtype == torch.float32
    ref = G(z, None, heatmaps=spec, noise_mode="const", force_fp32=True)
    torch.testing.assert_close(img, ref, atol=5e-2, rtol=5e-2)
