"""Fused bias + activation + gain + clamp, in plain PyTorch.

`bias_act(x, b, dim, act, alpha, gain, clamp)` computes
`clamp(act(x + b, alpha) * gain, -clamp, clamp)` with `b [x.shape[dim]]` broadcast along `dim`.
Built from differentiable torch ops, so gradients of every order work (the activations with
`has_2nd_grad=False` are piecewise linear: their second derivative is zero almost everywhere).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F

from torch_utils import ops as _ops

__all__ = ["ActivationSpec", "activation_funcs", "bias_act"]


@dataclasses.dataclass(frozen=True)
class ActivationSpec:
    """An activation function with its default `alpha` and `gain`."""

    func: Callable[[torch.Tensor, float], torch.Tensor]
    def_alpha: float
    def_gain: float
    has_2nd_grad: bool
    # Positively homogeneous (act(g * x) == g * act(x) for g > 0): the gain can be folded in first.
    homogeneous: bool = False


def _elu(x: torch.Tensor, alpha: float) -> torch.Tensor:
    return F.elu(x, alpha=alpha)


activation_funcs: dict[str, ActivationSpec] = {
    "linear": ActivationSpec(lambda x, alpha: x, 0.0, 1.0, False, homogeneous=True),
    "relu": ActivationSpec(lambda x, alpha: F.relu(x), 0.0, math.sqrt(2), False, homogeneous=True),
    "lrelu": ActivationSpec(lambda x, alpha: F.leaky_relu(x, alpha), 0.2, math.sqrt(2), False,
                            homogeneous=True),
    "tanh": ActivationSpec(lambda x, alpha: torch.tanh(x), 0.0, 1.0, True),
    "sigmoid": ActivationSpec(lambda x, alpha: torch.sigmoid(x), 0.0, 1.0, True),
    # `alpha` is ELU's own alpha (saturation value for x -> -inf); the official default is 1.
    "elu": ActivationSpec(_elu, 1.0, 1.0, True),
    "selu": ActivationSpec(lambda x, alpha: F.selu(x), 0.0, 1.0, True),
    "softplus": ActivationSpec(lambda x, alpha: F.softplus(x), 0.0, 1.0, True),
    "swish": ActivationSpec(lambda x, alpha: x * torch.sigmoid(x), 0.0, math.sqrt(2), True),
}

_IMPLS = ("ref", "cuda", "auto")


def bias_act(x: torch.Tensor, b: torch.Tensor | None = None, dim: int = 1, act: str = "linear",
             alpha: float | None = None, gain: float | None = None, clamp: float | None = None,
             impl: str | None = None) -> torch.Tensor:
    """Add bias `b` along `dim`, apply `act`, multiply by `gain`, clamp to `[-clamp, clamp]`.

    Args:
        x: input tensor of any shape; the result has the same shape and dtype.
        b: None or a 1-D tensor of length `x.shape[dim]`.
        act: a key of `activation_funcs`.
        alpha, gain: None selects the activation's defaults (`def_alpha`, `def_gain`).
        clamp: None (no clamping) or a non-negative number.
        impl: None/'auto' (CUDA kernel for CUDA tensors when it builds and passes its self-check),
            'ref' (always this PyTorch implementation) or 'cuda' (kernel required for CUDA tensors).
    """
    if impl is None:
        impl = os.environ.get("SPATIALGAN_OPS", "auto") or "auto"
    if impl not in _IMPLS:
        raise ValueError(f"impl={impl!r} is not one of {list(_IMPLS)} (or None)")
    if act not in activation_funcs:
        raise ValueError(f"act={act!r} is not one of {list(activation_funcs)}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a tensor, got {type(x).__name__}")
    if not -x.ndim <= dim < max(x.ndim, 1):
        raise ValueError(f"dim={dim} is out of range for x of shape {list(x.shape)}")
    dim = dim % x.ndim if x.ndim else 0
    if b is not None:
        if not isinstance(b, torch.Tensor) or b.ndim != 1 or b.shape[0] != x.shape[dim]:
            shape = list(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
            raise ValueError(f"b must be a 1-D tensor of length x.shape[{dim}]={x.shape[dim]}, got {shape}")
    if clamp is not None and clamp < 0:
        raise ValueError(f"clamp must be None or >= 0, got {clamp!r}")

    spec = activation_funcs[act]
    alpha = float(alpha if alpha is not None else spec.def_alpha)
    gain = float(gain if gain is not None else spec.def_gain)
    if x.device.type in _ops.KERNEL_DEVICE_TYPES and impl != "ref":
        from . import _cuda  # imported lazily: CPU runs never touch the extension machinery

        if _cuda.use_cuda("bias_act", x, impl, reference=_reference_for_cuda):
            return _cuda.bias_act_cuda(x, b, dim, act, alpha, gain, None if clamp is None else float(clamp))
    if b is not None:
        b = b.to(x.dtype)
    if spec.homogeneous and gain > 0 and alpha >= 0:
        if b is None and gain == 1 and clamp is None and act == "linear":
            return x
        return _BiasActPiecewiseLinear.apply(x, b, dim, act, alpha, gain, None if clamp is None else float(clamp))
    return _bias_act_autograd(x, b, dim, spec, alpha, gain, clamp)


def _bias_act_autograd(x, b, dim, spec, alpha, gain, clamp):
    """Any activation, differentiated by autograd (any order)."""
    if b is not None:
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    x = spec.func(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


class _BiasActPiecewiseLinear(torch.autograd.Function):
    """linear / relu / lrelu (alpha >= 0) with gain > 0: in-place forward, mask-based backward.

    `act(x + b) * g == act(g * x + g * b)` for these, so the forward is one fused add plus in-place
    activation and clamp. The backward needs only the output: the slope is `g` where y > 0 and
    `g * alpha` elsewhere, and zero where the clamp is active. It is built from differentiable ops on
    the incoming gradient, so double backward (R1, path length) works; the second derivative of a
    piecewise-linear function is zero, which is what treating the output as a constant gives.
    """

    @staticmethod
    def forward(ctx, x, b, dim, act, alpha, gain, clamp):
        if b is not None:
            bias = b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
            y = torch.add(bias * gain, x, alpha=gain) if gain != 1 else x + bias
        else:
            y = x * gain if gain != 1 else x.clone()
        if act == "relu":
            y.relu_()
        elif act == "lrelu":
            F.leaky_relu_(y, alpha)
        if clamp is not None:
            y.clamp_(-clamp, clamp)
        ctx.save_for_backward(y)
        ctx.args = (dim, act, alpha, gain, clamp)
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved_tensors
        y = y.detach()
        dim, act, alpha, gain, clamp = ctx.args
        g = dy
        if clamp is not None:
            c = _rounded(clamp, y.dtype)
            g = torch.ops.aten.hardtanh_backward(g, y, -c, c)  # zero where |y| == clamp
        if act == "relu":
            g = torch.ops.aten.threshold_backward(g, y, 0)
        elif act == "lrelu":
            g = torch.ops.aten.leaky_relu_backward(g, y, alpha, True)
        if gain != 1:
            g = g * gain
        dx = g if ctx.needs_input_grad[0] else None
        db = None
        if ctx.needs_input_grad[1]:
            db = g.sum([i for i in range(g.ndim) if i != dim])
        return dx, db, None, None, None, None, None


@functools.lru_cache(maxsize=None)
def _rounded(value: float, dtype: torch.dtype) -> float:
    """`value` as stored in `dtype`: fp16 cannot hold e.g. 0.9 exactly, and a saturated output equals the
    rounded clamp, not the Python float. Cached: no host tensor per backward call (nor in a CUDA graph)."""
    return float(torch.tensor(value, dtype=dtype))


def _reference_for_cuda(x, b, dim, act, alpha, gain, clamp):
    """This implementation with `bias_act_cuda`'s signature (for the kernel's self-check)."""
    return bias_act(x, b, dim, act, alpha, gain, clamp, impl="ref")
