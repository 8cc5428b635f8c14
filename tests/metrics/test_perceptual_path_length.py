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


def test_prepare_crops_and_scales():
    img = torch.zeros(1, 3, 64, 64)
    out = ppl._prepare(img, crop=True)
    assert out.shape == (1, 3, 32, 32) and torch.all(out == 127.5)


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
