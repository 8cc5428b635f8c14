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
    assert res.output.strip() == f"Error: network file not found: {tmp_path / 'missing.pt'}"


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
                  "--quiet")
    assert res.exit_code == 0, res.output
    line = json.loads(res.output.strip().splitlines()[-1])  # printed: no training_options.json there
    assert line["metric"] == "fid24" and line["results"]["fid24"] > 0
    (tmp_path / "training_options.json").write_text("{}")
    res = _invoke("--network", str(snap), "--metrics", "fid24", "--device", "cpu", "--detector", str(det),
                  "--quiet")
    assert res.exit_code == 0, res.output
    rows = (tmp_path / "metric-fid24.jsonl").read_text().splitlines()
    assert len(rows) == 1 and json.loads(rows[0])["snapshot"] == snap.name
