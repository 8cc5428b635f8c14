"""Shared machinery of the metrics: options, real/generated feature extraction, the statistics cache.

Distributed evaluation (every rank calls the metric; results equal one process up to float summation):
- Work is split in batches: batch b holds items [b * batch_size, (b + 1) * batch_size) of the real set or
  of the generated stream, and rank r processes batches r, r + num_gpus, ... (`rank_batches`). A rank may
  get fewer batches, or none.
- Partial results are combined with `opts.gather` (all-gather + concat along dim 0, in rank order;
  identity for one process). Every rank makes the same sequence of gather calls whatever it holds (empty
  tensors of the right trailing shape when it has nothing), else the collectives would deadlock.
- Gathered rows carry their global item/batch index and are sorted by it (`gather_rows`), so order-
  dependent statistics (IS splits, KID subsets) see exactly the single-process order.
- Randomness is per batch: `batch_generator(opts, b)` is a CPU generator seeded from (seed, b), and
  `generate_batch` draws z, labels, the heatmap spec and a seed for the synthesis noise from it. The noise
  stays `noise_mode='random'` (as StyleGAN2-ADA's FID evaluates G) but is drawn under
  `torch.random.fork_rng` + `manual_seed(batch seed)`, so it depends on the batch only, not on the rank or
  on the caller's global RNG state (which is left untouched).

Real-statistics cache: `dnnlib.cache_dir('gan-metrics')/<dataset>-<detector>-<md5>.npz`, the md5 taken over
`repr` of the sorted dict {dataset_kwargs, detector identity, stats options}. Written to a temp file and
renamed (atomic), so a killed run never leaves a half-written cache entry. With several ranks, all of them
use the cache only if every rank sees the file (one gather decides, so they agree); otherwise all compute
their share and only rank 0 writes the file.
"""

from __future__ import annotations

import contextlib
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


def default_gather(num_gpus: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Identity for one process; `torch_utils.distributed.all_gather_cat` when a process group of
    `num_gpus` ranks is active. Anything else would silently drop the other ranks' shares: ValueError."""
    if num_gpus == 1:
        return _identity_gather
    from torch_utils import distributed  # Lazy: one-process use needs no torch.distributed.

    if distributed.is_active() and distributed.world_size() == num_gpus:
        return distributed.all_gather_cat
    raise ValueError(f"num_gpus={num_gpus} needs an active process group of that size "
                     f"(got world size {distributed.world_size()}) or an explicit gather function")


@dataclass
class MetricOptions:
    """Everything a metric needs. `G` follows the Generator contract; `dataset` (optional) overrides
    opening `dataset_kwargs` with `training.dataset.open_dataset` (tests, callers holding a dataset).
    A dataset given is the real set as it is: a `_full` metric's xflip=False / max_size=None do not
    reopen it (a deliberately small real set stays small), and the feature cache is keyed by its
    `kwargs`, so it never shares an entry with the uncapped set."""

    G: Any = None
    dataset_kwargs: dict = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    num_gpus: int = 1
    rank: int = 0
    cache: bool = True
    progress: bool = True
    detector_sources: dict = field(default_factory=dict)  # detector name -> source (path/URL/package)
    gather: Callable[[torch.Tensor], torch.Tensor] | None = _identity_gather  # None: `default_gather`
    seed: int = 0
    batch_size: int = 64
    num_workers: int = 0
    segmenter: Any = None
    segmenter_weights: str | None = None
    dataset: Any = None
    detectors_used: dict = field(default_factory=dict)  # name -> identity, filled by `detector()` (results)

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)
        for name in ("num_gpus", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not 0 <= self.rank < self.num_gpus:
            raise ValueError(f"rank={self.rank!r} must lie in [0, num_gpus={self.num_gpus})")
        if self.gather is None:
            self.gather = default_gather(self.num_gpus)

    def detector(self, name: str) -> detectors.Detector:
        det = detectors.get_detector(name, self.detector_sources.get(name), self.device)
        self.detectors_used[name] = det.identity  # a result says which model measured it
        return det


# ---------------------------------------------------------------------------------------------------
# Feature statistics.


class FeatureStats:
    """Accumulates features `[n, D]`: all of them (capture_all) and/or float64 running sums for mean/cov.

    With capture_all, every item also keeps its global index (`append(x, index)`), by which `gathered`
    puts the items of all ranks back into single-process order."""

    def __init__(self, capture_all: bool = False, capture_mean_cov: bool = False,
                 max_items: int | None = None) -> None:
        self.capture_all, self.capture_mean_cov, self.max_items = capture_all, capture_mean_cov, max_items
        self.num_items = 0
        self.num_features: int | None = None
        self.all: list[np.ndarray] = []
        self.index: list[np.ndarray] = []
        self.raw_sum: np.ndarray | None = None
        self.raw_outer: np.ndarray | None = None

    def is_full(self) -> bool:
        return self.max_items is not None and self.num_items >= self.max_items

    def append(self, x: np.ndarray, index: np.ndarray | None = None) -> None:
        """Add features `[n, D]` (float) of the items with global indices `index` `[n]` (default: the next
        local positions); items beyond max_items are dropped."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"features must be [n, D], got shape {list(x.shape)}")
        index = (np.arange(self.num_items, self.num_items + x.shape[0]) if index is None
                 else np.asarray(index, dtype=np.int64).reshape(-1))
        if index.shape[0] != x.shape[0]:
            raise ValueError(f"index has {index.shape[0]} entries for {x.shape[0]} feature rows")
        if self.max_items is not None:
            keep = max(self.max_items - self.num_items, 0)
            x, index = x[:keep], index[:keep]
        self._init_features(x.shape[1])
        self.num_items += x.shape[0]
        if self.capture_all:
            self.all.append(x)
            self.index.append(index.astype(np.int64))
        if self.capture_mean_cov:
            x64 = x.astype(np.float64)
            self.raw_sum += x64.sum(0)
            self.raw_outer += x64.T @ x64

    def _init_features(self, dim: int) -> None:
        if self.num_features is None:
            self.num_features = dim
            if self.capture_mean_cov:
                self.raw_sum = np.zeros([dim], np.float64)
                self.raw_outer = np.zeros([dim] * 2, np.float64)

    def gathered(self, gather: Callable[[torch.Tensor], torch.Tensor]) -> FeatureStats:
        """Combine the per-rank stats with `gather` (all-gather + concat along dim 0, rank order).

        Every rank makes the same gather calls, also a rank that holds no items (it sends empty tensors
        / zero sums), and the captured items come back sorted by their global index."""
        if gather is _identity_gather:
            return self
        out = FeatureStats(self.capture_all, self.capture_mean_cov, self.max_items)
        sizes = gather(torch.tensor([[self.num_items, -1 if self.num_features is None else self.num_features]]))
        dim = int(sizes[:, 1].max())
        if dim < 0:  # no rank saw any item
            return out
        out._init_features(dim)
        if self.capture_all:
            feats = gather(torch.from_numpy(self.get_all().reshape(-1, dim)))
            index = gather(torch.from_numpy(self.get_index()))
            order = torch.argsort(index, stable=True)
            out.all, out.index = [feats[order].numpy()], [index[order].numpy()]
        out.num_items = int(sizes[:, 0].sum())
        if self.capture_mean_cov:
            local = self if self.raw_sum is not None else FeatureStats(capture_mean_cov=True)
            local._init_features(dim)
            out.raw_sum = gather(torch.from_numpy(local.raw_sum)[None]).sum(0).numpy()
            out.raw_outer = gather(torch.from_numpy(local.raw_outer)[None]).sum(0).numpy()
        return out

    def get_all(self) -> np.ndarray:
        """All captured features `[N, D]` float32."""
        if not self.capture_all:
            raise ValueError("get_all() needs capture_all=True")
        return np.concatenate(self.all) if self.all else np.zeros([0, self.num_features or 0], np.float32)

    def get_index(self) -> np.ndarray:
        """Global indices `[N]` int64 of the captured items (0..N-1 when loaded from a cache file)."""
        if len(self.index) != len(self.all):
            return np.arange(self.num_items, dtype=np.int64)
        return np.concatenate(self.index) if self.index else np.zeros([0], np.int64)

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


class _AllRanksBar(tqdm):
    """Rank 0 counts its own items times the number of ranks; the last round can hold fewer batches than
    ranks, so the count stops at the total instead of overshooting it."""

    def update(self, n=1):
        return super().update(max(0, min(n, self.total - self.n)))


def progress_bar(opts: MetricOptions, total: int, desc: str):
    """tqdm bar on rank 0 when progress is on (a no-op bar otherwise)."""
    return _AllRanksBar(total=total, desc=desc, unit="img", disable=not opts.progress or opts.rank != 0, leave=False)


def rank_batches(opts: MetricOptions, num_items: int, batch_size: int | None = None) -> list[tuple[int, int]]:
    """This rank's batches of `num_items` as (batch index b, size): b = rank, rank + num_gpus, ...

    Batch b covers items [b * batch_size, b * batch_size + size); a rank may get none."""
    batch_size = batch_size or opts.batch_size
    num_batches = -(-num_items // batch_size)
    return [(b, min(batch_size, num_items - b * batch_size))
            for b in range(opts.rank, num_batches, opts.num_gpus)]


def cat_rows(parts: list[torch.Tensor], trailing: list[int], dtype: torch.dtype) -> torch.Tensor:
    """`torch.cat(parts)`, or an empty `[0, *trailing]` tensor for a rank that has nothing to send."""
    return torch.cat(parts) if parts else torch.zeros([0, *trailing], dtype=dtype)


def gather_rows(opts: MetricOptions, rows: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Gather `rows` `[n, ...]` of all ranks, sorted (stably) by their global `keys` `[n]`.

    Two gather calls on every rank, also one with n = 0; within equal keys the rank-local order stays."""
    keys = opts.gather(keys.to(torch.int64).reshape(-1))
    rows = opts.gather(rows)
    return rows[torch.argsort(keys, stable=True)]


def iterate_real_images(opts: MetricOptions, dataset,
                        max_items: int | None) -> Iterator[tuple[int, torch.Tensor]]:
    """This rank's batches of the first `max_items` dataset items: (batch index b, uint8 `[n, C, H, W]`)."""
    num = len(dataset) if max_items is None else min(len(dataset), max_items)
    batches = rank_batches(opts, num)
    indices = [b * opts.batch_size + i for b, n in batches for i in range(n)]
    subset = torch.utils.data.Subset(dataset, indices)
    # Every batch but the globally last one is full, so the loader's batches are exactly `batches`.
    loader = torch.utils.data.DataLoader(subset, batch_size=opts.batch_size,
                                         num_workers=opts.num_workers, collate_fn=_collate_images)
    for (b, n), images in zip(batches, loader):
        assert images.shape[0] == n, "loader batches must line up with rank_batches"
        yield b, images


def _collate_images(items) -> torch.Tensor:
    # np.array copies: a dataset may hand out read-only views (torch warns on those).
    return torch.stack([torch.as_tensor(np.array(item[0] if isinstance(item, tuple) else item))
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
    return np.random.RandomState(int(torch.randint(2**31 - 1, [1], generator=gen)))


def batch_generator(opts: MetricOptions, batch_idx: int, salt: int = 0) -> torch.Generator:
    """Seeded CPU torch.Generator for one batch, so results do not depend on how batches go to ranks.

    On the CPU for every device: heatmap samplers only take CPU generators, and the draws then agree
    between devices."""
    return torch.Generator().manual_seed(int(opts.seed) * 1_000_003 + batch_idx * 7919 + salt)


def randn(shape: list[int], gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """N(0, 1) draws from the CPU generator `gen`, moved to `device`."""
    return torch.randn(shape, generator=gen).to(device)


@contextlib.contextmanager
def seeded_global_rng(gen: torch.Generator, device: torch.device) -> Iterator[None]:
    """Run a block with the global RNGs (CPU and `device`) seeded from one draw of `gen`; the caller's
    global RNG state is restored afterwards. For draws that take no generator (synthesis noise)."""
    seed = int(torch.randint(2**62, [1], generator=gen))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def generate_batch(opts: MetricOptions, n: int, gen: torch.Generator, **G_kwargs) -> torch.Tensor:
    """`n` generated uint8 images `[n, C, H, W]`: G(z, c, heatmaps=None, truncation_psi=1, noise_mode=random).

    A spatial G samples its own heatmaps from `G.heatmap_sampler` with `gen`; the random synthesis noise
    comes from the global RNG seeded from `gen` (see the module docstring)."""
    G = opts.G
    z = randn([n, G.z_dim], gen, opts.device)
    c = sample_labels(opts, n, numpy_rng(gen))
    kwargs = dict(heatmaps=None, truncation_psi=1, noise_mode="random", generator=gen)
    kwargs.update(G_kwargs)
    with seeded_global_rng(gen, opts.device):
        return to_uint8(G(z, c, **kwargs))


def iterate_generated_images(opts: MetricOptions, num_items: int) -> Iterator[tuple[int, torch.Tensor]]:
    """This rank's batches of `num_items` generated images: (batch index b, uint8 `[n, C, H, W]`)."""
    for b, n in rank_batches(opts, num_items):
        yield b, generate_batch(opts, n, batch_generator(opts, b))


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


def _use_cache(opts: MetricOptions, path: str | None) -> bool:
    """True when every rank sees the cache file: one gather, so all ranks take the same branch."""
    if path is None:
        return False
    seen = opts.gather(torch.tensor([int(os.path.isfile(path))]))
    return bool(seen.min() == 1)


def compute_feature_stats_for_dataset(opts: MetricOptions, detector_name: str, max_items: int | None = None,
                                      capture_all: bool = False, capture_mean_cov: bool = False,
                                      **dataset_overrides) -> FeatureStats:
    """Features of the real set (first `max_items` items), loaded from the cache when present.

    `dataset_overrides` (e.g. xflip=False, max_size=None) are applied to dataset_kwargs and are part of the
    cache key. The cache is read/written only when `opts.cache`; when some rank lacks the file, all ranks
    compute their share and only rank 0 writes it (atomically), so no rank reads a half-written file.
    """
    detector = opts.detector(detector_name)
    stats_kwargs = dict(max_items=max_items, capture_all=capture_all, capture_mean_cov=capture_mean_cov,
                        overrides=sorted((k, repr(v)) for k, v in dataset_overrides.items()))
    path = _cache_file(opts, detector, stats_kwargs) if opts.cache else None
    if _use_cache(opts, path):
        return load_stats(path)
    dataset = get_dataset(opts, **dataset_overrides)
    total = len(dataset) if max_items is None else min(len(dataset), max_items)
    stats = FeatureStats(capture_all, capture_mean_cov, max_items)
    with progress_bar(opts, total, f"real features ({detector_name})") as bar:
        for b, images in iterate_real_images(opts, dataset, max_items):
            stats.append(detector(images).cpu().numpy(), b * opts.batch_size + np.arange(images.shape[0]))
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
        for b, images in iterate_generated_images(opts, num_items):
            stats.append(detector(images).cpu().numpy(), b * opts.batch_size + np.arange(images.shape[0]))
            bar.update(images.shape[0] * opts.num_gpus)
    return stats.gathered(opts.gather)


def copy_options(opts: MetricOptions, **changes) -> MetricOptions:
    """Shallow copy of the options with some fields changed (G and datasets are shared, not copied)."""
    new = copy.copy(opts)
    for k, v in changes.items():
        setattr(new, k, v)
    return new
