"""The CPU emulation of CUDA graphs (torch_utils/graph_emulation.py): it must show the hazards that the
tests of the captured training phases (tests/training/test_phase_graphs.py) rely on it to show."""

from __future__ import annotations

import pytest
import torch

from torch_utils.graph_emulation import CaptureError, TraceGraph


def test_emulated_graph_replays_on_the_captured_tensors_without_capture_side_effects():
    x, state = torch.ones(3), torch.zeros(3)
    graph = TraceGraph()
    rng = torch.get_rng_state()
    with graph.capture():
        y = x * 2 + torch.randn(3)
        state.add_(y)                       # an in-place update of a tensor from before the capture
    assert torch.equal(state, torch.zeros(3)) and torch.equal(torch.get_rng_state(), rng)  # nothing happened
    x.fill_(5)
    graph.replay()                          # the ops run again on the same tensors: x is read anew
    first = y.clone()
    assert torch.equal(state, first) and (first - 10).abs().max() < 6
    graph.replay()                          # a fresh random draw, and the update accumulates
    assert not torch.equal(y, first) and torch.equal(state, first + y)


def test_what_a_capture_creates_is_undefined_until_the_first_replay():
    """On a GPU the capture runs nothing: its outputs hold the pool's garbage until a replay writes them.
    The emulation fills them with NaN (floats), True (booleans) and 7 (integers)."""
    x = torch.arange(4.0)
    graph = TraceGraph()
    with graph.capture():
        y, mask, idx = x * 2, x > 1, x.long() + 1
    assert y.isnan().all() and mask.all() and idx.eq(7).all()
    graph.replay()
    assert torch.equal(y, x * 2) and torch.equal(mask, x > 1) and torch.equal(idx, x.long() + 1)


def test_a_failed_capture_has_no_effect_either():
    """A capture that fails halfway (here: a host read after an update) leaves no trace, as on a GPU
    where nothing runs during capture."""
    state = torch.zeros(3)
    rng = torch.get_rng_state()
    with pytest.raises(CaptureError):
        with TraceGraph().capture():
            state.add_(torch.randn(3))
            state.sum().item()
    assert torch.equal(state, torch.zeros(3)) and torch.equal(torch.get_rng_state(), rng)


def test_emulated_capture_refuses_host_reads_and_freezes_python_state():
    t = torch.ones(2)
    with pytest.raises(CaptureError, match="_local_scalar_dense"):
        with TraceGraph().capture():
            float(t.sum())
    with pytest.raises(CaptureError, match="tolist"):
        with TraceGraph().capture():
            t.tolist()
    assert t.tolist() == [1.0, 1.0]  # restored after the capture
    with pytest.raises(CaptureError, match="explicit generator"):
        with TraceGraph().capture():
            torch.randn(2, generator=torch.Generator().manual_seed(0))

    class Holder:
        value = torch.zeros(1)

    graph = TraceGraph()
    with graph.capture():
        Holder.value = Holder.value + t[:1]  # replaced, not updated in place: the graph keeps the old one
    graph.replay()
    graph.replay()
    assert Holder.value.item() == 1  # a replay does not re-run Python: the eager result would be 2
