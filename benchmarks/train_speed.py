"""Training-speed benchmark: phase throughput, amortised steps, SpatialGAN overhead, scaling, GPU ops.

    python benchmarks/train_speed.py --device=cpu [--quick] [--sections=A,B,C,D] [--nproc=2] [--out=FILE]
    python benchmarks/train_speed.py --device=cuda --sections=D [--cfg=baseline256 ...] [--reps=3]

Prints Markdown tables (and writes them to --out). Never run by the test suite.

Sections
  A  foundation: amortised step (Gmain + Greg/4 + Dmain + Dreg/16) at 32² with paper256 widths and with
     channel_base 8192 / channel_max 256 (vs the published 6.9 s / 1.65 s), G and D forward+backward at
     256² paper256 (vs 10.7 s / 8.1 s), phase img/s at tiny / 64² / 256², peak memory.
  B  SpatialGAN: sec/kimg and peak memory of lsun-cat256 / lsun-bedroom256 vs baseline256 (interleaved
     rounds; the overhead is the median per-round ratio).
  C  distributed (CPU, gloo): N ranks vs 1 rank at the same per-rank batch -> scaling efficiency.
  D  GPU: reference vs CUDA ops, fp32 vs mixed precision (also with channels-last fp16 blocks, and with
     the phases replayed as CUDA graphs), batch 32, FLOPs/img and fraction of peak (--cfg picks configs;
     default baseline256, lsun-cat256, lsun-bedroom256); then the ratios against the targets (CUDA ops
     >= 1.5x the reference, each at its best setting; mixed >= 1.3x fp32) and graphs vs eager.

Machine noise: the machines are shared, so every row that matters is also measured with a *naive ops*
mode written here from the maths (zero-insertion upsampling materialised, padding, full 2-D FIR
convolution with the 4x4 outer-product filter via conv2d, bias / activation / gain / clamp as separate
unfused ops, glibc's default allocator behaviour), back to back in the same process, and the ratio is
printed. A fixed dense workload (512->512 3x3 conv on [8, 512, 32, 32], fp32 without TF32 on a GPU) is
timed at start and end.
All runs: batch 8 (A-C), fp32 on CPU, no augmentation, synthetic data tensors (no data loading).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import math
import os
import resource
import sys
import threading
import time
from typing import Any, Callable, Iterator

import click
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from torch_utils import distributed, misc  # noqa: E402
from torch_utils.ops import bias_act, conv2d_resample, fma, upfirdn2d  # noqa: E402
from training import phase_graphs  # noqa: E402
from training import training_loop as tl  # noqa: E402
from training.config import resolve_options  # noqa: E402
from training.dataset import open_dataset  # noqa: E402

PHASES = ("Gmain", "Greg", "Dmain", "Dreg")
PHASE_WEIGHT = {"Gmain": 1.0, "Greg": 1 / 4, "Dmain": 1.0, "Dreg": 1 / 16}  # lazy-reg intervals 4 / 16
PUBLISHED = {"step32_paper256": 6.9, "step32_cb8192": 1.65, "G256": 10.7, "D256": 8.1}  # seconds, 2 threads
# Dense peak TFLOP/s (no sparsity) by device-name substring; first match wins.
PEAK_TFLOPS = [("H200", {"fp32": 67.0, "tf32": 494.7, "fp16": 989.4}),
               ("H100 PCIe", {"fp32": 51.2, "tf32": 378.0, "fp16": 756.0}),
               ("H100", {"fp32": 67.0, "tf32": 494.7, "fp16": 989.4})]
OUT_FILE: list[str] = []  # the --out path, written line by line (a killed run keeps its tables)


def emit(line: str = "") -> None:
    print(line, flush=True)
    for path in OUT_FILE:
        with open(path, "a") as f:
            f.write(line + "\n")


def table(header: list[str], rows: list[list[Any]]) -> None:
    table_header(header)
    for r in rows:
        table_row(r)
    emit()


def table_header(header: list[str]) -> None:
    emit("| " + " | ".join(header) + " |")
    emit("|" + "|".join("---" for _ in header) + "|")


def table_row(row: list[Any]) -> None:
    """One Markdown row, emitted at once (long sections keep what they measured if killed)."""
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else ("—" if v is None else str(v))
    emit("| " + " | ".join(fmt(v) for v in row) + " |")


# ---------------------------------------------------------------------------------------------------
# Machine state: sync, memory, allocator, dense reference workload.


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _libc():
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def set_allocator(tuned: bool) -> None:
    """tuned: keep freed buffers (misc.tune_cpu_allocator); else glibc's steady-state defaults
    (mmap above 32 MiB, unmapped on free) for the naive reference rows."""
    libc = _libc()
    if libc is None:
        return
    if tuned:
        libc.mallopt(misc._M_MMAP_MAX, 0)  # as misc.tune_cpu_allocator (never trim)
        libc.mallopt(misc._M_TRIM_THRESHOLD, -1)
    else:
        libc.mallopt(misc._M_MMAP_MAX, 65536)
        libc.mallopt(-3, 32 * 2**20)  # M_MMAP_THRESHOLD: glibc's dynamic maximum
        libc.mallopt(misc._M_TRIM_THRESHOLD, 64 * 2**20)  # 2 x the mmap threshold, as glibc sets it


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory over a `with` block: CUDA max_memory_allocated, or sampled RSS above the start (CPU;
    freed heap is returned to the OS first so that the baseline is honest)."""

    def __init__(self, device: torch.device):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def __enter__(self):
        if self.device.type == "cuda":
            # Everything allocated counts (networks, optimiser state, activations): what must fit on the GPU.
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = 0
            return self
        libc = _libc()
        if libc is not None:
            libc.malloc_trim(0)
        self.base = self.peak = _rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def gib(self) -> float:
        return (self.peak - self.base) / 2**30


def dense_reference(device: torch.device, reps: int = 3) -> float:
    """GFLOP/s of a fixed 512->512 3x3 conv on [8, 512, 32, 32] (best of `reps`): machine speed.

    cuDNN's flags are pinned (no autotuning, no TF32), so that start and end compare like with like
    whatever the sections set in between."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn([8, 512, 32, 32], generator=gen).to(device)
    w = torch.randn([512, 512, 3, 3], generator=gen).to(device)
    flops = 2 * 512 * 512 * 9 * 32 * 32 * 8
    best = math.inf
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False,
                                                     allow_tf32=False):
        F.conv2d(x, w, padding=1)
        for _ in range(reps):
            sync(device)
            t = time.perf_counter()
            F.conv2d(x, w, padding=1)
            sync(device)
            best = min(best, time.perf_counter() - t)
    return flops / best / 1e9


# ---------------------------------------------------------------------------------------------------
# Naive reference ops, written from the maths (see the module docstring).


def naive_upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1, impl=None):
    """Zero-insert (materialised), pad / crop, full 2-D FIR conv (depthwise conv2d), decimate."""
    upx, upy = (up, up) if isinstance(up, int) else up
    dnx, dny = (down, down) if isinstance(down, int) else down
    p = [padding] * 4 if isinstance(padding, int) else list(padding)
    p = [p[0], p[0], p[1], p[1]] if len(p) == 2 else p
    n, c, h, w = x.shape
    if upx > 1 or upy > 1:
        z = x.new_zeros([n, c, h * upy, w * upx])
        z[:, :, ::upy, ::upx] = x
        x = z
    x = F.pad(x, [p[0], p[1], p[2], p[3]])
    if f is None:
        f = torch.ones([1, 1], dtype=x.dtype, device=x.device)
    f2 = f if f.ndim == 2 else torch.outer(f, f)
    f2 = f2.to(x.dtype) * gain
    if not flip_filter:
        f2 = f2.flip([0, 1])  # true convolution
    x = F.conv2d(x, f2[None, None].repeat([c, 1, 1, 1]), groups=c)
    return x[:, :, ::dny, ::dnx]


def naive_conv2d_resample(x, w, f=None, up=1, down=1, padding=0, groups=1, flip_weight=True,
                          flip_filter=False):
    """up: zero-insert + FIR at the high resolution, then the conv there; down: FIR at full resolution,
    then the strided conv. Same function as conv2d_resample."""
    fw = 1 if f is None else f.shape[-1]
    p = [padding] * 4 if isinstance(padding, int) else list(padding)
    p = [p[0], p[0], p[1], p[1]] if len(p) == 2 else p
    if not flip_weight:
        w = w.flip([2, 3])
    if up > 1:
        pu = [p[0] + (fw + up - 1) // 2, p[1] + (fw - up) // 2, p[2] + (fw + up - 1) // 2, p[3] + (fw - up) // 2]
        x = naive_upfirdn2d(x, f, up=up, padding=pu, flip_filter=flip_filter, gain=up * up)
        return F.conv2d(x, w, groups=groups)
    if down > 1:
        pd = [(fw - down + 1) // 2, (fw - down) // 2]
        pd = [p[0] + pd[0], p[1] + pd[1], p[2] + pd[0], p[3] + pd[1]]
        x = naive_upfirdn2d(x, f, padding=pd, flip_filter=flip_filter)
        return F.conv2d(x, w, stride=down, groups=groups)
    return F.conv2d(F.pad(x, p), w, groups=groups)


def naive_bias_act(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None, impl=None):
    spec = bias_act.activation_funcs[act]
    alpha = spec.def_alpha if alpha is None else alpha
    gain = spec.def_gain if gain is None else gain
    if b is not None:
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    x = spec.func(x, alpha)
    x = x * gain if gain != 1 else x
    return x.clamp(-clamp, clamp) if clamp is not None else x


@contextlib.contextmanager
def naive_ops() -> Iterator[None]:
    """Swap the op functions (module attributes the networks call through) for the naive versions."""
    patches = [(upfirdn2d, "upfirdn2d", naive_upfirdn2d), (conv2d_resample, "conv2d_resample", naive_conv2d_resample),
               (bias_act, "bias_act", naive_bias_act), (fma, "fma", lambda a, b, c: a * b + c)]
    saved = [(m, n, getattr(m, n)) for m, n, _ in patches]
    for m, n, fn in patches:
        setattr(m, n, fn)
    set_allocator(False)
    try:
        yield
    finally:
        for m, n, fn in saved:
            setattr(m, n, fn)
        set_allocator(True)


# ---------------------------------------------------------------------------------------------------
# Runs and phase timing.


def make_options(cfg: str, res: int, batch: int = 8, world_size: int = 1, fp32: bool = True,
                 channel_base: int | None = None, channel_max: int | None = None,
                 channels_last: bool = False, augment_p: float | None = None) -> dict[str, Any]:
    """Resolved options: `cfg` at `res`, one round per phase (batch_gpu = per-rank batch), no augmentation
    unless `augment_p` (then ADA's `bgc` pipe at that fixed p).

    Path-length regularisation (weight 2) and style mixing (0.9) are on whatever the preset says: every
    config is timed on the same four-phase StyleGAN2-ADA step (the paper presets train without them)."""
    ds = open_dataset(f"synthetic:shapes:{res}", max_size=16)
    info = dict(kwargs=ds.kwargs, name=ds.name, resolution=res, num_channels=3, label_dim=0)
    aug = dict(aug="fixed", p=augment_p, augpipe="bgc") if augment_p is not None else dict(aug="noaug")
    opts = resolve_options(cfg, info, world_size, batch=batch, batch_gpu=batch // world_size, **aug,
                           workers=0, metrics=[], fp32=fp32, channels_last=channels_last, pl_weight=2,
                           style_mixing=0.9)
    for kw in (opts["G_kwargs"]["synthesis_kwargs"], opts["D_kwargs"]):
        if channel_base is not None:
            kw["channel_base"] = channel_base
        if channel_max is not None:
            kw["channel_max"] = channel_max
    return opts


def build(opts: dict[str, Any], device: torch.device, rank: int = 0, world_size: int = 1) -> tl.Run:
    run = tl.build_run(opts, device, rank, world_size)
    per_rank = opts["batch"] // world_size
    gen = torch.Generator().manual_seed(1 + rank)
    res = opts["resolution"]
    run.bench_real = (torch.rand([per_rank, 3, res, res], generator=gen) * 2 - 1).to(device)
    run.bench_c = torch.zeros([per_rank, run.G.c_dim], device=device)
    return run


def time_phases(run: tl.Run, reps: int, phases=PHASES, warmup: bool = True) -> dict[str, float]:
    """Seconds per phase (median of `reps`, after one untimed pass unless `warmup=False`); '_mem' = peak
    memory (GiB). CPU: of the warm-up pass (measuring it trims the heap, and the pass after a trim
    re-faults its pages, so it is never a timed one). CUDA: of the last pass, after cuDNN's autotuning
    (whose trial workspaces would inflate the peak). reps=0: the warm-up pass alone (memory only)."""
    by_name = {ph.name: ph for ph in run.phases}
    times: dict[str, list[float]] = {p: [] for p in phases}
    mem = PeakMemory(run.device)
    first = 0 if warmup else 1
    mem_rep = reps if run.device.type == "cuda" and reps > 0 else (0 if warmup else -1)  # -1: not measured
    for rep in range(first, reps + 1):
        gens = dict(zip([ph.name for ph in run.phases], tl._sample_batch(run)))
        ctx = mem if rep == mem_rep else contextlib.nullcontext()
        with ctx:
            for name in phases:
                distributed.barrier()
                sync(run.device)
                t = time.perf_counter()
                tl._run_phase(run, by_name[name], run.bench_real, run.bench_c, gens[name])
                sync(run.device)
                distributed.barrier()
                if rep > 0:
                    times[name].append(time.perf_counter() - t)
    out = {p: float(np.median(v)) for p, v in times.items() if v}
    out["_mem"] = mem.gib if mem_rep >= first else None
    return out


def amortised(t: dict[str, float]) -> float:
    return sum(t[p] * PHASE_WEIGHT[p] for p in PHASES)


def time_fwd_bwd(run: tl.Run, which: str, reps: int) -> float:
    """Seconds of one forward+backward of G (z -> img, grads of G's parameters) or D (img -> logits)."""
    net = run.G if which == "G" else run.D
    net.requires_grad_(True)
    n = run.bench_real.shape[0]
    best = []
    for rep in range(reps + 1):
        z = torch.randn([n, run.G.z_dim], device=run.device)
        sync(run.device)
        t = time.perf_counter()
        if which == "G":
            spec = run.G.heatmap_sampler(n, device=run.device) if run.G.heatmap_sampler else None
            out = run.G(z, run.bench_c, heatmaps=spec)
        else:
            out = run.D(run.bench_real, run.bench_c)
        out.sum().backward()
        sync(run.device)
        if rep > 0:
            best.append(time.perf_counter() - t)
    net.requires_grad_(False)
    net.zero_grad(set_to_none=True)
    return float(np.median(best))


def pair(fn: Callable[[], Any], naive: bool) -> tuple[Any, Any]:
    """(ours, naive) measured back to back in this process (naive None when disabled)."""
    ours = fn()
    if not naive:
        return ours, None
    with naive_ops():
        return ours, fn()


# ---------------------------------------------------------------------------------------------------
# Sections.


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


def section_a(device: torch.device, quick: bool, reps: int, naive: bool) -> None:
    """Foundation rows."""
    emit("## A. Foundation: amortised steps and forward+backward (batch 8, fp32, noaug)\n")
    rows = []
    steps = [("step32_paper256", "paper256", 32, None, None), ("step32_cb8192", "paper256", 32, 8192, 256)]
    if quick:
        steps = [("step32_paper256", "tiny", 32, None, None)]
    for key, cfg, res, cb, cm in steps:
        run = build(make_options(cfg, res, channel_base=cb, channel_max=cm), device)
        ours, ref = pair(lambda run=run: amortised(time_phases(run, reps)), naive)
        label = f"amortised step {cfg} {res}²" + (f" cb{cb}/cm{cm}" if cb else "")
        rows.append([label, ours, ref, _ratio(ours, ref), PUBLISHED[key] if not quick else None,
                     _ratio(PUBLISHED[key], ours) if not quick else None])
        del run
    res256 = 32 if quick else 256
    run = build(make_options("tiny" if quick else "paper256", res256), device)
    for which in ("G", "D"):
        ours, ref = pair(lambda run=run, which=which: time_fwd_bwd(run, which, reps), naive and not quick)
        rows.append([f"{which} fwd+bwd {res256}²", ours, ref, _ratio(ours, ref),
                     None if quick else PUBLISHED[which + "256"],
                     None if quick else _ratio(PUBLISHED[which + "256"], ours)])
    del run
    table(["row", "ours (s)", "naive ops (s)", "ours / naive", "published (s)", "speed-up vs published"], rows)
    emit("## A. Phases (img/s; amortised = Gmain + Greg/4 + Dmain + Dreg/16)\n")
    prow = []
    configs = [("tiny", 32), ("paper256", 64)] + ([] if quick else [("paper256", 256)])
    for cfg, res in configs:
        run = build(make_options(cfg, res), device)
        t = time_phases(run, reps)
        n = run.bench_real.shape[0]
        prow.append([f"{cfg} {res}²", *(n / t[p] for p in PHASES), n / (t["Gmain"] + t["Dmain"]),
                     n / amortised(t), t["_mem"]])
        del run
    table(["config", *[f"{p} img/s" for p in PHASES], "main only img/s", "amortised img/s", "peak mem GiB"], prow)


def section_b(device: torch.device, quick: bool, reps: int, batch: int = 8, fp32: bool = True,
              rounds: int = 3) -> list[list[Any]]:
    """The three configs built side by side and timed in interleaved rounds (one amortised step each):
    the overhead is the median over rounds of the per-round ratio, so slow drifts of a shared machine
    hit the baseline and the SpatialGAN configs alike."""
    rounds = max(rounds, reps)
    emit(f"## B. SpatialGAN overhead (batch {batch}, {'fp32' if fp32 else 'mixed precision'}, noaug, "
         f"one amortised step, {rounds} interleaved rounds)\n")
    res = 16 if quick else 256
    configs = ("baseline256", "lsun-cat256", "lsun-bedroom256")
    runs, mem = {}, {}
    for cfg in configs:
        runs[cfg] = build(make_options(cfg, res, batch=batch, fp32=fp32, channel_base=1024 if quick else None,
                                       channel_max=64 if quick else None), device)
        mem[cfg] = time_phases(runs[cfg], 0)["_mem"]
    secs: dict[str, list[float]] = {cfg: [] for cfg in configs}
    for _ in range(rounds):
        for cfg in configs:
            secs[cfg].append(amortised(time_phases(runs[cfg], 1, warmup=False)))
    base = np.array(secs["baseline256"])
    rows = []
    for cfg in configs:
        ratios = np.array(secs[cfg]) / base
        sec = float(np.median(secs[cfg]))
        rows.append([f"{cfg} @{res}²", sec, sec * 1000 / batch, mem[cfg], float(np.median(ratios)),
                     f"{100 * (np.median(ratios) - 1):+.1f}% ({100 * (ratios.min() - 1):+.1f} to "
                     f"{100 * (ratios.max() - 1):+.1f})"])
    table(["config", "s/step (median)", "s/kimg", "peak mem GiB", "time vs baseline (median ratio)",
           "overhead (range over rounds)"], rows)
    return rows


def _dist_worker(rank: int, world: int, port: int, threads: int, quick: bool, reps: int, queue) -> None:
    torch.set_num_threads(threads)
    misc.tune_cpu_allocator()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = torch.device("cpu")
    distributed.init(distributed.DistEnv(rank, rank, world), device)
    try:
        per_rank = 8
        run = build(make_options("tiny", 32, batch=per_rank * world, world_size=world), device, rank, world)
        t = time_phases(run, reps)
        if rank == 0:
            queue.put(t)
    finally:
        distributed.shutdown()


def section_c(nproc: int, quick: bool, reps: int) -> None:
    import torch.multiprocessing as mp

    threads = max(1, (os.cpu_count() or 2) // nproc)
    emit(f"## C. Distributed scaling (CPU, gloo, tiny 32², 8 img per rank, {threads} thread(s) per rank)\n")
    ctx = mp.get_context("spawn")
    results = {}
    for world in (1, nproc):
        queue = ctx.SimpleQueue()
        port = 29500 + (os.getpid() + world) % 2000
        mp.spawn(_dist_worker, args=(world, port, threads, quick, reps, queue), nprocs=world, join=True)
        results[world] = queue.get()
    rows = []
    for world, t in results.items():
        sec = amortised(t)
        rows.append([world, 8 * world, sec, 8 * world / sec, (8 * world / sec) / (world * 8 / amortised(results[1]))])
    table(["ranks", "global batch", "s/step (amortised)", "img/s", "scaling efficiency"], rows)


def peak_tflops(device: torch.device) -> tuple[str, dict[str, float] | None]:
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_TFLOPS:
        if key in name:
            return name, peaks
    return name, None


class _TotalsOnly:
    """Stands in for FlopCounterMode's module tracker: totals need no per-module attribution, and the
    tracker's backward hooks reject autograd.grad w.r.t. a leaf (R1 on the real images in Dreg)."""

    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def count_flops(run: tl.Run) -> float:
    """FLOPs of one amortised step per image (FlopCounterMode over every phase, weighted)."""
    from torch.utils.flop_counter import FlopCounterMode

    by_name = {ph.name: ph for ph in run.phases}
    gens = dict(zip([ph.name for ph in run.phases], tl._sample_batch(run)))
    total = 0.0
    for name in PHASES:
        counter = FlopCounterMode(display=False)
        counter.mod_tracker = _TotalsOnly()
        try:
            with counter:
                tl._run_phase(run, by_name[name], run.bench_real, run.bench_c, gens[name])
        except RuntimeError as err:
            # A torch whose counter tracks modules some other way may still reject Dreg's R1: that phase
            # is then left out, and the figure is a lower bound (Dreg weighs 1/16).
            emit(f"FLOP count: {name} not counted ({str(err).splitlines()[0][:80]})")
            continue
        total += counter.get_total_flops() * PHASE_WEIGHT[name]
    return total / run.bench_real.shape[0]


SECTION_D_CONFIGS = ("baseline256", "lsun-cat256", "lsun-bedroom256")
AUGMENT_P = 0.5  # section D's augmented rows: ADA's bgc pipe at this fixed p


def section_d(device: torch.device, quick: bool, reps: int, batch: int,
              configs: tuple[str, ...] = SECTION_D_CONFIGS) -> None:
    from torch_utils.ops import _cuda

    name, peaks = peak_tflops(device)
    emit(f"## D. GPU: {name}, batch {batch}, no augmentation but in the bgc rows; peak TFLOP/s used: {peaks} "
         "(fp32 rows vs fp32 peak with TF32 off, mixed rows vs fp16 peak); peak mem = all memory allocated on "
         "the GPU during one step of every phase, after autotuning (— with CUDA graphs: this count "
         "misses the graphs' memory pool, set aside at capture)\n")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    res = 64 if quick else 256
    # Rows stream out as measured, most wanted first: the baseline's four (ops x precision) rows give
    # both targets (CUDA ops vs reference, mixed vs fp32); channels-last and the SpatialGAN configs follow.
    # (fp32, ops, channels-last fp16 blocks, CUDA graphs, augmented); graphs last: they are the newest rows,
    # then the pair that times graphs with the geometric augmentations (static padding, see phase_graphs).
    variants = [(True, "ref", False, False, False), (True, "auto", False, False, False),
                (False, "ref", False, False, False), (False, "auto", False, False, False),
                (False, "ref", True, False, False), (False, "auto", True, False, False),
                (False, "ref", False, True, False), (False, "auto", False, True, False),
                (False, "auto", True, True, False), (False, "auto", False, False, True),
                (False, "auto", False, True, True)]
    table_header(["config", "precision", "ops (used)", "s/kimg", "img/s", "peak mem GiB", "GFLOP/img (amortised)",
                  "fraction of peak"])
    speeds: dict[str, dict[tuple, float]] = {}
    augmented: dict[str, dict[bool, float]] = {}  # img/s with augmentation, keyed by CUDA graphs
    for cfg in configs:
        flops = None
        for fp32, ops, channels_last, graphs, aug in variants:
            os.environ["SPATIALGAN_OPS"] = ops
            run = build(make_options(cfg, res, batch=batch, fp32=fp32, channels_last=channels_last,
                                     augment_p=AUGMENT_P if aug else None), device)
            if flops is None:
                flops = count_flops(run)
            if graphs:
                run.graphs = phase_graphs.PhaseGraphs(log=emit)
                for _ in range(phase_graphs.WARMUP_RUNS + 1):  # eager warm-ups, then the capturing pass
                    time_phases(run, reps=0)
            t = time_phases(run, reps)
            sec = amortised(t)
            peak = (peaks or {}).get("fp32" if fp32 else "fp16")
            frac = flops * batch / sec / (peak * 1e12) if peak else None
            used = "cuda" if ops == "auto" and not any(_cuda._status.get(o) for o in ("bias_act", "upfirdn2d")) \
                and _cuda._status else "ref"
            precision = "fp32" if fp32 else ("mixed, channels-last" if channels_last else "mixed")
            precision += ", CUDA graphs" if graphs and run.graphs.off is None else ""
            precision += f", bgc p={AUGMENT_P}" if aug else ""
            table_row([f"{cfg} @{res}²", precision, f"{ops} ({used})", sec * 1000 / batch, batch / sec,
                       None if graphs and run.graphs.off is None else t["_mem"],
                       flops / 1e9, frac])
            if graphs and run.graphs.off is not None:
                pass  # an eager step labelled as one: counts for nothing
            elif aug:  # graphs vs eager on the same ops, whichever ran
                augmented.setdefault(cfg, {})[graphs] = batch / sec
            elif used == ("cuda" if ops == "auto" else "ref"):
                speeds.setdefault(cfg, {})[(fp32, used, channels_last, graphs)] = batch / sec
            del run
            torch.cuda.empty_cache()
    os.environ.pop("SPATIALGAN_OPS", None)
    emit()
    emit(f"CUDA op status: {dict(_cuda._status)} (None = kernel in use)\n")
    emit("### D. Against the targets (ratios of img/s above; — where a row is missing: kernels unavailable, a "
         "capture failed, or the run was cut short)\n")
    table(TARGET_HEADER, [target_row(f"{cfg} @{res}²", speeds.get(cfg, {})) for cfg in configs])
    emit(f"\n### D. CUDA graphs with the geometric augmentations (mixed, ops 'auto', bgc at p = {AUGMENT_P}: "
         "the graphs pad to the largest reach, eager steps read this batch's)\n")
    table(["config", "eager img/s", "CUDA graphs img/s", "graphs / eager"],
          [[f"{cfg} @{res}²", augmented.get(cfg, {}).get(False), augmented.get(cfg, {}).get(True),
            _ratio(augmented.get(cfg, {}).get(True), augmented.get(cfg, {}).get(False))] for cfg in configs])


TARGET_HEADER = ["config", "CUDA ops / ref, fp32", "CUDA ops / ref, mixed", "best / best, eager",
                 "best / best, with CUDA graphs", "CUDA ops ≥ 1.5× ref (best / best)", "mixed / fp32, CUDA ops",
                 "mixed ≥ 1.3× fp32", "CUDA graphs / eager, mixed CUDA ops"]


def target_row(config: str, speeds: dict[tuple, float]) -> list[Any]:
    """The performance targets from one config's img/s, keyed (fp32, ops used, channels-last, CUDA graphs).

    CUDA ops vs reference: each path at its best setting (precision, layout, graphs) against the other's;
    mixed precision vs fp32: both with the CUDA ops, eager, NCHW."""
    def ratio(a, b):
        return speeds[a] / speeds[b] if a in speeds and b in speeds else None

    def best(ops: str, graphs_too: bool) -> float | None:
        found = [v for (fp32, used, cl, graphs), v in speeds.items() if used == ops and (graphs_too or not graphs)]
        return max(found) if found else None

    def verdict(value, target):
        return None if value is None else ("met" if value >= target else "not met")

    eager = [best("cuda", False), best("ref", False)]
    overall = [best("cuda", True), best("ref", True)]
    best_eager = eager[0] / eager[1] if None not in eager else None
    best_all = overall[0] / overall[1] if None not in overall else None
    mixed = ratio((False, "cuda", False, False), (True, "cuda", False, False))
    return [config, ratio((True, "cuda", False, False), (True, "ref", False, False)),
            ratio((False, "cuda", False, False), (False, "ref", False, False)), best_eager, best_all,
            verdict(best_all, 1.5), mixed, verdict(mixed, 1.3),
            ratio((False, "cuda", False, True), (False, "cuda", False, False))]


@click.command()
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--quick", is_flag=True, help="tiny sizes only: a sanity run of every code path")
@click.option("--sections", default="A,B", show_default=True, help="comma-separated subset of A,B,C,D")
@click.option("--nproc", type=int, default=2, show_default=True, help="ranks for section C")
@click.option("--reps", type=int, default=None, help="timed repetitions per row (default 1 CPU, 3 CUDA)")
@click.option("--threads", type=int, default=2, show_default=True, help="torch threads (CPU)")
@click.option("--naive/--no-naive", default=True, show_default=True, help="also time the naive-ops reference")
@click.option("--gpu-batch", type=int, default=32, show_default=True, help="batch of section D")
@click.option("--cfg", "configs", type=click.Choice(SECTION_D_CONFIGS), multiple=True,
              help="section D's configs (repeat; default all three)")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="also write the tables here")
def main(device, quick, sections, nproc, reps, threads, naive, gpu_batch, configs, out):
    """Training-speed benchmark (see the module docstring)."""
    dev = torch.device(device)
    torch.set_num_threads(threads)
    misc.tune_cpu_allocator()
    reps = reps or (3 if dev.type == "cuda" else 1)
    if out:
        open(out, "w").close()
        OUT_FILE.append(out)
    wanted = {s.strip().upper() for s in sections.split(",") if s.strip()}
    emit(f"# Training speed — torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
         f"reps {reps}{', quick' if quick else ''}")
    emit(f"\nload average at start: {os.getloadavg()}; dense reference (512x512 3x3 conv, [8,512,32,32]): "
         f"{dense_reference(dev):.1f} GFLOP/s\n")
    start = time.time()
    if "A" in wanted:
        section_a(dev, quick, reps, naive)
    if "B" in wanted:
        section_b(dev, quick, reps)
    if "C" in wanted:
        section_c(nproc, quick, reps)
    if "D" in wanted:
        if dev.type != "cuda":
            emit("## D. skipped: needs --device=cuda\n")
        else:
            section_d(dev, quick, reps, gpu_batch, configs or SECTION_D_CONFIGS)
    emit(f"load average at end: {os.getloadavg()}; dense reference at end: {dense_reference(dev):.1f} GFLOP/s; "
         f"total {time.time() - start:.0f} s; max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
