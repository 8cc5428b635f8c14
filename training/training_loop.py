"""The training loop: build a run from its options, iterate phases, keep ticks, snapshots and resume.

Exact resume: a snapshot stores every piece of state the loop reads — networks, optimisers, ADA
controller, path-length mean, counters, the data position and all RNG states — and maintenance work
(grids, metrics) never touches the training RNG streams. So a run of k ticks equals j ticks followed
by `--resume` for k - j ticks, bit for bit on the CPU.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dnnlib import atomic_write, format_time
from torch_utils import distributed, training_stats
from torch_utils.misc import nan_to_num_, to_device
from torch_utils.phase_timer import PhaseTimer
from training import checkpoint, images
from training.dataset import DatasetError, InfiniteSampler, open_dataset
from training.loss import AlignOptions, StyleGAN2Loss
from training.networks import Discriminator, Generator


class TrainingError(RuntimeError):
    """Training cannot continue (diverged to NaN/inf, inconsistent resume, ...)."""


@dataclass
class Progress:
    cur_nimg: int = 0
    cur_tick: int = 0
    batch_idx: int = 0
    tick_start_nimg: int = 0


@dataclass
class Phase:
    name: str
    module: torch.nn.Module
    opt: torch.optim.Optimizer
    interval: int


@dataclass
class Run:
    """Everything a training run holds; built by `build_run`, advanced by `train_step`."""

    options: dict[str, Any]
    device: torch.device
    rank: int
    world_size: int
    dataset: Any
    G: Generator
    D: Discriminator
    G_ema: Generator
    loss: StyleGAN2Loss
    phases: list[Phase]
    augment_pipe: Any
    ada: Any
    batch_gen: torch.Generator
    progress: Progress = field(default_factory=Progress)
    data_iter: Any = None
    graphs: Any = None  # training.phase_graphs.PhaseGraphs when the phases run as CUDA graphs
    timer: PhaseTimer = field(default_factory=lambda: PhaseTimer(torch.device("cpu")))  # build_run: the run's device


# ---------------------------------------------------------------------------------------------------
# Construction.


def build_augment(options: dict[str, Any], device: torch.device):
    """(augment_pipe | None, ADA controller | None) for `options['augment']`."""
    aug = options["augment"]
    if aug["mode"] == "noaug":
        return None, None
    from training import augment

    pipe, ada = augment.make_augment(aug["mode"], aug["augpipe"], p=aug["p"], target=aug["target"],
                                     interval=aug["interval"], kimg=aug["kimg"], batch_size=options["batch"])
    pipe = pipe.train().requires_grad_(False).to(device)
    if ada is not None:
        ada.reduce_fn = distributed.all_reduce_sum
    return pipe, ada


# One multi-tensor kernel per update instead of a Python loop over ~100 parameters (-3 % of a small
# network's CPU step); same update rule and the same rounding as PyTorch's default loop.
ADAM_IMPL = {"foreach": True}


def build_phases(options: dict[str, Any], G, D) -> list[Phase]:
    """Gmain, Greg, Dmain, Dreg (or Gboth/Dboth where an interval is None). A lazy phase whose
    regulariser has weight 0 is left out: it would compute nothing, and Adam skips parameters without
    gradients, so leaving it out changes no result."""
    weights = {"G": options["loss_kwargs"]["pl_weight"], "D": options["loss_kwargs"]["r1_gamma"]}
    phases = []
    for name, module, opt_kwargs, interval in (("G", G, options["G_opt_kwargs"], options["G_reg_interval"]),
                                                ("D", D, options["D_opt_kwargs"], options["D_reg_interval"])):
        kw = dict(opt_kwargs, betas=tuple(opt_kwargs["betas"]))
        opt = torch.optim.Adam(module.parameters(), **kw, **ADAM_IMPL)
        if interval is None:
            phases.append(Phase(name + "both", module, opt, 1))
            continue
        phases.append(Phase(name + "main", module, opt, 1))
        if weights[name] != 0:
            phases.append(Phase(name + "reg", module, opt, interval))
    return phases


def _rank_seed(seed: int, rank: int, position: int = 0) -> int:
    """A per-rank seed, unrelated to the stream `seed` itself starts (which initialised the networks)."""
    return int(np.random.SeedSequence([seed, rank, position, 0x5EED]).generate_state(1)[0])


def _seed_rank_streams(seed: int, rank: int, position: int = 0) -> None:
    torch.manual_seed(_rank_seed(seed, rank, position))
    np.random.seed(_rank_seed(seed, rank, position) % (1 << 31))


def build_networks(options: dict[str, Any], device: torch.device | str = "cpu") -> tuple[Generator, Discriminator]:
    """G and D of a resolved options dict (train mode, no gradients), from torch's current RNG state."""
    G = Generator(**options["G_kwargs"]).train().requires_grad_(False).to(device)
    D = Discriminator(**options["D_kwargs"]).train().requires_grad_(False).to(device)
    return G, D


def check_options(options: dict[str, Any], resume: dict[str, Any] | None = None, resume_path: str = "") -> None:
    """Everything about a run that can fail before training, checked on the CPU without data: the
    networks and the loss build, the metrics exist and can run (`metric_main.check_metric`), and a
    `--resume` snapshot fits (same architecture, an intact training state, and short of `kimg`).
    Raises ValueError naming the culprit."""
    from metrics import metric_main

    with torch.random.fork_rng(devices=[]):
        G, D = build_networks(options)
    for name in options["metrics"]:
        try:
            metric_main.check_metric(name, G, options["dataset_kwargs"], **options.get("metric_kwargs", {}))
        except (ValueError, OSError) as err:
            raise ValueError(f"--metrics={name}: {err}") from None
    align = AlignOptions(**options["align"]) if options.get("align") else None
    StyleGAN2Loss(G, D, align=align, **options["loss_kwargs"])
    build_phases(options, G, D)
    if resume is not None:
        _check_resume(options, resume, resume_path, {"G": G, "D": D, "G_ema": G})


def _setting_differences(saved, ours, path: str, limit: int = 5) -> list[str]:
    """'path: saved -> ours' for the leaves of two option dicts that differ (a key the snapshot's options
    lack, e.g. added by a newer version of a preset, shows as 'absent'); [] when `saved` is unknown."""
    if not isinstance(saved, dict):
        return []
    out = []
    for key in sorted(set(saved) | set(ours)):
        a, b = saved.get(key, "absent"), ours.get(key, "absent")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _setting_differences(a, b, f"{path}.{key}", limit)
        elif a != b:
            out.append(f"{path}.{key}: {_short(a)} -> {_short(b)}")
    return out[:limit]


def _short(value, width: int = 60) -> str:
    text = str(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _check_resume(options: dict[str, Any], snap: dict[str, Any], path: str, nets: dict[str, torch.nn.Module]) -> None:
    saved = snap.get("training_options") or {}
    for name, module in nets.items():
        if name not in snap["networks"]:
            raise ValueError(f"--resume={path}: the snapshot has no {name} (has: {sorted(snap['networks'])})")
        theirs, ours = snap["networks"][name]["state_dict"], module.state_dict()
        diff = next((k for k in sorted(set(ours) | set(theirs))
                     if k not in ours or k not in theirs or tuple(ours[k].shape) != tuple(theirs[k].shape)), None)
        if diff is not None:
            shapes = [tuple(d[diff].shape) if diff in d else "absent" for d in (theirs, ours)]
            kwargs = f"{name[0]}_kwargs"  # G and G_ema are built from G_kwargs, D from D_kwargs
            changed = _setting_differences(saved.get(kwargs), options[kwargs], kwargs)
            hint = (f" (network settings that differ: {'; '.join(changed)}; for a setting without an option, "
                    "use a copy of the preset that has the snapshot's value)" if changed else "")
            raise ValueError(f"--resume={path}: its {name} does not fit this run ({diff}: {shapes[0]} in the snapshot, "
                             f"{shapes[1]} here). The snapshot was trained with cfg {saved.get('cfg', '?')!r} at "
                             f"{saved.get('resolution', '?')}px; this run is cfg {options['cfg']!r} at "
                             f"{options['resolution']}px: pass the --cfg, --data and network options it was trained "
                             f"with{hint}")
    state = snap.get("state")
    if state is None or options.get("transfer"):
        return  # transfer learning: the weights start a fresh run
    checkpoint.check_training_state(state, path)
    done = state["progress"]["cur_nimg"]
    if done >= options["kimg"] * 1000:
        raise ValueError(f"--resume={path}: the snapshot has trained {done / 1000:g} kimg already, and --kimg "
                         f"({options['kimg']:g}) is the total length: pass a larger --kimg to continue")


def build_run(options: dict[str, Any], device: torch.device, rank: int = 0, world_size: int = 1) -> Run:
    """Create dataset, networks, optimisers, augmentation and loss from a resolved options dict.

    Networks are initialised from `seed` alone, so every rank starts from the same weights (as a single
    process would); afterwards each rank of a multi-process run gets its own RNG stream (synthesis noise,
    style mixing, augmentation), while latents and heatmaps come from the shared `batch_gen`.
    """
    seed = int(options["seed"])
    torch.manual_seed(seed)
    np.random.seed(seed % (1 << 31))
    dataset = open_dataset(**options["dataset_kwargs"])
    G, D = build_networks(options, device)
    G_ema = copy.deepcopy(G).eval()
    augment_pipe, ada = build_augment(options, device)
    align = AlignOptions(**options["align"]) if options.get("align") else None
    loss = StyleGAN2Loss(G, D, augment_pipe=augment_pipe, align=align, **options["loss_kwargs"])
    batch_gen = torch.Generator().manual_seed(seed)
    if world_size > 1:
        _seed_rank_streams(seed, rank)
    run = Run(options, device, rank, world_size, dataset, G, D, G_ema, loss, build_phases(options, G, D),
              augment_pipe, ada, batch_gen, timer=PhaseTimer(device))
    if options.get("cuda_graphs"):
        from training.phase_graphs import PhaseGraphs

        run.graphs = PhaseGraphs(log=print if rank == 0 else None)
    return run


def start_data(run: Run) -> None:
    """(Re)start the data iterator at the run's current position (exact resume of the data stream)."""
    opts = run.options
    per_rank = opts["batch"] // run.world_size
    # The stream has served cur_nimg images (global steps 0 .. cur_nimg - 1); this rank's share of them is
    # where it goes on, also when --batch or the number of processes changed on resume.
    consumed = len(range(run.rank, run.progress.cur_nimg, run.world_size))
    sampler = InfiniteSampler(len(run.dataset), rank=run.rank, num_replicas=run.world_size, seed=opts["seed"],
                              start=consumed)
    workers = int(opts["workers"])
    loader = torch.utils.data.DataLoader(run.dataset, sampler=sampler, batch_size=per_rank, num_workers=workers,
                                         pin_memory=run.device.type == "cuda",
                                         prefetch_factor=2 if workers > 0 else None,
                                         persistent_workers=workers > 0)
    # Creating the iterator draws a base seed from torch's global RNG; keep the training stream intact.
    with torch.random.fork_rng(devices=[]):
        run.data_iter = iter(loader)


# ---------------------------------------------------------------------------------------------------
# One training iteration.


def _sample_batch(run: Run, due: list[bool] | None = None):
    """(z, c, heatmap spec, SEL_indoor's per-object z | None) for every phase, drawn for the GLOBAL batch
    from the shared `batch_gen` and sliced for this rank — the same samples whatever the world size.
    Phases not `due` (lazy regularisers between their steps) get None: same draws, nothing moved."""
    opts, n_phases = run.options, len(run.phases)
    total = opts["batch"] * n_phases
    z = torch.randn([total, run.G.z_dim], generator=run.batch_gen)
    if run.dataset.has_labels:
        idx = torch.randint(len(run.dataset), [total], generator=run.batch_gen)
        c = torch.from_numpy(np.stack([run.dataset.get_label(int(i)) for i in idx]))
    else:
        c = torch.zeros([total, run.G.c_dim])
    spec = run.G.heatmap_sampler(total, generator=run.batch_gen) if run.G.heatmap_sampler else None
    per_rank = opts["batch"] // run.world_size
    out = []
    for p in range(n_phases):
        if due is not None and not due[p]:
            out.append(None)
            continue
        start = p * opts["batch"] + run.rank * per_rank
        rows = list(range(start, start + per_rank))
        sub_spec = spec.select(rows).to(run.device) if spec is not None else None
        # SEL_indoor's per-object z come from seeds on the host: drawn here, so that a phase is GPU work only.
        style_z = run.G.style_z(sub_spec) if sub_spec is not None else None
        out.append((to_device(z[rows], run.device), to_device(c[rows], run.device), sub_spec, style_z))
    return out


def _run_phase(run: Run, phase: Phase, real_img, real_c, gen) -> None:
    """One phase, eagerly or by replaying its CUDA graph (`run.graphs`, see training.phase_graphs)."""
    if run.graphs is not None and run.graphs.run_phase(run, phase, real_img, real_c, gen):
        return
    phase.opt.zero_grad(set_to_none=True)
    real_logits = phase_body(run, phase, real_img, real_c, gen)
    finish_phase(run, phase, real_logits)


def phase_body(run: Run, phase: Phase, real_img, real_c, gen,
               grad_presence: list[bool] | None = None) -> list[torch.Tensor]:
    """Every round's forward and backward, then the gradients averaged over rounds and ranks and
    sanitised; returns each round's detached real logits (for ADA). Gradients must be None on entry.

    Everything here is GPU work with static shapes and no host reads: it is what a CUDA graph captures.
    With several processes that needs `grad_presence` (which of the module's parameters get a
    gradient, as an earlier run of the phase found): see `distributed.average_gradients`.
    """
    opts = run.options
    bg = opts["batch_gpu"]
    rounds = (opts["batch"] // run.world_size) // bg
    gen_z, gen_c, spec, style_z = gen
    phase.module.requires_grad_(True)
    real_logits = []
    for r in range(rounds):
        # A slice is basic indexing: a list would become an index tensor copied to the GPU (a host sync).
        sub_spec = spec.select(slice(r * bg, (r + 1) * bg)) if spec is not None else None
        logits = run.loss.accumulate_gradients(
            phase.name, real_img[r * bg:(r + 1) * bg], real_c[r * bg:(r + 1) * bg], gen_z[r * bg:(r + 1) * bg],
            gen_c[r * bg:(r + 1) * bg], sub_spec, gain=phase.interval,
            gen_style_z=style_z[r * bg:(r + 1) * bg] if style_z is not None else None)
        if logits is not None:
            real_logits.append(logits)
    phase.module.requires_grad_(False)
    flat = distributed.average_gradients(list(phase.module.parameters()), divisor=rounds * run.world_size,
                                         presence=grad_presence)
    if flat is not None:
        nan_to_num_([flat])  # every gradient is a view of `flat`: one kernel instead of one per parameter
    return real_logits


def finish_phase(run: Run, phase: Phase, real_logits: list[torch.Tensor]) -> None:
    """After `phase_body`: ADA's signal (every round's reals: it is over the whole batch), optimiser step."""
    if run.ada is not None:
        for logits in real_logits:
            run.ada.accumulate(logits)
    phase.opt.step()


def _next_batch(run: Run):
    """The next (uint8 images, labels) batch. A DataLoader worker's exception arrives re-raised with its
    whole traceback as the message; the user needs its last line (which names the bad file)."""
    try:
        return next(run.data_iter)
    except (DatasetError, OSError) as err:
        text = str(err)
        if "Original Traceback" not in text:
            raise
        last = [line for line in text.splitlines() if line.strip()][-1]
        raise DatasetError(last.split(": ", 1)[-1] if last.split(":", 1)[0].endswith(type(err).__name__)
                           else last) from None


def train_step(run: Run) -> None:
    """One minibatch: every due phase, then the EMA and ADA updates."""
    opts, prog = run.options, run.progress
    real_img, real_c = _next_batch(run)
    # The loader pins its batches (on CUDA): these copies are queued, not waited for (see to_device).
    real_img = real_img.to(run.device, non_blocking=True).to(torch.float32) / 127.5 - 1
    real_c = real_c.to(run.device, non_blocking=True)
    due = [prog.batch_idx % phase.interval == 0 for phase in run.phases]
    run.timer.flush()  # the earlier steps' phases that the GPU has finished
    for phase, gen, now in zip(run.phases, _sample_batch(run, due), due):
        if not now:
            continue
        with run.timer.measure(f"Timing/{phase.name}"):
            _run_phase(run, phase, real_img, real_c, gen)
    update_ema(run)
    prog.cur_nimg += opts["batch"]
    prog.batch_idx += 1
    if run.ada is not None:
        run.ada.step()


@torch.no_grad()
def update_ema(run: Run) -> None:
    """G_ema <- G + beta (G_ema - G), beta = 0.5 ** (batch / ema_nimg); buffers copied verbatim."""
    opts = run.options
    ema_nimg = opts["ema_kimg"] * 1000
    if opts["ema_rampup"] is not None:
        ema_nimg = min(ema_nimg, run.progress.cur_nimg * opts["ema_rampup"])
    beta = 0.5 ** (opts["batch"] / max(ema_nimg, 1e-8))
    # Multi-tensor ops: a handful of kernel launches instead of two per parameter and one per buffer.
    ema_params, params = list(run.G_ema.parameters()), [p.detach() for p in run.G.parameters()]
    torch._foreach_copy_(ema_params, torch._foreach_lerp(params, ema_params, beta))
    torch._foreach_copy_(list(run.G_ema.buffers()), list(run.G.buffers()))


# ---------------------------------------------------------------------------------------------------
# Snapshots and resume.


def _rng_state(run: Run) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "batch_gen": run.batch_gen.get_state()}
    if run.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(run.device)
    return state


def make_snapshot(run: Run, rank_rngs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Everything needed to resume. `rank_rngs`: every rank's `_rng_state` (multi-process runs), so a
    resume with the same world size restores each rank's stream exactly."""
    prog = run.progress
    state = {
        "progress": {"cur_nimg": prog.cur_nimg, "cur_tick": prog.cur_tick + 1, "batch_idx": prog.batch_idx,
                     "tick_start_nimg": prog.cur_nimg, "world_size": run.world_size},
        "optimizers": {ph.name[0]: ph.opt.state_dict() for ph in run.phases},
        "loss": run.loss.state_dict(),
        "ada": run.ada.state_dict() if run.ada is not None else None,
        "rng": dict(_rng_state(run), ranks=rank_rngs) if rank_rngs else _rng_state(run),
    }
    pipe = run.augment_pipe
    return {
        "networks": {"G": checkpoint.pack_module(run.G), "D": checkpoint.pack_module(run.D),
                     "G_ema": checkpoint.pack_module(run.G_ema)},
        "augment_pipe": None if pipe is None else {"init_kwargs": pipe.init_kwargs,
                                                   "state_dict": {k: v.cpu() for k, v in pipe.state_dict().items()}},
        "state": state,
        "training_options": run.options,
    }


def restore(run: Run, snap: dict[str, Any], path: str) -> None:
    """Load every piece of training state from a snapshot into `run`."""
    nets = snap["networks"]
    for name, module in (("G", run.G), ("D", run.D), ("G_ema", run.G_ema)):
        try:
            module.load_state_dict(nets[name]["state_dict"])
        except (RuntimeError, KeyError) as err:
            raise TrainingError(f"--resume={path}: {name} does not match this run's architecture "
                                f"({str(err).splitlines()[0]})") from None
    state = snap.get("state")
    if state is None or run.options.get("transfer"):
        # Transfer learning (--transfer, or a network-only file): only the weights; counters, optimisers
        # and ADA's p start afresh, as in StyleGAN2-ADA.
        return
    if run.augment_pipe is not None and snap.get("augment_pipe") is not None:
        run.augment_pipe.load_state_dict(snap["augment_pipe"]["state_dict"])
    checkpoint.check_training_state(state, path)
    for ph in run.phases:
        ph.opt.load_state_dict(state["optimizers"][ph.name[0]])
        # The snapshot's groups replace ours: keep this run's settings (a resume with a lower --cfg lrate
        # must train with it) and update code; the moments and step counts are what resume restores.
        kw = run.options[f"{ph.name[0]}_opt_kwargs"]
        for group in ph.opt.param_groups:
            group.update(lr=kw["lr"], betas=tuple(kw["betas"]), eps=kw["eps"], **ADAM_IMPL)
    run.loss.load_state_dict(state["loss"])
    if run.ada is not None and state.get("ada") is not None:
        run.ada.load_state_dict(state["ada"])
        if run.rank != 0:
            run.ada.clear_pending()  # the snapshot holds every rank's pending total (`_sync_rank_state`)
    prog = state["progress"]
    run.progress = Progress(prog["cur_nimg"], prog["cur_tick"], prog["batch_idx"], prog["tick_start_nimg"])
    _restore_rng(run, state["rng"], prog.get("world_size", 1))


def _restore_rng(run: Run, rng: dict[str, Any], saved_world_size: int) -> None:
    """Shared batch stream always; this rank's own stream when the snapshot holds it (same world size)."""
    run.batch_gen.set_state(rng["batch_gen"])
    mine = None
    if saved_world_size == run.world_size:
        mine = rng["ranks"][run.rank] if rng.get("ranks") else (rng if run.world_size == 1 else None)
    if mine is None:
        # Another world size: per-rank streams cannot be carried over; derive fresh ones from the position.
        _seed_rank_streams(int(run.options["seed"]), run.rank, run.progress.cur_nimg)
        return
    torch.set_rng_state(mine["torch"])
    if "cuda" in mine and run.device.type == "cuda":
        torch.cuda.set_rng_state(mine["cuda"], run.device)


# ---------------------------------------------------------------------------------------------------
# Maintenance at tick ends.


def _check_finite(run: Run) -> None:
    """Before anything is saved: every parameter and floating-point buffer (running averages such as
    w_avg diverge too) of G, D and G_ema, with one device sync per network."""
    for name, module in (("G", run.G), ("D", run.D), ("G_ema", run.G_ema)):
        tensors = [(n, t) for n, t in list(module.named_parameters()) + list(module.named_buffers())
                   if t.is_floating_point() and t.numel()]
        finite = torch.stack([torch.isfinite(t).all() for _, t in tensors]).tolist()
        if all(finite):
            continue
        tname = tensors[finite.index(False)][0]
        raise TrainingError(f"{name}.{tname} became NaN/inf at kimg {run.progress.cur_nimg / 1000:.3f}; training "
                            f"diverged. Resume from the last snapshot with a lower learning rate or a larger --gamma.")


def _status_line(run: Run, tick_time: float, total_time: float, maint: float, tick_nimg: int) -> str:
    prog = run.progress
    fields = [f"tick {prog.cur_tick:<5d}", f"kimg {prog.cur_nimg / 1000:<9.3f}", f"time {format_time(total_time):<12s}",
              f"sec/tick {tick_time:<7.1f}", f"sec/kimg {tick_time / max(tick_nimg, 1) * 1000:<7.2f}",
              f"maintenance {maint:<6.1f}"]
    try:
        import resource

        fields.append(f"cpumem {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:<6.2f}")
    except ImportError:
        pass
    if run.device.type == "cuda":
        fields.append(f"gpumem {torch.cuda.max_memory_allocated(run.device) / 2**30:<6.2f}")
        # What the process holds on the GPU, cache included. With CUDA graphs that is the figure to read: a
        # replay works in the memory pool set aside at its capture, which `gpumem` (allocations) counts
        # only on the tick of the capture.
        fields.append(f"reserved {torch.cuda.max_memory_reserved(run.device) / 2**30:<6.2f}")
        torch.cuda.reset_peak_memory_stats(run.device)
    p = run.augment_pipe.p_value() if run.augment_pipe is not None else 0.0
    fields.append(f"augment {p:.3f}")
    if run.graphs is not None and run.graphs.off is None:
        fields.append(f"graphs {len(run.graphs.captured)}")  # captured so far: the phases now replayed
    training_stats.report0("Progress/tick", prog.cur_tick)
    training_stats.report0("Progress/kimg", prog.cur_nimg / 1000)
    training_stats.report0("Progress/augment", p)
    training_stats.report0("Timing/sec_per_tick", tick_time)
    training_stats.report0("Timing/sec_per_kimg", tick_time / max(tick_nimg, 1) * 1000)
    training_stats.report0("Timing/maintenance_sec", maint)
    return " ".join(fields)


def trim_stats(path: Path, kimg: float) -> int:
    """Drop the stats.jsonl lines of ticks after `kimg` (rewritten atomically); returns how many."""
    if not path.is_file():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)

    def after(line: str) -> bool:
        try:
            return json.loads(line)["Progress/kimg"]["mean"] > kimg + 1e-9
        except (ValueError, KeyError, TypeError):
            return False  # not a tick line of ours: kept

    kept = [line for line in lines if not after(line)]
    if len(kept) < len(lines):
        with atomic_write(path, "w", encoding="utf-8") as f:
            f.writelines(kept)
    return len(lines) - len(kept)


class RunWriter:
    """Rank 0's outputs: stats.jsonl, TensorBoard, image grids, snapshots, metrics."""

    def __init__(self, run_dir: str, run: Run):
        self.run_dir = Path(run_dir)
        # A run resumed in place goes on from its snapshot: the ticks logged after it (up to --snap ticks
        # before a kill) are dropped, so that the curves hold each tick once.
        nimg = run.progress.cur_nimg
        trim_stats(self.run_dir / "stats.jsonl", nimg / 1000)
        self.stats_file = open(self.run_dir / "stats.jsonl", "a")
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.run_dir), purge_step=nimg + 1 if nimg > 0 else None)
        except ImportError as err:
            print(f"Skipping TensorBoard output: {err}")
        self.grid = images.setup_grid(run.dataset, run.G, seed=int(run.options["seed"]))

    def write_stats(self, collector: training_stats.Collector, nimg: int) -> None:
        """One stats.jsonl line; TensorBoard scalars at step `nimg` (images, as the grids and metrics)."""
        stats = collector.as_dict()
        self.stats_file.write(json.dumps(dict(stats, timestamp=time.time())) + "\n")
        self.stats_file.flush()
        if self.tb is not None:
            for name, value in stats.items():
                self.tb.add_scalar(name, value["mean"], global_step=nimg)
            self.tb.flush()

    def write_fakes(self, run: Run, name: str) -> None:
        grid = images.render_grid(run.G_ema, self.grid, run.device)
        images.save_image_grid(grid, self.run_dir / name)
        if self.tb is not None:
            self.tb.add_image("Fakes", grid, global_step=run.progress.cur_nimg, dataformats="HWC")

    def close(self) -> None:
        self.stats_file.close()
        if self.tb is not None:
            self.tb.close()


def _run_metrics(run: Run, snapshot_path: Path | None, run_dir: str, tb) -> None:
    if not run.options["metrics"]:
        return
    from metrics import metric_main

    for name in run.options["metrics"]:
        if run.rank == 0:  # a full-size metric takes minutes (hours on a CPU): say what is running
            print(f"Evaluating {name}...", flush=True)
        # Each rank computes its share; `gather` combines the shares (all ranks must call it).
        result = metric_main.calc_metric(name, G=run.G_ema, dataset_kwargs=run.options["dataset_kwargs"],
                                         device=run.device, num_gpus=run.world_size, rank=run.rank,
                                         gather=distributed.all_gather_cat, progress=False,
                                         **run.options.get("metric_kwargs", {}))
        if run.rank == 0:
            metric_main.report_metric(result, run_dir=run_dir, snapshot_path=snapshot_path, writer=tb,
                                      step=run.progress.cur_nimg)
            values = " ".join(f"{k} {v:.4g}" for k, v in result["results"].items())
            print(f"{name}: {values} ({format_time(result['total_time'])})", flush=True)


def _maintenance(run: Run, writer: RunWriter | None, run_dir: str, done: bool) -> None:
    """Tick end: snapshot, grid and metrics when due. Runs under forked RNG (see module docstring)."""
    opts, prog = run.options, run.progress
    _check_finite(run)
    snap = opts["snap"]
    if not (done or (snap and prog.cur_tick % snap == 0)):  # --snap=0: the final snapshot only
        return
    snapshot_path = None
    _sync_rank_state(run)
    for name, module in (("G", run.G), ("D", run.D), ("G_ema", run.G_ema)):
        distributed.params_agree(module, name)
    # Taken before rank 0 renders the grid, which draws synthesis noise.
    rank_rngs = distributed.all_gather_object(_rng_state(run)) if run.world_size > 1 else None
    if run.rank == 0:
        snapshot = make_snapshot(run, rank_rngs)
        snapshot_path = Path(run_dir) / checkpoint.snapshot_filename(prog.cur_nimg)
        writer.write_fakes(run, snapshot_path.name.replace("network-snapshot-", "fakes").replace(".pt", ".png"))
        checkpoint.save_snapshot(snapshot_path, snapshot)
    _run_metrics(run, snapshot_path, run_dir, writer.tb if writer is not None else None)


def _sync_rank_state(run: Run) -> None:
    """Before a snapshot: make the state each rank tracks on its own share of the batch (w_avg, the
    path-length mean, ADA's pending signs) a global value that rank 0's snapshot can hold, so a resume
    with any number of processes continues from the same state (exactly, with the same number)."""
    if run.world_size <= 1:
        return
    for module in (run.G, run.G_ema):
        distributed.average_buffers(module, "w_avg")
    pl_mean = run.loss.pl_mean
    pl_mean.copy_(distributed.all_reduce_sum(pl_mean.to(run.device, torch.float32)) / run.world_size)
    if run.ada is not None:
        run.ada.gather_pending(keep=run.rank == 0)


def training_loop(run_dir: str, options: dict[str, Any], device: torch.device | str = "cpu", rank: int = 0,
                  world_size: int = 1, resume: str | None = None, progress_bar: bool = True) -> Run:
    """Train until `options['kimg']`; rank 0 writes everything under `run_dir`. Returns the final Run."""
    device = torch.device(device)
    run = build_run(options, device, rank, world_size)
    if resume:
        restore(run, checkpoint.load_snapshot(resume), resume)
        if rank == 0 and options.get("transfer"):
            print(f"Starting from the weights of {resume} (transfer learning)")
        elif rank == 0:
            print(f"Resumed from {resume} at kimg {run.progress.cur_nimg / 1000:.3f}, tick {run.progress.cur_tick}")
    writer = RunWriter(run_dir, run) if rank == 0 else None
    if rank == 0 and run.progress.cur_nimg == 0:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            images.save_image_grid(images.real_grid(run.dataset, writer.grid), Path(run_dir) / "reals.png")
            writer.write_fakes(run, "fakes_init.png")
    start_data(run)
    collector = training_stats.Collector(regex=".*")
    total_nimg = int(options["kimg"] * 1000)
    start_time = tick_start_time = time.time()
    maint = 0.0
    bar = None
    while True:
        if bar is None and rank == 0 and progress_bar and sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(total=int(options["kimg_per_tick"] * 1000), unit="img", leave=False, mininterval=2)
        train_step(run)
        if bar is not None:
            bar.update(options["batch"])
        prog = run.progress
        done = prog.cur_nimg >= total_nimg
        if not done and prog.cur_tick != 0 and prog.cur_nimg < prog.tick_start_nimg + options["kimg_per_tick"] * 1000:
            continue
        if bar is not None:
            bar.close()
            bar = None
        run.timer.flush(wait=True)  # the tick's time includes the work still queued on the GPU
        tick_time = time.time() - tick_start_time
        line = _status_line(run, tick_time, time.time() - start_time, maint, prog.cur_nimg - prog.tick_start_nimg)
        if rank == 0:
            print(line, flush=True)
        maint_start = time.time()
        # The tick's stats are written before its snapshot: a run stopped in between repeats the tick's
        # line on resume (visible: same kimg) instead of losing it.
        collector.update()
        if rank == 0:
            writer.write_stats(collector, prog.cur_nimg)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            _maintenance(run, writer, run_dir, done)
        prog.cur_tick += 1
        prog.tick_start_nimg = prog.cur_nimg
        tick_start_time = time.time()
        maint = tick_start_time - maint_start
        if done:
            break
    if writer is not None:
        writer.close()
        print("Exiting...")
    return run
