"""Where one amortised training step spends its time: the top kernels/ops by self time.

    python benchmarks/step_profile.py --device=cuda [--cfg=baseline256] [--res=256] [--batch=32]
                                      [--fp32] [--ops=auto] [--top=25] [--out=FILE]

Builds `cfg` at `res` (noaug, synthetic data), runs one untimed step (allocator, cudnn autotuning),
then profiles one step of every phase (Gmain, Greg, Dmain, Dreg) with torch.profiler and prints
the `top` ops by self device time (self CPU time on the CPU) as a Markdown table, plus the share of
the custom ops' kernels and of convolutions. Never run by the test suite.
"""

from __future__ import annotations

import os
import sys

import click
import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import train_speed as ts  # noqa: E402

# Name fragments that identify a kernel or op family in the profile.
FAMILIES = {"bias_act (CUDA kernel)": ("bias_act_kernel",),
            "upfirdn2d (CUDA kernels)": ("upfirdn2d_tiled", "upfirdn2d_general"),
            "convolutions": ("conv", "gemm", "xmma", "cutlass", "sm90_", "wgrad", "dgrad", "fprop")}


@click.command()
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cuda", show_default=True)
@click.option("--cfg", default="baseline256", show_default=True, help="preset to profile")
@click.option("--res", type=int, default=256, show_default=True)
@click.option("--batch", type=int, default=32, show_default=True)
@click.option("--fp32", is_flag=True, help="disable mixed precision")
@click.option("--ops", type=click.Choice(["ref", "cuda", "auto"]), default="auto", show_default=True,
              help="SPATIALGAN_OPS for the run")
@click.option("--top", type=int, default=25, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="also write the tables here")
def main(device, cfg, res, batch, fp32, ops, top, out):
    """Profile one amortised training step (see the module docstring)."""
    if out:
        open(out, "w").close()
        ts.OUT_FILE.append(out)
    os.environ["SPATIALGAN_OPS"] = ops
    dev = torch.device(device)
    torch.backends.cudnn.benchmark = True
    run = ts.build(ts.make_options(cfg, res, batch=batch, fp32=fp32), dev)
    ts.time_phases(run, reps=0)  # warm-up pass: autotuning, allocator, kernel builds and self-checks
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=activities) as prof:
        ts.time_phases(run, reps=1, warmup=False)
    on_gpu = dev.type == "cuda"
    rows = []
    for evt in prof.key_averages():
        self_us = evt.self_device_time_total if on_gpu else evt.self_cpu_time_total
        if self_us > 0:
            rows.append((self_us, evt.key, evt.count))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    what = "device" if on_gpu else "CPU"
    precision = "fp32" if fp32 or not on_gpu else "mixed"  # the networks keep fp16 off on the CPU
    ts.emit(f"## Step profile: {cfg} @{res}², batch {batch}, {precision}, SPATIALGAN_OPS={ops}, "
            f"{torch.cuda.get_device_name(dev) if on_gpu else 'CPU'}; self {what} time of one step of each phase "
            f"(Gmain + Greg + Dmain + Dreg, not amortised): {total / 1e3:.1f} ms\n")
    ts.table(["op / kernel", f"self {what} ms", "share", "calls"],
             [[key[:90], us / 1e3, f"{100 * us / total:.1f} %", count] for us, key, count in rows[:top]])
    shares = []
    for family, fragments in FAMILIES.items():
        us = sum(r[0] for r in rows if any(f in r[1].lower() for f in fragments))
        shares.append([family, us / 1e3, f"{100 * us / max(total, 1e-9):.1f} %"])
    ts.table(["family", f"self {what} ms", "share"], shares)


if __name__ == "__main__":
    main()
