"""Test-session settings shared by every test."""

import os

# One intra-op thread per test process: the suite runs tiny tensors in 2 parallel processes
# (pytest-xdist), where extra OpenMP threads only oversubscribe the cores and slow everything down.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
