"""fma: value, gradients and double backward, with broadcasting."""

import pytest
import torch

from torch_utils.ops.fma import fma

SHAPES = [
    ((3, 4), (3, 4), (3, 4)),
    ((2, 3, 4, 4), (2, 3, 1, 1), (1, 1, 4, 4)),     # demodulation / noise pattern
    ((4,), (3, 1), (2, 1, 1)),                      # result has more dims than any input
    ((1, 5), (5, 1), ()),
]


@pytest.mark.parametrize("sa,sb,sc", SHAPES)
def test_value_and_gradients(sa, sb, sc):
    torch.manual_seed(0)
    a, b, c = (torch.randn(s, dtype=torch.float64, requires_grad=True) for s in (sa, sb, sc))
    torch.testing.assert_close(fma(a, b, c), a * b + c)
    assert torch.autograd.gradcheck(fma, (a, b, c))
    assert torch.autograd.gradgradcheck(fma, (a, b, c))
    # Gradients equal autograd's for the plain expression.
    g = torch.randn(torch.broadcast_shapes(sa, sb, sc), dtype=torch.float64)
    ours = torch.autograd.grad(fma(a, b, c), (a, b, c), g)
    ref = torch.autograd.grad(a * b + c, (a, b, c), g)
    for o, r in zip(ours, ref):
        assert o.shape == r.shape
        torch.testing.assert_close(o, r)


def test_partial_requires_grad():
    a = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 1, dtype=torch.float64)
    c = torch.randn(3, dtype=torch.float64)
    (ga,) = torch.autograd.grad(fma(a, b, c).sum(), a)
    torch.testing.assert_close(ga, b.expand(2, 3))


def test_path_length_style_double_backward():
    """grad of |d(out)/d(a)|^2 w.r.t. b, as path-length regularisation takes it."""
    a = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 3, 1, dtype=torch.float64, requires_grad=True)
    c = torch.randn(1, 1, 4, dtype=torch.float64)

    def pl_grad(f):
        (ga,) = torch.autograd.grad((f(a, b, c) ** 2).sum(), a, create_graph=True)
        (gb,) = torch.autograd.grad(ga.square().sum(), b)
        return gb

    torch.testing.assert_close(pl_grad(fma), pl_grad(lambda a, b, c: a * b + c))


def test_type_error():
    with pytest.raises(TypeError, match="b"):
        fma(torch.ones(2), 2.0, torch.ones(2))
