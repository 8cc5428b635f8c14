"""editing/synthesis.py: seeded latents and heatmaps, broadcasting, the W path, baseline errors."""

import numpy as np
import pytest
import torch

from editing import synthesis
from training import config, networks


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
    assert synthesis.class_label(tiny_G("tiny"), None).shape == (1, 0)


def test_load_generator_round_trip(tmp_path, G_spatial):
    from training import checkpoint

    path = tmp_path / "snap.pt"
    checkpoint.save_snapshot(path, dict(networks=dict(G_ema=checkpoint.pack_module(G_spatial))))
    G2 = synthesis.load_generator(str(path))
    z, spec = synthesis.z_from_seed(G2, 1), synthesis.spec_from_seed(G2, 1)
    assert torch.equal(synthesis.synthesize(G2, z, spec), synthesis.synthesize(G_spatial, z, spec))
