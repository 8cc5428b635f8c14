"""How long each training phase takes, reported to `training_stats` as `Timing/<phase>` (seconds).

On the CPU that is the host clock around the phase. On a GPU the host only queues the phase's work
(a phase replayed as a CUDA graph returns in a few milliseconds while the GPU works on for fifty), so
there a pair of CUDA events brackets the phase on the device's current stream, and the time between
them (the GPU's clock, including any wait for the host) is reported once the GPU has passed the second
one: no host sync per step. `flush(wait=True)` waits for the rest (once per tick, before the tick's
stats are gathered).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch

from torch_utils import training_stats


class PhaseTimer:
    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.pending: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []  # in stream order

    @contextlib.contextmanager
    def measure(self, name: str) -> Iterator[None]:
        """Time the block as stat `name`."""
        if not self.cuda:
            start = time.perf_counter()
            yield
            training_stats.report(name, time.perf_counter() - start)
            return
        stream = torch.cuda.current_stream(self.device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        yield
        end.record(stream)
        self.pending.append((name, start, end))

    def flush(self, wait: bool = False) -> None:
        """Report every measured block the GPU has finished (`wait`: every one, waiting for the GPU)."""
        done = 0
        for name, start, end in self.pending:
            if wait:
                end.synchronize()
            elif not end.query():
                break  # one stream: the blocks after this one are not finished either
            training_stats.report(name, start.elapsed_time(end) / 1000)
            done += 1
        del self.pending[:done]

    def __deepcopy__(self, memo) -> PhaseTimer:
        # CUDA events cannot be copied; a copied run (tests, tools) starts with nothing pending.
        return PhaseTimer(self.device)


__all__ = ["PhaseTimer"]
