"""Distributed metrics on CPU: 2 gloo ranks (torchrun) must give the single-process values.

The ranks split the work in batches (rank r: batches r, r + 2, ...), so every count below leaves one rank
with fewer batches than the other, and the `*16` metrics (one batch) leave rank 1 with none: a rank that
skipped a collective would deadlock, which the 30 s process-group timeout turns into a failure.
Generators are tiny random-init `training.networks.Generator`s built from a fixed seed; the synthesis
noise strengths are set non-zero so the random synthesis noise matters (it must follow the batch seed,
not the rank's global RNG). Detectors are a tiny TorchScript stand-in saved by the test, serving the
`inception`, `inception_logits` and `vgg16` (fc2 + LPIPS) calling conventions.

This file is also the worker script: `python -m torch.distributed.run ... test_distributed_metrics.py cfg`.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the worker runs as a plain script
    sys.path.insert(0, str(REPO))

from metrics import metric_main  # noqa: E402

pytestmark = pytest.mark.slow
DATA = "synthetic:shapes:16"
# fid/kid/is/pr/ppl via the tiny detector; swd16/comove16: one batch, so rank 1 has none.
METRICS = ["swd40", "swd16", "fid40", "kid40", "is40", "pr403", "ppl2_wend12"]
COMOVE = ["comove16", "comove40"]


class TinyDetector(torch.nn.Module):
    """NVIDIA-convention stand-in: pooled colour features (15-d), softmax 'classes', LPIPS-like features."""

    def forward(self, x: torch.Tensor, return_features: bool = False, no_output_bias: bool = False,
                resize_images: bool = True, return_lpips: bool = False) -> torch.Tensor:
        x = x / 255
        feats = torch.cat([F.adaptive_avg_pool2d(x, 2).flatten(1), x.flatten(2).std(dim=2)], dim=1)
        if return_lpips:
            return F.adaptive_avg_pool2d(x, 4).flatten(1)
        if return_features:
            return feats
        return torch.softmax(feats * 20, dim=1)


def save_detector(path: Path) -> Path:
    torch.jit.save(torch.jit.script(TinyDetector()), str(path))
    return path


def _noisy(G: torch.nn.Module) -> torch.nn.Module:
    """Non-zero noise strengths (random init has 0), so synthesis noise changes the images."""
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.3)
    return G.eval()


def tiny_generator() -> torch.nn.Module:
    from training.networks import Generator

    torch.manual_seed(0)
    return _noisy(Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
                            mapping_kwargs=dict(num_layers=1),
                            synthesis_kwargs=dict(channel_base=64, channel_max=16, num_fp16_res=0,
                                                  conv_clamp=None)))


def tiny_indoor_generator() -> torch.nn.Module:
    from training.config import resolve_options
    from training.dataset import open_dataset
    from training.networks import Generator

    ds = open_dataset("synthetic:rooms:16")
    info = dict(kwargs=ds.kwargs, name=ds.name, resolution=ds.resolution, num_channels=ds.num_channels,
                label_dim=0)
    G_kwargs = resolve_options("tiny-spatial-indoor", info, 1)["G_kwargs"]
    torch.manual_seed(1)
    return _noisy(Generator(**G_kwargs))


def compute_all(detector: str, **kwargs) -> dict[str, dict]:
    """Every metric of METRICS (twice for fid40: the second reads the real-stats cache) and COMOVE.

    `kwargs` go to calc_metric (num_gpus, rank; gather is left to its default)."""
    sources = {name: detector for name in ("inception", "inception_logits", "vgg16")}
    common = dict(device="cpu", progress=False, batch_size=16, seed=3, detector_sources=sources, **kwargs)
    out = {}
    G = tiny_generator()
    for name in METRICS + ["fid40"]:
        key = name if name not in out else name + "_cached"
        out[key] = dict(metric_main.calc_metric(name, G, dict(data=DATA), **common)["results"])
    G = tiny_indoor_generator()
    for name in COMOVE:
        out[name] = dict(metric_main.calc_metric(name, G, dict(data="synthetic:rooms:16"),
                                                 segmenter="synthetic:rooms", **common)["results"])
    return out


# ---------------------------------------------------------------------------------------------------
# Worker side (runs inside every rank).


def _worker(cfg_path: str) -> None:
    from torch_utils import distributed

    torch.set_num_threads(1)
    cfg = json.loads(Path(cfg_path).read_text())
    env = distributed.detect()
    distributed.init(env, torch.device("cpu"), timeout_s=cfg["timeout"])
    results = compute_all(cfg["detector"], num_gpus=env.world_size, rank=env.rank)
    Path(cfg["out"], f"rank{env.rank}.json").write_text(json.dumps(results))
    distributed.exit_after_success()


# ---------------------------------------------------------------------------------------------------
# Test side.


def _assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for metric, values in want.items():
        assert got[metric].keys() == values.keys(), metric
        for key, value in values.items():
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(got[metric][key]), (metric, key)
            else:
                assert got[metric][key] == pytest.approx(value, rel=1e-4, abs=1e-9), (metric, key)


def test_two_ranks_match_one_process(tmp_path, monkeypatch):
    detector = str(save_detector(tmp_path / "tiny_detector.pt"))
    out = tmp_path / "out"
    out.mkdir()
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(dict(detector=detector, out=str(out), timeout=30)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), SPATIALGAN_CACHE=str(tmp_path / "c2"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
           str(cfg)]
    # Start the ranks first, then compute the reference in this process while they run.
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    threads = torch.get_num_threads()
    try:
        monkeypatch.setenv("SPATIALGAN_CACHE", str(tmp_path / "c1"))
        # One thread like the ranks: PPL divides by eps^2 = 1e-8, so the float32 rounding of multi-threaded
        # convolutions would show at the 1e-4 level.
        torch.set_num_threads(1)
        single = compute_all(detector)
        log, _ = proc.communicate(timeout=120)
    finally:
        torch.set_num_threads(threads)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, log[-4000:]
    dual = json.loads((out / "rank0.json").read_text())
    _assert_same(dual, single)
    # The checks are not vacuous: the metrics measured something, and comove used samples.
    assert single["fid40"]["fid40"] > 1e-3 and single["swd16"]["swd16_avg"] > 1e-3
    assert single["comove40"]["comove40_used"] > 0
    assert single["comove40"]["comove40_used"] + single["comove40"]["comove40_skipped"] == 40
    assert single["fid40_cached"] == single["fid40"] and dual["fid40_cached"] == dual["fid40"]
    # Both runs wrote the real-stats cache exactly once per entry (rank 0 only, atomic rename).
    files = sorted(p.name for p in (tmp_path / "c2" / "gan-metrics").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "c1" / "gan-metrics").iterdir()) and files


def test_calc_metric_needs_a_process_group_for_several_ranks():
    with pytest.raises(ValueError, match="process group"):
        metric_main.calc_metric("swd16", None, dict(data=DATA), num_gpus=2, rank=0, progress=False)


if __name__ == "__main__":
    _worker(sys.argv[1])
