import numpy as np
import pytest

from metrics.inception_score import inception_score


def test_confident_uniform_classes_give_number_of_classes():
    probs = np.eye(10)[np.arange(1000) % 10] * 0.999 + 0.0001
    mean, std = inception_score(probs, num_splits=10)
    assert mean == pytest.approx(10, rel=0.02) and std < 1e-6


def test_identical_predictions_give_one():
    probs = np.tile(np.array([[0.2, 0.3, 0.5]]), (100, 1))
    assert inception_score(probs, 10)[0] == pytest.approx(1.0)


def test_rejects_too_few_items():
    with pytest.raises(ValueError, match="num_splits"):
        inception_score(np.ones([5, 3]) / 3, 10)
