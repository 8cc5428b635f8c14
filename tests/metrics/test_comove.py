"""Co-move ratio on constructed generators: discs drawn exactly at the heatmap centres (ratio ~ 1) or at
places that ignore the heatmap (ratio 0), segmented by a colour-threshold segmenter of the test's own."""

import math

import numpy as np
import pytest
import torch

from metrics import comove, metric_utils
from training.heatmaps import HeatmapSpec

COLOURS = torch.tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0]])  # red, blue in [-1, 1]


def sampler(batch_size, generator=None, device="cpu"):
    centers = torch.rand([batch_size, 2, 2], generator=generator, device=device) * 0.6 + 0.2
    return HeatmapSpec(centers=[centers], sigmas=[torch.full([batch_size, 2], 0.1, device=device)],
                       kind="test")


class DiscGenerator(torch.nn.Module):
    """Two coloured discs on grey at the spec centres (follow=True), or (follow=False) an image that ignores
    the spec: its left half red, its right half blue, so every centre lands on an object that never moves."""

    def __init__(self, follow: bool, resolution: int = 64):
        super().__init__()
        self.follow, self.z_dim, self.c_dim = follow, 4, 0
        self.img_resolution, self.img_channels, self.heatmap_sampler = resolution, 3, sampler

    def forward(self, z, c, heatmaps=None, truncation_psi=1, noise_mode="random", generator=None):
        r = self.img_resolution
        pix = (torch.arange(r) + 0.5) / r
        yy, xx = torch.meshgrid(pix, pix, indexing="ij")
        if not self.follow:
            left = (xx < 0.5).float()
            return (COLOURS[0].view(3, 1, 1) * left + COLOURS[1].view(3, 1, 1) * (1 - left)).expand(z.shape[0], 3, r, r)
        centers = heatmaps.centers[0]
        img = torch.zeros([z.shape[0], 3, r, r])
        for k in range(2):
            cx, cy = centers[:, k, 0].view(-1, 1, 1), centers[:, k, 1].view(-1, 1, 1)
            disc = ((xx - cx) ** 2 + (yy - cy) ** 2 <= 0.08 ** 2).float()[:, None]
            img = img * (1 - disc) + COLOURS[k].view(1, 3, 1, 1) * disc
        return img


def colour_segmenter(image):
    x = image.int()
    red = (x[0] > 200) & (x[1] < 80) & (x[2] < 80)
    blue = (x[2] > 200) & (x[0] < 80) & (x[1] < 80)
    return torch.stack([red, blue]), ["red", "blue"]


def _run(G, n=24, segmenter=colour_segmenter):
    opts = metric_utils.MetricOptions(G=G, progress=False, segmenter=segmenter, seed=1)
    return comove.compute_comove(opts, n, batch_size=8)


def test_generator_following_heatmap_has_ratio_one():
    out = _run(DiscGenerator(follow=True))
    assert out["comove_ratio"] == pytest.approx(1.0, abs=0.08)
    assert out["comove_used"] + out["comove_skipped"] == 24 and out["comove_used"] >= 20
    assert out["comove_sem"] == pytest.approx(out["comove_std"] / math.sqrt(out["comove_used"]))


def test_generator_ignoring_heatmap_has_ratio_zero():
    out = _run(DiscGenerator(follow=False))
    assert out["comove_used"] == 24  # every centre lies on one of the two halves
    assert out["comove_ratio"] == pytest.approx(0.0, abs=1e-6)


def test_samples_without_objects_are_skipped_and_counted():
    def nothing(img):
        return torch.zeros([0, 64, 64], dtype=torch.bool), []

    out = _run(DiscGenerator(follow=True), n=8, segmenter=nothing)
    assert out["comove_used"] == 0 and out["comove_skipped_no_object"] == 8
    assert math.isnan(out["comove_ratio"])


def test_helpers():
    masks = torch.zeros([2, 8, 8], dtype=torch.bool)
    masks[0, 2:6, 2:6] = True
    masks[1, 3:5, 3:5] = True
    assert comove.object_at(masks, 0.5, 0.5) == 1  # the smallest mask under the point
    assert comove.object_at(masks, 0.05, 0.05) is None
    assert torch.allclose(comove.centroid(masks[0]), torch.tensor([0.5, 0.5]))
    rng = np.random.RandomState(0)
    for _ in range(50):
        dx, dy = comove.draw_offset(rng, 0.95, 0.05)
        assert 0.1 <= math.hypot(dx, dy) <= 0.25 and 0 <= 0.95 + dx <= 1 and 0 <= 0.05 + dy <= 1
    assert comove.match_object(torch.tensor([1.0, 0, 0]), "a", torch.tensor([[1.0, 0, 0], [0.9, 0, 0]]),
                               ["b", "a"]) == 1  # class first, then colour


def test_baseline_generator_and_missing_segmenter_rejected():
    G = DiscGenerator(follow=True)
    G.heatmap_sampler = None
    with pytest.raises(ValueError, match="spatial"):
        _run(G)
    with pytest.raises(ValueError, match="segmenter"):
        comove.get_segmenter("nope")
    with pytest.raises(RuntimeError, match="segmenter-weights"):
        comove.get_segmenter("maskrcnn", None)


def test_segmenter_defaults_to_the_synthetic_dataset_kind():
    from metrics import comove, metric_utils

    opts = metric_utils.MetricOptions(dataset_kwargs={"data": "synthetic:rooms:32"})
    assert comove.default_segmenter(opts) == "synthetic:rooms"
    opts = metric_utils.MetricOptions(dataset_kwargs={"data": "/data/bedroom.zip"}, segmenter="maskrcnn")
    assert comove.default_segmenter(opts) == "maskrcnn"
    with pytest.raises(ValueError, match="bedroom.zip"):
        comove.default_segmenter(metric_utils.MetricOptions(dataset_kwargs={"data": "/data/bedroom.zip"}))
