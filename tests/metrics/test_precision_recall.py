import numpy as np
import pytest

from metrics.precision_recall import precision_recall


def test_identical_sets_have_full_precision_and_recall():
    x = np.random.RandomState(0).randn(200, 5)
    assert precision_recall(x, x.copy(), k=3, batch=64) == (1.0, 1.0)


def test_disjoint_far_sets_have_zero_precision_and_recall():
    rng = np.random.RandomState(0)
    p, r = precision_recall(rng.randn(150, 5), rng.randn(150, 5) + 100.0, k=3, batch=64)
    assert (p, r) == (0.0, 0.0)


def test_mode_dropping_lowers_recall_not_precision():
    rng = np.random.RandomState(1)
    real = np.concatenate([rng.randn(200, 2), rng.randn(200, 2) + 20])
    gen = rng.randn(200, 2)  # covers only the first mode
    p, r = precision_recall(real, gen, k=3, batch=100)
    assert p > 0.9 and 0.3 < r < 0.7


def test_batched_equals_unbatched():
    rng = np.random.RandomState(2)
    real, gen = rng.randn(120, 4), rng.randn(90, 4) * 1.3
    assert precision_recall(real, gen, batch=17) == precision_recall(real, gen, batch=1000)


def test_too_few_points_rejected():
    with pytest.raises(ValueError, match="k=3"):
        precision_recall(np.zeros([3, 2]), np.zeros([10, 2]))
