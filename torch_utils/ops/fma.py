"""Fused multiply-add `a * b + c` with a cheap, twice-differentiable backward."""

from __future__ import annotations

import torch

__all__ = ["fma"]


def fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Return `a * b + c` (broadcasting like `torch.addcmul(c, a, b)`).

    The backward computes each input's gradient directly at that input's (broadcast) shape, and is
    made of plain differentiable ops, so double backward (path-length regularisation) works.
    """
    for name, t in (("a", a), ("b", b), ("c", c)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"fma: {name} must be a tensor, got {type(t).__name__}")
    return _FusedMultiplyAdd.apply(a, b, c)


class _FusedMultiplyAdd(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, c):
        out = torch.addcmul(c, a, b)
        ctx.save_for_backward(a, b)
        ctx.c_shape = c.shape
        return out

    @staticmethod
    def backward(ctx, dout):
        a, b = ctx.saved_tensors
        da = db = dc = None
        if ctx.needs_input_grad[0]:
            da = _unbroadcast(dout * b, a.shape)
        if ctx.needs_input_grad[1]:
            db = _unbroadcast(dout * a, b.shape)
        if ctx.needs_input_grad[2]:
            dc = _unbroadcast(dout, ctx.c_shape)
        return da, db, dc


def _unbroadcast(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum `x` over the dimensions that broadcasting added or expanded, giving `shape`."""
    if x.shape == shape:
        return x
    extra = x.ndim - len(shape)
    dims = list(range(extra)) + [i + extra for i, s in enumerate(shape) if s == 1 and x.shape[i + extra] != 1]
    if dims:
        x = x.sum(dim=dims, keepdim=True)
    return x.reshape(shape)
