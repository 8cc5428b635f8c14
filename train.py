"""Train a StyleGAN2 / SpatialGAN model.

Examples:

\b
  # CPU-sized run on built-in data (minutes on a laptop)
  python train.py --outdir=runs --cfg=tiny-spatial --data=synthetic:shapes:32 --kimg=40
\b
  # The paper's LSUN Cat setting on 8 GPUs
  torchrun --nproc_per_node=8 train.py --outdir=runs --cfg=lsun-cat256 --data=cat256.zip
\b
  # 2 local processes without calling torchrun yourself (CPU: gloo, GPU: NCCL)
  python train.py --outdir=runs --cfg=tiny --data=synthetic:shapes:32 --gpus=2
\b
  # Continue an interrupted run in its own directory (from its newest snapshot)
  python train.py --cfg=lsun-cat256 --data=cat256.zip --resume=runs/00003-cat256-lsun-cat256
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sys
import traceback

import click
import torch

from dnnlib.cli import FiniteFloatRange, error_text, expand_paths, interrupt_on_sigterm, pick_device
from torch_utils import distributed
from torch_utils.misc import tune_cpu_allocator
from training.training_loop import TrainingError

# Errors caused by the user's input are printed as one line; set SPATIALGAN_DEBUG=1 for the traceback.
USER_ERRORS = (ValueError, OSError)


def parse_metrics(text: str) -> list[str]:
    if text is None:
        return None
    items = [m.strip() for m in text.split(",") if m.strip()]
    return [] if items in ([], ["none"]) else items


def parse_resolutions(text: str | None):
    if text is None:
        return None
    if text == "all":
        return "all"
    try:
        return [int(r) for r in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected 'all' or comma-separated resolutions, got {text!r}") from None


UPSTREAM_RESUME_PRESETS = ("ffhq256", "ffhq512", "ffhq1024", "celebahq256", "lsundog256")


def resolve_resume(path: str | None) -> tuple[str | None, dict | None]:
    """(snapshot file, its contents) for a snapshot file or a run directory (its newest snapshot), loaded
    here so that a bad one is refused before anything (run directory, processes) is created."""
    if path is None:
        return None, None
    from dnnlib.util import is_url
    from training.checkpoint import SnapshotError, list_snapshots, load_snapshot, resolve_snapshot

    if is_url(path):
        return path, load_snapshot(path)  # downloaded once into the cache
    if path in UPSTREAM_RESUME_PRESETS and not os.path.exists(path):
        raise click.ClickException(f"--resume={path} is a StyleGAN2-ADA transfer-learning preset, an official "
                                   f"pickle: loading official pickles is not supported yet")
    if not os.path.exists(path):
        raise click.ClickException(f"--resume={path}: no such file or directory")
    try:
        p = resolve_snapshot(path)  # a run directory: its newest snapshot
    except SnapshotError as e:
        raise click.ClickException(f"--resume: {e}") from None
    if not os.path.isdir(path):
        return p, load_snapshot(p)
    # Snapshots are written atomically, so a damaged one was damaged afterwards (a disk, a copy): a run
    # directory goes on from the newest snapshot that is intact, and says which one it skipped.
    first_error = None
    for snap in reversed(list_snapshots(path)):
        try:
            data = load_snapshot(snap)
        except SnapshotError as e:
            first_error = first_error or e
            continue
        if first_error is not None:
            print(f"Warning: skipping a damaged snapshot ({error_text(first_error)}); resuming from {snap}",
                  file=sys.stderr)
        return str(snap), data
    raise first_error


RESUME_SETTINGS = (("batch",), ("loss_kwargs", "r1_gamma"), ("loss_kwargs", "pl_weight"),
                   ("loss_kwargs", "style_mixing_prob"), ("ema_kimg",), ("ema_rampup",), ("G_opt_kwargs", "lr"),
                   ("D_opt_kwargs", "lr"), ("augment", "mode"), ("augment", "target"), ("augment", "augpipe"),
                   ("world_size",), ("dataset_kwargs", "data"), ("dataset_kwargs", "xflip"),
                   ("dataset_kwargs", "max_size"), ("dataset_kwargs", "use_labels"), ("seed",),
                   ("G_kwargs", "spatial_kwargs"), ("align",))
_MISSING = object()  # a setting an older snapshot's options do not have: not reported as changed


def changed_settings(saved: dict, options: dict) -> list[str]:
    """'name: old -> new' for the training settings a resume changes (e.g. --cfg=auto on another number of
    GPUs derives another batch, gamma and EMA length; another dataset, seed or method setting)."""
    out = []
    for path in RESUME_SETTINGS:
        old, new = saved, options
        for key in path:
            old = old.get(key, _MISSING) if isinstance(old, dict) else _MISSING
            new = new.get(key) if isinstance(new, dict) else None
        if old is not _MISSING and old != new:
            out.append(f"{'.'.join(path)}: {old} -> {new}")
    return out


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def check_outdir(outdir: str) -> None:
    """What `make_run_dir` would find, without creating anything (for --dry-run): --outdir is a writable
    directory, or can be made in the nearest existing folder above it."""
    if os.path.exists(outdir) and not os.path.isdir(outdir):
        raise click.ClickException(f"--outdir={outdir}: a file is in the way, not a directory")
    existing = os.path.abspath(outdir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise click.ClickException(f"--outdir={outdir}: cannot create directory ({existing} is a file)")
    if not os.access(existing, os.W_OK):
        raise click.ClickException(f"--outdir={outdir}: {existing} is not writable")


MAX_NAME_BYTES = 200  # a run directory's name (file systems allow 255 bytes; the id and margin need the rest)


def make_run_dir(outdir: str, desc: str) -> str:
    """`<outdir>/<NNNNN>-<desc>` with the next free id."""
    try:
        os.makedirs(outdir, exist_ok=True)
    except OSError as err:
        raise click.ClickException(f"--outdir={outdir}: cannot create directory ({err.strerror})") from None
    if not os.access(outdir, os.W_OK):
        raise click.ClickException(f"--outdir={outdir}: directory is not writable")
    ids = [int(m.group()) for n in os.listdir(outdir) if (m := re.match(r"^\d+", n)) and os.path.isdir(
        os.path.join(outdir, n))]
    if len(desc.encode()) > MAX_NAME_BYTES:  # many options: keep the start, tell runs apart by a hash
        digest = hashlib.sha1(desc.encode()).hexdigest()[:8]
        desc = desc.encode()[:MAX_NAME_BYTES - 9].decode(errors="ignore") + "-" + digest
    run_dir = os.path.join(outdir, f"{max(ids, default=-1) + 1:05d}-{desc}")
    os.makedirs(run_dir, exist_ok=False)
    return run_dir


def describe(options: dict, args: dict) -> str:
    parts = [options["dataset_name"]]
    if args["cond"]:
        parts.append("cond")
    if args["subset"]:
        parts.append(f"subset{args['subset']}")
    if args["mirror"]:
        parts.append("mirror")
    parts.append(options["cfg"] + (str(options["world_size"]) if options["cfg"] == "auto" else ""))
    for key in ("gamma", "kimg", "batch"):
        if args[key] is not None:
            parts.append(f"{key}{args[key]:g}")
    if args["aug"]:
        parts.append(args["aug"])
    if args["p"] is not None:
        parts.append(f"p{args['p']:g}")
    if args["target"] is not None:
        parts.append(f"target{args['target']:g}")
    if args["augpipe"]:
        parts.append(args["augpipe"])
    if args["resume"]:
        parts.append("transfer" if options.get("transfer") else "resumecustom")
    if args["freezed"]:
        parts.append(f"freezed{args['freezed']}")
    # Method switches (Tables 1, 4, 5), so that ablation runs sharing an outdir are told apart by name.
    for key in ("pl_weight", "style_mixing", "encoding", "sampler", "sel_res", "processing", "compose",
                "kernel_size", "dilation", "align", "align_indoor", "align_weight", "align_res", "tau",
                "cam_variant", "cam_score"):
        value = args.get(key)
        if value is not None:
            text = f"{int(value)}" if isinstance(value, bool) else (f"{value:g}" if isinstance(value, float)
                                                                    else str(value))
            parts.append(key.replace("_", "") + text)
    if args["desc"]:
        parts.append(args["desc"])
    return "-".join(re.sub(r"[^\w.]+", "_", p) for p in parts)


def open_training_set(data: str, cfg: str, args: dict):
    from training.config import load_preset
    from training.dataset import open_dataset

    resolution = None
    if data.startswith("synthetic:") and data.count(":") == 1:
        resolution = load_preset(cfg).get("resolution") or 256
    dataset = open_dataset(data, resolution=resolution, use_labels=bool(args["cond"]), xflip=bool(args["mirror"]),
                           max_size=args["subset"], random_seed=args["seed"] or 0)
    dataset.check_images(progress=distributed.detect().is_main)  # before the run directory exists
    return dataset


def build_options(args: dict, world_size: int, transfer: bool = False) -> dict:
    """The run's options; `transfer`: --resume names a network-only file (weights, no training state)."""
    from training.config import resolve_options

    dataset = open_training_set(args["data"], args["cfg"], args)
    if args["cond"] and not dataset.has_labels:
        raise click.ClickException(f"--cond=1 but --data={args['data']} has no labels (dataset.json)")
    info = dict(kwargs=dataset.kwargs, name=dataset.name, resolution=dataset.resolution,
                num_channels=dataset.num_channels, label_dim=dataset.label_dim if args["cond"] else 0)
    spatial = dict(encoding=args["encoding"], sampler=args["sampler"], resolutions=parse_resolutions(args["sel_res"]),
                   processing=args["processing"], compose=args["compose"], kernel_size=args["kernel_size"],
                   dilation=args["dilation"])
    align = dict(enabled=args["align"], indoor=args["align_indoor"], weight=args["align_weight"], tau=args["tau"],
                 cam_variant=args["cam_variant"], cam_score=args["cam_score"],
                 resolutions=parse_resolutions(args["align_res"]))
    return resolve_options(
        args["cfg"], info, world_size, kimg=args["kimg"], batch=args["batch"], batch_gpu=args["batch_gpu"],
        gamma=args["gamma"], seed=args["seed"], snap=args["snap"], tick=args["tick"],
        workers=args["workers"] if args["workers"] is not None else min(3, usable_cpus()),
        aug=args["aug"], p=args["p"], target=args["target"], augpipe=args["augpipe"], fp32=args["fp32"],
        channels_last=args["channels_last"], cuda_graphs=args["cuda_graphs"], freezed=args["freezed"],
        metrics=parse_metrics(args["metrics"]), pl_weight=args["pl_weight"], style_mixing=args["style_mixing"],
        allow_tf32=args["allow_tf32"], cudnn_benchmark=not args["nobench"], transfer=transfer, spatial=spatial,
        align=align, metric_kwargs=dict(segmenter=args["segmenter"], segmenter_weights=args["segmenter_weights"]))


def check_run(args: dict, options: dict, resume: str | None, resume_data: dict | None) -> None:
    """Build the run's networks and loss on the CPU (and check metrics and the resume snapshot against
    them), so that a bad combination of options fails now, not after the run directory exists."""
    from training.training_loop import check_options

    check_options(options, resume_data, resume or "")
    wanted = parse_resolutions(args["align_res"])
    if isinstance(wanted, list) and options["align"]:
        # The preset's defaults are fitted to the resolution silently; resolutions asked for must exist.
        res = options["resolution"]
        maps = [res >> k for k in range(1, res.bit_length()) if res >> k >= 4]
        missing = [r for r in wanted if r not in maps]
        if missing:
            raise click.ClickException(f"--align-res={args['align_res']}: D has no {missing} feature maps at "
                                       f"{res}px (it has {sorted(maps)})")


@click.command(help=__doc__, context_settings={"max_content_width": 110})
@click.option("--outdir", metavar="DIR",
              help="Where to make the run directory (ignored by --resume=<run dir>, which continues in it)")
@click.option("--cfg", default="auto", show_default=True, help="Preset name (configs/*.json) or a JSON file")
@click.option("--data", required=True, metavar="PATH", help="Dataset dir/zip, or synthetic:shapes|rooms[:RES]")
@click.option("--cond", type=bool, default=False, metavar="BOOL", help="Train conditionally on dataset.json labels")
@click.option("--subset", type=click.IntRange(min=1), metavar="INT", help="Train on a seeded random subset")
@click.option("--mirror", type=bool, default=False, metavar="BOOL", help="Add x-flipped copies of the images")
@click.option("--gamma", type=FiniteFloatRange(min=0), help="R1 weight (default: preset)")
@click.option("--kimg", type=FiniteFloatRange(min=0, min_open=True), help="Training length in kimg (default: preset)")
@click.option("--batch", type=click.IntRange(min=1), help="Total batch size (default: preset)")
@click.option("--batch-gpu", type=click.IntRange(min=1), help="Samples per round per process (gradient accumulation)")
@click.option("--aug", type=click.Choice(["noaug", "ada", "fixed"]), help="Augmentation mode (default: preset)")
@click.option("--p", type=FiniteFloatRange(0, 1), help="Augment probability for --aug=fixed")
@click.option("--target", type=FiniteFloatRange(0, 1, min_open=True, max_open=True), help="ADA target [default: 0.6]")
@click.option("--augpipe", type=click.Choice(["blit", "geom", "color", "filter", "noise", "cutout", "bg", "bgc",
                                              "bgcf", "bgcfn", "bgcfnc"]), help="Augmentation pipeline [default: bgc]")
@click.option("--resume", metavar="PATH", help="Continue a run directory from its newest snapshot, or start a "
              "new run from a snapshot (.pt file or URL)")
@click.option("--transfer", type=bool, default=False, metavar="BOOL",
              help="With --resume: take only its networks' weights and start a new run (transfer learning)")
@click.option("--snap", type=click.IntRange(min=0), default=50, show_default=True, help="Snapshot every N ticks")
@click.option("--tick", type=FiniteFloatRange(min=0, min_open=True), help="kimg per tick (default: preset, 4)")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True, help="Random seed")
@click.option("--workers", type=click.IntRange(min=0), help="DataLoader workers [default: 3, at most the usable CPUs]")
@click.option("--metrics", metavar="LIST", help="Metrics at each snapshot, e.g. fid50k_full,comove1k, or none")
@click.option("--segmenter", help="Co-move segmenter for --metrics=comove*: synthetic:<kind> | maskrcnn "
              "[default: synthetic data's own]")
@click.option("--segmenter-weights", metavar="FILE", help="Mask R-CNN state dict for --segmenter=maskrcnn")
@click.option("--freezed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Freeze-D: number of D layers, from the input side, that do not train")
@click.option("--fp32", type=bool, default=False, metavar="BOOL", help="Disable mixed precision")
@click.option("--channels-last", "--nhwc", "channels_last", type=bool, default=False, metavar="BOOL",
              help="Channels-last (NHWC) memory format in the fp16 layers (faster on tensor-core GPUs)")
@click.option("--cuda-graphs", type=bool, default=None, metavar="BOOL",
              help="Replay each training phase as a CUDA graph (less CPU time per step; see README). "
                   "Default: on for a run on one GPU; with several processes only when asked (NCCL)")
@click.option("--allow-tf32", type=bool, default=False, metavar="BOOL", help="Allow TF32 matmul/convolutions")
@click.option("--nobench", type=bool, default=False, metavar="BOOL", help="Disable cuDNN benchmarking")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--gpus", type=click.IntRange(min=1), default=1, show_default=True,
              help="Local processes to start (as torchrun would; not needed when launched by torchrun)")
@click.option("--dist-backend", type=click.Choice(["nccl", "gloo"]), help="torch.distributed backend override")
@click.option("--dist-timeout", type=FiniteFloatRange(min=0, min_open=True), envvar="SPATIALGAN_DIST_TIMEOUT",
              default=distributed.DEFAULT_TIMEOUT_S, show_default=True, metavar="SEC",
              help="Fail when a collective waits longer (a rank died or hangs); env SPATIALGAN_DIST_TIMEOUT")
@click.option("--pl-weight", type=FiniteFloatRange(min=0), help="Path-length weight (default: preset)")
@click.option("--style-mixing", type=FiniteFloatRange(0, 1), help="Style-mixing probability (default: preset)")
@click.option("--encoding", type=click.Choice(["none", "sel_norm", "sel_concat", "sel_indoor", "flatten"]),
              help="Heatmap encoding (Table 5); none = StyleGAN2 baseline")
@click.option("--sampler", type=click.Choice(["hierarchical", "eqgan", "non_hierarchical", "noise", "multi_object"]),
              help="Heatmap sampler (Tables 1, 4)")
@click.option("--sel-res", metavar="LIST", help="Encoded synthesis resolutions, e.g. 4,8,16 or all")
@click.option("--processing", type=click.Choice(["coarse", "fine"]), help="Heatmap processing (paper §3.2)")
@click.option("--compose", type=click.Choice(["sum", "separate"]), help="Sub-heatmaps summed or as channels")
@click.option("--kernel-size", type=click.IntRange(min=1),
              help="Kernel of the convs reading the heatmap: the SEL's first one and, with --processing=fine, "
                   "those at image resolution (paper §4.3)")
@click.option("--dilation", type=click.IntRange(min=1), help="Dilation of those convs (paper §4.3)")
@click.option("--align", type=bool, metavar="BOOL", help="GradCAM alignment loss on/off")
@click.option("--align-indoor", type=bool, metavar="BOOL", help="Use L_align_indoor (Eq. 5)")
@click.option("--align-weight", type=FiniteFloatRange(min=0), help="Alignment loss weight [default: 1]")
@click.option("--align-res", metavar="LIST", help="D resolutions used for GradCAM [default: 4,8,16]")
@click.option("--tau", type=FiniteFloatRange(min=0), help="Alignment truncation threshold [default: 0.25]")
@click.option("--cam-variant", type=click.Choice(["eqgan", "canonical"]),
              help="GradCAM's ReLU per channel (eqgan, conference code) or after the sum (canonical) "
                   "[default: eqgan]")
@click.option("--cam-score", type=click.Choice(["g_loss", "logit"]),
              help="GradCAM score: the G loss (g_loss) or D's logit (logit) [default: g_loss]")
@click.option("--desc", help="Extra text for the run directory name")
@click.option("-n", "--dry-run", is_flag=True, help="Print the resolved options and exit")
def main(**args):
    env = distributed.detect()
    # Several ranks print the same failure: the prefix says which process a line comes from.
    prefix = f"[rank {env.rank}/{env.world_size}] " if env.world_size > 1 else ""
    expand_paths(args, "outdir", "data", "resume")
    try:
        with interrupt_on_sigterm():  # `kill` / a job's time limit: the run stops like on Ctrl-C
            run_training(args)
    except click.ClickException as err:
        err.message = prefix + err.message
        raise
    except KeyboardInterrupt as err:
        # A run that had started has said how to go on (that line stays the last one); 130 = 128 + SIGINT,
        # the shell's code for an interrupted command.
        if env.is_main and not getattr(err, "reported", False):
            print(f"{prefix}Interrupted ({err or 'Ctrl-C'}) before training started", file=sys.stderr)
        raise SystemExit(130) from None
    except USER_ERRORS + (TrainingError,) as err:
        if os.environ.get("SPATIALGAN_DEBUG"):
            raise
        raise click.ClickException(prefix + error_text(err)) from None
    except Exception as err:
        if os.environ.get("SPATIALGAN_DEBUG") or not distributed.is_comm_error(err):
            raise
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        first = re.sub(r"^\[[^\]]*\]\s*", "", first)  # drop gloo's "[path/to/source.cc:123]" prefix
        raise click.ClickException(
            f"{prefix}lost contact with the other processes ({first[:200]}); another rank probably failed or "
            f"was killed (see its message), or hung past --dist-timeout={args['dist_timeout']:g}s") from None


def planned_world_size(args: dict, env: distributed.DistEnv) -> int:
    """Processes the run will have: torchrun's WORLD_SIZE when launched by it, else --gpus."""
    gpus = args["gpus"]
    if "WORLD_SIZE" not in os.environ:
        if args["device"] != "cpu" and torch.cuda.is_available() and gpus > torch.cuda.device_count():
            raise click.ClickException(f"--gpus={gpus} but only {torch.cuda.device_count()} CUDA devices are visible")
        return gpus
    if gpus not in (1, env.world_size):
        raise click.ClickException(f"--gpus={gpus} disagrees with torchrun's WORLD_SIZE={env.world_size}")
    return env.world_size


def launch_processes(gpus: int) -> None:
    """--gpus=N outside torchrun: re-run this very command in N local processes (`distributed.launch_local`)."""
    rc = distributed.launch_local(gpus, os.path.abspath(__file__), sys.argv[1:])
    if rc in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        raise click.ClickException(f"--gpus={gpus}: interrupted; every process has stopped (continue with "
                                   "--resume=<the run directory>)")
    if rc != 0:
        raise click.ClickException(f"--gpus={gpus}: training failed (exit code {rc}); see the messages above")


def continued_run_dir(args: dict, options: dict) -> str | None:
    """The run directory a `--resume=<run dir>` continues in (None: a new run directory is made).

    Continuing in place keeps one run in one directory (stats, metrics and TensorBoard stay continuous)
    and makes elastic restarts work: torchrun re-runs the same command, which then finds the newest
    snapshot of this very directory. A snapshot file, or --transfer, starts a new directory."""
    if args["resume"] is None or options.get("transfer") or not os.path.isdir(args["resume"]):
        return None
    if not os.access(args["resume"], os.W_OK):
        raise click.ClickException(f"--resume={args['resume']}: the run directory is not writable")
    return os.path.abspath(args["resume"])


def remove_stale_temp_files(run_dir: str) -> None:
    """Temporary files of atomic writes that a killed process left behind (never read: names start with
    a dot and end in .tmp)."""
    for name in os.listdir(run_dir):
        if name.startswith(".") and name.endswith(".tmp"):
            try:
                os.unlink(os.path.join(run_dir, name))
            except OSError:
                pass


def create_run_dir(args: dict, options: dict, env: distributed.DistEnv) -> str:
    """Rank 0 makes the run directory and tells the others (or its error, so they do not wait for it)."""
    run_dir, error = None, None
    if env.is_main:
        try:
            run_dir = continued_run_dir(args, options)
            if run_dir is not None:
                remove_stale_temp_files(run_dir)
            else:
                run_dir = make_run_dir(args["outdir"], describe(options, args))
        except click.ClickException as err:
            error = err.message
    run_dir, error = distributed.broadcast_object((run_dir, error))
    if error is not None:
        raise click.ClickException(error if env.is_main else f"rank 0 could not create the run directory: {error}")
    return run_dir


def run_training(args: dict) -> None:
    env = distributed.detect()
    world_size = planned_world_size(args, env)
    device = pick_device(args["device"], env.local_rank)
    if args["dist_backend"] == "nccl" and world_size > 1 and device.type != "cuda":
        raise click.ClickException(f"--dist-backend=nccl needs CUDA devices; this run is on {device.type} "
                                   "(leave --dist-backend out: gloo is used there)")
    resume, resume_data = resolve_resume(args["resume"])
    if args["transfer"] and resume is None:
        raise click.ClickException("--transfer=1 needs --resume=PATH (the snapshot whose weights to start from)")
    transfer = resume_data is not None and (args["transfer"] or resume_data.get("state") is None)
    if args["outdir"] is None and (transfer or not os.path.isdir(args["resume"] or "")):
        raise click.ClickException("--outdir=DIR is required: where to make the run directory (only "
                                   "--resume=<run directory> without --transfer continues in place)")
    if args["cuda_graphs"] is None:
        # On where it was measured (one H100: 1.5-1.8x the img/s of the best eager setting). With several
        # processes the graphs capture NCCL collectives, which have not run on GPUs yet: asked for with =1.
        args["cuda_graphs"] = device.type == "cuda" and world_size == 1
    options = build_options(args, world_size, transfer)  # validated here, before any process is spawned
    check_run(args, options, resume, resume_data)
    changes = []
    if resume_data is not None and not transfer:
        changes = changed_settings(resume_data.get("training_options") or {}, options)
    del resume_data
    if continued_run_dir(args, options) is None:
        check_outdir(args["outdir"])  # before any process is spawned, and for --dry-run
    if args["dry_run"]:
        for change in changes:
            print(f"Note: resuming with a changed setting: {change}", file=sys.stderr)
        print(json.dumps(options, indent=2))
        return
    if world_size > env.world_size:
        launch_processes(world_size)
        return
    if device.type == "cpu":
        tune_cpu_allocator()
    else:
        torch.backends.cudnn.benchmark = options["cudnn_benchmark"]
        torch.backends.cuda.matmul.allow_tf32 = options["allow_tf32"]
        torch.backends.cudnn.allow_tf32 = options["allow_tf32"]
    distributed.init(env, device, backend=args["dist_backend"], timeout_s=args["dist_timeout"])
    # Every rank resumes from the snapshot rank 0 chose (a filesystem's caches may show ranks different
    # "newest" snapshots of a run directory).
    resume = distributed.broadcast_object(resume)
    from torch_utils import training_stats

    training_stats.init_multiprocessing(env.rank, device if env.world_size > 1 else None)
    run_dir = create_run_dir(args, options, env)
    from dnnlib import Logger

    logger = None
    if env.is_main:
        # A continued run keeps its first options file; every snapshot stores the options it ran with.
        options_file = os.path.join(run_dir, "training_options.json")
        if not os.path.exists(options_file):
            with open(options_file, "w") as f:
                json.dump(dict(options, resume=resume), f, indent=2)
        logger = Logger(os.path.join(run_dir, "log.txt"))
        if changes:
            print(f"Note: resuming with changed settings ({'; '.join(changes)}); the snapshot's optimiser "
                  f"moments and counters carry over, the new settings apply from here on")
        print(f"Run directory: {run_dir}\nTraining for {options['kimg']:g} kimg on {device} "
              f"({env.world_size} process{'es' if env.world_size > 1 else ''}), batch {options['batch']}")
    from training.training_loop import training_loop

    try:
        training_loop(run_dir, options, device=device, rank=env.rank, world_size=env.world_size, resume=resume)
    except BaseException as err:
        if isinstance(err, KeyboardInterrupt) and env.is_main:
            # Not a failure: say how to go on, in the log and on the console, instead of a traceback.
            print(f"Interrupted ({err or 'Ctrl-C'}); continue with --resume={run_dir}", file=sys.stderr)
            err.reported = True
            if logger is not None:  # it copied the line into log.txt
                logger.close()
        elif logger is not None:
            # main() prints the error after the logger is closed: record why the run ended in log.txt too.
            known = isinstance(err, USER_ERRORS + (TrainingError,)) and not os.environ.get("SPATIALGAN_DEBUG")
            logger.write_file_only(f"Error: {error_text(err)}\n" if known else traceback.format_exc())
            logger.close()
        distributed.shutdown()
        raise
    if logger is not None:
        logger.close()
    distributed.exit_after_success()  # waits for every rank (rank 0's last save) before leaving


if __name__ == "__main__":
    sys.exit(main())
