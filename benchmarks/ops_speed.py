"""Op-level speed: reference ops vs CUDA kernels at the shapes of a 256² StyleGAN2 network.

    python benchmarks/ops_speed.py --device=cuda [--batch=32] [--reps=20] [--quick] [--out=FILE]

For bias_act (lrelu, gain √2, with and without clamp) and upfirdn2d (the 4x4 filter [1,3,3,1] after
G's up-convolution, upsample2d and downsample2d), in fp16 and fp32: the median time of the forward
pass and of forward + backward with `impl="ref"` and with the kernels (`impl="cuda"`), and, for
upfirdn2d's forward, each kernel forced in turn (general, tiled, tiled fixed; channels-last for the
channels-last copies of the upfirdn2d inputs; bias_act with clamp runs on a channels-last copy too, where
each element has its own bias index). The "GB/s" column
counts one read of the input and one write of the output per forward (the least any implementation
must move). On the CPU only the reference rows run (the kernels need CUDA); `--quick` uses 32²
shapes. The training-level figures are in train_speed.py (section D) and step_profile.py.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Callable, Iterator

import click
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import train_speed as ts  # noqa: E402  (its Markdown output helpers; it also puts the repo on sys.path)

from torch_utils import ops  # noqa: E402
from torch_utils.ops import _cuda, bias_act, upfirdn2d  # noqa: E402


def median_ms(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    """Median wall time of fn() in ms over `reps` calls, after three untimed ones."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def fwd_and_bwd(op: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[Callable, Callable]:
    """(forward, forward + backward w.r.t. x) closures of op on x."""
    xg = x.detach().requires_grad_()
    dy = torch.randn_like(op(x.detach()))

    def forward():
        with torch.no_grad():
            return op(x)

    def backward():
        (grad,) = torch.autograd.grad(op(xg), xg, dy)
        return grad

    return forward, backward


def cases(batch: int, quick: bool, device: torch.device) -> Iterator[tuple[str, str, torch.Tensor, dict]]:
    """(op, label, input, kwargs) at sizes one 256² G/D pass meets (paper256 widths), made one at a time."""
    s, c = (32, 8) if quick else (256, 64)
    f = upfirdn2d.setup_filter([1, 3, 3, 1], device=device)
    specs = [  # (op, what, shape, kwargs, also time a channels-last copy, as the fp16 blocks use with --channels-last)
        ("bias_act", "lrelu+clamp", [batch, c, s, s], dict(clamp=256.0), True),
        ("bias_act", "lrelu", [batch, 4 * c, s // 4, s // 4], {}, False),
        ("upfirdn2d", "filter 4x4", [batch, c, s + 1, s + 1], dict(f=f, up=1, down=1, padding=1, gain=4), True),
        ("upfirdn2d", "up 2", [batch, c, s // 2, s // 2], dict(f=f, up=2, down=1, padding=(2, 1, 2, 1), gain=4), True),
        ("upfirdn2d", "down 2", [batch, c, s, s], dict(f=f, up=1, down=2, padding=1), True),
    ]
    for dtype in (torch.float16, torch.float32):
        for op, what, shape, kwargs, channels_last in specs:
            yield op, f"{what} {shape}", torch.randn(shape, device=device, dtype=dtype), kwargs
            if channels_last:
                x = torch.randn(shape, device=device, dtype=dtype).to(memory_format=torch.channels_last)
                yield op, f"{what} {shape} channels-last", x, kwargs


def run_op(op: str, kwargs: dict, impl: str, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    if op == "bias_act":
        b = torch.randn(x.shape[1], device=x.device, dtype=x.dtype)
        return lambda t: bias_act.bias_act(t, b, 1, "lrelu", clamp=kwargs.get("clamp"), impl=impl)
    k = dict(kwargs)
    return lambda t: upfirdn2d.upfirdn2d(t, k["f"], up=k["up"], down=k["down"], padding=k["padding"],
                                         gain=k.get("gain", 1), impl=impl)


def forced_path(kwargs: dict, path: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """upfirdn2d forward through one kernel (1 general, 2 tiled, 3 tiled fixed, 4 channels-last); same arguments."""
    up, down, pad = kwargs["up"], kwargs["down"], kwargs["padding"]
    pad = (pad,) * 4 if isinstance(pad, int) else pad
    return lambda t: _cuda.upfirdn2d_cuda(t, kwargs["f"], (up, up), (down, down), pad, False,
                                          float(kwargs.get("gain", 1)), path=path)


@click.command()
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cuda", show_default=True)
@click.option("--batch", type=int, default=32, show_default=True)
@click.option("--reps", type=int, default=20, show_default=True, help="timed calls per row (median)")
@click.option("--quick", is_flag=True, help="32² shapes and 8 channels: a sanity run of every row")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="also write the table here")
def main(device, batch, reps, quick, out):
    """Time reference ops vs CUDA kernels (see the module docstring)."""
    if out:
        open(out, "w").close()
    ts.OUT_FILE[:] = [out] if out else []
    dev = torch.device(device)
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    on_gpu = dev.type == "cuda"
    kernels = dev.type in ops.KERNEL_DEVICE_TYPES  # "cpu" too when the tests emulate the kernels
    name = torch.cuda.get_device_name(dev) if on_gpu else "CPU"
    ts.emit(f"## Op speed: {name}, torch {torch.__version__}, batch {batch}, median of {reps}\n")
    ts.table_header(["op", "input", "dtype", "impl", "pass", "ms", "GB/s", "vs ref"])
    impls = ["ref", "cuda"] if kernels else ["ref"]
    for op, label, x, kwargs in cases(batch, quick, dev):
        dtype = str(x.dtype).removeprefix("torch.")
        ref_ms: dict[str, float] = {}
        out_numel = run_op(op, kwargs, "ref", x)(x).numel()
        gbytes = (x.numel() + out_numel) * x.element_size() / 1e9
        timed: list[tuple[str, str, Callable]] = []
        for impl in impls:
            forward, backward = fwd_and_bwd(run_op(op, kwargs, impl, x), x)
            timed += [(impl, "fwd", forward), (impl, "fwd+bwd", backward)]
        if kernels and op == "upfirdn2d":
            paths = [(1, "general"), (2, "tiled"), (3, "tiled fixed")]
            if x.stride(1) == 1:
                paths.append((4, "channels-last"))
            for path, kernel in paths:
                timed.append((f"kernel: {kernel}", "fwd", lambda fn=forced_path(kwargs, path), t=x: fn(t)))
        for impl, which, fn in timed:
            ms = median_ms(fn, dev, reps)
            if impl == "ref":
                ref_ms[which] = ms
            speedup = f"{ref_ms[which] / ms:.2f}×" if which in ref_ms and impl != "ref" else None
            ts.table_row([op, label, dtype, impl, which, ms, gbytes / (ms / 1e3) if which == "fwd" else None, speedup])
        del x, timed  # before the next case's input is made
        if on_gpu:
            torch.cuda.empty_cache()
    ts.emit()
    if kernels:
        ts.emit(f"CUDA op status: {dict(_cuda._status)} (None = kernel in use)")
    else:
        ts.emit("CPU: reference rows only (the kernels need a CUDA device).")


if __name__ == "__main__":
    main()
