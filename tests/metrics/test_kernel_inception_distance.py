import numpy as np
import pytest

from metrics.kernel_inception_distance import kid_from_features


def test_kid_unbiased_for_identical_distributions():
    values = []
    for seed in range(8):
        rng = np.random.RandomState(seed)
        values.append(kid_from_features(rng.randn(300, 8), rng.randn(300, 8), num_subsets=10,
                                        max_subset_size=100, seed=seed))
    # Unbiased: individual estimates scatter around 0 (both signs), their mean is ~0.
    assert abs(np.mean(values)) < 3 * np.std(values) / np.sqrt(len(values)) + 1e-3
    assert min(values) < 0 < max(values) or abs(np.mean(values)) < 1e-3


def test_kid_positive_for_different_distributions():
    rng = np.random.RandomState(0)
    same = kid_from_features(rng.randn(300, 8), rng.randn(300, 8), num_subsets=10, max_subset_size=100)
    diff = kid_from_features(rng.randn(300, 8), rng.randn(300, 8) + 1.0, num_subsets=10, max_subset_size=100)
    assert diff > 0.1 and diff > 10 * abs(same)


def test_kid_rejects_bad_shapes():
    with pytest.raises(ValueError, match="features"):
        kid_from_features(np.zeros([5, 3]), np.zeros([5, 4]))
