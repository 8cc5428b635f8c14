"""What the CLI tests share: the repository root, tiny training arguments, a train.py runner, PNG loading."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image

from training.checkpoint import list_snapshots

REPO = Path(__file__).resolve().parents[2]
TINY = ["--kimg=0.008", "--tick=0.004", "--snap=1", "--workers=0", "--metrics=none", "--batch=4"]
RES = 16  # the resolution of the shared snapshots (tests/cli/conftest.py)


def env() -> dict[str, str]:
    """The environment for a CLI subprocess: one torch thread, one-line errors (no SPATIALGAN_DEBUG)."""
    e = dict(os.environ, OMP_NUM_THREADS="1")
    e.pop("SPATIALGAN_DEBUG", None)
    return e


def train(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "train.py"), *map(str, args)], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=timeout)


def train_snapshot(outdir: Path, cfg: str, data: str) -> Path:
    """Train a tiny run (two ticks of one minibatch) with train.py; returns its final snapshot."""
    proc = train(f"--outdir={outdir}", f"--cfg={cfg}", f"--data={data}", *TINY)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (run_dir,) = [p for p in outdir.iterdir() if p.is_dir()]
    return list_snapshots(run_dir)[-1]


def load_rgb(path: Path) -> np.ndarray:
    """A PNG as uint8 [H, W, 3]."""
    with PIL.Image.open(path) as img:
        return np.asarray(img.convert("RGB"))
