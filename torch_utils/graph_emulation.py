"""CUDA graphs emulated on the CPU: check that code can be captured, without a GPU.

`TraceBackend` has the interface of `training.phase_graphs.CudaGraphBackend`. Its graphs record every
aten op dispatched under `capture()` (forward, autograd's backward, in-place updates) with the tensors
it read and wrote, and `replay()` runs the same ops again on the same tensors, copying each result into
the tensor the op produced at capture. That is what a CUDA graph does with its kernels, so the hazards of
graph capture show up on the CPU as well:

* Python state read once at capture (a tensor replaced instead of updated in place, a branch on a
  value) is frozen: a replayed run then differs from an eager one;
* reading a tensor's value on the host (`.item()`, `.tolist()`, `.numpy()`, `bool(t)`) or making a tensor
  from host data, which fails during a CUDA capture, raises `CaptureError` here too, as does a random
  draw from an explicit (host) generator;
* like a CUDA capture, `capture()` has no effect on the tensors that existed before it: what it wrote
  into them is undone at its end (also when it fails), and the global random generator is restored;
* the tensors it created (the graph's gradients, its real logits, anything first made inside it) hold
  NaN (integers 7, booleans True) until the first replay: on a GPU they hold whatever the graph's
  memory pool held, so code that reads them before a replay is caught here too.

Collectives (`torch.distributed` with gloo) are dispatched ops too: they are recorded and replayed like
the others, so several processes can check captured all-reduces. Unlike a CUDA capture, the emulated
one runs them, so every rank must reach the same collectives during the capture.

What it cannot check: that the ops really are CUDA kernels (host-side tensors look the same here), and
anything about streams, memory pools or the kernels themselves. Used by the tests
(tests/training/test_phase_graphs.py) and by benchmarks/launch_count.py.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

_HOST_READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.lift_fresh.default}


class CaptureError(RuntimeError):
    """An op that a CUDA graph capture would refuse."""


class TraceBackend:
    def __init__(self):
        self.graphs: list[TraceGraph] = []

    def warmup(self):
        return contextlib.nullcontext()

    def new_graph(self) -> TraceGraph:
        graph = TraceGraph()
        self.graphs.append(graph)
        return graph


class TraceGraph:
    def __init__(self):
        self.ops: list[tuple] = []
        self.replays = 0

    @contextlib.contextmanager
    def capture(self):
        recorder = _Recorder(self.ops)
        rng = torch.get_rng_state()
        try:
            with recorder, _no_host_copies():
                yield
        finally:  # a failed capture has run nothing either
            with torch.no_grad():
                for tensor, before in reversed(recorder.saved):
                    tensor.copy_(before)
            torch.set_rng_state(rng)
        self._poison(recorder.new_storages)

    def _poison(self, new_storages: set[int]) -> None:
        """What the capture created is undefined until a replay writes it (see the module docstring)."""
        with torch.no_grad():
            for _, _, _, outs in self.ops:
                for t in outs:
                    if isinstance(t, torch.Tensor) and t.numel() and _storage(t) in new_storages:
                        t.fill_(math.nan if t.is_floating_point() else True if t.dtype == torch.bool else 7)

    def replay(self) -> None:
        with torch.no_grad():
            for func, args, kwargs, outs in self.ops:
                result, _ = tree_flatten(func(*args, **kwargs))
                for out, new in zip(outs, result):
                    if isinstance(out, torch.Tensor) and not _same_memory(out, new):
                        out.copy_(new)
                    elif _is_work(new):  # a collective (c10d op) runs asynchronously: done before what reads it
                        new.wait()
        self.replays += 1


@contextlib.contextmanager
def _no_host_copies():
    """`tolist()` / `numpy()` read a tensor's memory without dispatching an op: refused by hand."""
    saved = {name: getattr(torch.Tensor, name) for name in ("tolist", "numpy")}

    def refuse(name):
        def method(self, *args, **kwargs):
            raise CaptureError(f"Tensor.{name}() reads tensor data on the host during capture")
        return method

    for name in saved:
        setattr(torch.Tensor, name, refuse(name))
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


def _is_work(obj) -> bool:
    return isinstance(obj, torch.ScriptObject) and obj._type().qualified_name().endswith("c10d.Work")


def _same_memory(a: torch.Tensor, b) -> bool:
    return (isinstance(b, torch.Tensor) and a.data_ptr() == b.data_ptr() and a.shape == b.shape
            and a.stride() == b.stride())


class _Recorder(TorchDispatchMode):
    def __init__(self, ops: list):
        super().__init__()
        self.ops = ops
        self.saved: list[tuple[torch.Tensor, torch.Tensor]] = []  # (tensor written, its value before)
        self.new_storages: set[int] = set()  # storages allocated during the capture
        self.seen_storages: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _HOST_READS:
            raise CaptureError(f"{func} reads or creates tensor data on the host during capture")
        if isinstance(kwargs.get("generator"), torch.Generator):
            raise CaptureError(f"{func} draws from an explicit generator during capture")
        for i, arg in enumerate(func._schema.arguments):
            if arg.alias_info is not None and arg.alias_info.is_write:
                value = kwargs.get(arg.name) if arg.kwarg_only or i >= len(args) else args[i]
                for t in tree_flatten(value)[0]:
                    if isinstance(t, torch.Tensor) and _storage(t) not in self.new_storages:
                        self.saved.append((t, t.detach().clone()))
        flat_in, _ = tree_flatten((args, kwargs))
        for t in flat_in:
            if isinstance(t, torch.Tensor):
                self.seen_storages.add(_storage(t))
        result = func(*args, **kwargs)
        outs, _ = tree_flatten(result)
        for t in outs:
            if isinstance(t, torch.Tensor) and _storage(t) not in self.seen_storages:
                self.new_storages.add(_storage(t))
        self.ops.append((func, args, kwargs, outs))
        return result


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()
