"""Co-move ratio on constructed generators: discs drawn exactly at the heatmap centres (ratio ~ 1) or at
places that ignore the heatmap (ratio 0), segmented by a colour-threshold segmenter of the test's own."""

import datetime
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


def _run(G, n=24, segmenter=colour_segmenter, opts_out=None):
    opts = metric_utils.MetricOptions(G=G, progress=False, segmenter=segmenter, seed=1)
    if opts_out is not None:
        opts_out.append(opts)
    return comove.compute_comove(opts, n, batch_size=8)


def test_generator_following_heatmap_has_ratio_one():
    used = []
    out = _run(DiscGenerator(follow=True), opts_out=used)
    assert used[0].detectors_used == {"segmenter": "colour_segmenter"}  # the result line names it
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
    with pytest.raises(ValueError, match="segmenter-weights"):
        comove.get_segmenter("maskrcnn", None)


def test_segmenter_defaults_to_the_synthetic_dataset_kind():
    from metrics import comove, metric_utils

    opts = metric_utils.MetricOptions(dataset_kwargs={"data": "synthetic:rooms:32"})
    assert comove.default_segmenter(opts) == "synthetic:rooms"
    opts = metric_utils.MetricOptions(dataset_kwargs={"data": "/data/bedroom.zip"}, segmenter="maskrcnn")
    assert comove.default_segmenter(opts) == "maskrcnn"
    with pytest.raises(ValueError, match="bedroom.zip"):
        comove.default_segmenter(metric_utils.MetricOptions(dataset_kwargs={"data": "/data/bedroom.zip"}))


# ---------------------------------------------------------------------------------------------------
# Mask R-CNN weights files: every way a file can be wrong gives one ValueError / OSError naming it.


def _maskrcnn_state(num_classes=3):
    """A complete maskrcnn_resnet50_fpn state dict whose tensors are zero-stride views of one zero, so the
    file is ~100 kB (the architecture comes from a meta-device build: no weights are allocated)."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    with torch.device("meta"):
        model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes)
    return {k: torch.zeros((), dtype=v.dtype).expand(v.shape) for k, v in model.state_dict().items()}


def _refusal(path, error=ValueError) -> str:
    with pytest.raises(error) as info:
        comove.get_segmenter("maskrcnn", str(path))
    message = str(info.value)
    assert str(path) in message and "\n" not in message  # one line that names the file
    return message


def test_maskrcnn_weights_that_are_not_a_checkpoint(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("these are not weights\n")
    assert "not a PyTorch checkpoint" in _refusal(text)
    good = tmp_path / "good.pt"
    torch.save(_maskrcnn_state(), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert "truncated" in _refusal(truncated)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert "not a PyTorch checkpoint" in _refusal(empty)
    pickled = tmp_path / "object.pt"
    torch.save(datetime.date(2020, 1, 1), pickled)  # refused by weights_only: never unpickled
    assert "Python objects" in _refusal(pickled)
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], listed)
    assert "not a state dict" in _refusal(listed)


def test_maskrcnn_weights_missing_or_unreadable_file(tmp_path):
    assert "No such file" in _refusal(tmp_path / "missing.pt", OSError)
    assert "directory" in _refusal(tmp_path, OSError)


def test_maskrcnn_weights_of_another_model(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(4, 3, 3, 3)}, other)
    message = _refusal(other)
    assert "not Mask R-CNN weights" in message and "roi_heads.box_predictor.cls_score.weight" in message
    state = _maskrcnn_state()
    del state["backbone.body.conv1.weight"]
    state["extra.weight"] = torch.zeros(1)
    partial = tmp_path / "partial.pt"
    torch.save(state, partial)
    message = _refusal(partial)
    assert "missing keys backbone.body.conv1.weight" in message and "unexpected keys extra.weight" in message
    state = _maskrcnn_state()
    state["roi_heads.mask_predictor.mask_fcn_logits.weight"] = torch.zeros(5, 256, 1, 1)  # 5 classes, not 3
    mixed = tmp_path / "mixed.pt"
    torch.save(state, mixed)
    message = _refusal(mixed)
    assert "mask_fcn_logits.weight is [5, 256, 1, 1], expected [3, 256, 1, 1]" in message


def test_maskrcnn_weights_accepted_plain_or_in_a_training_checkpoint(tmp_path):
    state = _maskrcnn_state(num_classes=4)
    plain, wrapped = tmp_path / "plain.pt", tmp_path / "wrapped.pt"
    torch.save(state, plain)
    torch.save({"model": state, "epoch": 3}, wrapped)
    for path in (plain, wrapped):
        loaded, num_classes = comove.load_maskrcnn_state(str(path))
        assert num_classes == 4 and loaded.keys() == state.keys()
        assert loaded["roi_heads.box_predictor.cls_score.weight"].shape == (4, 1024)


@pytest.mark.slow
def test_maskrcnn_segmenter_runs_on_loaded_weights(tmp_path):
    path = tmp_path / "zeros.pt"
    torch.save(_maskrcnn_state(), path)
    segment = comove.get_segmenter("maskrcnn", str(path))
    masks, classes = segment(torch.zeros([3, 32, 32], dtype=torch.uint8))
    # All-zero weights score every class equally (1/3 < 0.5), so nothing is detected.
    assert masks.dtype == torch.bool and masks.shape == (0, 32, 32) and classes == []
