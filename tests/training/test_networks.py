"""Tests for training/networks.py: StyleGAN2 mapping, synthesis and discriminator (CPU, tiny sizes)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from torch_utils.misc import count_params
from training import networks as nets

SMALL = dict(channel_base=256, channel_max=32)  # channels: 4-8 -> 32, 16 -> 16, 32 -> 8, 64 -> 4


def tiny_G(res=16, c_dim=0, **synthesis_kwargs):
    return nets.Generator(z_dim=16, c_dim=c_dim, w_dim=16, img_resolution=res, img_channels=3,
                          mapping_kwargs=dict(num_layers=2), synthesis_kwargs={**SMALL, **synthesis_kwargs})


def tiny_D(res=16, c_dim=0, **kwargs):
    return nets.Discriminator(c_dim=c_dim, img_resolution=res, img_channels=3, **{**SMALL, **kwargs})


# ---------------------------------------------------------------------------------------------------
# Exact architecture: paper256 parameter counts (stylegan2-ada facts §10). Built once, never run.


@pytest.fixture(scope="module")
def paper256():
    torch.manual_seed(0)
    G = nets.Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=256, img_channels=3,
                       mapping_kwargs=dict(num_layers=8),
                       synthesis_kwargs=dict(channel_base=16384, channel_max=512, num_fp16_res=4, conv_clamp=256))
    D = nets.Discriminator(c_dim=0, img_resolution=256, img_channels=3, channel_base=16384, channel_max=512,
                           num_fp16_res=4, conv_clamp=256, epilogue_kwargs=dict(mbstd_group_size=8))
    return G, D


def test_paper256_generator_parameter_count(paper256):
    G, _ = paper256
    assert count_params(G) == 24_767_458
    assert count_params(G.mapping) == 2_101_248
    assert count_params(G.synthesis) == 22_666_210
    assert G.num_ws == 14


def test_paper256_discriminator_parameter_count(paper256):
    _, D = paper256
    assert count_params(D) == 24_001_089


def test_paper256_channels_and_fp16_layout(paper256):
    G, D = paper256
    assert [getattr(G.synthesis, f"b{r}").out_channels for r in (4, 32, 64, 128, 256)] == [512, 512, 256, 128, 64]
    assert [getattr(G.synthesis, f"b{r}").use_fp16 for r in (16, 32, 256)] == [False, True, True]
    assert [getattr(D, f"b{r}").use_fp16 for r in (16, 32, 256)] == [False, True, True]
    assert G.synthesis.b4.const.shape == (512, 4, 4)
    assert G.synthesis.b256.conv1.noise_const.shape == (256, 256)
    assert "synthesis.b256.conv1.noise_const" in G.state_dict()


def test_paper256_init_kwargs_rebuild(paper256):
    G, D = paper256
    for net in (G, D):
        json.dumps(net.init_kwargs)
        rebuilt = type(net)(**net.init_kwargs)
        assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
               {k: v.shape for k, v in net.state_dict().items()}


# ---------------------------------------------------------------------------------------------------
# Structure at other resolutions.


@pytest.mark.parametrize("res", [4, 8, 16, 32, 64, 128, 256])
def test_num_ws(res):
    synthesis = nets.SynthesisNetwork(w_dim=8, img_resolution=res, img_channels=3, channel_base=512, channel_max=4)
    assert synthesis.num_ws == 2 * int(math.log2(res)) - 2


@pytest.mark.parametrize("res", [16, 32, 64])
def test_generator_and_discriminator_shapes(res):
    torch.manual_seed(0)
    G, D = tiny_G(res), tiny_D(res)
    z = torch.randn(2, 16)
    img, feats = G.synthesis(G.mapping(z, None), return_features=True)
    assert img.shape == (2, 3, res, res) and img.dtype == torch.float32
    assert sorted(feats) == [2**i for i in range(2, int(math.log2(res)) + 1)]
    assert feats[res].shape[-1] == res
    logits, dfeats = D(img, None, return_features=True)
    assert logits.shape == (2, 1)
    assert sorted(dfeats) == [2**i for i in range(2, int(math.log2(res)))]
    assert all(f.shape[-1] == s for s, f in dfeats.items())


@pytest.mark.parametrize("arch", ["orig", "skip", "resnet"])
def test_generator_architectures(arch):
    torch.manual_seed(0)
    G = tiny_G(16, architecture=arch)
    assert hasattr(G.synthesis.b8, "torgb") == (arch == "skip")
    assert hasattr(G.synthesis.b16, "skip") == (arch == "resnet")
    img = G(torch.randn(2, 16), None)
    assert img.shape == (2, 3, 16, 16) and torch.isfinite(img).all()


@pytest.mark.parametrize("arch", ["orig", "skip", "resnet"])
def test_discriminator_architectures(arch):
    torch.manual_seed(0)
    D = tiny_D(16, architecture=arch)
    assert hasattr(D.b8, "fromrgb") == (arch == "skip")
    assert hasattr(D.b16, "skip") == (arch == "resnet")
    logits = D(torch.randn(4, 3, 16, 16), None)
    assert logits.shape == (4, 1) and torch.isfinite(logits).all()


def test_conditional_networks():
    torch.manual_seed(0)
    G, D = tiny_G(16, c_dim=3), tiny_D(16, c_dim=3)
    assert G.mapping.embed.weight.shape == (16, 3)        # label embedding to w_dim
    assert D.cmap_dim == 32 and D.mapping.fc1.out_features == 32   # default cmap_dim = channels(4)
    assert not hasattr(D.mapping, "w_avg")
    z, c = torch.randn(2, 16), torch.eye(3)[[0, 1]]
    img = G(z, c, noise_mode="const")
    assert not torch.allclose(img, G(z, torch.eye(3)[[2, 2]], noise_mode="const"))
    logits = D(img, c)
    assert logits.shape == (2, 1)
    assert not torch.allclose(logits, D(img, torch.eye(3)[[2, 2]]))
    with pytest.raises(ValueError, match="c"):
        D(img, None)


# ---------------------------------------------------------------------------------------------------
# Mapping network.


def test_mapping_normalizes_z_and_tracks_w_avg():
    torch.manual_seed(0)
    M = nets.MappingNetwork(z_dim=8, c_dim=0, w_dim=8, num_ws=3, num_layers=2)
    z = torch.randn(4, 8)
    ws = M(z, None)
    assert ws.shape == (4, 3, 8) and torch.equal(ws[:, 0], ws[:, 2])
    torch.testing.assert_close(M(5 * z, None), ws)       # 2nd-moment normalisation removes the scale
    assert M.fc0.weight_gain == pytest.approx(0.01 / math.sqrt(8))
    assert torch.count_nonzero(M.w_avg) == 0
    M(z, None, update_emas=True)
    torch.testing.assert_close(M.w_avg, ws[:, 0].mean(0) * (1 - 0.995))


def test_mapping_truncation():
    torch.manual_seed(0)
    M = nets.MappingNetwork(z_dim=8, c_dim=0, w_dim=8, num_ws=4, num_layers=2)
    M.w_avg.copy_(torch.randn(8))
    z = torch.randn(2, 8)
    ws = M(z, None)
    torch.testing.assert_close(M(z, None, truncation_psi=0), M.w_avg.expand(2, 4, 8))
    half = M(z, None, truncation_psi=0.5, truncation_cutoff=2)
    torch.testing.assert_close(half[:, :2], M.w_avg.lerp(ws[:, :2], 0.5))
    torch.testing.assert_close(half[:, 2:], ws[:, 2:])


# ---------------------------------------------------------------------------------------------------
# Modulated convolution.


@pytest.mark.parametrize("up,demodulate", [(1, True), (2, True), (1, False)])
def test_modconv_fused_equals_non_fused(up, demodulate):
    torch.manual_seed(0)
    x, weight, styles = torch.randn(3, 5, 6, 6), torch.randn(4, 5, 3, 3), torch.randn(3, 5)
    f = nets.upfirdn2d.setup_filter([1, 3, 3, 1])
    noise = torch.randn(3, 1, 6 * up, 6 * up)
    kw = dict(noise=noise, up=up, padding=1, resample_filter=f, demodulate=demodulate, flip_weight=up == 1)
    fused = nets.modulated_conv2d(x, weight, styles, fused_modconv=True, **kw)
    plain = nets.modulated_conv2d(x, weight, styles, fused_modconv=False, **kw)
    assert fused.shape == (3, 4, 6 * up, 6 * up)
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)


def test_modconv_demodulation_formula():
    torch.manual_seed(0)
    x, weight, styles = torch.randn(2, 5, 6, 6), torch.randn(4, 5, 3, 3), torch.randn(2, 5)
    out = nets.modulated_conv2d(x, weight, styles, padding=1)
    for n in range(2):
        w = weight * styles[n].reshape(1, -1, 1, 1)
        w = w / (w.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8).sqrt()
        torch.testing.assert_close(out[n:n + 1], torch.nn.functional.conv2d(x[n:n + 1], w, padding=1),
                                   atol=1e-5, rtol=1e-5)


def test_synthesis_fused_matches_training_path():
    torch.manual_seed(0)
    G = tiny_G(16)
    ws = G.mapping(torch.randn(2, 16), None)
    fused = G.synthesis(ws, noise_mode="const", fused_modconv=True)
    plain = G.synthesis(ws, noise_mode="const", fused_modconv=False)
    torch.testing.assert_close(fused, plain, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------
# Noise, precision, gradients.


def test_noise_modes():
    torch.manual_seed(0)
    G = tiny_G(8)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.5)
    ws = G.mapping(torch.randn(2, 16), None)
    const = G.synthesis(ws, noise_mode="const")
    assert torch.equal(const, G.synthesis(ws, noise_mode="const"))
    assert not torch.allclose(G.synthesis(ws, noise_mode="random"), G.synthesis(ws, noise_mode="random"))
    assert not torch.allclose(const, G.synthesis(ws, noise_mode="none"))
    with pytest.raises(ValueError, match="noise_mode"):
        G.synthesis(ws, noise_mode="fixed")


def test_fp16_disabled_on_cpu():
    torch.manual_seed(0)
    G = tiny_G(16, num_fp16_res=4)
    assert G.synthesis.b16.use_fp16 and G.synthesis.b8.use_fp16
    ws = G.mapping(torch.randn(2, 16), None)
    img, feats = G.synthesis(ws, noise_mode="const", return_features=True)
    assert img.dtype == torch.float32 and feats[16].dtype == torch.float32
    assert torch.equal(img, G.synthesis(ws, noise_mode="const", force_fp32=True))


def test_discriminator_features_are_live_graph_tensors():
    torch.manual_seed(0)
    D = tiny_D(16)
    logits, feats = D(torch.randn(4, 3, 16, 16), None, return_features=True)
    grads = torch.autograd.grad(logits.sum(), [feats[4], feats[8]])
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert grads[0].shape == feats[4].shape


def test_generator_double_backward_for_path_length():
    torch.manual_seed(0)
    G = tiny_G(16)
    ws = G.mapping(torch.randn(2, 16), None).detach().requires_grad_(True)
    img = G.synthesis(ws)
    (g,) = torch.autograd.grad((img * torch.randn_like(img)).sum(), ws, create_graph=True)
    g.square().sum().backward()
    assert G.synthesis.b16.conv1.weight.grad is not None
    assert G.synthesis.b16.conv1.weight.grad.abs().sum() > 0


def test_minibatch_std():
    layer = nets.MinibatchStdLayer(group_size=2, num_channels=1)
    x = torch.randn(4, 3, 2, 2)
    y = layer(x)
    assert y.shape == (4, 4, 2, 2)
    # Sample n belongs to group n % M (M = N / G = 2): samples 0 and 2 share one statistic.
    expected = (x[[0, 2]].var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
    torch.testing.assert_close(y[0, 3], expected.expand(2, 2))
    torch.testing.assert_close(y[2, 3], expected.expand(2, 2))
    with pytest.raises(ValueError, match="divisible"):
        nets.MinibatchStdLayer(group_size=3)(x)


# ---------------------------------------------------------------------------------------------------
# init_kwargs and argument errors.


def test_init_kwargs_are_deep_copies_and_rebuild():
    mapping_kwargs = dict(num_layers=2)
    G = nets.Generator(16, 2, 16, 16, 3, mapping_kwargs=mapping_kwargs, synthesis_kwargs=dict(SMALL))
    mapping_kwargs["num_layers"] = 7
    assert G.init_kwargs["mapping_kwargs"] == {"num_layers": 2}
    for net in (G, G.mapping, G.synthesis, tiny_D(16, c_dim=2)):
        rebuilt = type(net)(**copy.deepcopy(json.loads(json.dumps(net.init_kwargs))))
        assert count_params(rebuilt) == count_params(net)


@pytest.mark.parametrize("res", [48, 2, 0])
def test_bad_resolution(res):
    with pytest.raises(ValueError, match="img_resolution"):
        tiny_G(res)
    with pytest.raises(ValueError, match="img_resolution"):
        tiny_D(res)


def test_bad_architecture():
    with pytest.raises(ValueError, match="architecture='fancy'"):
        tiny_G(16, architecture="fancy")
    with pytest.raises(ValueError, match="architecture='fancy'"):
        tiny_D(16, architecture="fancy")


def test_bad_inputs():
    G = tiny_G(16, c_dim=2)
    with pytest.raises(ValueError, match="z"):
        G(torch.randn(2, 15), torch.zeros(2, 2))
    with pytest.raises(TypeError, match="z"):
        G([0.0] * 16, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="c"):
        G(torch.randn(2, 16), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="ws"):
        G.synthesis(torch.randn(2, 3, 16))
    with pytest.raises(ValueError, match="channel_base"):
        nets.SynthesisNetwork(w_dim=8, img_resolution=64, img_channels=3, channel_base=32)
    with pytest.raises(ValueError, match="img"):
        tiny_D(16)(torch.randn(2, 3, 8, 8), None)


@pytest.mark.parametrize("up", [1, 2])
def test_modconv_fp16_prescaling_matches_fp32(up):
    torch.manual_seed(0)
    x, weight, styles = torch.randn(2, 5, 6, 6), 50 * torch.randn(4, 5, 3, 3), 50 * torch.randn(2, 5)
    f = nets.upfirdn2d.setup_filter([1, 3, 3, 1])
    kw = dict(up=up, padding=1, resample_filter=f, flip_weight=up == 1, fused_modconv=False)
    ref = nets.modulated_conv2d(x, weight, styles, **kw)
    half = nets.modulated_conv2d(x.half(), weight, styles, **kw)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), ref, atol=1e-2, rtol=1e-2)


def test_fp16_blocks_pipeline(monkeypatch):
    """The CUDA-only fp16 path, forced on CPU: fp16 features, fp32 image and logits, close to fp32."""
    monkeypatch.setattr(nets, "_block_dtype",
                        lambda use_fp16, device, force_fp32: torch.float16 if use_fp16 and not force_fp32
                        else torch.float32)
    torch.manual_seed(0)
    G, D = tiny_G(16, num_fp16_res=2), tiny_D(16, num_fp16_res=2)
    ws = G.mapping(torch.randn(2, 16), None)
    img, feats = G.synthesis(ws, noise_mode="const", return_features=True)
    assert feats[16].dtype == torch.float16 and feats[4].dtype == torch.float32 and img.dtype == torch.float32
    torch.testing.assert_close(img, G.synthesis(ws, noise_mode="const", force_fp32=True), atol=2e-2, rtol=2e-2)
    logits, dfeats = D(img, None, return_features=True)
    assert dfeats[8].dtype == torch.float16 and logits.dtype == torch.float32
    torch.testing.assert_close(logits, D(img, None, force_fp32=True), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("spatial", [None, dict(encoding="sel_indoor")], ids=["plain", "sel_indoor"])
def test_fp16_channels_last_same_function_and_gradients(spatial):
    """fp16_channels_last only changes the memory layout of the fp16 blocks (testable on CPU, where
    those blocks stay fp32): identical images, logits and parameter gradients, NHWC block outputs."""
    def build(channels_last):
        torch.manual_seed(0)
        G = nets.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
                           mapping_kwargs=dict(num_layers=2), spatial_kwargs=spatial,
                           synthesis_kwargs=dict(SMALL, num_fp16_res=2, fp16_channels_last=channels_last))
        D = tiny_D(16, num_fp16_res=2, block_kwargs=dict(fp16_channels_last=channels_last))
        return G, D

    results = []
    for channels_last in (False, True):
        G, D = build(channels_last)
        assert G.synthesis.b16.channels_last == channels_last and not G.synthesis.b4.channels_last
        assert D.b16.channels_last == channels_last
        torch.manual_seed(1)
        z = torch.randn(4, 16)
        spec = G.heatmap_sampler(4, generator=0) if G.heatmap_sampler is not None else None
        img, feats = G(z, None, heatmaps=spec, noise_mode="const", return_features=True)
        logits, dfeats = D(img, None, return_features=True)
        logits.sum().backward()
        assert feats[16].is_contiguous(memory_format=torch.channels_last) == channels_last
        assert dfeats[8].is_contiguous(memory_format=torch.channels_last) == channels_last
        assert feats[4].is_contiguous()
        grads = [p.grad.clone() for p in [*G.parameters(), *D.parameters()] if p.grad is not None]
        results.append((img.detach(), logits.detach(), grads))
    (img0, log0, g0), (img1, log1, g1) = results
    torch.testing.assert_close(img1, img0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log1, log0, rtol=1e-5, atol=1e-5)
    assert len(g0) == len(g1) > 0
    for a, b in zip(g0, g1):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    G, _ = build(True)
    assert G.synthesis.init_kwargs["fp16_channels_last"] is True
    rebuilt = nets.Generator(**G.init_kwargs)
    assert rebuilt.synthesis.b16.channels_last


@pytest.mark.parametrize("architecture", ["resnet", "skip", "orig"])
def test_freeze_d_freezes_the_first_block_layers_and_still_passes_input_gradients(architecture):
    """freeze_layers=k: the first k layers of D's blocks from the input side never require grad (even
    after requires_grad_(True)); the rest do; R1-style gradients still reach the image; the count of
    block layers is what num_block_layers says; more than that is refused."""
    layers = nets.num_block_layers(32, architecture)
    assert layers == len(tiny_D(32, architecture=architecture).block_layers())
    for k in (0, 2, layers):
        D = tiny_D(32, architecture=architecture, freeze_layers=k).requires_grad_(False).requires_grad_(True)
        frozen = {id(p) for layer in D.block_layers()[:k] for p in layer.parameters()}
        assert all(p.requires_grad == (id(p) not in frozen) for p in D.parameters())
        assert any(p.requires_grad for p in D.parameters())  # the epilogue always trains
        img = torch.randn(2, 3, 32, 32, requires_grad=True)
        D(img, None).sum().backward()
        assert img.grad.abs().sum() > 0
        assert all((p.grad is None) == (id(p) in frozen) for p in D.parameters())
        assert nets.Discriminator(**D.init_kwargs).freeze_layers == k  # a snapshot rebuilds it
    with pytest.raises(ValueError, match=f"only {layers} block layers"):
        tiny_D(32, architecture=architecture, freeze_layers=layers + 1)

