"""Cheap statistics collection: `report()` anywhere, aggregated once per tick by a `Collector`.

`report(name, values)` adds count, sum and sum of squares (float64) to a per-name accumulator on the
values' own device, so reporting never synchronises a GPU; the numbers reach the CPU once per tick,
when a `Collector` gathers the accumulators at `update()` and optionally all-reduces them across ranks
(one collective per tick), and exposes num/mean/std per name.
"""

from __future__ import annotations

import re
from collections import defaultdict

import numpy as np
import torch

_counters: dict[str, dict[torch.device, torch.Tensor]] = defaultdict(dict)  # name -> device -> [3]
_sync_device: torch.device | None = None
_rank = 0


def init_multiprocessing(rank: int, sync_device: torch.device | None) -> None:
    """Call once per process in distributed runs; `sync_device` holds the tensor for all-reduce."""
    global _rank, _sync_device
    _rank, _sync_device = rank, sync_device


def report(name: str, value) -> torch.Tensor | float:
    """Accumulate `value` (number or tensor; every finite element counts) under `name`; returns `value`."""
    elems = torch.as_tensor(value).detach().flatten()
    per_device = _counters[name]  # created even when empty (report0 on rank > 0): all ranks hold every name
    if elems.numel() == 0:
        return value
    elems = elems.to(torch.float64)
    finite = torch.isfinite(elems)
    elems = torch.where(finite, elems, torch.zeros_like(elems))  # masking, not indexing: no host sync
    moments = torch.stack([finite.sum(dtype=torch.float64), elems.sum(), elems.square().sum()])
    if elems.device in per_device:
        per_device[elems.device].add_(moments)
    else:
        per_device[elems.device] = moments
    return value


def _total(name: str) -> torch.Tensor:
    """[count, sum, sum of squares] of `name` over every device, on the CPU."""
    total = torch.zeros(3, dtype=torch.float64)
    for moments in _counters[name].values():
        total += moments.cpu()
    return total


def report0(name: str, value):
    """Like `report`, but only rank 0 counts (for values that are identical on every rank)."""
    return report(name, value if _rank == 0 else torch.zeros(0))


class Collector:
    """Aggregates reported stats whose names match `regex`; call `update()` once per tick."""

    def __init__(self, regex: str = ".*", keep_previous: bool = True):
        self._regex = re.compile(regex)
        self._keep_previous = keep_previous
        # Only what is reported after the collector exists counts (a second run in the same process must
        # not inherit the first run's statistics).
        self._cumulative: dict[str, torch.Tensor] = {name: _total(name) for name in list(_counters)}
        self._moments: dict[str, np.ndarray] = {}

    def names(self) -> list[str]:
        return sorted(n for n in _counters if self._regex.fullmatch(n))

    def update(self) -> None:
        if not self._keep_previous:
            self._moments.clear()
        names = self.names()
        if self._distributed():
            # Ranks must all-reduce identical layouts; a name reported on one rank only must not shift rows.
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, names)
            names = sorted(set().union(*gathered))
        if not names:
            return
        deltas = []
        for name in names:
            total = _total(name)  # (a name new to this rank starts at zero)
            prev = self._cumulative.get(name, torch.zeros(3, dtype=torch.float64))
            deltas.append(total - prev)
            self._cumulative[name] = total
        stacked = torch.stack(deltas)
        if self._distributed():
            stacked = stacked.to(_sync_device)
            torch.distributed.all_reduce(stacked)
            stacked = stacked.cpu()
        for name, delta in zip(names, stacked.numpy()):
            if delta[0] > 0:
                self._moments[name] = delta

    @staticmethod
    def _distributed() -> bool:
        return (_sync_device is not None and torch.distributed.is_available() and torch.distributed.is_initialized()
                and torch.distributed.get_world_size() > 1)

    def num(self, name: str) -> float:
        m = self._moments.get(name)
        return float(m[0]) if m is not None else 0.0

    def mean(self, name: str) -> float:
        m = self._moments.get(name)
        return float(m[1] / m[0]) if m is not None else float("nan")

    def std(self, name: str) -> float:
        m = self._moments.get(name)
        if m is None:
            return float("nan")
        mean = m[1] / m[0]
        return float(np.sqrt(max(m[2] / m[0] - mean * mean, 0.0)))

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {n: {"num": self.num(n), "mean": self.mean(n), "std": self.std(n)} for n in sorted(self._moments)}

    def __getitem__(self, name: str) -> float:
        return self.mean(name)


def reset() -> None:
    """Forget every accumulator (tests use this for isolation)."""
    _counters.clear()
