"""Fréchet Inception Distance (Heusel et al. 2017).

FID = ||mu_g - mu_r||^2 + Tr(S_g + S_r - 2 sqrtm(S_g S_r)) on 2048-d Inception pool3 features; the
matrix square root is `scipy.linalg.sqrtm` and only its real part is kept (numerical noise can make it
slightly complex). Covariances divide by N (see metric_utils.FeatureStats).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from metrics import metric_utils


def fid_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """FID between Gaussians (mu `[D]`, sigma `[D, D]`)."""
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics shapes differ: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    mean_term = np.square(mu1 - mu2).sum()
    root = scipy.linalg.sqrtm(np.dot(sigma1, sigma2))
    root = root[0] if isinstance(root, tuple) else root  # older SciPy returned (root, error) on request
    return float(np.real(mean_term + np.trace(sigma1 + sigma2 - root * 2)))


def compute_fid(opts: metric_utils.MetricOptions, max_real: int | None, num_gen: int,
                **dataset_overrides) -> float:
    """FID of `num_gen` generated images against (up to `max_real`) real images."""
    mu_r, sigma_r = metric_utils.compute_feature_stats_for_dataset(
        opts, "inception", max_items=max_real, capture_mean_cov=True, **dataset_overrides).get_mean_cov()
    mu_g, sigma_g = metric_utils.compute_feature_stats_for_generator(
        opts, "inception", num_gen, capture_mean_cov=True).get_mean_cov()
    if opts.rank != 0:
        return float("nan")
    return fid_from_stats(mu_g, sigma_g, mu_r, sigma_r)
