"""Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2 with a cubic polynomial kernel.

n = feature dim, m = min(#real, #gen, max_subset_size); k(x, y) = (x.y / n + 1)^3. For each of
`num_subsets` random subsets (x from generated, y from real, drawn without replacement):
t += (sum of off-diagonal K_xx + K_yy) / (m - 1) - 2 sum(K_xy) / m; KID = t / num_subsets / m.
"""

from __future__ import annotations

import numpy as np

from metrics import metric_utils


def kid_from_features(gen: np.ndarray, real: np.ndarray, num_subsets: int = 100, max_subset_size: int = 1000,
                      seed: int = 0) -> float:
    """KID between features `gen [Ng, D]` and `real [Nr, D]` (float)."""
    if gen.ndim != 2 or real.ndim != 2 or gen.shape[1] != real.shape[1]:
        raise ValueError(f"features must be [N, D] with equal D, got {list(gen.shape)} and "
                         f"{list(real.shape)}")
    n = gen.shape[1]
    m = min(gen.shape[0], real.shape[0], max_subset_size)
    if m < 2:
        raise ValueError(f"KID needs at least 2 items on each side, got {gen.shape[0]} and {real.shape[0]}")
    rng = np.random.RandomState(seed)
    t = 0.0
    for _ in range(num_subsets):
        x = gen[rng.choice(gen.shape[0], m, replace=False)].astype(np.float64)
        y = real[rng.choice(real.shape[0], m, replace=False)].astype(np.float64)
        a = (x @ x.T / n + 1) ** 3 + (y @ y.T / n + 1) ** 3
        b = (x @ y.T / n + 1) ** 3
        t += (a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m
    return float(t / num_subsets / m)


def compute_kid(opts: metric_utils.MetricOptions, max_real: int | None, num_gen: int, num_subsets: int = 100,
                max_subset_size: int = 1000, **dataset_overrides) -> float:
    real = metric_utils.compute_feature_stats_for_dataset(
        opts, "inception", max_items=max_real, capture_all=True, **dataset_overrides).get_all()
    gen = metric_utils.compute_feature_stats_for_generator(opts, "inception", num_gen,
                                                           capture_all=True).get_all()
    if opts.rank != 0:
        return float("nan")
    return kid_from_features(gen, real, num_subsets, max_subset_size, seed=opts.seed)
