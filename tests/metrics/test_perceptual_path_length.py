import numpy as np
import pytest
import torch

from metrics import detectors, metric_utils
from metrics import perceptual_path_length as ppl


class FakeVGG:
    name, identity = "vgg16", "fake"

    def lpips(self, images):
        return images.flatten(1) / 255


def test_slerp_endpoints_and_norm():
    a, b = torch.randn(4, 6), torch.randn(4, 6)
    an, bn = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    assert torch.allclose(ppl.slerp(a, b, torch.zeros(4, 1)), an, atol=1e-5)
    assert torch.allclose(ppl.slerp(a, b, torch.ones(4, 1)), bn, atol=1e-5)
    assert torch.allclose(ppl.slerp(a, b, torch.rand(4, 1)).norm(dim=1), torch.ones(4), atol=1e-5)


def test_filtered_mean_drops_outliers():
    x = np.concatenate([np.ones(198), [1e6, -1e6]])
    assert ppl.filtered_mean(x) == pytest.approx(1.0)


@pytest.mark.parametrize("res, side", [(64, 32), (256, 128), (512, 128), (1024, 128)])
def test_prepare_crops_and_scales(res, side):
    """The face crop (rows 3/8..7/8, columns 2/8..6/8), then a box filter by the FULL image's side / 256,
    as StyleGAN2-ADA: cropped 512² and 1024² images both end at 128²."""
    img = torch.zeros(1, 3, res, res)
    out = ppl._prepare(img, crop=True)
    assert out.shape == (1, 3, side, side) and torch.all(out == 127.5)
    assert ppl._prepare(img, crop=False).shape[-1] == min(res, 256)
    # Which pixels the crop keeps: a marker inside the window survives, one outside does not.
    marked = torch.full([1, 3, res, res], -1.0)
    marked[:, :, res * 3 // 8, res * 2 // 8] = 1.0   # first kept row and column
    marked[:, :, res * 3 // 8 - 1, :] = 1.0           # the row above the window
    kept = ppl._prepare(marked, crop=True)
    assert kept.max() > 0 and kept[:, :, 0].max() == kept.max() and kept[:, :, 1:].max() < kept.max()


@pytest.mark.parametrize("spatial", [dict(encoding="sel_indoor", sampler="multi_object", hidden_channels=8),
                                     dict(encoding="flatten", sampler="hierarchical")],
                         ids=["sel_indoor", "flatten"])
def test_ppl_runs_on_generators_with_object_latents_or_flattened_heatmaps(monkeypatch, spatial):
    """Indoor networks need per-object latents and the flatten ablation a heatmap vector for its mapping
    network: PPL supplies both (one spec for both ends of a pair)."""
    from training.networks import Generator

    monkeypatch.setattr(detectors, "get_detector", lambda name, source=None, device="cpu": FakeVGG())
    torch.manual_seed(0)
    G = Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3, mapping_kwargs=dict(num_layers=1),
                  synthesis_kwargs=dict(channel_base=64, channel_max=8, num_fp16_res=0, conv_clamp=None),
                  spatial_kwargs=spatial).eval()
    opts = metric_utils.MetricOptions(G=G, progress=False)
    for space in ("w", "z"):
        value = ppl.compute_ppl(opts, 4, space, "end", crop=False, batch_size=2)
        assert np.isfinite(value) and value > 0


@pytest.mark.parametrize("space,sampling", [("w", "end"), ("z", "full")])
def test_ppl_zero_for_constant_generator_positive_otherwise(stub_G, monkeypatch, space, sampling):
    monkeypatch.setattr(detectors, "get_detector", lambda name, source=None, device="cpu": FakeVGG())
    opts = metric_utils.MetricOptions(G=stub_G, progress=False)
    value = ppl.compute_ppl(opts, 8, space, sampling, crop=False, batch_size=4)
    assert value > 0
    with torch.no_grad():
        stub_G.proj.weight.zero_()  # image no longer depends on the latent
    assert ppl.compute_ppl(opts, 8, space, sampling, crop=False, batch_size=4) == pytest.approx(0.0, abs=1e-6)


def test_ppl_rejects_bad_space(stub_G):
    with pytest.raises(ValueError, match="space"):
        ppl.compute_ppl(metric_utils.MetricOptions(G=stub_G, progress=False), 4, "x", "end", crop=False)
