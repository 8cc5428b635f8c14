"""CUDA graphs for the training phases: capture a phase once, then replay it with one launch per step.

At batch 32 on an H100 a training step waits on the CPU, not the GPU: every phase issues 1,800-4,500
small kernels through Python and autograd. A CUDA graph records the kernels of one phase once and
replays all of them from a single launch, with the same memory addresses, shapes and Python control
flow as at capture. So what a graph holds has to be static:

* captured (`training_loop.phase_body`): every round's forward and backward, the gradient averaging
  and the NaN/inf sanitising of the gradients;
* eager around it: copying this step's inputs (real images, labels, latents, heatmaps) into the
  graph's static buffers, pointing each parameter's `.grad` at the graph's gradients, ADA's signal
  from the graph's real logits, the optimiser step (a few multi-tensor kernels), G_ema.

State that changes between steps is read and written in place by the captured kernels: the stats
accumulators (`training_stats`), `w_avg`, the path-length mean, ADA's p. Random draws (noise, style
mixing, path-length noise) come from the CUDA generator, which advances with every replay.

A phase runs eagerly `WARMUP_RUNS` times first (cuDNN picks its algorithms, the custom kernels build
and self-check, the stats accumulators and filter caches appear), then once more eagerly on the capture
stream, and is captured right after; every later run of it is a replay. All phases share one memory
pool (each replay's outputs are consumed before the next phase runs).

Augmentation: p = 0 skips the pipe in Python, so each phase gets one graph for p = 0 and another once
ADA raises p (p itself is read by the kernels, so its later changes need no new capture). Geometric
augmentations switch to `static_padding` (padding to the largest possible reach instead of reading this
batch's reach back from the GPU: more memory traffic in the pipe, no host sync).

Several processes (torchrun, NCCL): the gradient all-reduce is captured with the phase. Eagerly it
sends a presence flag per parameter and reads back which ones any rank gave a gradient (a host sync);
in the graph that set is the one the eager run before the capture found (it follows from the phase's
code, the same on every rank and at every step). NCCL requires a captured collective to be replayed
by every rank or by none, so after each capture the ranks exchange whether theirs succeeded, and a
failure on one rank turns graphs off on all of them (the step itself is already done: the capture
runs nothing). Every rank takes the same decisions in the same order (warm-up counts, ADA's p, which
is agreed across ranks), so their captures line up.

When a run cannot use graphs, its phases run eagerly and the reason is printed once: not a CUDA device,
several processes on a backend other than NCCL, or a capture that failed (its message is printed, with
the rank). SEL_indoor's per-object z, drawn on the host from the heatmaps' style seeds,
are an input like the latents (`training_loop._sample_batch` draws them before the phase).

`PhaseGraphs(backend=...)` takes another graph backend: the tests replay the recorded ops of a capture
on the CPU (`torch_utils.graph_emulation`), which checks everything above except the CUDA calls.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from torch_utils import distributed
from training import training_loop as tl

WARMUP_RUNS = 2  # eager runs of a phase before the run that captures it


class CudaGraphBackend:
    """Captures on a side stream of `device` into one memory pool shared by every phase's graph."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self.pool = torch.cuda.graph_pool_handle()

    @contextlib.contextmanager
    def warmup(self):
        """Eager work on the capture stream (cuBLAS / cuDNN set themselves up there before capturing)."""
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            yield
        torch.cuda.current_stream(self.device).wait_stream(self.stream)

    def new_graph(self) -> Any:
        return _CudaGraph(self)


class _CudaGraph:
    def __init__(self, backend: CudaGraphBackend):
        self.backend, self.graph = backend, torch.cuda.CUDAGraph()

    def capture(self):
        # thread_local: other threads (the DataLoader's pin-memory thread) may use CUDA meanwhile.
        return torch.cuda.graph(self.graph, pool=self.backend.pool, stream=self.backend.stream,
                                capture_error_mode="thread_local")

    def replay(self) -> None:
        self.graph.replay()


@dataclass
class _Captured:
    graph: Any
    inputs: tuple                          # static (real_img, real_c, (z, c, spec, style_z)) the graph reads
    grads: list[torch.Tensor | None]       # the graph's gradient of every parameter of the phase's module
    real_logits: list[torch.Tensor]        # each round's real logits (ADA's signal), written by the graph


def unsupported(run: tl.Run, need_cuda: bool = True) -> str | None:
    """Why `run` cannot replay its phases as graphs, or None."""
    if need_cuda and run.device.type != "cuda":
        return f"the run is on {run.device.type}, not a CUDA device"
    if need_cuda and run.world_size > 1 and dist.get_backend() != "nccl":
        return f"the {dist.get_backend()} backend (collectives in a CUDA graph need NCCL)"
    return None


class PhaseGraphs:
    """Replays each training phase as a graph once it is captured (see the module docstring).

    `run_phase` is called by `training_loop._run_phase` and returns False when the phase should run
    eagerly (warm-up runs, or graphs off for this run)."""

    def __init__(self, backend: Any = None, log=print):
        self.backend, self.log = backend, log
        self.checked = False
        self.off: str | None = None  # why graphs are off for the rest of the run
        self.captured: dict[tuple[str, bool], _Captured] = {}  # (phase, augmentation pipe active) -> graph
        self.eager_runs: Counter[tuple[str, bool]] = Counter()

    def run_phase(self, run: tl.Run, phase: tl.Phase, real_img, real_c, gen) -> bool:
        if self.off is not None:
            return False
        if not self.checked:
            self.checked = True
            reason = unsupported(run, need_cuda=self.backend is None)
            if reason is not None:
                return self._turn_off(run, reason)
            self.backend = self.backend or CudaGraphBackend(run.device)
            if run.augment_pipe is not None:
                run.augment_pipe.static_padding = True  # no host read of the geometric ops' reach
        active = _augmenting(run)
        key = (phase.name, active)  # p = 0 skips the pipe in Python: a graph per side of that branch
        entry = self.captured.get(key)
        if entry is None:
            self.eager_runs[key] += 1
            if self.eager_runs[key] <= WARMUP_RUNS:
                return False
            inputs = _clone_inputs((real_img, real_c, gen))
            # This step's phase, eagerly on the capture stream (its set-up happens there), then the
            # capture, which runs nothing: the graph's first replay is the phase's next run.
            with self.backend.warmup():
                phase.opt.zero_grad(set_to_none=True)
                real_logits = tl.phase_body(run, phase, *inputs)
            presence = [p.grad is not None for p in phase.module.parameters()]  # agreed by every rank
            tl.finish_phase(run, phase, real_logits)
            error = None
            try:
                self.captured[key] = self._capture(run, phase, inputs, presence)
            except Exception as err:  # only the graph is lost: this step's phase is done
                first = next((line for line in str(err).splitlines() if line.strip()), "")
                error = f"{type(err).__name__}: {first[:200]}"
            # Replaying a captured collective is collective too: every rank replays its graph, or none does.
            errors = distributed.all_gather_object(error) if run.world_size > 1 else [error]
            failed = [(rank, e) for rank, e in enumerate(errors) if e is not None]
            if failed:
                rank, e = failed[0]
                where = f" on rank {rank}" if run.world_size > 1 else ""
                self._turn_off(run, f"capturing {phase.name} failed{where} ({e})")
            return True
        _copy_inputs(entry.inputs, (real_img, real_c, gen))
        entry.graph.replay()
        for p, g in zip(phase.module.parameters(), entry.grads):
            p.grad = g
        tl.finish_phase(run, phase, entry.real_logits)
        return True

    def _capture(self, run: tl.Run, phase: tl.Phase, inputs: tuple, presence: list[bool]) -> _Captured:
        phase.opt.zero_grad(set_to_none=True)  # the graph's backward creates the gradients it then writes
        graph = self.backend.new_graph()
        with graph.capture():
            real_logits = tl.phase_body(run, phase, *inputs, grad_presence=presence)
        grads = [p.grad for p in phase.module.parameters()]
        return _Captured(graph, inputs, grads, real_logits)

    def _turn_off(self, run: tl.Run, reason: str) -> bool:
        self.off = reason
        self.captured.clear()
        if run.augment_pipe is not None:
            run.augment_pipe.static_padding = False  # eager runs read the reach: less padding
        if self.log is not None:
            self.log(f"CUDA graphs off, the phases run eagerly: {reason}")
        return False


def _augmenting(run: tl.Run) -> bool:
    return run.augment_pipe is not None and run.augment_pipe.p_value() > 0


def _tensors(inputs) -> list[torch.Tensor]:
    """Every tensor of (real_img, real_c, (z, c, spec, style_z)) in a fixed order."""
    real_img, real_c, (z, c, spec, style_z) = inputs
    out = [real_img, real_c, z, c] + ([style_z] if style_z is not None else [])
    if spec is not None:
        out += [*spec.centers, *spec.sigmas, *spec.alive, *(spec.noise or [])]
        if spec.style_seeds is not None:
            out.append(spec.style_seeds)
    return out


def _clone_inputs(inputs) -> tuple:
    real_img, real_c, (z, c, spec, style_z) = inputs
    return real_img.clone(), real_c.clone(), (z.clone(), c.clone(), spec.clone() if spec is not None else None,
                                              style_z.clone() if style_z is not None else None)


def _copy_inputs(static, inputs) -> None:
    """This step's inputs into the graph's buffers; a shape change would silently break the graph."""
    for dst, src in zip(_tensors(static), _tensors(inputs), strict=True):
        if dst.shape != src.shape:
            raise RuntimeError(f"a captured training phase got an input of shape {list(src.shape)} instead of "
                               f"{list(dst.shape)}; CUDA graphs need the same shapes every step")
        dst.copy_(src, non_blocking=True)


__all__ = ["PhaseGraphs", "CudaGraphBackend", "WARMUP_RUNS", "unsupported"]
