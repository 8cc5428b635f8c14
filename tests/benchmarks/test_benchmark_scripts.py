"""The benchmark scripts start, and their CPU paths run at tiny size.

They are what a GPU session runs once with a fixed time budget, so a typo must show up here first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import train_speed as ts  # noqa: E402


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("script", ["train_speed.py", "step_profile.py", "gpu_ops_training_check.py",
                                    "metric_speed.py"])
def test_help(script):
    proc = _run(str(BENCH / script), "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--device" in proc.stdout


def test_gpu_check_script_parses():
    proc = subprocess.run(["bash", "-n", str(BENCH / "gpu_check.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_flop_count_includes_every_phase():
    run = ts.build(ts.make_options("tiny", 16, batch=2), torch.device("cpu"))
    per_image = ts.count_flops(run)
    # Dreg (R1 through D) must be counted: removing it from the weights lowers the total.
    weights = dict(ts.PHASE_WEIGHT)
    try:
        ts.PHASE_WEIGHT["Dreg"] = 0.0
        without_dreg = ts.count_flops(run)
    finally:
        ts.PHASE_WEIGHT.update(weights)
    assert per_image > without_dreg > 0


@pytest.mark.slow
def test_step_profile_on_cpu(tmp_path):
    out = tmp_path / "profile.md"
    proc = _run(str(BENCH / "step_profile.py"), "--device=cpu", "--cfg=tiny", "--res=16", "--batch=2", "--top=5",
                f"--out={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    assert "## Step profile: tiny @16²" in text
    assert text.count("| op / kernel |") == 1 and "| convolutions |" in text
