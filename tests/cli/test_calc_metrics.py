"""calc_metrics.py: argument errors are one line without a traceback; a run writes/prints JSON lines."""

import json

import pytest
import torch
from click.testing import CliRunner

import calc_metrics
from metrics import detectors


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPATIALGAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(detectors, "_cache", {})


def _invoke(*args):
    return CliRunner().invoke(calc_metrics.main, list(args))


def test_unknown_metric_lists_valid_ones(tmp_path):
    res = _invoke("--network", str(tmp_path / "x.pt"), "--metrics", "fid50k_full,bogus")
    assert res.exit_code != 0
    assert "Error: unknown metric bogus" in res.output and "fid50k_full" in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1


def test_missing_network_is_one_line_error(tmp_path):
    res = _invoke("--network", str(tmp_path / "missing.pt"), "--device", "cpu")
    assert res.exit_code != 0
    assert res.output.strip() == f"Error: --network: Snapshot not found: {tmp_path / 'missing.pt'}"


def test_corrupt_snapshot_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a snapshot")
    res = _invoke("--network", str(bad), "--device", "cpu")
    assert res.exit_code != 0 and res.output.startswith("Error: ")
    assert len(res.output.strip().splitlines()) == 1


def test_detector_option_parsing():
    assert calc_metrics.parse_detector_option("a.pt") == {"inception": "a.pt", "inception_logits": "a.pt"}
    parsed = calc_metrics.parse_detector_option("vgg16=v.pt,inception=i.pt")
    assert parsed == {"vgg16": "v.pt", "inception": "i.pt"}
    assert calc_metrics.parse_detector_option("file:///x=y.pt")["inception"] == "file:///x=y.pt"


def _tiny_snapshot(path, dataset_kwargs):
    from training import checkpoint, networks

    G = networks.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
                           mapping_kwargs=dict(num_layers=2),
                           synthesis_kwargs=dict(channel_base=256, channel_max=32, num_fp16_res=0,
                                                 conv_clamp=None))
    packed = checkpoint.pack_module(G)
    checkpoint.save_snapshot(path, dict(networks=dict(G=packed, G_ema=packed),
                                        training_options=dict(dataset_kwargs=dataset_kwargs)))


class ToyDetector(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


def test_run_writes_jsonl_next_to_training_options(tmp_path):
    det = tmp_path / "toy.pt"
    torch.jit.save(torch.jit.script(ToyDetector()), str(det))
    snap = tmp_path / "network-snapshot-000000.pt"
    _tiny_snapshot(snap, dict(data="synthetic:shapes:16", max_size=24))
    res = _invoke("--network", str(snap), "--metrics", "fid24", "--device", "cpu", "--detector", str(det),
                  "--verbose=false")
    assert res.exit_code == 0, res.output
    line = json.loads(res.output.strip().splitlines()[-1])  # printed: no training_options.json there
    assert line["metric"] == "fid24" and line["results"]["fid24"] > 0
    (tmp_path / "training_options.json").write_text("{}")
    res = _invoke("--network", str(snap), "--metrics", "fid24", "--device", "cpu", "--detector", str(det),
                  "--verbose=false")
    assert res.exit_code == 0, res.output
    rows = (tmp_path / "metric-fid24.jsonl").read_text().splitlines()
    assert len(rows) == 1 and json.loads(rows[0])["snapshot_pkl"] == snap.name
    assert json.loads(rows[0])["data"] == "synthetic:shapes:16"  # what the number compares against


@pytest.mark.parametrize("option", ["--data=synthetic:rooms:16", "--segmenter=synthetic:rooms"])
def test_another_synthetic_kind_than_the_training_set_is_refused(tmp_path, option):
    snap = tmp_path / "network-snapshot-000000.pt"
    _tiny_snapshot(snap, dict(data="synthetic:shapes:16", max_size=24))
    res = _invoke("--network", str(snap), "--metrics", "swd16", "--device", "cpu", option)
    assert res.exit_code != 0 and len(res.output.strip().splitlines()) == 1, res.output
    assert option in res.output and "trained on synthetic:shapes:16" in res.output


def test_network_as_run_dir_url_and_pickle(tmp_path):
    det = tmp_path / "toy.pt"
    torch.jit.save(torch.jit.script(ToyDetector()), str(det))
    run = tmp_path / "run"
    run.mkdir()
    _tiny_snapshot(run / "network-snapshot-000000.pt", dict(data="synthetic:shapes:16", max_size=16))
    (run / "training_options.json").write_text("{}")
    res = _invoke("--network", str(run), "--metrics", "fid16", "--device", "cpu", "--detector", str(det),
                  "--verbose=false")
    assert res.exit_code == 0, res.output
    (row,) = (run / "metric-fid16.jsonl").read_text().splitlines()
    assert json.loads(row)["snapshot_pkl"] == "network-snapshot-000000.pt"
    url = (run / "network-snapshot-000000.pt").as_uri()  # file:// URL: printed (no run directory for URLs)
    res = _invoke("--network", url, "--metrics", "fid16", "--device", "cpu", "--detector", str(det),
                  "--verbose=false")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["snapshot_pkl"] == url
    empty = tmp_path / "empty"
    empty.mkdir()
    res = _invoke("--network", str(empty), "--device", "cpu")
    assert res.exit_code != 0 and "holds no network-snapshot" in res.output
    pkl = tmp_path / "network-snapshot-000000.pkl"  # what StyleGAN2-ADA writes: a bare pickle
    import pickle

    pkl.write_bytes(pickle.dumps({"G_ema": [1, 2, 3]}, protocol=4))
    res = _invoke("--network", str(pkl), "--device", "cpu")
    assert res.exit_code != 0 and "Python pickle" in res.output and "StyleGAN2-ADA" in res.output
    assert len(res.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_gpus_splits_the_work_over_processes_with_the_same_result(tmp_path):
    """--gpus=2 on the CPU (gloo through torchrun) gives the one-process value (up to summation order)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(calc_metrics.__file__).resolve().parent
    snap = tmp_path / "network-snapshot-000000.pt"
    _tiny_snapshot(snap, dict(data="synthetic:shapes:16", max_size=32))
    values = []
    for gpus in (1, 2):
        proc = subprocess.run([sys.executable, str(repo / "calc_metrics.py"), f"--network={snap}",
                               "--metrics=swd32", "--device=cpu", f"--gpus={gpus}", "--verbose=false"],
                              cwd=repo, capture_output=True, text=True, timeout=300,
                              env=dict(__import__("os").environ, OMP_NUM_THREADS="1",
                                       SPATIALGAN_CACHE=str(tmp_path / f"cache{gpus}")))
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        assert len(rows) == 1, proc.stdout  # only rank 0 reports
        assert rows[0]["num_gpus"] == gpus
        values.append(rows[0]["results"])
    for key in values[0]:
        assert values[1][key] == pytest.approx(values[0][key], rel=1e-4, abs=1e-6), key
