"""Shape checks, argument validation and small tensor helpers used across the code base."""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterable, Sequence

import torch

# ---------------------------------------------------------------------------------------------------
# Validation: errors at the boundary name the argument and the offending value.


def assert_shape(tensor: torch.Tensor, shape: Sequence[int | None], name: str = "tensor") -> None:
    """Raise ValueError unless `tensor.shape` matches `shape` (None = any size in that dimension)."""
    if tensor.ndim != len(shape):
        raise ValueError(f"{name} must have {len(shape)} dimensions {list(shape)}, got shape {list(tensor.shape)}")
    for idx, (size, ref) in enumerate(zip(tensor.shape, shape)):
        if ref is None:
            continue
        if isinstance(ref, torch.Tensor):
            ref = int(ref)
        if size != ref:
            raise ValueError(f"{name} has size {size} in dimension {idx}, expected {ref} (shape {list(tensor.shape)})")


def check_choice(name: str, value, choices: Iterable) -> None:
    """Raise ValueError naming `name` if `value` is not one of `choices`."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {choices}")


def check_power_of_two(name: str, value: int, minimum: int = 4) -> None:
    """Raise ValueError unless `value` is an integer power of two >= minimum."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum or value & (value - 1):
        raise ValueError(f"{name} must be a power of two >= {minimum}, got {value!r}")


def check_positive_int(name: str, value, allow_zero: bool = False) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < (0 if allow_zero else 1):
        kind = "a non-negative" if allow_zero else "a positive"
        raise ValueError(f"{name} must be {kind} integer, got {value!r}")


# ---------------------------------------------------------------------------------------------------
# Parameters.


def count_params(module: torch.nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def named_params_and_buffers(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    return list(module.named_parameters()) + list(module.named_buffers())


@torch.no_grad()
def copy_params_and_buffers(src: torch.nn.Module, dst: torch.nn.Module, require_all: bool = True) -> None:
    """Copy every parameter/buffer of `src` into the same-named tensor of `dst`."""
    src_tensors = dict(named_params_and_buffers(src))
    for name, tensor in named_params_and_buffers(dst):
        if name in src_tensors:
            tensor.copy_(src_tensors[name].detach())
        elif require_all:
            raise KeyError(f"Source module has no tensor named {name!r}")


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`t` on `device`. Host to GPU goes through pinned memory and is queued like a kernel: a plain copy
    from pageable memory waits for everything already queued on the stream (a host sync per call, which
    at every step would stall the host until the previous step's kernels finished). A tensor that requires
    gradients (a drag's heatmap centres) takes the plain copy: one sync per call, outside training.
    An already pinned `t` is copied from directly: don't change it until the copy has run. An empty `t`
    (the labels [N, 0] of an unconditional network) has nothing to copy and is not pinned: some PyTorch
    versions refuse to pin a zero-element tensor of non-zero shape."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu" and not t.requires_grad and t.numel():
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def nan_to_num_(grads: Iterable[torch.Tensor | None], bound: float = 1e5) -> None:
    """Sanitise gradients in place: NaN -> 0, +-inf -> +-bound (as StyleGAN2-ADA does before a step)."""
    for g in grads:
        if g is not None:
            torch.nan_to_num(g, nan=0.0, posinf=bound, neginf=-bound, out=g)


# ---------------------------------------------------------------------------------------------------
# CPU allocator.

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_allocator_tuned = False


def tune_cpu_allocator() -> bool:
    """Keep freed memory in glibc's heap instead of returning it to the kernel.

    Training allocates and frees the same large activation buffers every step. By default glibc
    serves blocks above 32 MiB with mmap and unmaps them on free, so each step re-faults every page
    of those buffers (a quarter of the CPU time at 256²). Disabling mmap and trimming makes freed
    buffers reusable without page faults. Trimming is switched off altogether (a trim threshold of
    -1 is SIZE_MAX inside glibc): any finite threshold is exceeded by the free top of the heap once a
    phase's peak is large enough (SEL_indoor at 256² frees > 2 GiB at once), and every later step then
    re-faults those pages. The resident size stays at the peak, like PyTorch's CUDA caching allocator.
    Returns True when the settings were applied (glibc only).
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, -1) == 1
    except (OSError, AttributeError):
        return False
    _allocator_tuned = ok
    return ok
