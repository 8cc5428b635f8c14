"""torch.distributed helpers: launch detection (torchrun), gradient averaging, reductions.

Every function is a no-op (or the identity) when the process group is not initialised, so the same
training code runs with world size 1.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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

    return DistEnv(env_int("RANK", 0), env_int("LOCAL_RANK", 0), env_int("WORLD_SIZE", 1))


def init(env: DistEnv, device: torch.device, backend: str | None = None, timeout_s: float = 600) -> None:
    """Initialise the default process group for `env` (NCCL on CUDA, gloo on CPU).

    `timeout_s` bounds every collective: when a rank dies, the others fail with an error within that
    time instead of hanging forever.
    """
    if env.world_size <= 1 or dist.is_initialized():
        return
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    kwargs = {"device_id": device} if backend == "nccl" else {}
    dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size,
                            timeout=datetime.timedelta(seconds=timeout_s), **kwargs)


def is_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_active() else 1


def average_gradients(params: list[torch.nn.Parameter], divisor: float) -> None:
    """Sum gradients over ranks with ONE flattened all-reduce, then divide by `divisor`.

    Parameters without a gradient contribute zeros so that every rank sends the same layout.
    """
    params = [p for p in params if p.requires_grad or p.grad is not None]
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.flatten() for g in grads])
    if is_active():
        dist.all_reduce(flat)
    flat.div_(divisor)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p)
        offset += n


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place on a copy); identity without a process group."""
    out = tensor.clone()
    if is_active():
        dist.all_reduce(out)
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


def params_agree(module: torch.nn.Module, name: str) -> None:
    """Raise RuntimeError if any parameter/buffer of `module` differs between ranks (checked at snapshots)."""
    if not is_active():
        return
    for pname, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        if tensor.numel() == 0 or pname.endswith("w_avg"):
            continue
        t = tensor.detach().float()
        lo, hi = t.clone(), t.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        if not torch.equal(torch.nan_to_num(lo), torch.nan_to_num(hi)):
            raise RuntimeError(f"{name}.{pname} differs between ranks")


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
