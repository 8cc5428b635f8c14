"""Improved precision and recall (Kynkäänniemi et al. 2019) on VGG16 fc2 features, k = 3.

Each point of a manifold gets a radius = distance to its k-th nearest neighbour other than itself (the
(k+1)-th smallest distance including the zero self-distance). precision = fraction of generated points
inside at least one real ball; recall = fraction of real points inside at least one generated ball.
Distances come from `torch.cdist` in row/column batches so memory stays bounded.
"""

from __future__ import annotations

import numpy as np
import torch

from metrics import metric_utils


def _radii(points: torch.Tensor, k: int, batch: int) -> torch.Tensor:
    """Distance of every point `[N, D]` to its k-th nearest other point -> `[N]`."""
    out = []
    for i in range(0, points.shape[0], batch):
        dist = torch.cat([torch.cdist(points[i:i + batch], points[j:j + batch])
                          for j in range(0, points.shape[0], batch)], dim=1)
        out.append(dist.kthvalue(k + 1, dim=1).values)
    return torch.cat(out)


def _coverage(manifold: torch.Tensor, radii: torch.Tensor, probes: torch.Tensor, batch: int) -> float:
    """Fraction of `probes` that lie inside at least one ball (manifold[i], radii[i])."""
    inside = []
    for i in range(0, probes.shape[0], batch):
        hit = torch.zeros(probes[i:i + batch].shape[0], dtype=torch.bool, device=probes.device)
        for j in range(0, manifold.shape[0], batch):
            dist = torch.cdist(probes[i:i + batch], manifold[j:j + batch])
            hit |= (dist <= radii[None, j:j + batch]).any(dim=1)
        inside.append(hit)
    return float(torch.cat(inside).float().mean())


def precision_recall(real: np.ndarray | torch.Tensor, gen: np.ndarray | torch.Tensor, k: int = 3,
                     batch: int = 10000, device: torch.device | str = "cpu") -> tuple[float, float]:
    """(precision, recall) of generated features `[Ng, D]` against real features `[Nr, D]`."""
    real = torch.as_tensor(real, dtype=torch.float32, device=device)
    gen = torch.as_tensor(gen, dtype=torch.float32, device=device)
    if min(real.shape[0], gen.shape[0]) <= k:
        raise ValueError(f"k={k} needs more than k points per set, got {real.shape[0]} real, "
                         f"{gen.shape[0]} generated")
    precision = _coverage(real, _radii(real, k, batch), gen, batch)
    recall = _coverage(gen, _radii(gen, k, batch), real, batch)
    return precision, recall


def compute_pr(opts: metric_utils.MetricOptions, max_real: int | None, num_gen: int, k: int = 3,
               batch: int = 10000, **dataset_overrides) -> tuple[float, float]:
    real = metric_utils.compute_feature_stats_for_dataset(
        opts, "vgg16", max_items=max_real, capture_all=True, **dataset_overrides).get_all()
    gen = metric_utils.compute_feature_stats_for_generator(opts, "vgg16", num_gen, capture_all=True).get_all()
    if opts.rank != 0:
        return float("nan"), float("nan")
    return precision_recall(real, gen, k=k, batch=batch, device=opts.device)
