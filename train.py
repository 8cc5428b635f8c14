"""Train a StyleGAN2 / SpatialGAN model.

Examples:

\b
  # CPU-sized run on built-in data (minutes on a laptop)
  python train.py --outdir=runs --cfg=tiny-spatial --data=synthetic:shapes:32 --kimg=40
\b
  # The paper's LSUN Cat setting on 8 GPUs
  torchrun --nproc_per_node=8 train.py --outdir=runs --cfg=lsun-cat256 --data=cat256.zip
\b
  # Resume an interrupted run (a snapshot file or a run directory)
  python train.py --outdir=runs --cfg=lsun-cat256 --data=cat256.zip --resume=runs/00003-cat256-lsun-cat256
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import click
import torch

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


def resolve_resume(path: str | None) -> str | None:
    """A snapshot file, or a run directory (its newest snapshot)."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        snaps = sorted(p.glob("network-snapshot-*.pt"))
        if not snaps:
            raise click.ClickException(f"--resume={path}: directory holds no network-snapshot-*.pt")
        return str(snaps[-1])
    if not p.is_file():
        raise click.ClickException(f"--resume={path}: no such file or directory")
    return str(p)


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
    if args["desc"]:
        parts.append(args["desc"])
    return "-".join(re.sub(r"[^\w.]+", "_", p) for p in parts)


def pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise click.ClickException("--device=cuda but no CUDA device is available")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def open_training_set(data: str, cfg: str, args: dict):
    from training.config import load_preset
    from training.dataset import open_dataset

    resolution = None
    if data.startswith("synthetic:") and data.count(":") == 1:
        resolution = load_preset(cfg).get("resolution") or 256
    return open_dataset(data, resolution=resolution, use_labels=bool(args["cond"]), xflip=bool(args["mirror"]),
                        max_size=args["subset"], random_seed=args["seed"] or 0)


def build_options(args: dict, world_size: int) -> dict:
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
        gamma=args["gamma"], seed=args["seed"], snap=args["snap"], tick=args["tick"], workers=args["workers"],
        aug=args["aug"], p=args["p"], target=args["target"], augpipe=args["augpipe"], fp32=args["fp32"],
        metrics=parse_metrics(args["metrics"]), pl_weight=args["pl_weight"], style_mixing=args["style_mixing"],
        allow_tf32=args["allow_tf32"], cudnn_benchmark=not args["nobench"], spatial=spatial, align=align)


@click.command(help=__doc__, context_settings={"max_content_width": 110})
@click.option("--outdir", required=True, metavar="DIR", help="Where to make the run directory")
@click.option("--cfg", default="auto", show_default=True, help="Preset name (configs/*.json) or a JSON file")
@click.option("--data", required=True, metavar="PATH", help="Dataset dir/zip, or synthetic:shapes|rooms[:RES]")
@click.option("--cond", type=bool, default=False, metavar="BOOL", help="Train conditionally on dataset.json labels")
@click.option("--subset", type=click.IntRange(min=1), metavar="INT", help="Train on a seeded random subset")
@click.option("--mirror", type=bool, default=False, metavar="BOOL", help="Add x-flipped copies of the images")
@click.option("--gamma", type=click.FloatRange(min=0), help="R1 weight (default: preset)")
@click.option("--kimg", type=click.FloatRange(min=0, min_open=True), help="Training length in kimg (default: preset)")
@click.option("--batch", type=click.IntRange(min=1), help="Total batch size (default: preset)")
@click.option("--batch-gpu", type=click.IntRange(min=1), help="Samples per round per process (gradient accumulation)")
@click.option("--aug", type=click.Choice(["noaug", "ada", "fixed"]), help="Augmentation mode (default: preset)")
@click.option("--p", type=click.FloatRange(0, 1), help="Augment probability for --aug=fixed")
@click.option("--target", type=click.FloatRange(0, 1, min_open=True, max_open=True), help="ADA target [default: 0.6]")
@click.option("--augpipe", type=click.Choice(["blit", "geom", "color", "filter", "noise", "cutout", "bg", "bgc",
                                              "bgcf", "bgcfn", "bgcfnc"]), help="Augmentation pipeline [default: bgc]")
@click.option("--resume", metavar="PATH", help="Resume from a snapshot (.pt) or a run directory's newest snapshot")
@click.option("--snap", type=click.IntRange(min=0), default=50, show_default=True, help="Snapshot every N ticks")
@click.option("--tick", type=click.FloatRange(min=0, min_open=True), help="kimg per tick (default: preset, 4)")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Random seed")
@click.option("--workers", type=click.IntRange(min=0), default=3, show_default=True, help="DataLoader workers")
@click.option("--metrics", metavar="LIST", help="Metrics at each snapshot, e.g. fid50k_full,comove1k, or none")
@click.option("--fp32", type=bool, default=False, metavar="BOOL", help="Disable mixed precision")
@click.option("--allow-tf32", type=bool, default=False, metavar="BOOL", help="Allow TF32 matmul/convolutions")
@click.option("--nobench", type=bool, default=False, metavar="BOOL", help="Disable cuDNN benchmarking")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--dist-backend", type=click.Choice(["nccl", "gloo"]), help="torch.distributed backend override")
@click.option("--pl-weight", type=click.FloatRange(min=0), help="Path-length weight (default: preset, 2)")
@click.option("--style-mixing", type=click.FloatRange(0, 1), help="Style-mixing probability (default: preset)")
@click.option("--encoding", type=click.Choice(["none", "sel_norm", "sel_concat", "sel_indoor", "flatten"]),
              help="Heatmap encoding (Table 5); none = StyleGAN2 baseline")
@click.option("--sampler", type=click.Choice(["hierarchical", "eqgan", "non_hierarchical", "noise", "multi_object"]),
              help="Heatmap sampler (Tables 1, 4)")
@click.option("--sel-res", metavar="LIST", help="Encoded synthesis resolutions, e.g. 4,8,16 or all")
@click.option("--processing", type=click.Choice(["coarse", "fine"]), help="Heatmap processing (paper §3.2)")
@click.option("--compose", type=click.Choice(["sum", "separate"]), help="Sub-heatmaps summed or as channels")
@click.option("--kernel-size", type=click.IntRange(min=1), help="SEL heatmap kernel size (paper §4.3)")
@click.option("--dilation", type=click.IntRange(min=1), help="SEL heatmap kernel dilation (paper §4.3)")
@click.option("--align", type=bool, metavar="BOOL", help="GradCAM alignment loss on/off")
@click.option("--align-indoor", type=bool, metavar="BOOL", help="Use L_align_indoor (Eq. 5)")
@click.option("--align-weight", type=click.FloatRange(min=0), help="Alignment loss weight [default: 1]")
@click.option("--align-res", metavar="LIST", help="D resolutions used for GradCAM [default: 4,8,16]")
@click.option("--tau", type=click.FloatRange(min=0), help="Alignment truncation threshold [default: 0.25]")
@click.option("--cam-variant", type=click.Choice(["canonical", "eqgan"]), help="ReLU after/before channel sum")
@click.option("--cam-score", type=click.Choice(["logit", "g_loss"]), help="GradCAM score: D logit or G loss")
@click.option("--desc", help="Extra text for the run directory name")
@click.option("-n", "--dry-run", is_flag=True, help="Print the resolved options and exit")
def main(**args):
    try:
        run_training(args)
    except click.ClickException:
        raise
    except USER_ERRORS + (TrainingError,) as err:
        if os.environ.get("SPATIALGAN_DEBUG"):
            raise
        raise click.ClickException(str(err).strip("'\"")) from None


def run_training(args: dict) -> None:
    env = distributed.detect()
    device = pick_device(args["device"], env.local_rank)
    resume = resolve_resume(args["resume"])
    options = build_options(args, env.world_size)
    if args["dry_run"]:
        print(json.dumps(options, indent=2))
        return
    if device.type == "cpu":
        tune_cpu_allocator()
    else:
        torch.backends.cudnn.benchmark = options["cudnn_benchmark"]
        torch.backends.cuda.matmul.allow_tf32 = options["allow_tf32"]
        torch.backends.cudnn.allow_tf32 = options["allow_tf32"]
    distributed.init(env, device, backend=args["dist_backend"])
    from torch_utils import training_stats

    training_stats.init_multiprocessing(env.rank, device if env.world_size > 1 else None)
    run_dir = make_run_dir(args["outdir"], describe(options, args)) if env.is_main else None
    run_dir = distributed.broadcast_object(run_dir)
    from dnnlib import Logger

    logger = None
    if env.is_main:
        with open(os.path.join(run_dir, "training_options.json"), "w") as f:
            json.dump(dict(options, resume=resume), f, indent=2)
        logger = Logger(os.path.join(run_dir, "log.txt"))
        print(f"Run directory: {run_dir}\nTraining for {options['kimg']:g} kimg on {device} "
              f"({env.world_size} process{'es' if env.world_size > 1 else ''}), batch {options['batch']}")
    from training.training_loop import training_loop

    try:
        training_loop(run_dir, options, device=device, rank=env.rank, world_size=env.world_size, resume=resume)
    finally:
        if logger is not None:
            logger.close()
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
