"""PhaseTimer: host time on the CPU, CUDA events read without a per-step sync on a GPU."""

from __future__ import annotations

import copy
import time

import pytest
import torch

from torch_utils import phase_timer, training_stats
from torch_utils.phase_timer import PhaseTimer


@pytest.fixture(autouse=True)
def fresh():
    training_stats.reset()
    yield
    training_stats.reset()


def reported(name: str) -> tuple[int, float]:
    """(count, mean) of what was reported as `name` since the last reset."""
    count, total, _ = training_stats._total(name).tolist()
    return int(count), (total / count if count else None)


def test_the_cpu_reports_the_host_time_at_once():
    timer = PhaseTimer(torch.device("cpu"))
    with timer.measure("Timing/x"):
        time.sleep(0.05)
    count, mean = reported("Timing/x")
    assert count == 1 and 0.04 < mean < 5
    assert not timer.pending


class FakeEvent:
    """A CUDA event whose completion the test decides; elapsed_time in ms as recorded."""
    clock = 0.0
    done_until = 0.0  # events recorded at or before this time count as passed by the GPU

    def __init__(self, enable_timing: bool = False):
        assert enable_timing
        self.t = None
        self.synced = False

    def record(self, stream=None):
        assert stream == "stream of cuda"
        FakeEvent.clock += 1.0
        self.t = FakeEvent.clock

    def query(self) -> bool:
        return self.t <= FakeEvent.done_until

    def synchronize(self):
        self.synced = True

    def elapsed_time(self, end: FakeEvent) -> float:
        return (end.t - self.t) * 1000.0  # ms: every block "takes" the seconds between its records


def test_a_gpu_reports_each_phase_once_the_gpu_has_passed_it(monkeypatch):
    monkeypatch.setattr(phase_timer.torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(phase_timer.torch.cuda, "current_stream", lambda device: f"stream of {device}")
    FakeEvent.clock, FakeEvent.done_until = 0.0, 0.0
    timer = PhaseTimer(torch.device("cuda"))
    for name in ("Timing/a", "Timing/b", "Timing/c"):
        with timer.measure(name):
            pass  # start at t, end at t + 1: each block takes 1 s
    assert reported("Timing/a")[0] == 0  # queued, nothing reported yet
    FakeEvent.done_until = 4.0  # the GPU has passed a (1-2) and b (3-4), not c (5-6)
    timer.flush()
    assert reported("Timing/a") == (1, 1.0) and reported("Timing/b") == (1, 1.0)
    assert reported("Timing/c")[0] == 0 and [n for n, *_ in timer.pending] == ["Timing/c"]
    timer.flush(wait=True)  # the tick: waits for the rest
    assert reported("Timing/c") == (1, 1.0) and not timer.pending
    with timer.measure("Timing/d"):
        pass
    copied = copy.deepcopy(timer)  # a copied run: events cannot be copied, so nothing is pending there
    assert copied.cuda and not copied.pending and len(timer.pending) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_events_time_the_gpu_work_not_its_queueing():
    x = torch.randn(4096, 4096, device="cuda")
    torch.cuda.synchronize()
    timer = PhaseTimer(torch.device("cuda"))
    start = time.perf_counter()
    with timer.measure("Timing/matmuls"):
        for _ in range(20):
            x = (x @ x).tanh_()
    queued = time.perf_counter() - start
    timer.flush(wait=True)
    count, gpu = reported("Timing/matmuls")
    assert count == 1 and gpu > queued  # 20 products of 4096²: far longer on the GPU than to queue
