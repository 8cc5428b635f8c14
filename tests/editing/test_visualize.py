"""Tests for editing/visualize.py: shapes, dtype and centre markers."""

import numpy as np
import pytest
import torch

from editing.edits import remove
from editing.visualize import MARKER_COLOURS, colormap, heatmap_image, overlay, to_image
from training.heatmaps import HeatmapSpec, build_sampler


def _spec():
    # Two samples, one level of two centres at known pixels (64 px: x = 16, y = 40 and x = 48, y = 8).
    centers = torch.tensor([[[0.25 + 0.5 / 64, 0.625 + 0.5 / 64], [0.75 + 0.5 / 64, 0.125 + 0.5 / 64]]] * 2)
    return HeatmapSpec(centers=[centers], sigmas=[torch.full((2, 2), 0.1)])


def test_heatmap_image_shapes_and_markers():
    spec = build_sampler("hierarchical")(3, generator=0)
    img = heatmap_image(spec, sample=1, resolution=32)
    assert img.dtype == np.uint8 and img.shape == (32, 96, 3)
    one = heatmap_image(spec, sample=1, resolution=32, level=2)
    assert one.shape == (32, 32, 3)
    assert np.array_equal(one, img[:, 64:])  # the level panel equals the side-by-side one
    marked = heatmap_image(_spec(), 0, 64)
    cyan = MARKER_COLOURS[0]
    assert (marked[40, 16] == cyan).all() and (marked[8, 48] == cyan).all()
    assert not (marked[30, 30] == cyan).all()
    # Brightest near the centre, dark in the far corner.
    assert marked[40, 20].sum() > marked[63, 63].sum()


def test_dead_centres_and_colormap():
    spec = remove(_spec(), 1)
    img = heatmap_image(spec, 0, 64)
    assert not (img[8, 48] == MARKER_COLOURS[0]).all() and (img[40, 16] == MARKER_COLOURS[0]).all()
    cm = colormap(np.linspace(0, 1, 256))
    assert cm.shape == (256, 3) and cm.dtype == np.uint8
    assert cm.sum(1)[-1] > cm.sum(1)[0]
    assert not any((cm == c).all(1).any() for c in MARKER_COLOURS)


def test_overlay():
    base = np.full((64, 64, 3), 100, np.uint8)
    out = overlay(base, _spec(), sample=1, alpha=0.6)
    assert out.dtype == np.uint8 and out.shape == base.shape
    assert (out[40, 16] == MARKER_COLOURS[0]).all()
    assert not np.array_equal(out[36, 16], base[36, 16])        # tinted near a centre
    assert np.array_equal(overlay(base, _spec(), 1, alpha=0.0)[36, 16], base[36, 16])
    tiny = HeatmapSpec(centers=[torch.tensor([[[0.1, 0.1]]])], sigmas=[torch.tensor([[0.02]])])
    far = overlay(base, tiny, 0, 1.0)
    assert np.array_equal(far[60, 60], base[60, 60])             # m ~ 0 far away -> unchanged
    with pytest.raises(ValueError, match="alpha"):
        overlay(base, _spec(), 0, alpha=2)
    with pytest.raises(ValueError, match="sample"):
        overlay(base, _spec(), 5)
    with pytest.raises(ValueError, match="image"):
        overlay(base[:, :32], _spec(), 0)


def test_to_image():
    img = torch.tensor([-1.0, 0.0, 1.0]).view(3, 1, 1).expand(3, 2, 2)
    out = to_image(img)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8 and out[0, 0].tolist() == [0, 128, 255]


def test_sample_index_accepts_integral_scalars_and_refuses_others():
    spec = build_sampler("hierarchical")(3, generator=0)
    expected = heatmap_image(spec, sample=1, resolution=16)
    assert np.array_equal(heatmap_image(spec, sample=np.int64(1), resolution=16), expected)
    assert np.array_equal(heatmap_image(spec, sample=torch.tensor(1), resolution=16), expected)
    with pytest.raises(ValueError, match="out of range"):
        heatmap_image(spec, sample=3, resolution=16)
    with pytest.raises(TypeError, match="sample"):
        heatmap_image(spec, sample=1.0, resolution=16)
