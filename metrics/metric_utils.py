"""Shared machinery of the metrics: options, real/generated feature extraction, the statistics cache.

Work is split in rank-friendly chunks: rank r processes items (or batches) r, r + num_gpus, ... and the
partial results are combined with `opts.gather` (identity for one process; a distributed all-gather that
concatenates along dim 0 plugs in here later).

Real-statistics cache: `dnnlib.cache_dir('gan-metrics')/<dataset>-<detector>-<md5>.npz`, the md5 taken over
`repr` of the sorted dict {dataset_kwargs, detector identity, stats options}. Written to a temp file and
renamed (atomic), so a killed run never leaves a half-written cache entry.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from dnnlib import util
from metrics import detectors


def _identity_gather(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass
class MetricOptions:
    """Everything a metric needs. `G` follows the Generator contract; `dataset` (optional) overrides
    opening `dataset_kwargs` with `training.dataset.open_dataset` (tests, callers holding a dataset)."""

    G: Any = None
    dataset_kwargs: dict = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    num_gpus: int = 1
    rank: int = 0
    cache: bool = True
    progress: bool = True
    detector_sources: dict = field(default_factory=dict)  # detector name -> source (path/URL/package)
    gather: Callable[[torch.Tensor], torch.Tensor] = _identity_gather
    seed: int = 0
    batch_size: int = 64
    num_workers: int = 0
    segmenter: Any = None
    segmenter_weights: str | None = None
    dataset: Any = None

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)
        for name in ("num_gpus", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not 0 <= self.rank < self.num_gpus:
            raise ValueError(f"rank={self.rank!r} must lie in [0, num_gpus={self.num_gpus})")

    def detector(self, name: str) -> detectors.Detector:
        return detectors.get_detector(name, self.detector_sources.get(name), self.device)


# ---------------------------------------------------------------------------------------------------
# Feature statistics.


class FeatureStats:
    """Accumulates features `[n, D]`: all of them (capture_all) and/or float64 running sums for mean/cov."""

    def __init__(self, capture_all: bool = False, capture_mean_cov: bool = False,
                 max_items: int | None = None) -> None:
        self.capture_all, self.capture_mean_cov, self.max_items = capture_all, capture_mean_cov, max_items
        self.num_items = 0
        self.num_features: int | None = None
        self.all: list[np.ndarray] = []
        self.raw_sum: np.ndarray | None = None
        self.raw_outer: np.ndarray | None = None

    def is_full(self) -> bool:
        return self.max_items is not None and self.num_items >= self.max_items

    def append(self, x: np.ndarray) -> None:
        """Add features `[n, D]` (float); items beyond max_items are dropped."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"features must be [n, D], got shape {list(x.shape)}")
        if self.max_items is not None:
            x = x[: max(self.max_items - self.num_items, 0)]
        if self.num_features is None:
            self.num_features = x.shape[1]
            if self.capture_mean_cov:
                self.raw_sum = np.zeros([x.shape[1]], np.float64)
                self.raw_outer = np.zeros([x.shape[1]] * 2, np.float64)
        self.num_items += x.shape[0]
        if self.capture_all:
            self.all.append(x)
        if self.capture_mean_cov:
            x64 = x.astype(np.float64)
            self.raw_sum += x64.sum(0)
            self.raw_outer += x64.T @ x64

    def gathered(self, gather: Callable[[torch.Tensor], torch.Tensor]) -> FeatureStats:
        """Combine the per-rank stats with `gather` (all-gather + concat along dim 0)."""
        if gather is _identity_gather:
            return self
        out = FeatureStats(self.capture_all, self.capture_mean_cov, self.max_items)
        if self.capture_all:
            out.append(gather(torch.from_numpy(self.get_all())).numpy())
        else:
            out.num_items = int(gather(torch.tensor([self.num_items])).sum())
        if self.capture_mean_cov:
            out.num_items = int(gather(torch.tensor([self.num_items])).sum())
            out.num_features = self.num_features
            out.raw_sum = gather(torch.from_numpy(self.raw_sum)[None]).sum(0).numpy()
            out.raw_outer = gather(torch.from_numpy(self.raw_outer)[None]).sum(0).numpy()
        return out

    def get_all(self) -> np.ndarray:
        """All captured features `[N, D]` float32."""
        if not self.capture_all:
            raise ValueError("get_all() needs capture_all=True")
        return np.concatenate(self.all) if self.all else np.zeros([0, self.num_features or 0], np.float32)

    def get_mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean `[D]` and covariance `[D, D]` (float64; the covariance divides by N, not N - 1)."""
        if not self.capture_mean_cov or self.num_items == 0:
            raise ValueError("get_mean_cov() needs capture_mean_cov=True and at least one item")
        mean = self.raw_sum / self.num_items
        return mean, self.raw_outer / self.num_items - np.outer(mean, mean)

    def to_arrays(self) -> dict[str, np.ndarray]:
        d = {"num_items": np.array(self.num_items),
             "flags": np.array([self.capture_all, self.capture_mean_cov])}
        if self.capture_all:
            d["all"] = self.get_all()
        if self.capture_mean_cov:
            d["raw_sum"], d["raw_outer"] = self.raw_sum, self.raw_outer
        return d

    @staticmethod
    def from_arrays(d: dict[str, np.ndarray]) -> FeatureStats:
        capture_all, capture_mean_cov = (bool(v) for v in d["flags"])
        stats = FeatureStats(capture_all, capture_mean_cov)
        if capture_all:
            stats.all = [d["all"]]
            stats.num_features = d["all"].shape[1]
        if capture_mean_cov:
            stats.raw_sum, stats.raw_outer = d["raw_sum"], d["raw_outer"]
            stats.num_features = stats.raw_sum.shape[0]
        stats.num_items = int(d["num_items"])
        return stats


def save_stats_atomic(stats: FeatureStats, path: str | os.PathLike) -> None:
    """Write stats as .npz to a temp file in the same directory, then rename it into place."""
    with util.atomic_write(path) as f:
        np.savez(f, **stats.to_arrays())


def load_stats(path: str | os.PathLike) -> FeatureStats:
    with np.load(path, allow_pickle=False) as data:
        return FeatureStats.from_arrays({k: data[k] for k in data.files})


# ---------------------------------------------------------------------------------------------------
# Images.


def get_dataset(opts: MetricOptions, **overrides):
    """The real dataset: `opts.dataset` if given, else `open_dataset(**{**dataset_kwargs, **overrides})`."""
    if opts.dataset is not None:
        return opts.dataset
    from training.dataset import open_dataset  # Lazy: only real-data metrics need it.

    return open_dataset(**{**opts.dataset_kwargs, **overrides})


def progress_bar(opts: MetricOptions, total: int, desc: str):
    """tqdm bar on rank 0 when progress is on (a no-op bar otherwise)."""
    return tqdm(total=total, desc=desc, unit="img", disable=not opts.progress or opts.rank != 0, leave=False)


def iterate_real_images(opts: MetricOptions, dataset, max_items: int | None) -> Iterator[torch.Tensor]:
    """This rank's share of the first `max_items` dataset items as uint8 batches `[n, C, H, W]`."""
    num = len(dataset) if max_items is None else min(len(dataset), max_items)
    indices = list(range(opts.rank, num, opts.num_gpus))
    subset = torch.utils.data.Subset(dataset, indices)
    loader = torch.utils.data.DataLoader(subset, batch_size=opts.batch_size,
                                         num_workers=opts.num_workers, collate_fn=_collate_images)
    yield from loader


def _collate_images(items) -> torch.Tensor:
    return torch.stack([torch.as_tensor(np.asarray(item[0] if isinstance(item, tuple) else item))
                        for item in items])


def to_uint8(img: torch.Tensor) -> torch.Tensor:
    """Network output in [-1, 1] -> uint8 `[N, C, H, W]` (x * 127.5 + 128, clamped)."""
    return (img * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def sample_labels(opts: MetricOptions, n: int, rng: np.random.RandomState) -> torch.Tensor:
    """Labels `[n, c_dim]` of random dataset items (conditional G) or an empty `[n, 0]` tensor."""
    c_dim = int(getattr(opts.G, "c_dim", 0))
    if c_dim == 0:
        return torch.zeros([n, 0], device=opts.device)
    dataset = get_dataset(opts)
    labels = [np.asarray(dataset.get_label(i) if hasattr(dataset, "get_label") else dataset[i][1])
              for i in rng.randint(len(dataset), size=n)]
    return torch.as_tensor(np.stack(labels), dtype=torch.float32, device=opts.device)


def numpy_rng(gen: torch.Generator) -> np.random.RandomState:
    """A NumPy RNG seeded from one draw of `gen` (for dataset-label picks that follow the batch seed)."""
    return np.random.RandomState(int(torch.randint(2**31 - 1, [1], generator=gen, device=gen.device)))


def batch_generator(opts: MetricOptions, batch_idx: int, salt: int = 0) -> torch.Generator:
    """Seeded torch.Generator for one batch, so results do not depend on how batches go to ranks."""
    return torch.Generator(opts.device).manual_seed(int(opts.seed) * 1_000_003 + batch_idx * 7919 + salt)


@torch.no_grad()
def generate_batch(opts: MetricOptions, n: int, gen: torch.Generator, **G_kwargs) -> torch.Tensor:
    """`n` generated uint8 images `[n, C, H, W]`: G(z, c, heatmaps=None, truncation_psi=1, noise_mode=random).

    A spatial G samples its own heatmaps from `G.heatmap_sampler` with `gen`."""
    G = opts.G
    z = torch.randn([n, G.z_dim], generator=gen, device=opts.device)
    c = sample_labels(opts, n, numpy_rng(gen))
    kwargs = dict(heatmaps=None, truncation_psi=1, noise_mode="random", generator=gen)
    kwargs.update(G_kwargs)
    return to_uint8(G(z, c, **kwargs))


def iterate_generated_images(opts: MetricOptions, num_items: int) -> Iterator[torch.Tensor]:
    """This rank's share of `num_items` generated images, as uint8 batches of up to `opts.batch_size`."""
    num_batches = -(-num_items // opts.batch_size)
    for b in range(opts.rank, num_batches, opts.num_gpus):
        n = min(opts.batch_size, num_items - b * opts.batch_size)
        yield generate_batch(opts, n, batch_generator(opts, b))


# ---------------------------------------------------------------------------------------------------
# Feature extraction with caching.


def _cache_file(opts: MetricOptions, detector: detectors.Detector, stats_kwargs: dict) -> str:
    key = dict(dataset_kwargs=_dataset_identity(opts), detector=detector.identity, stats_kwargs=stats_kwargs)
    md5 = hashlib.md5(repr(sorted(key.items())).encode("utf-8")).hexdigest()
    data = str(opts.dataset_kwargs.get("data") or getattr(opts.dataset, "name", "dataset"))
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(data.rstrip("/\\")) or "dataset")
    return str(util.cache_dir("gan-metrics") / f"{name}-{detector.name}-{md5}.npz")


def _dataset_identity(opts: MetricOptions) -> list:
    kwargs = opts.dataset_kwargs or dict(getattr(opts.dataset, "kwargs", {}) or {})
    return sorted((str(k), repr(v)) for k, v in kwargs.items())


def compute_feature_stats_for_dataset(opts: MetricOptions, detector_name: str, max_items: int | None = None,
                                      capture_all: bool = False, capture_mean_cov: bool = False,
                                      **dataset_overrides) -> FeatureStats:
    """Features of the real set (first `max_items` items), loaded from the cache when present.

    `dataset_overrides` (e.g. xflip=False, max_size=None) are applied to dataset_kwargs and are part of the
    cache key. The cache is read/written only when `opts.cache`; only rank 0 writes it.
    """
    detector = opts.detector(detector_name)
    stats_kwargs = dict(max_items=max_items, capture_all=capture_all, capture_mean_cov=capture_mean_cov,
                        overrides=sorted((k, repr(v)) for k, v in dataset_overrides.items()))
    path = _cache_file(opts, detector, stats_kwargs) if opts.cache else None
    if path is not None and os.path.isfile(path):
        return load_stats(path)
    dataset = get_dataset(opts, **dataset_overrides)
    total = len(dataset) if max_items is None else min(len(dataset), max_items)
    stats = FeatureStats(capture_all, capture_mean_cov, max_items)
    with progress_bar(opts, total, f"real features ({detector_name})") as bar:
        for images in iterate_real_images(opts, dataset, max_items):
            stats.append(detector(images).cpu().numpy())
            bar.update(images.shape[0] * opts.num_gpus)
    stats = stats.gathered(opts.gather)
    if path is not None and opts.rank == 0:
        save_stats_atomic(stats, path)
    return stats


def compute_feature_stats_for_generator(opts: MetricOptions, detector_name: str, num_items: int,
                                        capture_all: bool = False,
                                        capture_mean_cov: bool = False) -> FeatureStats:
    """Features of `num_items` generated images (never cached: G changes between calls)."""
    detector = opts.detector(detector_name)
    stats = FeatureStats(capture_all, capture_mean_cov)
    with progress_bar(opts, num_items, f"generated features ({detector_name})") as bar:
        for images in iterate_generated_images(opts, num_items):
            stats.append(detector(images).cpu().numpy())
            bar.update(images.shape[0] * opts.num_gpus)
    return stats.gathered(opts.gather)


def copy_options(opts: MetricOptions, **changes) -> MetricOptions:
    """Shallow copy of the options with some fields changed (G and datasets are shared, not copied)."""
    new = copy.copy(opts)
    for k, v in changes.items():
        setattr(new, k, v)
    return new
