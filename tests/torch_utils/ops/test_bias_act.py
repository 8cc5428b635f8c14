"""bias_act: against a naive composition, every activation, gradients of order 1 and 2."""

import math

import pytest
import torch
import torch.nn.functional as F

from torch_utils.ops.bias_act import activation_funcs, bias_act

NAIVE = {
    "linear": lambda x, a: x,
    "relu": lambda x, a: torch.clamp(x, min=0),
    "lrelu": lambda x, a: torch.where(x >= 0, x, x * a),
    "tanh": lambda x, a: torch.tanh(x),
    "sigmoid": lambda x, a: 1 / (1 + torch.exp(-x)),
    "elu": lambda x, a: torch.where(x > 0, x, a * (torch.exp(x) - 1)),
    "selu": lambda x, a: 1.0507009873554805 * torch.where(x > 0, x, 1.6732632423543772 * (torch.exp(x) - 1)),
    "softplus": lambda x, a: torch.log1p(torch.exp(x)),
    "swish": lambda x, a: x / (1 + torch.exp(-x)),
}

DEFAULTS = {  # (alpha, gain)
    "linear": (0, 1), "relu": (0, math.sqrt(2)), "lrelu": (0.2, math.sqrt(2)), "tanh": (0, 1),
    "sigmoid": (0, 1), "elu": (1, 1), "selu": (0, 1), "softplus": (0, 1), "swish": (0, math.sqrt(2)),
}


def naive(x, b, dim, act, alpha, gain, clamp):
    if b is not None:
        shape = [1] * x.ndim
        shape[dim] = -1
        x = x + b.reshape(shape)
    x = NAIVE[act](x, alpha) * gain
    return x if clamp is None else torch.clamp(x, -clamp, clamp)


def test_activation_table():
    assert set(activation_funcs) == set(NAIVE)
    for name, (alpha, gain) in DEFAULTS.items():
        spec = activation_funcs[name]
        assert spec.def_alpha == pytest.approx(alpha) and spec.def_gain == pytest.approx(gain), name
        assert isinstance(spec.has_2nd_grad, bool)


@pytest.mark.parametrize("act", list(NAIVE))
def test_defaults_match_naive(act):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 4, 4, dtype=torch.float64) * 3
    b = torch.randn(5, dtype=torch.float64)
    alpha, gain = DEFAULTS[act]
    torch.testing.assert_close(bias_act(x, b, act=act), naive(x, b, 1, act, alpha, gain, None))


@pytest.mark.parametrize("act", list(NAIVE))
@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_alpha_gain_clamp_dim(act, dim):
    torch.manual_seed(1)
    x = torch.randn(4, 3, 5, 2, dtype=torch.float64) * 3
    b = torch.randn(x.shape[dim], dtype=torch.float64)
    for alpha, gain, clamp in [(0.3, 2.5, None), (0.1, 0.7, 0.5), (0.5, -1.5, 2.0), (0.2, 1, 0.0)]:
        out = bias_act(x, b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)
        ref = naive(x, b, dim % x.ndim, act, alpha if act in ("lrelu", "elu") else 0, gain, clamp)
        torch.testing.assert_close(out, ref)


def test_no_bias_and_float32():
    x = torch.randn(2, 8, 3, 3)
    out = bias_act(x, act="lrelu", clamp=256)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, F.leaky_relu(x, 0.2) * math.sqrt(2))
    assert bias_act(x) is x or torch.equal(bias_act(x), x)


def test_2d_input_for_fully_connected_layers():
    x = torch.randn(6, 10, dtype=torch.float64)
    b = torch.randn(10, dtype=torch.float64)
    torch.testing.assert_close(bias_act(x, b, act="lrelu"), naive(x, b, 1, "lrelu", 0.2, math.sqrt(2), None))


@pytest.mark.parametrize("act", list(NAIVE))
def test_gradcheck_and_gradgradcheck(act):
    torch.manual_seed(2)
    # Keep values away from the kinks (0 and +-clamp) where finite differences are meaningless.
    x = torch.randn(2, 3, 3, 2, dtype=torch.float64)
    x = (x + 0.2 * x.sign()).requires_grad_()
    b = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    fn = lambda x, b: bias_act(x, b, act=act, gain=0.9, clamp=10.0)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


def test_clamp_zeroes_gradient_outside():
    x = torch.tensor([[-5.0, 0.5, 5.0]], requires_grad=True)
    bias_act(x, act="linear", clamp=1.0).sum().backward()
    assert x.grad.tolist() == [[0.0, 1.0, 0.0]]


def test_invalid_arguments():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="act"):
        bias_act(x, act="gelu_nope")
    with pytest.raises(ValueError, match="b must be"):
        bias_act(x, torch.zeros(4))
    with pytest.raises(ValueError, match="b must be"):
        bias_act(x, torch.zeros(3, 1))
    with pytest.raises(ValueError, match="dim"):
        bias_act(x, dim=4)
    with pytest.raises(ValueError, match="clamp"):
        bias_act(x, clamp=-1)
    with pytest.raises(ValueError, match="impl"):
        bias_act(x, impl="fast")


def test_fp16_saturated_outputs_get_zero_gradient():
    """0.9 is not representable in fp16: saturated outputs equal the rounded clamp and must not pass
    gradient (a comparison against the Python float would let it leak)."""
    x = torch.tensor([5.0, 0.1, -7.0], dtype=torch.float16, requires_grad=True)
    y = bias_act(x, dim=0, act="lrelu", clamp=0.9, impl="ref")
    (g,) = torch.autograd.grad(y.float().sum(), x)
    assert g[0] == 0 and g[2] == 0 and g[1] != 0
