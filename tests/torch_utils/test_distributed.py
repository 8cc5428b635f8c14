"""torch_utils/distributed.py without a process group: torchrun detection, and every helper is the
identity (or a no-op) so that one process runs the same training code. The multi-process behaviour is
tested with real torchrun ranks in tests/training/test_multi_process_training.py."""

from __future__ import annotations

import pytest
import torch

from torch_utils import distributed


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_detect_reads_torchrun_variables(clean_env):
    assert distributed.detect() == distributed.DistEnv(0, 0, 1) and distributed.detect().is_main
    clean_env.setenv("RANK", "5")
    clean_env.setenv("LOCAL_RANK", "1")
    clean_env.setenv("WORLD_SIZE", "8")
    env = distributed.detect()
    assert (env.rank, env.local_rank, env.world_size, env.is_main) == (5, 1, 8, False)


@pytest.mark.parametrize("rank, world, message", [("8", "8", "inconsistent"), ("-1", "2", "inconsistent"),
                                                  ("0", "0", "inconsistent"), ("x", "2", "RANK='x'")])
def test_detect_names_bad_variables(clean_env, rank, world, message):
    clean_env.setenv("RANK", rank)
    clean_env.setenv("WORLD_SIZE", world)
    with pytest.raises(ValueError, match=message):
        distributed.detect()


def test_single_process_helpers_are_identities():
    assert not distributed.is_active() and distributed.world_size() == 1
    x = torch.arange(6.0).view(3, 2)
    total = distributed.all_reduce_sum(x)
    assert torch.equal(total, x) and total.data_ptr() != x.data_ptr()  # a copy: callers may modify it
    assert torch.equal(distributed.all_gather_cat(x), x)
    assert distributed.all_gather_object({"a": 1}) == [{"a": 1}]
    assert distributed.broadcast_object("s") == "s"
    module = torch.nn.Linear(2, 2)
    module.register_buffer("w_avg", torch.ones(2))
    distributed.average_buffers(module)
    distributed.params_agree(module, "G")
    assert torch.equal(module.w_avg, torch.ones(2))


def test_average_gradients_divides_and_keeps_missing_gradients_missing():
    a, b = torch.nn.Parameter(torch.zeros(2, 3)), torch.nn.Parameter(torch.zeros(4))
    a.grad = torch.full([2, 3], 6.0)
    distributed.average_gradients([a, b], divisor=3)
    assert torch.equal(a.grad, torch.full([2, 3], 2.0)) and a.grad.shape == (2, 3)
    assert b.grad is None  # the optimiser must skip it, as without the helper


def test_average_gradients_leaves_every_gradient_a_view_of_the_returned_buffer():
    """One in-place op on the returned buffer (the training loop's NaN sanitising) reaches every gradient."""
    a, b, c = (torch.nn.Parameter(torch.zeros(s)) for s in ([2, 3], [4], [5]))
    a.grad, c.grad = torch.full([2, 3], 4.0), torch.arange(5.0)
    flat = distributed.average_gradients([a, b, c], divisor=2)
    assert flat.shape == (11,) and b.grad is None
    flat.neg_()
    assert torch.equal(a.grad, torch.full([2, 3], -2.0)) and torch.equal(c.grad, -torch.arange(5.0) / 2)
    assert distributed.average_gradients([b], divisor=1) is None  # no gradient at all: nothing to return


def test_average_gradients_with_a_given_presence():
    """`presence` (what a CUDA graph capture passes instead of reading flags back): a parameter some rank
    gives a gradient gets one here too (zeros if this rank has none); one that none does stays None;
    a gradient the presence denies, or a presence of the wrong length, is an error, not a silent drop."""
    a, b, c = (torch.nn.Parameter(torch.zeros(s)) for s in ([2], [3], [1]))
    a.grad = torch.full([2], 4.0)
    flat = distributed.average_gradients([a, b, c], divisor=2, presence=[True, True, False])
    assert torch.equal(flat, torch.tensor([2.0, 2.0, 0.0, 0.0, 0.0]))
    assert torch.equal(b.grad, torch.zeros(3)) and c.grad is None and b.grad.data_ptr() == flat[2:].data_ptr()
    c.grad = torch.ones(1)
    with pytest.raises(RuntimeError, match=r"parameter 2 \[1\] has a gradient"):
        distributed.average_gradients([a, b, c], divisor=1, presence=[True, True, False])
    with pytest.raises(ValueError, match="2 presence flags for 3 parameters"):
        distributed.average_gradients([a, b, c], divisor=1, presence=[True, True])


def test_is_comm_error_recognises_collective_failures():
    assert distributed.is_comm_error(RuntimeError("[../gloo/transport/tcp/pair.cc] Connection closed by peer"))
    assert distributed.is_comm_error(RuntimeError("NCCL error: unhandled system error"))
    assert not distributed.is_comm_error(RuntimeError("CUDA out of memory"))
    assert not distributed.is_comm_error(ValueError("Timed out"))  # only runtime failures of a collective
