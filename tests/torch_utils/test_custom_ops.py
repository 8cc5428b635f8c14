"""custom_ops (build cache, locking, CLI) and the kernel selection logic of torch_utils/ops/_cuda.py.

Everything here runs on CPU. The kernels themselves are compiled (not run) by the slow tests; the
selection logic is exercised with stub plugins that implement the bindings' contract in PyTorch and
with `_cuda._is_cuda_tensor` patched so that CPU tensors pass for CUDA tensors.
"""

from __future__ import annotations

import os
import re
import shutil
import types
import warnings

import pytest
import torch
import torch.nn.functional as F

from torch_utils import custom_ops
from torch_utils.ops import _cuda
from torch_utils.ops import bias_act as bias_act_mod
from torch_utils.ops import upfirdn2d as upfirdn2d_mod

OPS = ("bias_act", "upfirdn2d")


def _has_nvcc() -> bool:
    return bool(shutil.which("nvcc") or os.path.isfile("/usr/local/cuda/bin/nvcc"))


@pytest.fixture(scope="session")
def built_ops():
    """Compile each op once per test session: op -> module or the BuildError it raised."""
    if not _has_nvcc():
        pytest.skip("nvcc not found: cannot compile the CUDA kernels")
    if torch.version.cuda is None:
        pytest.skip("this torch build has no CUDA support, so cpp_extension cannot build CUDA code")
    results = {}
    for op in OPS:
        try:
            results[op] = custom_ops.load_op(op)
        except custom_ops.BuildError as err:
            results[op] = err
    return results


@pytest.mark.slow
@pytest.mark.parametrize("op", OPS)
def test_kernel_compiles(built_ops, op):
    module = built_ops[op]
    assert not isinstance(module, Exception), f"{op} failed to build: {module}"
    assert callable(getattr(module, op))


# ---------------------------------------------------------------------------------------------------
# custom_ops without a compiler


@pytest.mark.parametrize("op", OPS)
def test_load_op_hashes_the_kernel_header(monkeypatch, op):
    """The .cuh files hold the kernels: editing any header the build includes must change the build
    directory (i.e. rebuild), so every project header reachable by `#include "..."` is hashed."""
    seen = {}
    monkeypatch.setattr(custom_ops, "get_plugin",
                        lambda name, sources, headers=(), **kw: seen.update(sources=sources, headers=headers))
    custom_ops.load_op(op)
    files = [*seen["sources"], *seen["headers"]]
    assert {p.name for p in seen["sources"]} == {f"{op}_kernel.cpp", f"{op}_kernel.cu"}
    assert all(p.is_file() for p in files)
    included, todo = set(), list(seen["sources"])
    while todo:
        for name in re.findall(r'^#include "([^"]+)"', todo.pop().read_text(), flags=re.M):
            if name not in included:
                included.add(name)
                todo.append(custom_ops.OPS_DIR / name)
    assert f"{op}_kernel.cuh" in included
    assert included <= {p.name for p in seen["headers"]}


def test_digest_changes_only_with_content(tmp_path):
    src = tmp_path / "k.cu"
    src.write_text("int a;")
    first = custom_ops._digest([src], ["--use_fast_math"])
    assert custom_ops._digest([src], ["--use_fast_math"]) == first
    assert custom_ops._digest([src], []) != first
    src.write_text("int b;")
    assert custom_ops._digest([src], ["--use_fast_math"]) != first


def test_digest_differs_between_python_environments(tmp_path, monkeypatch):
    """Two virtualenvs sharing the cache build with different include paths: separate build directories,
    or each would rebuild over the other's objects."""
    src = tmp_path / "k.cu"
    src.write_text("int a;")
    first = custom_ops._digest([src], [])
    monkeypatch.setattr(custom_ops.sys, "prefix", str(tmp_path / "other-venv"))
    assert custom_ops._digest([src], []) != first


def test_failed_build_is_remembered_and_not_retried(monkeypatch, tmp_path):
    calls = []

    def failing_build(*args):
        calls.append(args)
        raise RuntimeError("Error building extension: k.cu(3): error: identifier 'x' is undefined\nmore")

    monkeypatch.setattr(custom_ops, "_build", failing_build)
    monkeypatch.setattr(custom_ops, "_failures", {})
    for _ in range(2):
        with pytest.raises(custom_ops.BuildError, match="identifier 'x' is undefined"):
            custom_ops.get_plugin("stub_plugin", [tmp_path / "k.cu"])
    assert len(calls) == 1


def test_successful_build_is_cached(monkeypatch, tmp_path):
    calls = []
    module = types.ModuleType("stub")
    monkeypatch.setattr(custom_ops, "_build", lambda *args: calls.append(args) or module)
    monkeypatch.setattr(custom_ops, "_plugins", {})
    assert custom_ops.get_plugin("stub_ok", [tmp_path / "k.cu"]) is module
    assert custom_ops.get_plugin("stub_ok", [tmp_path / "k.cu"]) is module
    assert len(calls) == 1
    with pytest.raises(ValueError, match="name"):
        custom_ops.get_plugin("not-an-identifier", [])


def test_setup_cuda_env(monkeypatch):
    import torch.utils.cpp_extension as cpp_ext

    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setattr(cpp_ext, "CUDA_HOME", "/usr/local")
    monkeypatch.setattr(os.path, "isdir", lambda p: p == "/usr/local/cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    custom_ops._setup_cuda_env()
    assert os.environ["CUDA_HOME"] == "/usr/local/cuda" and cpp_ext.CUDA_HOME == "/usr/local/cuda"
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == custom_ops.DEFAULT_ARCH_LIST
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    custom_ops._setup_cuda_env()
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == "9.0"


def test_file_lock_excludes_a_second_holder(tmp_path):
    """While one holder has the lock, another open file of the same path cannot take it (a non-blocking
    attempt fails at once: no timing involved); after release it can."""
    fcntl = pytest.importorskip("fcntl")
    lock = tmp_path / "x.lock"

    def try_lock() -> bool:
        with open(lock, "a+") as other:
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(other, fcntl.LOCK_UN)
            return True

    with custom_ops._file_lock(lock) as held:
        assert held is True
        assert not try_lock()
    assert try_lock()


def test_cli_reports_each_op_and_exit_code(monkeypatch, capsys):
    monkeypatch.setattr(custom_ops, "build_all", lambda verbose=False: {"bias_act": None, "upfirdn2d": "boom"})
    assert custom_ops.main(["--build"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == ["bias_act: ok", "upfirdn2d: failed (boom)"]
    monkeypatch.setattr(custom_ops, "build_all", lambda verbose=False: {"bias_act": None})
    assert custom_ops.main(["--build"]) == 0


def test_summarize_error_keeps_error_lines():
    err = RuntimeError("ninja stuff\n/x/k.cu(10): error: expected a ';'\nwarning: w\nfatal error: no.h")
    summary = custom_ops.summarize_error(err)
    assert "expected a ';'" in summary and "no.h" in summary and "warning" not in summary


# ---------------------------------------------------------------------------------------------------
# Stub plugins: the bindings' contract implemented in PyTorch (what the kernels must compute).


class StubBiasAct:
    """mode 0: clamp(act(x+b)*gain); 1: g1*gain*act'*mask; 2: g1*g2*gain*act''*mask; 3: x holds the
    output y of linear/relu/lrelu: g1*gain*slope(sign y)*[|y| < clamp in y's dtype]."""

    def __init__(self, scale_output: float = 1.0):
        self.calls = 0
        self.scale_output = scale_output

    def bias_act(self, x, b, g1, g2, dim, act_id, mode, alpha, gain, clamp):
        self.calls += 1
        if mode == 3:
            y = x.double()
            slope = torch.where(y > 0, 1.0, 1.0 if act_id == 0 else alpha if act_id == 2 else 0.0)
            c = float(torch.tensor(clamp, dtype=x.dtype))
            mask = y.abs() < c if clamp >= 0 else torch.ones_like(y, dtype=torch.bool)
            return torch.empty_like(x).copy_(g1.double() * gain * slope * mask)
        spec = bias_act_mod.activation_funcs[list(_cuda._ACT_IDS)[act_id]]
        z = x.double()
        if b.numel():
            z = z + b.double().reshape([-1 if i == dim else 1 for i in range(x.ndim)])
        with torch.enable_grad():
            z = z.detach().requires_grad_()
            f = spec.func(z, alpha)
            (d1,) = torch.autograd.grad(f.sum(), z, create_graph=True)
            d2 = torch.autograd.grad(d1.sum(), z, allow_unused=True)[0] if d1.requires_grad else None
        f, d1 = f.detach(), d1.detach()
        d2 = torch.zeros_like(z) if d2 is None else d2
        y = f * gain
        mask = (y.abs() <= clamp) if clamp >= 0 else torch.ones_like(y, dtype=torch.bool)
        if mode == 0:
            out = (y.clamp(-clamp, clamp) if clamp >= 0 else y) * self.scale_output
        else:
            g = g1.double() * (g2.double() if g2.numel() else 1)
            out = g * gain * (d1 if mode == 1 else d2) * mask
        return torch.empty_like(x).copy_(out)


class StubUpFirDn2d:
    """Correlation with the given filter after zero-insertion and padding, then decimation."""

    def __init__(self, mirror: bool = False):
        self.calls = 0
        self.mirror = mirror  # a deliberately wrong kernel: uses the filter the wrong way round

    def upfirdn2d(self, x, g, ux, uy, dx, dy, px0, px1, py0, py1, path):
        self.calls += 1
        n, c, h, w = x.shape
        z = x.new_zeros([n, c, h * uy, w * ux])
        z[:, :, ::uy, ::ux] = x
        z = F.pad(z, [px0, px1, py0, py1])
        g = g.flip([0, 1]) if self.mirror else g
        weight = g.to(x.dtype)[None, None].repeat(c, 1, 1, 1)
        return F.conv2d(z, weight, stride=(dy, dx), groups=c)


def _bias_act_ref(x, b, dim, act, alpha, gain, clamp):
    return bias_act_mod.bias_act(x, b, dim, act, alpha, gain, clamp, impl="ref")


def _upfirdn2d_ref(x, f, up, down, padding, flip_filter, gain):
    return upfirdn2d_mod.upfirdn2d(x, f, list(up), list(down), list(padding), flip_filter, gain, impl="ref")


@pytest.fixture
def stub_env(monkeypatch):
    """Pretend CPU tensors are CUDA tensors; plugins come from `stubs` (op -> object or exception)."""
    stubs: dict[str, object] = {}
    loads: list[str] = []

    def load(op):
        loads.append(op)
        if isinstance(stubs[op], Exception):
            raise stubs[op]
        return stubs[op]

    monkeypatch.delenv("SPATIALGAN_OPS", raising=False)
    monkeypatch.setattr(_cuda, "_is_cuda_tensor", lambda x: True)
    monkeypatch.setattr(_cuda, "_load_plugin", load)
    _cuda._reset()
    yield types.SimpleNamespace(stubs=stubs, loads=loads)
    _cuda._reset()


def test_forced_ref_never_uses_cuda(stub_env, monkeypatch):
    stub_env.stubs["bias_act"] = StubBiasAct()
    x = torch.randn(2, 3)
    monkeypatch.setenv("SPATIALGAN_OPS", "ref")
    assert not _cuda.use_cuda("bias_act", x, None, reference=_bias_act_ref)
    monkeypatch.setenv("SPATIALGAN_OPS", "auto")
    assert not _cuda.use_cuda("bias_act", x, "ref", reference=_bias_act_ref)
    assert stub_env.loads == []


def test_cpu_tensor_never_uses_cuda(monkeypatch):
    monkeypatch.setattr(_cuda, "_load_plugin", lambda op: pytest.fail("must not build for CPU tensors"))
    assert not _cuda.use_cuda("upfirdn2d", torch.zeros(1, 1, 2, 2), "cuda", reference=_upfirdn2d_ref)


def test_bad_arguments_raise(stub_env, monkeypatch):
    with pytest.raises(ValueError, match="impl='gpu'"):
        _cuda.use_cuda("bias_act", torch.zeros(1), "gpu", reference=_bias_act_ref)
    monkeypatch.setenv("SPATIALGAN_OPS", "fast")
    with pytest.raises(ValueError, match="'fast'"):
        _cuda.use_cuda("bias_act", torch.zeros(1), None, reference=_bias_act_ref)
    with pytest.raises(ValueError, match="op='conv'"):
        _cuda.use_cuda("conv", torch.zeros(1), "auto")


def test_failed_build_warns_once_and_falls_back(stub_env):
    stub_env.stubs["bias_act"] = custom_ops.BuildError("spatialgan_bias_act: k.cu(3): error: boom")
    x = torch.randn(2, 3)
    with pytest.warns(RuntimeWarning, match=r"bias_act.*build failed.*boom"):
        assert not _cuda.use_cuda("bias_act", x, None, reference=_bias_act_ref)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not _cuda.use_cuda("bias_act", x, None, reference=_bias_act_ref)
    with pytest.raises(RuntimeError, match="boom"):
        _cuda.use_cuda("bias_act", x, "cuda", reference=_bias_act_ref)
    assert stub_env.loads == ["bias_act"]


@pytest.mark.parametrize("op", OPS)
def test_wrong_kernel_fails_self_check_once(stub_env, op):
    stub = StubBiasAct(scale_output=1.1) if op == "bias_act" else StubUpFirDn2d(mirror=True)
    stub_env.stubs[op] = stub
    reference = _bias_act_ref if op == "bias_act" else _upfirdn2d_ref
    x = torch.randn(1, 2, 4, 4)
    with pytest.warns(RuntimeWarning, match=rf"{op}.*self-check failed.*max abs error"):
        assert not _cuda.use_cuda(op, x, None, reference=reference)
    calls = stub.calls
    assert calls > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not _cuda.use_cuda(op, x, "auto", reference=reference)
    assert stub.calls == calls and stub_env.loads == [op]


@pytest.mark.parametrize("op", OPS)
def test_correct_kernel_passes_self_check(stub_env, op):
    stub_env.stubs[op] = StubBiasAct() if op == "bias_act" else StubUpFirDn2d()
    reference = _bias_act_ref if op == "bias_act" else _upfirdn2d_ref
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _cuda.use_cuda(op, torch.randn(1, 2, 4, 4), None, reference=reference)
        assert not _cuda.use_cuda(op, torch.randn(1, 2, 4, 4).bfloat16(), None, reference=reference)
        with pytest.raises(RuntimeError, match="bfloat16"):
            _cuda.use_cuda(op, torch.randn(1, 2, 4, 4).bfloat16(), "cuda", reference=reference)


# ---------------------------------------------------------------------------------------------------
# The autograd Functions around the kernels, checked with the stubs in float64.


@pytest.mark.parametrize("act,clamp", [("lrelu", None), ("lrelu", 0.7), ("tanh", None), ("swish", 0.9),
                                       ("softplus", None), ("elu", None)])
def test_bias_act_function_gradients(stub_env, act, clamp):
    stub_env.stubs["bias_act"] = StubBiasAct()
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn([2, 3, 4, 2], generator=gen, dtype=torch.float64) * 2).requires_grad_()
    b = torch.randn([4], generator=gen, dtype=torch.float64).requires_grad_()
    alpha = {"lrelu": 0.2, "elu": 1.0}.get(act, 0.0)

    def fn(x, b):
        return _cuda.bias_act_cuda(x, b, 2, act, alpha, 1.3, clamp)

    assert torch.allclose(fn(x, b), _bias_act_ref(x, b, 2, act, alpha, 1.3, clamp))
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


def test_bias_act_function_channels_last(stub_env):
    stub_env.stubs["bias_act"] = StubBiasAct()
    x = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    b = torch.randn(3)
    y = _cuda.bias_act_cuda(x, b, 1, "relu", 0.0, 2.0, None)
    assert torch.allclose(y, _bias_act_ref(x, b, 1, "relu", 0.0, 2.0, None))


@pytest.mark.parametrize("fshape,up,down,padding,flip", [
    ([4, 4], (2, 2), (1, 1), (2, 1, 2, 1), False),
    ([3, 5], (1, 1), (2, 2), (1, 2, 2, 1), True),
    ([10], (2, 1), (1, 2), (5, 4, 3, 4), False),
    ([3], (1, 3), (3, 1), (-1, 2, 0, 1), True),
])
def test_upfirdn2d_function_matches_reference_and_gradients(stub_env, fshape, up, down, padding, flip):
    stub_env.stubs["upfirdn2d"] = StubUpFirDn2d()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn([1, 2, 5, 4], generator=gen, dtype=torch.float64).requires_grad_()
    f = torch.rand(fshape, generator=gen) + 0.1

    def fn(x):
        return _cuda.upfirdn2d_cuda(x, f, up, down, padding, flip, 1.5)

    ref = _upfirdn2d_ref(x, f, up, down, padding, flip, 1.5)
    assert fn(x).shape == ref.shape and torch.allclose(fn(x), ref, atol=1e-6)  # float32 filter taps
    assert torch.autograd.gradcheck(fn, (x,))
    # Second order: the backward is linear in dy with adjoint `fn` itself, d<J^T dy, w>/d(dy) = J w.
    dy = torch.randn(ref.shape, generator=gen, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(fn(x), x, dy, create_graph=True)
    w = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    (h,) = torch.autograd.grad(g, dy, w)
    assert torch.allclose(h, fn(w), atol=1e-6)
