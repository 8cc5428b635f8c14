"""editing/synthesis.py: seeded latents and heatmaps, broadcasting, the W path, baseline errors."""

import numpy as np
import pytest
import torch

from editing import synthesis
from training import config, networks
from training.heatmaps import build_sampler


def tiny_G(cfg: str, res: int = 16, label_dim: int = 0):
    """Random-weight generator of a preset at a small resolution."""
    G_kwargs, _ = config.network_kwargs(config.load_preset(cfg), res, 3, label_dim, fp32=True)
    torch.manual_seed(0)
    return networks.Generator(**G_kwargs).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def G_spatial():
    return tiny_G("tiny-spatial")


def test_z_from_seed_is_numpy_randomstate(G_spatial):
    for seed in (0, 5, 2**32 - 1):
        z = synthesis.z_from_seed(G_spatial, seed)
        expected = np.random.RandomState(seed).randn(1, G_spatial.z_dim)
        assert z.dtype == torch.float32 and z.shape == (1, G_spatial.z_dim)
        assert torch.equal(z, torch.from_numpy(expected.astype(np.float32)))
    assert not torch.equal(synthesis.z_from_seed(G_spatial, 1), synthesis.z_from_seed(G_spatial, 2))


def test_spec_from_seed_is_deterministic(G_spatial):
    a, b = synthesis.spec_from_seed(G_spatial, 7), synthesis.spec_from_seed(G_spatial, 7)
    c = synthesis.spec_from_seed(G_spatial, 8)
    assert a.batch_size == 1
    assert all(torch.equal(x, y) for x, y in zip(a.centers, b.centers))
    assert all(torch.equal(x, y) for x, y in zip(a.sigmas, b.sigmas))
    assert not torch.equal(a.centers[0], c.centers[0])
    torch.manual_seed(123)  # the global RNG must not matter
    assert torch.equal(synthesis.spec_from_seed(G_spatial, 7).centers[0], a.centers[0])


def test_batch1_spec_broadcasts(G_spatial):
    z = torch.cat([synthesis.z_from_seed(G_spatial, s) for s in (1, 2, 3)])
    spec = synthesis.spec_from_seed(G_spatial, 4)
    img = synthesis.synthesize(G_spatial, z, spec)
    assert img.shape == (3, 3, 16, 16)
    one = synthesis.synthesize(G_spatial, z[1:2], spec)
    assert torch.allclose(img[1:2], one, atol=1e-5)
    assert not torch.allclose(img[0], img[1])
    with pytest.raises(ValueError, match="batch 2"):
        synthesis.synthesize(G_spatial, z, spec.repeat(2))


def test_synthesis_is_reproducible_and_depends_on_both_seeds(G_spatial):
    def img(z_seed, hm_seed):
        return synthesis.synthesize(G_spatial, synthesis.z_from_seed(G_spatial, z_seed),
                                    synthesis.spec_from_seed(G_spatial, hm_seed))

    assert torch.equal(img(1, 2), img(1, 2))
    assert not torch.allclose(img(1, 2), img(3, 2))
    assert not torch.allclose(img(1, 2), img(1, 5))


@pytest.mark.parametrize("cfg", ["tiny-spatial", "tiny-spatial-indoor", "tiny"])
def test_w_path_matches_forward(cfg):
    """map_ws + synthesize_ws reproduce synthesize (style mixing and projection rely on it)."""
    G = tiny_G(cfg)
    z = synthesis.z_from_seed(G, 3)
    spec = synthesis.spec_from_seed(G, 4) if G.heatmap_sampler is not None else None
    for psi in (1.0, 0.5):
        ws = synthesis.map_ws(G, z, spec, truncation_psi=psi)
        assert ws.shape == (1, G.num_ws, G.w_dim)
        direct = synthesis.synthesize(G, z, spec, truncation_psi=psi)
        via_w = synthesis.synthesize_ws(G, ws, spec, truncation_psi=psi)
        assert torch.allclose(direct, via_w, atol=1e-5)


def test_synthesize_ws_needs_a_spec_on_spatial_networks(G_spatial):
    ws = synthesis.map_ws(G_spatial, synthesis.z_from_seed(G_spatial, 0))
    with pytest.raises(ValueError, match="needs a heatmap spec"):
        synthesis.synthesize_ws(G_spatial, ws)


def test_synthesize_needs_a_spec_on_spatial_networks(G_spatial):
    """G's own draw would come from the global random state: two calls would differ."""
    with pytest.raises(ValueError, match=r"needs a heatmap spec: pass spec_from_seed"):
        synthesis.synthesize(G_spatial, synthesis.z_from_seed(G_spatial, 0))


def test_synthesize_ws_takes_per_object_latents():
    """Indoor: the per-object latents computed once reproduce `synthesize`, reach the image and train."""
    G = tiny_G("tiny-spatial-indoor")
    z, spec = synthesis.z_from_seed(G, 3), synthesis.spec_from_seed(G, 4)
    ws = synthesis.map_ws(G, z, spec, truncation_psi=0.5)
    object_ws = G.object_ws(spec, None, 0.5)
    assert object_ws.shape == (1, 3, G.num_ws, G.w_dim)
    direct = synthesis.synthesize(G, z, spec, truncation_psi=0.5)
    torch.testing.assert_close(synthesis.synthesize_ws(G, ws, spec, object_ws=object_ws), direct)
    assert not torch.allclose(synthesis.synthesize_ws(G, ws, spec), direct, atol=1e-3)  # psi 1 for the objects
    object_ws.requires_grad_(True)
    synthesis.synthesize_ws(G, ws.repeat(2, 1, 1), spec, object_ws=object_ws).square().sum().backward()
    assert object_ws.grad is not None and object_ws.grad.abs().sum() > 0   # batch-1 latents broadcast
    with pytest.raises(ValueError, match=r"object_ws has batch 2, ws have batch 3"):
        synthesis.synthesize_ws(G, ws.repeat(3, 1, 1), spec, object_ws=object_ws.detach().repeat(2, 1, 1, 1))
    with pytest.raises(ValueError, match=r"object_ws has size 2 in dimension 1, expected 3"):
        synthesis.synthesize_ws(G, ws, spec, object_ws=object_ws.detach()[:, :2])
    G_norm = tiny_G("tiny-spatial")
    with pytest.raises(ValueError, match=r"indoor \(sel_indoor\) network; this one has none"):
        synthesis.synthesize_ws(G_norm, synthesis.map_ws(G_norm, z, synthesis.spec_from_seed(G_norm, 4)),
                                synthesis.spec_from_seed(G_norm, 4), object_ws=object_ws.detach())


def test_synthesize_ws_shape_error_says_how_to_get_ws(G_spatial):
    spec = synthesis.spec_from_seed(G_spatial, 0)
    w = torch.zeros(1, G_spatial.w_dim)
    with pytest.raises(ValueError, match=rf"ws has shape \[1, {G_spatial.w_dim}\], this network takes \[N, "
                                         rf"num_ws={G_spatial.num_ws}, .*as map_ws returns"):
        synthesis.synthesize_ws(G_spatial, w, spec)
    ws = w[:, None].repeat(1, G_spatial.num_ws, 1)   # what the message suggests works
    assert synthesis.synthesize_ws(G_spatial, ws, spec).shape == (1, 3, 16, 16)


def test_baseline_has_no_heatmaps():
    G = tiny_G("tiny")
    with pytest.raises(ValueError, match="no heatmap encoding"):
        synthesis.spec_from_seed(G, 0)
    assert synthesis.synthesize(G, synthesis.z_from_seed(G, 0)).shape == (1, 3, 16, 16)


def test_class_label():
    G = tiny_G("tiny", label_dim=3)
    assert synthesis.class_label(G, 2).tolist() == [[0.0, 0.0, 1.0]]
    with pytest.raises(ValueError, match="conditional"):
        synthesis.class_label(G, None)
    with pytest.raises(ValueError, match="out of range"):
        synthesis.class_label(G, 3)
    assert synthesis.class_label(G, np.int64(1)).tolist() == [[0.0, 1.0, 0.0]]
    with pytest.raises(ValueError, match="must be an integer, got 1.5"):
        synthesis.class_label(G, 1.5)
    assert synthesis.class_label(tiny_G("tiny"), None).shape == (1, 0)
    with pytest.raises(ValueError, match="unconditional.*class 3 does not apply"):
        synthesis.class_label(tiny_G("tiny"), 3)


def test_load_generator_round_trip(tmp_path, G_spatial):
    from training import checkpoint

    path = tmp_path / "snap.pt"
    checkpoint.save_snapshot(path, dict(networks=dict(G_ema=checkpoint.pack_module(G_spatial))))
    G2 = synthesis.load_generator(str(path))
    z, spec = synthesis.z_from_seed(G2, 1), synthesis.spec_from_seed(G2, 1)
    assert torch.equal(synthesis.synthesize(G2, z, spec), synthesis.synthesize(G_spatial, z, spec))


@pytest.fixture(scope="module")
def G_baseline():
    return tiny_G("tiny")


def test_integral_seeds_are_accepted(G_spatial):
    z, spec = synthesis.z_from_seed(G_spatial, 5), synthesis.spec_from_seed(G_spatial, 5)
    for seed in (np.int64(5), np.uint32(5), torch.tensor(5)):
        assert torch.equal(synthesis.z_from_seed(G_spatial, seed), z)
        assert synthesis.spec_from_seed(G_spatial, seed).to_json() == spec.to_json()


@pytest.mark.parametrize("seed", [1.7, 1.5, 2.0, "3", True, None, np.float64(4)])
def test_non_integer_seeds_are_refused(G_spatial, seed):
    """Never truncated (1.7 must not silently mean seed 1), never NumPy's bare TypeError."""
    for fn in (synthesis.z_from_seed, synthesis.spec_from_seed):
        with pytest.raises(ValueError, match=r"seed must be an integer, got .*\("):
            fn(G_spatial, seed)


def test_seed_ranges_are_named(G_spatial):
    with pytest.raises(ValueError, match=r"seed=4294967296 out of range \[0, 2\^32\)"):
        synthesis.z_from_seed(G_spatial, 2**32)
    with pytest.raises(ValueError, match="seed=-1 out of range"):
        synthesis.z_from_seed(G_spatial, -1)
    for seed in (2**64, -2**63 - 1):
        with pytest.raises(ValueError, match=rf"seed={seed} out of range \[-2\^63, 2\^64\)"):
            synthesis.spec_from_seed(G_spatial, seed)
    assert synthesis.spec_from_seed(G_spatial, 2**64 - 1).batch_size == 1


def test_numpy_latents_are_converted(G_spatial):
    spec = synthesis.spec_from_seed(G_spatial, 2)
    z64 = np.random.RandomState(3).randn(2, G_spatial.z_dim)  # float64, as NumPy makes it
    expected = synthesis.synthesize(G_spatial, torch.from_numpy(z64).float(), spec)
    assert torch.equal(synthesis.synthesize(G_spatial, z64, spec), expected)
    ws = synthesis.map_ws(G_spatial, z64, spec)
    assert torch.equal(ws, synthesis.map_ws(G_spatial, torch.from_numpy(z64).float(), spec))
    assert torch.allclose(synthesis.synthesize_ws(G_spatial, ws.numpy(), spec), expected, atol=1e-5)
    with pytest.raises(TypeError, match=r"z must be a tensor or NumPy array \[N, \d+\], got list"):
        synthesis.synthesize(G_spatial, z64.tolist(), spec)
    with pytest.raises(TypeError, match="z must hold numbers"):
        synthesis.synthesize(G_spatial, np.array([["a"] * G_spatial.z_dim]), spec)


def test_non_finite_latents_and_psi_are_refused(G_spatial):
    spec = synthesis.spec_from_seed(G_spatial, 2)
    z = synthesis.z_from_seed(G_spatial, 1)
    z_nan = z.clone()
    z_nan[0, 3] = float("nan")
    with pytest.raises(ValueError, match="z contains NaN or infinite values"):
        synthesis.synthesize(G_spatial, z_nan, spec)
    ws = synthesis.map_ws(G_spatial, z, spec)
    ws[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="ws contains NaN or infinite values"):
        synthesis.synthesize_ws(G_spatial, ws, spec)
    for psi in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="truncation_psi must be finite"):
            synthesis.synthesize(G_spatial, z, spec, truncation_psi=psi)
        with pytest.raises(ValueError, match="truncation_psi must be finite"):
            synthesis.map_ws(G_spatial, z, spec, truncation_psi=psi)


def test_baseline_refuses_a_spec_and_stray_labels(G_baseline, G_spatial):
    """A StyleGAN2 network would ignore both silently, giving an image that is not what was asked for."""
    z = synthesis.z_from_seed(G_baseline, 0)
    spec = synthesis.spec_from_seed(G_spatial, 0)
    with pytest.raises(ValueError, match="no heatmap encoding.*pass spec=None"):
        synthesis.synthesize(G_baseline, z, spec)
    with pytest.raises(ValueError, match="no heatmap encoding"):
        synthesis.map_ws(G_baseline, z, spec)
    ws = synthesis.map_ws(G_baseline, z)
    with pytest.raises(ValueError, match="no heatmap encoding"):
        synthesis.synthesize_ws(G_baseline, ws, spec)
    with pytest.raises(ValueError, match=r"c has shape \[1, 5\], but this network is unconditional"):
        synthesis.synthesize(G_baseline, z, c=torch.zeros(1, 5))
    with pytest.raises(ValueError, match="unconditional"):
        synthesis.map_ws(G_baseline, z, c=torch.ones(1, 2))
    # An empty label of the right width is fine and changes nothing.
    assert torch.equal(synthesis.synthesize(G_baseline, z, c=torch.zeros(1, 0)), synthesis.synthesize(G_baseline, z))


def test_conditional_labels_are_checked_and_broadcast():
    G = tiny_G("tiny", label_dim=3)
    z = torch.cat([synthesis.z_from_seed(G, s) for s in (1, 2)])
    c = synthesis.class_label(G, 1)
    both = synthesis.synthesize(G, z, c=c)  # batch-1 label, batch-2 latents
    assert torch.allclose(both[1:], synthesis.synthesize(G, z[1:], c=c), atol=1e-5)
    assert not torch.allclose(both, synthesis.synthesize(G, z, c=synthesis.class_label(G, 2)))
    with pytest.raises(ValueError, match=r"c has shape \[1, 4\], but this network takes labels of width c_dim=3"):
        synthesis.synthesize(G, z, c=torch.zeros(1, 4))
    with pytest.raises(ValueError, match="c has batch 3, latents have batch 2"):
        synthesis.synthesize(G, z, c=torch.zeros(3, 3))


def test_check_spec_against_the_network(G_spatial, G_baseline):
    spec = synthesis.spec_from_seed(G_spatial, 1)
    synthesis.check_spec(G_spatial, spec)
    synthesis.check_spec(G_spatial, None)
    synthesis.check_spec(G_baseline, None)
    indoor_spec = build_sampler("multi_object")(1, generator=0)
    z = synthesis.z_from_seed(G_spatial, 0)
    for fn in (synthesis.check_spec, lambda G, s: synthesis.synthesize(G, z, s)):
        with pytest.raises(ValueError, match=r"centres per level \[3\], this network was built for \[1, 2, 4\]"):
            fn(G_spatial, indoor_spec)
    with pytest.raises(TypeError, match="spec must be a HeatmapSpec, got dict"):
        synthesis.check_spec(G_spatial, spec.to_json())
    bad = spec.clone()
    bad.sigmas[2][0, 1] = float("nan")
    with pytest.raises(ValueError, match=r"sigmas\[2\] must be finite and > 0"):
        synthesis.synthesize(G_spatial, z, bad)
    G_indoor = tiny_G("tiny-spatial-indoor")
    seedless = synthesis.spec_from_seed(G_indoor, 0)
    seedless.style_seeds = None
    with pytest.raises(ValueError, match="no style_seeds"):
        synthesis.check_spec(G_indoor, seedless)


def test_gradients_reach_ws_and_features_come_back(G_spatial):
    """Drag and projection optimise ws through the API: nothing in it may cut the graph."""
    spec = synthesis.spec_from_seed(G_spatial, 1)
    ws = synthesis.map_ws(G_spatial, synthesis.z_from_seed(G_spatial, 2), spec).clone().requires_grad_(True)
    img, feats = synthesis.synthesize_ws(G_spatial, ws, spec, return_features=True)
    assert sorted(feats) == list(G_spatial.synthesis.block_resolutions)
    assert feats[8].shape[-2:] == (8, 8) and feats[8].requires_grad
    (feats[8].square().mean() + img.mean()).backward()
    assert ws.grad is not None and ws.grad.abs().sum() > 0
    assert all(p.grad is None for p in G_spatial.parameters())  # G stays frozen
    with torch.no_grad():  # the same image as without features, and repeatable (const noise)
        again = synthesis.synthesize_ws(G_spatial, ws, spec)
    assert torch.equal(again, img.detach())
    # Without inputs that need gradients no graph is built (the editor pays nothing).
    plain = synthesis.synthesize(G_spatial, synthesis.z_from_seed(G_spatial, 2), spec)
    assert not plain.requires_grad


def test_noise_buffers_are_the_const_noise(G_spatial):
    bufs = G_spatial.synthesis.noise_buffers()
    assert "b8.conv0" in bufs and bufs["b8.conv0"].shape == (8, 8)
    assert len(bufs) == sum(1 for n, _ in G_spatial.synthesis.named_buffers() if n.endswith("noise_const"))
    import copy

    G = copy.deepcopy(G_spatial)
    for module in G.synthesis.modules():  # noise strengths start at 0: give the noise an effect
        if hasattr(module, "noise_strength"):
            module.noise_strength.fill_(0.5)
    spec, z = synthesis.spec_from_seed(G, 1), synthesis.z_from_seed(G, 2)
    before = synthesis.synthesize(G, z, spec)
    G.synthesis.noise_buffers()["b8.conv0"].add_(1)  # the dict holds the module's own buffers
    assert not torch.equal(synthesis.synthesize(G, z, spec), before)


def test_flatten_ws_carry_the_heatmaps_so_a_spec_is_refused():
    preset = config.load_preset("tiny-spatial")
    preset["spatial"] = dict(preset["spatial"], encoding="flatten")
    G_kwargs, _ = config.network_kwargs(preset, 16, 3, 0, fp32=True)
    G = networks.Generator(**G_kwargs).eval().requires_grad_(False)
    spec, z = synthesis.spec_from_seed(G, 1), synthesis.z_from_seed(G, 2)
    ws = synthesis.map_ws(G, z, spec)
    assert torch.allclose(synthesis.synthesize_ws(G, ws), synthesis.synthesize(G, z, spec), atol=1e-5)
    with pytest.raises(ValueError, match="edit the spec before map_ws"):
        synthesis.synthesize_ws(G, ws, spec)


def test_options_after_the_spec_are_keyword_only(G_spatial):
    spec, z = synthesis.spec_from_seed(G_spatial, 1), synthesis.z_from_seed(G_spatial, 2)
    ws = synthesis.map_ws(G_spatial, z, spec)
    with pytest.raises(TypeError):
        synthesis.synthesize_ws(G_spatial, ws, spec, torch.zeros(1, 0))  # c, or noise_mode? ambiguous
