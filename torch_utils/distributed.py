"""torch.distributed helpers: launch detection (torchrun), gradient averaging, reductions.

Every function is a no-op (or the identity) when the process group is not initialised, so the same
training code runs with world size 1.
"""

from __future__ import annotations

import datetime
import math
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 600.0  # bounds every collective; override with --dist-timeout / SPATIALGAN_DIST_TIMEOUT


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect() -> DistEnv:
    """Read torchrun's RANK / LOCAL_RANK / WORLD_SIZE (world size 1 when not launched by torchrun)."""
    def env_int(name: str, default: int) -> int:
        value = os.environ.get(name, str(default))
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"Environment variable {name}={value!r} is not an integer") from None

    env = DistEnv(env_int("RANK", 0), env_int("LOCAL_RANK", 0), env_int("WORLD_SIZE", 1))
    if env.world_size < 1 or not 0 <= env.rank < env.world_size:
        raise ValueError(f"Environment variables RANK={env.rank} / WORLD_SIZE={env.world_size} are inconsistent")
    return env


def init(env: DistEnv, device: torch.device, backend: str | None = None,
         timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Initialise the default process group for `env` (NCCL on CUDA, gloo on CPU).

    `timeout_s` bounds every collective: when a rank dies or hangs, the others fail with an error
    within that time instead of waiting forever.
    """
    if env.world_size <= 1 or dist.is_initialized():
        return
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    if backend == "nccl":
        # Without async error handling a timed-out NCCL collective hangs instead of raising (older torch).
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    kwargs = {"device_id": device} if backend == "nccl" else {}
    dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size,
                            timeout=datetime.timedelta(seconds=timeout_s), **kwargs)


def is_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_active() else 1


def _comm_device(tensor: torch.Tensor) -> torch.device:
    """NCCL only moves CUDA tensors; gloo handles CPU tensors (and CUDA ones via a host copy)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return tensor.device


def average_gradients(params: list[torch.nn.Parameter], divisor: float,
                      presence: list[bool] | None = None) -> torch.Tensor | None:
    """Sum gradients over ranks with ONE flattened all-reduce, then divide by `divisor`.

    Afterwards every gradient is a view of one flat buffer, which is returned (None when no parameter
    has a gradient), so that a caller can sanitise all of them with one kernel instead of one per
    parameter. A parameter that no rank gave a gradient keeps `grad = None`, so the optimiser skips it
    exactly as in a single process. With a process group every rank sends the same layout: zeros where
    a rank has no gradient, and, to learn which parameters any rank gave one, a presence flag per
    parameter, read back on the host (a sync). `presence` (one bool per parameter, as a previous call
    left `grad is not None`) replaces the flags: no host read, which a CUDA graph capture needs. A
    single process has nothing to agree on: no flags, no host read.
    """
    active = is_active()
    if presence is None and not active:
        presence = [p.grad is not None for p in params]
    if presence is not None:
        if len(presence) != len(params):
            raise ValueError(f"average_gradients: {len(presence)} presence flags for {len(params)} parameters")
        for i, (p, has_grad) in enumerate(zip(params, presence)):
            if p.grad is not None and not has_grad:
                raise RuntimeError(f"average_gradients: parameter {i} {list(p.shape)} has a gradient that the "
                                   "given presence says no rank produces")
        params = [p for p, has_grad in zip(params, presence) if has_grad]
    if not params:
        return None
    grads = [p.grad.detach().flatten() if p.grad is not None else torch.zeros(p.numel(), device=p.device,
                                                                               dtype=p.dtype) for p in params]
    if presence is None:  # several ranks, presence unknown: one flag per parameter travels with the sums
        flags = torch.tensor([float(p.grad is not None) for p in params], dtype=grads[0].dtype)
        flat = torch.cat(grads + [flags.to(grads[0].device)])
    else:
        flat = torch.cat(grads)
    if active:
        dev = flat.device
        comm = flat.to(_comm_device(flat))
        dist.all_reduce(comm)
        flat = comm.to(dev)
    if presence is None:
        present = (flat[-len(params):] > 0).tolist()
        flat = flat[:-len(params)]
    else:
        present = [True] * len(params)
    if divisor != 1:
        flat.div_(divisor)
    offset = 0
    for p, has_grad in zip(params, present):
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p) if has_grad else None
        offset += n
    return flat if any(present) else None


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (on a copy); identity without a process group."""
    out = tensor.clone()
    if is_active():
        comm = out.to(_comm_device(out))
        dist.all_reduce(comm)
        out = comm.to(tensor.device)
    return out


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's `tensor` along dim 0 (sizes along dim 0 may differ), in rank order.

    The gather function metrics expect (`MetricOptions.gather`); identity without a process group.
    A rank with nothing to contribute may pass any empty tensor: it takes the others' trailing shape.
    """
    if not is_active():
        return tensor
    shapes = all_gather_object(tuple(tensor.shape))
    full = [s for s in shapes if math.prod(s) > 0]
    if not full:
        return tensor
    trailing = full[0][1:]
    if any(s[1:] != trailing for s in full):
        raise ValueError(f"all_gather_cat: ranks hold incompatible shapes {shapes}")
    counts = [s[0] if math.prod(s) > 0 else 0 for s in shapes]
    comm_dev = _comm_device(tensor)
    local = tensor.detach().to(comm_dev).reshape(counts[dist.get_rank()], *trailing)
    # all_gather needs equal shapes: pad to the largest share, then drop the padding.
    padded = local.new_zeros([max(counts), *trailing])
    padded[:local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, counts)]).to(tensor.device)


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order; `[obj]` without a process group."""
    if not is_active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    if not is_active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if is_active():
        dist.barrier()


def average_buffers(module: torch.nn.Module, suffix: str = "w_avg") -> None:
    """Replace the buffers whose names end in `suffix` by their mean over ranks (one all-reduce).

    Running averages such as the mapping network's `w_avg` track each rank's own samples; their mean
    over ranks estimates the statistic over the global batch (exactly, for a linear average updated
    once per step), and calling this at snapshot time makes every rank hold the snapshot's value.
    """
    if not is_active():
        return
    bufs = [b for name, b in module.named_buffers() if name.endswith(suffix) and b.numel() > 0]
    if not bufs:
        return
    flat = torch.cat([b.detach().double().flatten() for b in bufs])
    flat = all_reduce_sum(flat).div_(dist.get_world_size())
    offset = 0
    for b in bufs:
        b.copy_(flat[offset:offset + b.numel()].view_as(b))
        offset += b.numel()


def params_agree(module: torch.nn.Module, name: str) -> None:
    """Raise RuntimeError if any parameter/buffer of `module` differs between ranks (checked at snapshots).

    Two flattened all-reduces (min and max) for the whole module, whatever its size.
    """
    if not is_active():
        return
    entries = [(pname, t) for pname, t in list(module.named_parameters()) + list(module.named_buffers())
               if t.numel() > 0 and not pname.endswith("w_avg")]  # w_avg tracks each rank's own samples
    if not entries:
        return
    flat = torch.cat([t.detach().float().flatten() for _, t in entries])
    flat = torch.nan_to_num(flat.to(_comm_device(flat)))
    lo, hi = flat.clone(), flat.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    if torch.equal(lo, hi):
        return
    bad = int((lo != hi).nonzero()[0])
    offset = 0
    for pname, t in entries:
        if bad < offset + t.numel():
            raise RuntimeError(f"{name}.{pname} differs between ranks")
        offset += t.numel()


def is_comm_error(err: BaseException) -> bool:
    """True for failures of a collective (a peer died, hung past the timeout, or the network broke)."""
    if isinstance(err, getattr(dist, "DistError", ())):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(k in text for k in ("gloo", "Gloo", "NCCL", "Connection closed",
                                                                     "Connection reset", "Timed out"))


STOP_GRACE_S = 30.0  # after SIGTERM, how long a rank may take to clean up before it is killed


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_local(nproc: int, script: str, argv: list[str]) -> int:
    """Run `script argv` in `nproc` processes on this machine, as torchrun would start them (RANK,
    LOCAL_RANK, WORLD_SIZE, a free MASTER_PORT), and wait for all of them. Returns 0, or the exit code
    of the first rank that failed.

    No rank outlives the launcher: SIGINT / SIGTERM sent to it reach every rank as SIGTERM (they get
    their own session, so Ctrl-C reaches them once, through here), and when one rank fails the others
    are stopped the same way; a rank still running STOP_GRACE_S later is killed. Returns 128 + the
    signal after an interrupt. Only the ranks' own messages are printed, not a launcher's traceback.
    """
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(nproc),
               LOCAL_WORLD_SIZE=str(nproc))
    procs = [subprocess.Popen([sys.executable, script, *argv], start_new_session=True,
                              env=dict(env, RANK=str(r), LOCAL_RANK=str(r))) for r in range(nproc)]
    received: list[int] = []

    def stop(kill: bool = False) -> None:
        for p in procs:
            if p.poll() is None:
                p.kill() if kill else p.terminate()

    def forward(signum, frame):
        # Always as SIGTERM: a process started in the background by a non-interactive shell inherits
        # SIGINT ignored, so a passed-on SIGINT would not stop it; the scripts treat SIGTERM like Ctrl-C.
        received.append(signum)
        stop()

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    failed, stop_at = None, None
    try:
        while any(p.poll() is None for p in procs):
            for p in procs:
                rc = p.poll()
                if rc not in (None, 0) and failed is None:
                    failed = rc
            if (failed is not None or received) and stop_at is None:
                stop_at = time.monotonic() + STOP_GRACE_S
                if not received:  # an interrupt has already been passed on to every rank
                    stop()
            if stop_at is not None and time.monotonic() > stop_at:
                stop(kill=True)
            time.sleep(0.05)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        return 128 + received[0]
    return failed if failed is not None else next((p.returncode for p in procs if p.returncode != 0), 0)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def exit_after_success() -> None:
    """End a finished multi-process run: barrier, flush, then leave WITHOUT tearing the group down.

    Everything has been written by then. Destroying a gloo group at interpreter exit occasionally
    aborts a rank ("terminate called without an active exception"), which would report a finished run
    as failed. Without a process group this only returns.
    """
    if not is_active():
        shutdown()
        return
    barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
