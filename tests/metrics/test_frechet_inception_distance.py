import numpy as np
import pytest

from metrics import metric_utils
from metrics.frechet_inception_distance import compute_fid, fid_from_stats


def _stats(x):
    s = metric_utils.FeatureStats(capture_mean_cov=True)
    s.append(x)
    return s.get_mean_cov()


def test_fid_of_a_set_with_itself_is_zero():
    x = np.random.RandomState(0).randn(500, 16)
    mu, sigma = _stats(x)
    assert abs(fid_from_stats(mu, sigma, mu, sigma)) < 1e-6


def test_fid_of_shifted_gaussian_equals_closed_form():
    rng = np.random.RandomState(1)
    x = rng.randn(2000, 8) @ rng.randn(8, 8) * 0.3
    shift = rng.randn(8)
    mu1, s1 = _stats(x)
    mu2, s2 = _stats(x + shift)  # same covariance, mean moved: FID = ||shift||^2
    assert fid_from_stats(mu1, s1, mu2, s2) == pytest.approx(np.square(shift).sum(), rel=1e-4, abs=1e-6)


def test_fid_of_scaled_gaussians_matches_trace_formula():
    d = 4
    s1, s2 = np.eye(d) * 1.0, np.eye(d) * 4.0  # Tr(S1 + S2 - 2 sqrt(S1 S2)) = d (1 + 4 - 4) = d
    assert fid_from_stats(np.zeros(d), s1, np.zeros(d), s2) == pytest.approx(d)


def test_fid_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes"):
        fid_from_stats(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_compute_fid_end_to_end_with_fake_detector(stub_G, toy_dataset, fake_detector):
    opts = metric_utils.MetricOptions(G=stub_G, dataset=toy_dataset, progress=False, batch_size=16)
    value = compute_fid(opts, None, 48)
    assert np.isfinite(value) and value > 0
    assert fake_detector.images_seen == 40 + 48
