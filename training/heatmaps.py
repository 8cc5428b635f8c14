"""Spatial heatmaps: the `HeatmapSpec` data structure, Gaussian rendering and the heatmap samplers.

A heatmap is never stored as a raster: a `HeatmapSpec` holds, per sample and per level, K Gaussian
centres, one std per centre and an alive mask. `render` rasterises one level at any resolution,
differentiably in the centres and stds (the drag optimiser moves centres by gradient descent).

Coordinates: a centre is (x, y) in normalised image coordinates, x to the right and y down, the image
covering [0, 1] x [0, 1]; pixel (row j, column i) of an r x r raster has its centre at
((i + 0.5) / r, (j + 0.5) / r). A std (sigma) is a fraction of the image side. A sub-map is
exp(-||p - c||^2 / (2 sigma^2)), so it is exactly 1 at its centre and lies in (0, 1].

Samplers (`build_sampler(name, **kwargs)`), each `sampler(batch_size, generator=None, device='cpu')`:
  hierarchical      the paper (§4.1), single object: levels 4/8/16 px with 1/2/4 centres.
  eqgan             the conference code's sampler (peers facts §1.2), converted to our conventions.
  non_hierarchical  Table 4 "Non-Hie": every level drawn independently like level 0.
  noise             Table 4 "Gau. Noise": the rendered maps are Gaussian noise instead of blobs.
  multi_object      indoor scenes: one level of n = 3 object centres, each with a style seed.
All randomness comes from `generator` (a CPU torch.Generator, or an int seed) in a fixed order, on the
CPU; the spec is moved to `device` afterwards, so a seed gives the same spec on every device.
"""

from __future__ import annotations

import json
import math
import operator
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from dnnlib.util import atomic_write
from torch_utils import misc

SPEC_FORMAT = "spatialgan-heatmaps"
SPEC_VERSION = 1


def as_int(name: str, value, error: type[Exception] = TypeError) -> int:
    """`value` as a Python int when it is an integral scalar (int, NumPy integer, one-element integer
    tensor, anything with `__index__`); otherwise `error` (TypeError by default) naming `name` and the
    type. Booleans are not integers here, and floats are never truncated (1.7 and 2.0 are rejected)."""
    is_bool = isinstance(value, (bool, np.bool_)) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool)
    try:
        if is_bool:
            raise TypeError
        return operator.index(value)
    except (TypeError, RuntimeError, ValueError):  # A tensor of several elements raises RuntimeError.
        raise error(f"{name} must be an integer, got {value!r} ({type(value).__name__})") from None


# ---------------------------------------------------------------------------------------------------
# HeatmapSpec.


@dataclass
class HeatmapSpec:
    """Per-sample Gaussian heatmap parameters for L levels; level l holds K_l centres.

    centers:     list of L tensors [N, K_l, 2], (x, y) normalised (may lie outside [0, 1]).
    sigmas:      list of L tensors [N, K_l], Gaussian std as a fraction of the image side, > 0.
    alive:       list of L tensors [N, K_l], float 0/1; a dead sub-map renders as zero.
    style_seeds: int64 [N, K_0] per-object appearance seeds (multi-object specs) or None; kept on the
                 CPU by `to()` (they seed host-side generators).
    noise:       list of L tensors [N, K_l, h_l, w_l] in [0, 1] (noise ablation) or None; when set,
                 `render` returns these maps resized instead of Gaussians.
    kind:        name of the sampler that made it (free text for hand-made specs).
    hierarchical: True when level 0 drives the deeper levels (moving it moves them, see editing).

    Shapes are checked on construction (`validate`); values (finite centres, sigmas > 0, alive in [0, 1])
    too when the tensors are on the CPU, and by `check_values` wherever specs enter from users.
    """

    centers: list[torch.Tensor]
    sigmas: list[torch.Tensor]
    alive: list[torch.Tensor] = field(default_factory=list)
    style_seeds: torch.Tensor | None = None
    noise: list[torch.Tensor] | None = None
    kind: str = "custom"
    hierarchical: bool = False

    def __post_init__(self) -> None:
        self.centers, self.sigmas = list(self.centers), list(self.sigmas)
        if not self.alive:  # Convenience: everything alive.
            self.alive = [torch.ones_like(s) for s in self.sigmas]
        self.alive = list(self.alive)
        if self.noise is not None:
            self.noise = list(self.noise)
        self.validate()
        if self.device.type == "cpu":  # Free there; on a GPU it would cost a sync per training step.
            self.check_values()

    # -- checks -------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError if the tensors do not have consistent shapes (no value is read, so this
        never synchronises with a GPU; see `check_values`)."""
        if len(self.centers) == 0:
            raise ValueError("HeatmapSpec needs at least one level, got centers=[]")
        for name in ("sigmas", "alive"):
            if len(getattr(self, name)) != len(self.centers):
                raise ValueError(f"HeatmapSpec.{name} has {len(getattr(self, name))} levels, "
                                 f"centers has {len(self.centers)}")
        n = self.centers[0].shape[0] if self.centers[0].ndim == 3 else None
        for lvl, (c, s, a) in enumerate(zip(self.centers, self.sigmas, self.alive)):
            misc.assert_shape(c, [n, None, 2], f"centers[{lvl}]")
            misc.assert_shape(s, [n, c.shape[1]], f"sigmas[{lvl}]")
            misc.assert_shape(a, [n, c.shape[1]], f"alive[{lvl}]")
        if self.style_seeds is not None:
            misc.assert_shape(self.style_seeds, [n, self.centers[0].shape[1]], "style_seeds")
            if self.style_seeds.dtype != torch.int64:
                raise ValueError(f"style_seeds must be int64, got {self.style_seeds.dtype}")
        if self.noise is not None:
            if len(self.noise) != len(self.centers):
                raise ValueError(f"HeatmapSpec.noise has {len(self.noise)} levels, centers has "
                                 f"{len(self.centers)}")
            for lvl, (z, c) in enumerate(zip(self.noise, self.centers)):
                misc.assert_shape(z, [n, c.shape[1], None, None], f"noise[{lvl}]")

    def check_values(self) -> HeatmapSpec:
        """Raise ValueError naming the first bad value: centres and noise must be finite, sigmas finite
        and > 0, alive flags in [0, 1]. Returns the spec.

        The constructor runs this for CPU tensors. For specs on a GPU it reads the values back (a device
        sync), so it is called where specs come from users (files, edits, `editing.synthesis`), never
        per training step.
        """
        inf = math.inf
        rules = (("centers", self.centers, "finite", -inf, inf, False),
                 ("sigmas", self.sigmas, "finite and > 0", 0.0, inf, True),
                 ("alive", self.alive, "in [0, 1]", 0.0, 1.0, False),
                 ("noise", self.noise or [], "finite", -inf, inf, False))
        for name, levels, rule, low, high, open_low in rules:
            for lvl, t in enumerate(levels):
                if t.numel() == 0:
                    continue
                t = t.detach() if t.is_floating_point() else t.detach().double()  # e.g. a bool alive mask
                lo, hi = (v.item() for v in torch.aminmax(t))  # One reduction; NaN propagates into both.
                if (lo > low if open_low else lo >= low) and hi <= high and math.isfinite(lo) and math.isfinite(hi):
                    continue
                good = torch.isfinite(t) & (t > low if open_low else t >= low) & (t <= high)
                where = [int(i) for i in (~good).nonzero()[0]]
                raise ValueError(f"HeatmapSpec.{name}[{lvl}] must be {rule}, got {t[tuple(where)].item():.6g} "
                                 f"at index {where}")
        return self

    # -- basic properties ---------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return int(self.centers[0].shape[0])

    @property
    def num_levels(self) -> int:
        return len(self.centers)

    @property
    def centers_per_level(self) -> list[int]:
        return [int(c.shape[1]) for c in self.centers]

    @property
    def device(self) -> torch.device:
        return self.centers[0].device

    # -- tensor-wise transforms (every one returns a new spec) ---------------------------------------
    def _map(self, fn, seeds_fn=None) -> HeatmapSpec:
        """New spec with `fn` applied to every float tensor and `seeds_fn` (default `fn`) to the seeds."""
        seeds_fn = seeds_fn or fn
        return HeatmapSpec(
            centers=[fn(t) for t in self.centers], sigmas=[fn(t) for t in self.sigmas],
            alive=[fn(t) for t in self.alive],
            style_seeds=None if self.style_seeds is None else seeds_fn(self.style_seeds),
            noise=None if self.noise is None else [fn(t) for t in self.noise],
            kind=self.kind, hierarchical=self.hierarchical)

    def to(self, device: torch.device | str) -> HeatmapSpec:
        """The maps' tensors on `device` (from the host without a sync: `misc.to_device`). `style_seeds`
        stay where they are: they only seed host-side random generators, and reading them back from a GPU
        would cost a sync per generator pass."""
        return self._map(lambda t: misc.to_device(t, device), seeds_fn=lambda seeds: seeds)

    def clone(self) -> HeatmapSpec:
        return self._map(torch.clone)

    def detach(self) -> HeatmapSpec:
        return self._map(torch.Tensor.detach)

    def select(self, indices: Sequence[int] | torch.Tensor | slice | int) -> HeatmapSpec:
        """Samples `indices` (a list/tensor of ints, a slice, or one integer -> batch of 1)."""
        if not isinstance(indices, (slice, Sequence)) and not (isinstance(indices, torch.Tensor) and indices.ndim):
            indices = [as_int("indices", indices)]
        if not isinstance(indices, slice):
            indices = torch.as_tensor(indices, dtype=torch.int64)
            if indices.numel() and (indices.min() < -self.batch_size or indices.max() >= self.batch_size):
                raise ValueError(f"indices={indices.tolist()} out of range for batch_size={self.batch_size}")
            on_device = indices.to(self.device)  # one copy (a host sync on a GPU), not one per tensor

            def pick(t: torch.Tensor) -> torch.Tensor:  # the seeds stay on the CPU (see `to`)
                return t[on_device if t.device == on_device.device else indices.to(t.device)]

            return self._map(pick)
        return self._map(lambda t: t[indices])

    def repeat(self, n: int) -> HeatmapSpec:
        """The whole batch tiled n times: samples [a, b] -> [a, b, a, b, ...] (like `cat([self] * n)`)."""
        misc.check_positive_int("n", n)
        return HeatmapSpec.cat([self] * n)

    @staticmethod
    def cat(specs: Sequence[HeatmapSpec]) -> HeatmapSpec:
        """Concatenate specs along the batch; they must share level sizes, seeds/noise presence, kind."""
        specs = list(specs)
        if not specs:
            raise ValueError("cat needs at least one HeatmapSpec, got an empty list")
        ref = specs[0]
        for i, s in enumerate(specs[1:], 1):
            if s.centers_per_level != ref.centers_per_level:
                raise ValueError(f"specs[{i}] has centres per level {s.centers_per_level}, "
                                 f"specs[0] has {ref.centers_per_level}")
            if ((s.style_seeds is None) != (ref.style_seeds is None)
                    or (s.noise is None) != (ref.noise is None)):
                raise ValueError(f"specs[{i}] differs from specs[0] in having style_seeds or noise")

        def cat_levels(attr: str) -> list[torch.Tensor]:
            return [torch.cat([getattr(s, attr)[lvl] for s in specs]) for lvl in range(ref.num_levels)]

        return HeatmapSpec(
            centers=cat_levels("centers"), sigmas=cat_levels("sigmas"), alive=cat_levels("alive"),
            style_seeds=None if ref.style_seeds is None else torch.cat([s.style_seeds for s in specs]),
            noise=None if ref.noise is None else cat_levels("noise"),
            kind=ref.kind, hierarchical=ref.hierarchical)

    # -- persistence -------------------------------------------------------------------------------
    def to_json(self) -> dict:
        """Plain JSON-able dict (nested lists of floats/ints) with a format name and version."""
        def lists(ts):
            return [t.detach().cpu().tolist() for t in ts]

        return {
            "format": SPEC_FORMAT, "version": SPEC_VERSION, "kind": self.kind,
            "hierarchical": bool(self.hierarchical),
            "centers": lists(self.centers), "sigmas": lists(self.sigmas), "alive": lists(self.alive),
            "style_seeds": None if self.style_seeds is None else self.style_seeds.cpu().tolist(),
            "noise": None if self.noise is None else lists(self.noise),
        }

    @staticmethod
    def from_json(d: dict) -> HeatmapSpec:
        """Inverse of `to_json` (float32 tensors on the CPU). ValueError on a malformed dict (TypeError if
        `d` is not a dict)."""
        if not isinstance(d, dict):
            raise TypeError(f"heatmap spec JSON must be an object, got {type(d).__name__}")
        if d.get("format", SPEC_FORMAT) != SPEC_FORMAT:
            raise ValueError(f"heatmap spec JSON has format={d.get('format')!r}, expected {SPEC_FORMAT!r}")
        if d.get("version") != SPEC_VERSION:
            raise ValueError(f"heatmap spec JSON has version={d.get('version')!r}, expected {SPEC_VERSION}")
        missing = [k for k in ("centers", "sigmas") if k not in d]
        if missing:
            raise ValueError(f"heatmap spec JSON lacks the field(s) {missing}")
        try:
            def floats(levels):
                if not isinstance(levels, list):
                    raise TypeError(f"expected a list of levels, got {type(levels).__name__}")
                return [torch.tensor(t, dtype=torch.float32) for t in levels]

            seeds = d.get("style_seeds")
            if seeds is not None:
                _check_integers("style_seeds", seeds)
            noise = d.get("noise")
            return HeatmapSpec(
                centers=floats(d["centers"]), sigmas=floats(d["sigmas"]), alive=floats(d.get("alive") or []),
                style_seeds=None if seeds is None else torch.tensor(seeds, dtype=torch.int64),
                noise=None if noise is None else floats(noise),
                kind=str(d.get("kind", "custom")), hierarchical=bool(d.get("hierarchical", False)))
        except (TypeError, ValueError, RuntimeError) as e:  # Ragged lists, strings where numbers belong, ...
            raise ValueError(f"heatmap spec JSON is malformed: {e}") from e

    def save(self, path: str | os.PathLike) -> None:
        """Write `to_json()` to `path` (temp file + rename, so a crash never leaves half a file)."""
        with atomic_write(path, "w", encoding="utf-8") as f:
            json.dump(self.to_json(), f)

    @staticmethod
    def load(path: str | os.PathLike) -> HeatmapSpec:
        """Read a spec written by `save`; ValueError naming `path` if it is not a valid spec (OSError if it
        cannot be read)."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except UnicodeDecodeError as e:
            raise ValueError(f"heatmap spec file {os.fspath(path)!r} is not UTF-8 JSON text: {e}") from e
        except json.JSONDecodeError as e:
            raise ValueError(f"heatmap spec file {os.fspath(path)!r} is not valid JSON: {e}") from e
        try:
            return HeatmapSpec.from_json(data)
        except (TypeError, ValueError) as e:
            raise ValueError(f"heatmap spec file {os.fspath(path)!r}: {e}") from e


def _check_integers(name: str, nested) -> None:
    """ValueError unless every leaf of the nested lists is an int (JSON 1.7 or true must not become 1)."""
    if isinstance(nested, list):
        for item in nested:
            _check_integers(name, item)
    elif not isinstance(nested, int) or isinstance(nested, bool):
        raise ValueError(f"{name} must hold integers, got {nested!r}")


# ---------------------------------------------------------------------------------------------------
# Rendering.


def pixel_centers(resolution: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """[r] normalised coordinates of the pixel centres along one axis: (i + 0.5) / r."""
    return (torch.arange(resolution, device=device, dtype=dtype) + 0.5) / resolution


def gaussian(centers: torch.Tensor, sigmas: torch.Tensor, resolution: int) -> torch.Tensor:
    """Isotropic Gaussians [N, K, r, r] (rows = y, columns = x) in (0, 1], 1 at each centre.

    centers [N, K, 2] (x, y) normalised; sigmas [N, K] > 0 (fraction of the image side).
    Differentiable w.r.t. centers and sigmas; separable, so the cost is O(N K r) exps plus one product.
    """
    misc.assert_shape(centers, [None, None, 2], "centers")
    misc.assert_shape(sigmas, list(centers.shape[:2]), "sigmas")
    misc.check_positive_int("resolution", resolution)
    p = pixel_centers(resolution, centers.device, centers.dtype)                    # [r]
    # Divide before squaring: 1 / (2 sigma^2) overflows for tiny sigmas, and 0 * inf at a centre is NaN.
    s = sigmas.unsqueeze(-1)                                                        # [N, K, 1]
    gx = torch.exp(-0.5 * ((p - centers[..., 0:1]) / s).square())                   # [N, K, r] over x
    gy = torch.exp(-0.5 * ((p - centers[..., 1:2]) / s).square())                   # [N, K, r] over y
    return gy.unsqueeze(-1) * gx.unsqueeze(-2)                                       # [N, K, r(y), r(x)]


def render(spec: HeatmapSpec, resolution: int, level: int = 0) -> torch.Tensor:
    """Rasterise level `level` of `spec`: [N, K_l, r, r] in [0, 1], dead sub-maps all zero.

    With `spec.noise` set, the noise maps of that level are resized bilinearly (align_corners=False)
    to r x r instead of drawing Gaussians.
    """
    level, resolution = as_int("level", level), as_int("resolution", resolution)
    if not 0 <= level < spec.num_levels:
        raise ValueError(f"level={level!r} out of range [0, {spec.num_levels - 1}]")
    misc.check_positive_int("resolution", resolution)
    alive = spec.alive[level][..., None, None]
    if spec.noise is not None:
        maps = spec.noise[level]
        if maps.shape[-2:] != (resolution, resolution):
            maps = F.interpolate(maps, size=(resolution, resolution), mode="bilinear", align_corners=False)
        return maps.clamp(0, 1) * alive.to(maps.dtype)
    maps = gaussian(spec.centers[level], spec.sigmas[level], resolution)
    return maps * alive.to(maps.dtype)


def compose(maps: torch.Tensor, mode: str = "sum") -> torch.Tensor:
    """Combine sub-maps [N, K, r, r]: 'sum' -> H = sum_i H_i -> [N, 1, r, r] (paper §3.1, "the sum of all
    sub-maps": not clamped, so overlapping blobs add up, and the alignment target, the same sum min-max
    normalised, stays the map G was given); 'separate' -> the sub-maps unchanged as K channels
    (conference code)."""
    misc.check_choice("mode", mode, ["sum", "separate"])
    misc.assert_shape(maps, [None, None, None, None], "maps")
    if mode == "separate":
        return maps
    return maps.sum(dim=1, keepdim=True)


# ---------------------------------------------------------------------------------------------------
# Random helpers: everything is drawn on the CPU from one generator, in a fixed order.


def _as_generator(generator: torch.Generator | int | None) -> torch.Generator | None:
    if generator is None or isinstance(generator, torch.Generator):
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(f"generator must be a CPU torch.Generator (draws happen on the CPU so every "
                             f"device gets the same spec), got one on {generator.device}")
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(generator)
    raise TypeError(f"generator must be a torch.Generator, an int seed or None, "
                    f"got {type(generator).__name__}")


def _uniform(shape, low: float, high: float, gen) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=gen)


def truncated_normal(shape, mean: float, std: float, gen,
                     low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """N(mean, std) draws re-drawn (element-wise, vectorised) until inside [low, high].

    Re-drawing each axis separately has the same law as re-drawing the whole 2-D point ("drop the
    sample if outside the image"), because the axes are independent.
    """
    x = mean + std * torch.randn(shape, generator=gen)
    for _ in range(10_000):
        bad = (x < low) | (x > high)
        count = int(bad.sum())
        if count == 0:
            return x
        x[bad] = mean + std * torch.randn(count, generator=gen)
    raise RuntimeError(f"truncated_normal: could not draw inside [{low}, {high}] from N({mean}, {std})")


def _check_ranges(name: str, ranges, levels: int) -> list[list[float]]:
    ranges = [list(map(float, r)) for r in ranges]
    if len(ranges) != levels or any(len(r) != 2 or not 0 < r[0] <= r[1] for r in ranges):
        raise ValueError(f"{name} must be {levels} pairs (low, high) with 0 < low <= high, got {ranges}")
    return ranges


# ---------------------------------------------------------------------------------------------------
# Samplers.


class HeatmapSampler:
    """Base class: `sampler(batch_size, generator=None, device='cpu') -> HeatmapSpec`.

    Subclasses set `name`, store JSON-able `init_kwargs` and implement `_draw(n, gen)` (CPU).
    """

    name = "base"
    hierarchical = False
    level_resolutions: tuple[int, ...] = ()
    init_kwargs: dict

    def __call__(self, batch_size: int, generator: torch.Generator | int | None = None,
                 device: torch.device | str = "cpu") -> HeatmapSpec:
        misc.check_positive_int("batch_size", batch_size)
        return self._draw(batch_size, _as_generator(generator)).to(device)

    def _draw(self, n: int, gen) -> HeatmapSpec:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.init_kwargs.items())
        return f"{type(self).__name__}({args})"


class HierarchicalSampler(HeatmapSampler):
    """Paper §4.1, single object. Level 0: one centre ~ N(0.5, 1/3) per axis, re-drawn while outside
    the image. Levels >= 1: centres ~ N(level-0 centre, 1/6) per axis, not clipped (a sub-map may be
    partly off-image). Each centre of each sample gets its own std ~ U[sigma_ranges[l]].

    The paper gives no std numbers ("decrease level by level"); the defaults L0 [0.25, 0.35],
    L1 [0.09, 0.31], L2 [0.08, 0.26] (fraction of the image side) are the stds that the conference code
    computes (peers facts §1.2), rounded.
    """

    name = "hierarchical"
    hierarchical = True

    def __init__(self, centers_per_level: Sequence[int] = (1, 2, 4),
                 sigma_ranges: Sequence[Sequence[float]] = ((0.25, 0.35), (0.09, 0.31), (0.08, 0.26)),
                 center_mean: float = 0.5, center_std: float = 1 / 3, offset_std: float = 1 / 6,
                 level_resolutions: Sequence[int] = (4, 8, 16)):
        counts = [int(k) for k in centers_per_level]
        if not counts or any(k < 1 for k in counts):
            raise ValueError(f"centers_per_level must be positive ints, got {list(centers_per_level)}")
        if len(level_resolutions) != len(counts):
            raise ValueError(f"level_resolutions={list(level_resolutions)} must have one entry per level "
                             f"({len(counts)})")
        for name, v in (("center_std", center_std), ("offset_std", offset_std)):
            if not v > 0:
                raise ValueError(f"{name} must be > 0, got {v!r}")
        self.centers_per_level = counts
        self.sigma_ranges = _check_ranges("sigma_ranges", sigma_ranges, len(counts))
        self.center_mean, self.center_std = float(center_mean), float(center_std)
        self.offset_std = float(offset_std)
        self.level_resolutions = tuple(int(r) for r in level_resolutions)
        self.init_kwargs = {"centers_per_level": counts, "sigma_ranges": self.sigma_ranges,
                            "center_mean": self.center_mean, "center_std": self.center_std,
                            "offset_std": self.offset_std, "level_resolutions": list(self.level_resolutions)}

    def _root_centers(self, n: int, k: int, gen) -> torch.Tensor:
        return truncated_normal((n, k, 2), self.center_mean, self.center_std, gen)

    def _draw_centers(self, n: int, gen) -> list[torch.Tensor]:
        root = self._root_centers(n, self.centers_per_level[0], gen)
        deeper = [root[:, :1] + self.offset_std * torch.randn((n, k, 2), generator=gen)
                  for k in self.centers_per_level[1:]]
        return [root] + deeper

    def _draw_sigmas(self, n: int, gen) -> list[torch.Tensor]:
        return [_uniform((n, k), lo, hi, gen)
                for k, (lo, hi) in zip(self.centers_per_level, self.sigma_ranges)]

    def _draw(self, n: int, gen) -> HeatmapSpec:
        centers = self._draw_centers(n, gen)
        sigmas = self._draw_sigmas(n, gen)
        return HeatmapSpec(centers=centers, sigmas=sigmas, kind=self.name, hierarchical=self.hierarchical)


class NonHierarchicalSampler(HierarchicalSampler):
    """Table 4 "Non-Hie": the hierarchical sampler's level sizes and stds, but every level's centres are
    drawn independently like level 0 (N(0.5, 1/3) per axis, re-drawn while outside the image)."""

    name = "non_hierarchical"
    hierarchical = False

    def _draw_centers(self, n: int, gen) -> list[torch.Tensor]:
        return [self._root_centers(n, k, gen) for k in self.centers_per_level]


class NoiseSampler(HierarchicalSampler):
    """Table 4 "Gau. Noise": each level's map H is one field of i.i.d. Gaussian noise at the level's
    native resolution, mapped into [0, 1] by clamp(0.5 + noise_scale * n, 0, 1) (noise_scale 0.25: +-2
    std fills the range). spec.noise[l] holds it split evenly over the level's K sub-maps (each H / K),
    so that the composed map (their sum) is that field itself rather than a sum of K fields that
    piles up around K / 2. Centres and stds are drawn as by the hierarchical sampler, only so that the
    spec keeps its shapes."""

    name = "noise"
    hierarchical = False

    def __init__(self, noise_scale: float = 0.25, **kwargs):
        super().__init__(**kwargs)
        if not noise_scale > 0:
            raise ValueError(f"noise_scale must be > 0, got {noise_scale!r}")
        self.noise_scale = float(noise_scale)
        self.init_kwargs = {**self.init_kwargs, "noise_scale": self.noise_scale}

    def _draw(self, n: int, gen) -> HeatmapSpec:
        spec = super()._draw(n, gen)
        fields = [(0.5 + self.noise_scale * torch.randn((n, 1, r, r), generator=gen)).clamp(0, 1)
                  for r in self.level_resolutions]
        spec.noise = [(f / k).expand(n, k, -1, -1).contiguous() for f, k in zip(fields, self.centers_per_level)]
        spec.validate()
        return spec


class EqganSampler(HeatmapSampler):
    """The conference code's sampler (peers facts §1.2), expressed in our conventions.

    In its [-1, 1] coordinates: c0 ~ N(0, center_std) per axis, clamped to +-center_clamp; level-1/2
    centres = c0 + U[-a_l, a_l] per axis (offset_ranges, not clipped); maps exp(-d^2 / s) with
    s0 ~ U[0.5, 1) drawn per SAMPLE (the code draws one per batch, a bug we do not copy),
    s1 = (U + 0.1) / 1.4 and s2 = (U + 0.1) / 2 per sample and centre. Exact conversion: a [-1, 1]
    coordinate u is x = (u + 1) / 2, and exp(-d_u^2 / s) = exp(-d_x^2 / (2 std^2)) with
    std = sqrt(s / 2) / 2. The code's +0.01 offset on the maps is dropped (maps stay in [0, 1]), and
    its (y, x) channel order is irrelevant because both axes are drawn alike.
    """

    name = "eqgan"
    hierarchical = True
    # Per level (low, high, divisor): s = U[low, high) / divisor, i.e. (U[0, 1) + 0.1) / 1.4 at level 1.
    _S_FORMS = ((0.5, 1.0, 1.0), (0.1, 1.1, 1.4), (0.1, 1.1, 2.0))

    def __init__(self, center_std: float = 0.33, center_clamp: float = 0.75,
                 offset_ranges: Sequence[float] = (0.4, 0.8), level_resolutions: Sequence[int] = (4, 8, 16)):
        if len(offset_ranges) != 2 or len(level_resolutions) != 3:
            raise ValueError(f"eqgan has 3 levels: offset_ranges needs 2 values, level_resolutions 3; got "
                             f"{list(offset_ranges)}, {list(level_resolutions)}")
        if not center_std > 0 or not 0 < center_clamp <= 1:
            raise ValueError(f"need center_std > 0 and 0 < center_clamp <= 1, got center_std={center_std!r}, "
                             f"center_clamp={center_clamp!r}")
        self.center_std, self.center_clamp = float(center_std), float(center_clamp)
        self.offset_ranges = [float(a) for a in offset_ranges]
        self.level_resolutions = tuple(int(r) for r in level_resolutions)
        self.centers_per_level = [1, 2, 4]
        self.init_kwargs = {"center_std": self.center_std, "center_clamp": self.center_clamp,
                            "offset_ranges": self.offset_ranges,
                            "level_resolutions": list(self.level_resolutions)}

    def _draw(self, n: int, gen) -> HeatmapSpec:
        c0 = self.center_std * torch.randn((n, 1, 2), generator=gen)
        c0 = c0.clamp(-self.center_clamp, self.center_clamp)
        centers_u = [c0] + [c0 + _uniform((n, k, 2), -a, a, gen)
                            for k, a in zip(self.centers_per_level[1:], self.offset_ranges)]
        s = [_uniform((n, k), lo, hi, gen) / div
             for k, (lo, hi, div) in zip(self.centers_per_level, self._S_FORMS)]
        return HeatmapSpec(centers=[(c + 1) / 2 for c in centers_u], sigmas=[(t / 2).sqrt() / 2 for t in s],
                           kind=self.name, hierarchical=True)


class MultiObjectSampler(HeatmapSampler):
    """Indoor scenes (paper §3.2, §4.1): ONE level of `num_objects` centres ~ N(0.5, 1/2) per axis,
    re-drawn while outside the image; std per object ~ U[sigma_range] (the paper gives none; 0.08-0.2
    of the image side makes blobs of object size); a style seed in [0, 2^31) per object. The same map
    is encoded at every synthesis layer, so `level_resolutions` is just (4,)."""

    name = "multi_object"
    hierarchical = False

    def __init__(self, num_objects: int = 3, center_mean: float = 0.5, center_std: float = 0.5,
                 sigma_range: Sequence[float] = (0.08, 0.2), level_resolutions: Sequence[int] = (4,)):
        misc.check_positive_int("num_objects", num_objects)
        if not center_std > 0:
            raise ValueError(f"center_std must be > 0, got {center_std!r}")
        self.num_objects = num_objects
        self.center_mean, self.center_std = float(center_mean), float(center_std)
        self.sigma_range = _check_ranges("sigma_range", [sigma_range], 1)[0]
        self.level_resolutions = tuple(int(r) for r in level_resolutions)
        if len(self.level_resolutions) != 1:
            raise ValueError(f"multi_object has one level; level_resolutions={list(level_resolutions)}")
        self.centers_per_level = [num_objects]
        self.init_kwargs = {"num_objects": num_objects, "center_mean": self.center_mean,
                            "center_std": self.center_std, "sigma_range": self.sigma_range,
                            "level_resolutions": list(self.level_resolutions)}

    def _draw(self, n: int, gen) -> HeatmapSpec:
        k = self.num_objects
        centers = truncated_normal((n, k, 2), self.center_mean, self.center_std, gen)
        sigmas = _uniform((n, k), *self.sigma_range, gen)
        seeds = torch.randint(0, 2**31, (n, k), generator=gen, dtype=torch.int64)
        return HeatmapSpec(centers=[centers], sigmas=[sigmas], style_seeds=seeds, kind=self.name,
                           hierarchical=False)


SAMPLERS: dict[str, type[HeatmapSampler]] = {
    cls.name: cls for cls in (HierarchicalSampler, EqganSampler, NonHierarchicalSampler, NoiseSampler,
                              MultiObjectSampler)
}


def build_sampler(name: str, **kwargs) -> HeatmapSampler:
    """Sampler by name (see `SAMPLERS`); `kwargs` go to its constructor. Rebuild with
    `build_sampler(s.name, **s.init_kwargs)`."""
    misc.check_choice("sampler", name, sorted(SAMPLERS))
    try:
        return SAMPLERS[name](**kwargs)
    except TypeError as e:  # Unknown keyword: name the sampler.
        raise TypeError(f"sampler {name!r}: {e}") from e


def truncated_normal_moments(mean: float, std: float, low: float, high: float) -> tuple[float, float]:
    """(mean, std) of N(mean, std) truncated to [low, high] (used by tests and docs)."""
    a, b = (low - mean) / std, (high - mean) / std
    pdf = [math.exp(-t * t / 2) / math.sqrt(2 * math.pi) for t in (a, b)]
    cdf = [0.5 * (1 + math.erf(t / math.sqrt(2))) for t in (a, b)]
    z = cdf[1] - cdf[0]
    m = mean + std * (pdf[0] - pdf[1]) / z
    var = std**2 * (1 + (a * pdf[0] - b * pdf[1]) / z - ((pdf[0] - pdf[1]) / z) ** 2)
    return m, math.sqrt(var)

