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


# The files that run for minutes go first, longest first (their share of a 2-core `make test`, in
# seconds: 290, 200, 190, 180, 160, 140, 85), so that the two workers finish together instead of one
# running the last long file alone. `make test` hands whole files to its workers in collection order
# (`--no-loadscope-reorder`; xdist would otherwise order the files by their number of tests).
SLOW_FILES_FIRST = (
    "tests/training/test_phase_graphs.py",
    "tests/torch_utils/test_custom_ops.py",  # compiles both kernels with nvcc
    "tests/cli/test_train.py",
    "tests/training/test_multi_process_training.py",
    "tests/benchmarks/test_benchmark_scripts.py",
    "tests/metrics/test_fid_end_to_end.py",
    "tests/torch_utils/ops/test_cuda_ops.py",
)


def _slow_rank(item) -> int:
    path = str(item.path)
    return next((i for i, name in enumerate(SLOW_FILES_FIRST) if path.endswith(name)), len(SLOW_FILES_FIRST))


def pytest_collection_modifyitems(config, items):
    items.sort(key=_slow_rank)  # stable: the rest keep their order
