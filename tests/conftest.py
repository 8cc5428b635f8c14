"""Test-session settings shared by every test, and the fixtures that run the CUDA kernels: on the real GPU,
or emulated on the CPU (kernel tests, and the op benchmark's smoke test)."""

import os

# One intra-op thread per test process: the suite runs tiny tensors in 2 parallel processes
# (pytest-xdist), where extra OpenMP threads only oversubscribe the cores and slow everything down.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from torch_utils import custom_ops, ops  # noqa: E402
from torch_utils.ops import _cuda  # noqa: E402

torch.set_num_threads(1)

EMULATION_DIR = Path(__file__).resolve().parent / "torch_utils" / "ops" / "cuda_emulation"


def emulated_plugin():
    """The kernels' .cuh code compiled for the CPU (cuda_emulation/); get_plugin builds it once per
    process and caches it on disk."""
    if not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("no C++ compiler: cannot build the CPU emulation of the CUDA kernels")
    headers = [EMULATION_DIR / "cuda_shim.h", *custom_ops.ops_headers("bias_act"), *custom_ops.ops_headers("upfirdn2d")]
    return custom_ops.get_plugin("spatialgan_cuda_emulation", [EMULATION_DIR / "emulated_ops.cpp"], headers)


@pytest.fixture
def emulated_ops():
    """The emulated extension module itself (kernels run on CPU tensors, plus test helpers)."""
    return emulated_plugin()


@pytest.fixture(params=[pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
                            not torch.cuda.is_available(), reason="needs a CUDA device")]),
                        pytest.param("emulated", marks=pytest.mark.slow)])
def kernel_device(request, monkeypatch) -> str:
    """Where the `_cuda` kernels run: 'cuda' (a real GPU) or 'cpu' (the emulator standing in for it).

    With the emulator, CPU tensors are offered to the kernels (`KERNEL_DEVICE_TYPES`) and both
    plugins are the emulated module, so everything above the launch (op selection, self-check,
    autograd Functions, the networks' calls) runs exactly as on a GPU.
    """
    if request.param == "cuda":
        return "cuda"
    module = emulated_plugin()
    monkeypatch.delenv("SPATIALGAN_OPS", raising=False)
    monkeypatch.setattr(ops, "KERNEL_DEVICE_TYPES", ("cuda", "cpu"))
    monkeypatch.setattr(_cuda, "_load_plugin", lambda op: module)
    _cuda._reset()
    request.addfinalizer(_cuda._reset)
    return "cpu"


# Files that run for minutes go first: `make test` hands whole files to its two workers in collection
# order, and the real-Inception FID file collected last ran alone for its last minutes of the suite.
SLOW_FILES_FIRST = ("tests/metrics/test_fid_end_to_end.py",)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: not str(item.path).endswith(SLOW_FILES_FIRST))  # stable: the rest keep order
