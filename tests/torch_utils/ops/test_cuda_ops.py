"""CUDA kernels of bias_act and upfirdn2d against the reference implementations (needs a GPU).

Values and gradients (first and second order) for random shapes, fp32/fp16, resampling factors,
paddings, activations and clamping. Skipped without CUDA.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from torch_utils.ops import _cuda
from torch_utils.ops import bias_act as bias_act_mod
from torch_utils.ops import upfirdn2d as upfirdn2d_mod

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.float64: 1e-9}


def _bias_act_ref(x, b, dim, act, alpha, gain, clamp):
    return bias_act_mod.bias_act(x, b, dim, act, alpha, gain, clamp, impl="ref")


def _upfirdn2d_ref(x, f, up, down, padding, flip_filter, gain):
    return upfirdn2d_mod.upfirdn2d(x, f, list(up), list(down), list(padding), flip_filter, gain, impl="ref")


@pytest.fixture(autouse=True)
def _exact_fp32():
    """The reference's convs must not use TF32, or fp32 comparisons measure TF32 rounding."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _assert_close(a, b, dtype, what):
    scale = max(1.0, b.detach().abs().max().item())
    err = (a.detach().double() - b.detach().double()).abs().max().item() / scale
    assert err <= TOL[dtype], f"{what}: relative max error {err:.3g} > {TOL[dtype]}"


def _compare(fn, ref, inputs, dtype, second_order):
    """Values, first-order grads and (optionally) grads of a gradient penalty, kernel vs reference."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    results = []
    for func in (fn, ref):
        ins = [t.detach().clone().requires_grad_() for t in inputs]
        y = func(*ins)
        dy = torch.randn(y.shape, generator=gen, device="cuda").to(dtype)
        gen.manual_seed(0)
        grads = torch.autograd.grad(y, ins, dy, create_graph=second_order)
        out = [y, *grads]
        if second_order:
            penalty = sum((g.double() ** 2).sum() for g in grads)
            out += list(torch.autograd.grad(penalty, ins))
        results.append(out)
    for i, (a, b) in enumerate(zip(*results)):
        _assert_close(a, b, dtype, f"output {i}")


def test_use_cuda_selects_the_built_kernel():
    x = torch.randn(2, 3, 4, 4, device="cuda")
    assert _cuda.use_cuda("bias_act", x, "cuda", reference=_bias_act_ref)
    assert _cuda.use_cuda("upfirdn2d", x, "cuda", reference=_upfirdn2d_ref)
    assert not _cuda.use_cuda("upfirdn2d", x, "ref", reference=_upfirdn2d_ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("act", list(bias_act_mod.activation_funcs))
@pytest.mark.parametrize("clamp", [None, 0.5])
def test_bias_act_matches_reference(dtype, act, clamp):
    gen = torch.Generator(device="cuda").manual_seed(1)
    spec = bias_act_mod.activation_funcs[act]
    for shape, dim in (([3, 17, 9, 5], 1), ([4, 33], 1), ([2, 6, 7], 2)):
        x = (torch.randn(shape, generator=gen, device="cuda") * 2).to(dtype)
        b = torch.randn([shape[dim]], generator=gen, device="cuda").to(dtype)

        def fn(x, b):
            return _cuda.bias_act_cuda(x, b, dim, act, spec.def_alpha, spec.def_gain, clamp)

        def ref(x, b):
            return _bias_act_ref(x, b, dim, act, spec.def_alpha, spec.def_gain, clamp)

        _compare(fn, ref, [x, b], dtype, second_order=dtype == torch.float32)


def test_bias_act_channels_last_and_no_bias():
    x = torch.randn(2, 8, 5, 5, device="cuda").to(memory_format=torch.channels_last)
    y = _cuda.bias_act_cuda(x, None, 1, "lrelu", 0.2, 2 ** 0.5, 1.0)
    _assert_close(y, _bias_act_ref(x, None, 1, "lrelu", 0.2, 2 ** 0.5, 1.0), torch.float32, "channels_last")


UPFIRDN_CASES = [
    # (filter shape, up, down, padding, flip_filter)
    ([4, 4], (2, 2), (1, 1), (2, 1, 2, 1), False),
    ([4, 4], (1, 1), (2, 2), (1, 1, 1, 1), False),
    ([3, 5], (1, 1), (1, 1), (1, 3, 2, 0), True),
    ([12], (2, 2), (1, 1), (6, 5, 6, 5), False),
    ([12], (1, 1), (2, 2), (5, 5, 5, 5), True),
    ([6], (2, 1), (1, 2), (3, 2, 2, 3), False),
    ([7, 5], (3, 2), (2, 3), (-1, 4, 2, -2), False),
    ([24, 24], (1, 1), (1, 1), (11, 12, 12, 11), False),
    ([1, 1], (4, 4), (1, 1), (0, 0, 0, 0), False),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", UPFIRDN_CASES)
def test_upfirdn2d_matches_reference(dtype, case):
    fshape, up, down, padding, flip = case
    gen = torch.Generator(device="cuda").manual_seed(2)
    for shape in ([2, 3, 16, 16], [1, 5, 37, 23]):
        x = torch.randn(shape, generator=gen, device="cuda").to(dtype)
        f = torch.rand(fshape, generator=gen, device="cuda") + 0.1
        f = f / f.sum()

        def fn(x):
            return _cuda.upfirdn2d_cuda(x, f, up, down, padding, flip, 2.0)

        def ref(x):
            return _upfirdn2d_ref(x, f, up, down, padding, flip, 2.0)

        _compare(fn, ref, [x], dtype, second_order=dtype == torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_upfirdn2d_paths_agree(dtype):
    gen = torch.Generator(device="cuda").manual_seed(3)
    x = torch.randn([2, 70, 45, 67], generator=gen, device="cuda").to(dtype)
    x_strided = x.to(memory_format=torch.channels_last)
    for (fh, fw), up, down in itertools.product([(4, 4), (1, 12), (5, 3)], [(1, 1), (2, 2), (2, 1)],
                                                [(1, 1), (2, 2)]):
        f = torch.rand([fh, fw], generator=gen, device="cuda")
        args = (f, up, down, (2, 1, 1, 2), False, 1.0)
        general = _cuda.upfirdn2d_cuda(x, *args, path=1)
        tiled = _cuda.upfirdn2d_cuda(x_strided, *args, path=2)
        _assert_close(tiled, general, dtype, f"f={fh}x{fw} up={up} down={down}")
