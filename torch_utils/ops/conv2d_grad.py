"""`conv2d` / `conv_transpose2d` whose derivatives of every order are again convolutions.

PyTorch's own double backward of a convolution (what path-length regularisation and R1 take)
computes the weight gradient of the input gradient as a forward convolution over batch-transposed
tensors: a "filter" as large as the feature map (256 x 256 at the top of a 256² network). cuDNN has
no good kernel for that shape; on an H100 a handful of such launches took 40 % of a training step.

Here every derivative is one of three bilinear maps, each run by its dedicated kernel:

    conv(x, W)            forward           F.conv2d / F.conv_transpose2d
    dx = conv^T(dy, W)    input gradient    the transposed op (backward-data kernel)
    dW = wgrad(x, dy)     weight gradient   torch.nn.grad.conv2d_weight (backward-filter kernel)

and the derivatives of each are again among the three (`<dy, conv(x, W)>` is bilinear in all
pairs), so gradients of any order stay on those kernels.

A Python autograd Function cannot tell which of its inputs the current backward pass actually
needs (PyTorch's built-in nodes can), so `torch.autograd.grad(out, x)` would also compute the weight
gradients it throws away. Wrap such calls (the regularisers' gradient w.r.t. images or latents) in
`no_weight_gradients()`.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F

__all__ = ["conv2d", "conv_transpose2d", "no_weight_gradients"]

# A process-wide counter, not a thread-local: CUDA backward passes run on autograd's device threads.
_weight_gradients_disabled = 0


@contextlib.contextmanager
def no_weight_gradients(enabled: bool = True) -> Iterator[None]:
    """Within the block, backward passes through these convolutions skip the weight gradients
    (returning None for them). For `torch.autograd.grad` calls w.r.t. inputs only."""
    global _weight_gradients_disabled
    _weight_gradients_disabled += int(enabled)
    try:
        yield
    finally:
        _weight_gradients_disabled -= int(enabled)


def conv2d(x: torch.Tensor, w: torch.Tensor, stride: int = 1, padding: int | tuple[int, int] = 0,
           groups: int = 1) -> torch.Tensor:
    """`F.conv2d(x, w, stride=stride, padding=padding, groups=groups)` (no bias, no dilation):
    x [N, C, H, W], w [O, C // groups, kh, kw] -> [N, O, H', W']."""
    return _Conv.apply(x, w, _Spec(False, _pair(stride), _pair(padding), (0, 0), int(groups)))


def conv_transpose2d(x: torch.Tensor, w: torch.Tensor, stride: int = 1, padding: int | tuple[int, int] = 0,
                     output_padding: int | tuple[int, int] = 0, groups: int = 1) -> torch.Tensor:
    """`F.conv_transpose2d` (no bias, no dilation): x [N, C, H, W], w [C, O // groups, kh, kw]."""
    return _Conv.apply(x, w, _Spec(True, _pair(stride), _pair(padding), _pair(output_padding), int(groups)))


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class _Spec(tuple):
    """(transposed, stride, padding, output_padding, groups): one convolution's geometry."""

    def __new__(cls, transposed: bool, stride, padding, output_padding, groups: int):
        return super().__new__(cls, (transposed, stride, padding, output_padding, groups))

    def run(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        transposed, stride, padding, output_padding, groups = self
        if transposed:
            return F.conv_transpose2d(x, w, stride=stride, padding=padding, output_padding=output_padding,
                                      groups=groups)
        return F.conv2d(x, w, stride=stride, padding=padding, groups=groups)

    def adjoint(self, x_shape, w_shape) -> _Spec:
        """The op that maps dy to dx (same weight tensor): conv <-> conv_transpose. Going to the
        transposed op, output_padding restores the exact input size that stride-rounding lost."""
        transposed, stride, padding, _, groups = self
        if transposed:
            return _Spec(False, stride, padding, (0, 0), groups)
        return _Spec(True, stride, padding, self._lost(x_shape, w_shape), groups)

    def _lost(self, x_shape, w_shape) -> tuple[int, int]:
        _, stride, padding, _, _ = self
        lost = []
        for i in range(2):
            size, k = x_shape[2 + i], w_shape[2 + i]
            out = (size + 2 * padding[i] - k) // stride[i] + 1
            lost.append(size - ((out - 1) * stride[i] - 2 * padding[i] + k))
        return lost[0], lost[1]

    def weight_grad(self, x: torch.Tensor, dy: torch.Tensor, w_shape) -> torch.Tensor:
        """dW of <dy, run(x, W)>. For the transposed op, <dy, T(x; W)> = <x, C(dy; W)>: the weight
        gradient of the plain conv with input dy and output gradient x."""
        transposed, stride, padding, _, groups = self
        if transposed:
            x, dy = dy, x
        return torch.nn.grad.conv2d_weight(x, w_shape, dy, stride=stride, padding=padding, groups=groups)


class _Conv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, spec):
        ctx.save_for_backward(x, w)
        ctx.spec = spec
        return spec.run(x, w)

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = _Conv.apply(dy, w, ctx.spec.adjoint(x.shape, w.shape))
        if ctx.needs_input_grad[1] and not _weight_gradients_disabled:
            dw = _WeightGrad.apply(x, dy, w.shape, ctx.spec)
        return dx, dw, None


class _WeightGrad(torch.autograd.Function):
    """dW = wgrad(x, dy); <h, dW> = <dy, conv(x, h)>, so d/dx = conv^T(dy, h), d/d(dy) = conv(x, h)."""

    @staticmethod
    def forward(ctx, x, dy, w_shape, spec):
        ctx.save_for_backward(x, dy)
        ctx.spec = spec
        return spec.weight_grad(x, dy, w_shape)

    @staticmethod
    def backward(ctx, h):
        x, dy = ctx.saved_tensors
        spec = ctx.spec
        dx = ddy = None
        if ctx.needs_input_grad[0]:
            dx = _Conv.apply(dy, h, spec.adjoint(x.shape, h.shape))
        if ctx.needs_input_grad[1]:
            ddy = _Conv.apply(x, h, spec)
        return dx, ddy, None, None
