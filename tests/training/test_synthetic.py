"""Tests for training/synthetic.py: determinism, masks vs pixels, centres, and the label-free segmenter."""

import numpy as np
import pytest
import scipy.ndimage

from training import synthetic


@pytest.mark.parametrize("kind", synthetic.KINDS)
def test_render_is_deterministic_and_varies_with_index(kind):
    a = synthetic.render(kind, 32, seed=3, index=5)
    b = synthetic.render(kind, 32, seed=3, index=5)
    assert a.image.tobytes() == b.image.tobytes()
    assert np.array_equal(a.masks, b.masks) and a.classes == b.classes
    assert a.image.tobytes() != synthetic.render(kind, 32, seed=3, index=6).image.tobytes()
    assert a.image.tobytes() != synthetic.render(kind, 32, seed=4, index=5).image.tobytes()


@pytest.mark.parametrize("kind", synthetic.KINDS)
@pytest.mark.parametrize("res", [16, 64])
def test_render_shapes_and_types(kind, res):
    s = synthetic.render(kind, res, seed=0, index=1)
    k = len(s.classes)
    assert s.image.shape == (res, res, 3) and s.image.dtype == np.uint8
    assert s.masks.shape == (k, res, res) and s.masks.dtype == bool
    assert s.centers.shape == (k, 2)
    assert k == (1 if kind == "shapes" else 3)
    assert all(m.any() for m in s.masks)
    assert s.image.std() > 5  # not a flat image


def test_rooms_have_three_distinct_classes_with_bed():
    for index in range(6):
        s = synthetic.render("rooms", 32, seed=0, index=index)
        assert len(set(s.classes)) == 3 and "bed" in s.classes
        assert set(s.classes) <= set(synthetic.ROOM_CLASSES)


@pytest.mark.parametrize("kind", synthetic.KINDS)
def test_centers_are_mask_centroids(kind):
    s = synthetic.render(kind, 64, seed=1, index=2)
    for mask, center in zip(s.masks, s.centers):
        cy, cx = scipy.ndimage.center_of_mass(mask)
        np.testing.assert_allclose(center, [(cx + 0.5) / 64, (cy + 0.5) / 64], atol=1e-5)
        assert 0 < center[0] < 1 and 0 < center[1] < 1


@pytest.mark.parametrize("kind", synthetic.KINDS)
def test_masks_agree_with_pixels(kind):
    """Inside (eroded) masks pixels are colourful; outside (dilated) masks they are background-grey."""
    for index in range(3):
        s = synthetic.render(kind, 64, seed=0, index=index)
        _, sat, _ = synthetic.rgb_to_hsv(s.image / 255.0)
        union = s.masks.any(axis=0)
        # Anti-aliased edges (coverage < 0.5) may tint the 8-neighbourhood of a mask, nothing further out.
        outside = ~scipy.ndimage.binary_dilation(union, structure=np.ones((3, 3)))
        assert sat[outside].max() <= synthetic.BG_MAX_SAT + 0.02
        for mask in s.masks:
            inner = scipy.ndimage.binary_erosion(mask, iterations=1)
            # Most of an object is saturated colour (eyes/pupils of the creature are the exception).
            assert (sat[inner] > 0.3).mean() > 0.75


def test_room_masks_are_disjoint_and_hues_match_class():
    s = synthetic.render("rooms", 64, seed=0, index=7)
    assert s.masks.sum(axis=0).max() == 1
    hue, sat, _ = synthetic.rgb_to_hsv(s.image / 255.0)
    for cls, mask in zip(s.classes, s.masks):
        lo, hi = synthetic._ROOM_HUE_SEGMENT[cls]
        colourful = scipy.ndimage.binary_erosion(mask) & (sat > 0.3)
        assert (((hue[colourful] - lo) % 360) <= hi - lo).mean() > 0.95


def test_recolouring_background_keeps_segmentation():
    """Objects are defined by their own pixels: replacing everything outside the masks changes nothing."""
    s = synthetic.render("rooms", 64, seed=2, index=0)
    union = scipy.ndimage.binary_dilation(s.masks.any(axis=0), structure=np.ones((3, 3)))
    img = s.image.copy()
    img[~union] = (90, 90, 95)  # a different grey background
    masks_a, classes_a = synthetic.segment("rooms", s.image)
    masks_b, classes_b = synthetic.segment("rooms", img)
    assert classes_a == classes_b
    assert np.array_equal(masks_a, masks_b)


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


@pytest.mark.parametrize("kind", synthetic.KINDS)
def test_segment_recovers_rendered_objects(kind):
    ious = []
    for index in range(4):
        s = synthetic.render(kind, 64, seed=0, index=index)
        masks, classes = synthetic.segment(kind, s.image.transpose(2, 0, 1))  # CHW input
        assert sorted(classes) == sorted(s.classes)
        for cls, true in zip(s.classes, s.masks):
            ious.append(_iou(masks[classes.index(cls)], true))
    assert min(ious) > 0.7 and np.mean(ious) > 0.8


def test_segment_finds_nothing_on_grey_image():
    masks, classes = synthetic.segment("rooms", np.full((32, 32, 3), 128, np.uint8))
    assert masks.shape == (0, 32, 32) and classes == []
    masks, classes = synthetic.segment("shapes", np.full((3, 32, 32), 128, np.uint8))
    assert classes == []


def test_hsv_round_trip():
    rng = np.random.default_rng(0)
    rgb = rng.uniform(0, 1, size=(50, 3))
    back = synthetic.hsv_to_rgb(*synthetic.rgb_to_hsv(rgb))
    np.testing.assert_allclose(back, rgb, atol=1e-9)


@pytest.mark.parametrize("kind,res", [("clouds", 32), ("shapes", 48), ("rooms", 2)])
def test_render_rejects_bad_arguments(kind, res):
    with pytest.raises(ValueError):
        synthetic.render(kind, res, seed=0, index=0)
