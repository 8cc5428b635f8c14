"""Where one training step spends its time: the top GPU kernels (CPU ops by self time on the CPU).

    python benchmarks/step_profile.py --device=cuda [--cfg=baseline256] [--res=256] [--batch=32]
                                      [--fp32 | --channels-last] [--cuda-graphs] [--ops=auto [--ops=ref ...]]
                                      [--top=25] [--out=FILE]

Builds `cfg` at `res` (noaug, synthetic data), runs one untimed step (allocator, cudnn autotuning),
then profiles one step of every phase (Gmain, Greg, Dmain, Dreg) with torch.profiler and prints
the `top` GPU kernels by time (CPU ops by self CPU time on the CPU) as a Markdown table, plus the
shares of kernel families (the custom ops, convolutions, cuDNN layout transposes, PyTorch's own
elementwise kernels) and each phase's wall time next to its host time (until its Python returned),
the host's waits in CUDA syncs, its GPU kernel time and kernel count (a phase whose wall time is well
above its kernel time waits on the CPU: Python and kernel launches, or syncs that drain the queue).
The test suite runs it on the CPU only.
"""

from __future__ import annotations

import os
import sys
import time

import click
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import train_speed as ts  # noqa: E402

from training import phase_graphs  # noqa: E402
from training import training_loop as tl  # noqa: E402

# Name fragments that identify a kernel or op family in the profile.
FAMILIES = {"bias_act (CUDA kernel)": ("bias_act_kernel",),
            "upfirdn2d (CUDA kernels)": ("upfirdn2d_",),
            "convolutions": ("conv", "gemm", "xmma", "cutlass", "sm90_", "wgrad", "dgrad", "fprop"),
            "cuDNN layout transposes": ("nchwtonhwc", "nhwctonchw"),
            "PyTorch elementwise / reductions": ("elementwise_kernel", "reduce_kernel")}


@click.command()
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cuda", show_default=True)
@click.option("--cfg", default="baseline256", show_default=True, help="preset to profile")
@click.option("--res", type=int, default=256, show_default=True)
@click.option("--batch", type=int, default=32, show_default=True)
@click.option("--fp32", is_flag=True, help="disable mixed precision")
@click.option("--channels-last", is_flag=True, help="channels-last fp16 blocks (train.py --channels-last=1)")
@click.option("--cuda-graphs", is_flag=True, help="profile the phases' CUDA-graph replays (train.py --cuda-graphs=1)")
@click.option("--ops", type=click.Choice(["ref", "cuda", "auto"]), multiple=True, default=["auto"], show_default=True,
              help="SPATIALGAN_OPS to profile; repeat to profile several in turn on the same networks")
@click.option("--top", type=int, default=25, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="also write the tables here")
def main(device, cfg, res, batch, fp32, channels_last, cuda_graphs, ops, top, out):
    """Profile one step of every phase (see the module docstring)."""
    if fp32 and channels_last:
        raise click.UsageError("--channels-last applies to the fp16 blocks: drop --fp32 or --channels-last")
    if out:
        open(out, "w").close()
        ts.OUT_FILE.append(out)
    dev = torch.device(device)
    torch.backends.cudnn.benchmark = True
    run = ts.build(ts.make_options(cfg, res, batch=batch, fp32=fp32, channels_last=channels_last), dev)
    what_run = (f"{cfg} @{res}², batch {batch}" + (", channels-last" if channels_last else "")
                + (", CUDA graphs" if cuda_graphs else ""))
    for impl in ops:
        if cuda_graphs:  # a graph holds the kernels of the op path it was captured with: capture anew
            run.graphs = phase_graphs.PhaseGraphs(log=ts.emit)
        profile_step(run, dev, what_run, fp32, impl, top)


def profile_step(run, dev: torch.device, what_run: str, fp32: bool, impl: str, top: int) -> None:
    """Warm up with SPATIALGAN_OPS=`impl` (autotuning, allocator, kernel builds and self-checks), time
    one unprofiled step of every phase, then profile one step of every phase and print the tables."""
    os.environ["SPATIALGAN_OPS"] = impl  # read at every op call, so it switches the built networks too
    for _ in range(1 + (phase_graphs.WARMUP_RUNS if run.graphs is not None else 0)):  # graphs: until captured
        ts.time_phases(run, reps=0)
    wall, host = run_phases(run, ts.PHASES)  # before profiling: the profiler slows the CPU side
    on_gpu = dev.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    events, phase_totals, waits = [], {}, {}
    for phase in ts.PHASES:  # one profile per phase, so that each phase's kernel time is known
        with profile(activities=activities, record_shapes=on_gpu) as prof:
            run_phases(run, (phase,))
        events.extend(prof.events())
        phase_rows = _device_kernel_rows(prof.events()) if on_gpu else _cpu_self_rows(prof.events())
        phase_totals[phase] = (sum(r[0] for r in phase_rows), sum(r[2] for r in phase_rows))
        waits[phase] = _host_wait_us(prof.events())
    rows = _device_kernel_rows(events) if on_gpu else _cpu_self_rows(events)
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    what = "GPU kernel" if on_gpu else "self CPU"
    precision = "fp32" if fp32 or not on_gpu else "mixed"  # the networks keep fp16 off on the CPU
    ts.emit(f"## Step profile: {what_run}, {precision}, SPATIALGAN_OPS={impl}, "
            f"{torch.cuda.get_device_name(dev) if on_gpu else 'CPU'}; {what} time of one step of each phase "
            f"(Gmain + Greg + Dmain + Dreg, not amortised): {total / 1e3:.1f} ms\n")
    ts.table(["op / kernel", f"{what} ms", "share", "calls"],
             [[key[:90], us / 1e3, f"{100 * us / total:.1f} %", count] for us, key, count in rows[:top]])
    shares = []
    for family, fragments in FAMILIES.items():
        us = sum(r[0] for r in rows if any(f in r[1].lower() for f in fragments))
        shares.append([family, us / 1e3, f"{100 * us / max(total, 1e-9):.1f} %"])
    ts.table(["family", f"{what} ms", "share"], shares)
    # Wall time well above kernel time: the GPU waits on the host. Host time close to the wall time says
    # the host set the pace; its waits in syncs say how much of that was draining the queue rather than
    # Python and launches. (On the CPU the profiled self times carry the profiler's own overhead, and
    # nothing is queued: no busy share and no waits there.)
    ts.table(["phase", "wall ms (unprofiled)", "host ms (unprofiled)", "host waiting in syncs ms",
              f"{what} ms", "GPU busy", "kernels" if on_gpu else "CPU ops"],
             [[p, wall[p] * 1e3, host[p] * 1e3, waits[p] / 1e3 if on_gpu else "—", phase_totals[p][0] / 1e3,
               f"{100 * phase_totals[p][0] / 1e6 / max(wall[p], 1e-9):.0f} %" if on_gpu else "—", phase_totals[p][1]]
              for p in ts.PHASES])
    if on_gpu:
        # Which layer a slow kernel belongs to: the op that launched it, with its arguments.
        slow = [name for _, name, _ in rows[:LAUNCHER_KERNELS]]
        launchers = _kernel_launchers(events, set(slow))
        ts.table(["kernel", "launched by (op, input shapes, scalar arguments)", "GPU kernel ms", "launches"],
                 [[name[:60], f"{op} {args}", us / 1e3, n] for name in slow
                  for (op, args), (us, n) in sorted(launchers.get(name, {}).items(), key=lambda kv: -kv[1][0])])


END_SYNC = "phase-end sync"  # the profiler range around the wait for a phase's last kernels
# CUDA runtime calls in which the host waits for the GPU (an `.item()` is a copy, then a stream sync).
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def run_phases(run, phases) -> tuple[dict[str, float], dict[str, float]]:
    """Run each phase once: phase -> (wall seconds, until the GPU finished), and phase -> (host seconds,
    until the phase's Python returned with its kernels queued)."""
    by_name = {ph.name: ph for ph in run.phases}
    gens = dict(zip(by_name, tl._sample_batch(run)))
    wall, host = {}, {}
    for name in phases:
        ts.sync(run.device)
        t0 = time.perf_counter()
        tl._run_phase(run, by_name[name], run.bench_real, run.bench_c, gens[name])
        t1 = time.perf_counter()
        with record_function(END_SYNC):
            ts.sync(run.device)
        wall[name], host[name] = time.perf_counter() - t0, t1 - t0
    return wall, host


def _host_wait_us(events) -> float:
    """µs the host spent in CUDA syncs inside the profiled phases (not in the wait for their end)."""
    total = 0.0
    for e in events:
        if e.device_type == DeviceType.CPU and e.name.startswith(SYNC_CALLS):
            parent = e.cpu_parent
            while parent is not None and parent.name != END_SYNC:
                parent = parent.cpu_parent
            if parent is None:
                total += e.time_range.elapsed_us()
    return total


LAUNCHER_KERNELS = 8  # the slowest kernels traced back to their ops


def _kernel_launchers(events, kernels: set[str]) -> dict[str, dict[tuple[str, str], list]]:
    """kernel name -> {(aten op, its arguments): [µs, launches]} for the kernels in `kernels`, from a
    profile's `events()`.

    A kernel is linked to the CPU event that launched it (cudaLaunchKernel & co.); the nearest
    enclosing aten op with recorded input shapes (record_shapes=True) names the layer's call."""
    out: dict[str, dict[tuple[str, str], list]] = {}
    for e in events:
        for k in getattr(e, "kernels", None) or []:
            if k.name not in kernels:
                continue
            op = e
            while op is not None and not (op.name.startswith("aten::") and any(op.input_shapes or [])):
                op = op.cpu_parent
            key = (op.name, _op_arguments(op)) if op is not None else ("(no aten op)", "")
            t = out.setdefault(k.name, {}).setdefault(key, [0.0, 0])
            t[0] += k.duration
            t[1] += 1
    return out


def _op_arguments(op) -> str:
    """Tensor shapes, then the scalar/list arguments the profiler recorded (stride, padding, groups...)."""
    shapes = [list(s) for s in (op.input_shapes or []) if s]
    scalars = [c for c in (getattr(op, "concrete_inputs", None) or []) if c not in (None, "", [])]
    return f"{shapes}" + (f" {scalars}" if scalars else "")


def _device_kernel_rows(events) -> list[tuple[float, str, int]]:
    """(total µs, kernel name, launches) of every GPU-side event among a profile's `events()`: kernels,
    copies and memsets.

    Only the device events themselves: the CPU ops that launched them also carry that time as their
    "self device time", and record_function ranges have a GPU twin spanning their kernels, so summing
    key_averages() counts the same microseconds two or three times."""
    return _totals((e.name, e.time_range.elapsed_us()) for e in events
                   if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False))


def _cpu_self_rows(events) -> list[tuple[float, str, int]]:
    """(self CPU µs, op name, calls) of every CPU op among a profile's `events()`."""
    return _totals((e.name, e.self_cpu_time_total) for e in events
                   if e.device_type == DeviceType.CPU and e.self_cpu_time_total > 0)


def _totals(named_us) -> list[tuple[float, str, int]]:
    """(total µs, name, count) per name of (name, µs) pairs; names with no time are left out."""
    totals: dict[str, list[float]] = {}
    for name, us in named_us:
        t = totals.setdefault(name, [0.0, 0])
        t[0] += us
        t[1] += 1
    return [(us, name, int(n)) for name, (us, n) in totals.items() if us > 0]


if __name__ == "__main__":
    main()
