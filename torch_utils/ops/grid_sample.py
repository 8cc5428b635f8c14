"""Bilinear `grid_sample` (zeros padding, align_corners=False) that can be differentiated twice.

`torch.nn.functional.grid_sample` has no double backward w.r.t. its input on the
grad-output path ("derivative for aten::grid_sampler_2d_backward is not implemented"), which R1
regularisation through ADA's geometric augmentation needs. This version is built from `gather`
and elementwise ops, so autograd differentiates it to any order w.r.t. `input`, and w.r.t. `grid`
(the bilinear weights are piecewise linear in the grid, so second derivatives in the grid are zero
almost everywhere, as for the stock op).
"""

from __future__ import annotations

import torch

__all__ = ["grid_sample"]


def grid_sample(input: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Sample `input [N, C, H, W]` at `grid [N, h, w, 2]` -> `[N, C, h, w]`.

    `grid[..., 0]` is x (width) and `grid[..., 1]` is y (height), in [-1, 1] with pixel-centre
    convention (align_corners=False); taps outside the image read zeros. Matches
    `F.grid_sample(input, grid, mode='bilinear', padding_mode='zeros', align_corners=False)`.
    """
    if not isinstance(input, torch.Tensor) or input.ndim != 4:
        raise ValueError(f"input must be a 4-D tensor [N, C, H, W], got "
                         f"{list(input.shape) if isinstance(input, torch.Tensor) else type(input).__name__}")
    if not isinstance(grid, torch.Tensor) or grid.ndim != 4 or grid.shape[-1] != 2 or grid.shape[0] != input.shape[0]:
        raise ValueError(f"grid must be a tensor [N={input.shape[0]}, h, w, 2], got "
                         f"{list(grid.shape) if isinstance(grid, torch.Tensor) else type(grid).__name__}")
    grid = grid.to(input.dtype)
    if not grid.requires_grad:
        # The common case (ADA: the grid comes from random parameters): the op is linear in the
        # input, y = A x, so the stock kernels for A and A^T give every derivative.
        return _GridSampleLinear.apply(input, grid)
    return _grid_sample_gather(input, grid)


def _grid_sample_gather(input: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear sampling from gather + elementwise ops: differentiable to any order in both inputs."""
    n, c, h_in, w_in = input.shape
    _, h_out, w_out, _ = grid.shape

    # Unnormalise to pixel coordinates (align_corners=False: -1 is the left edge of pixel 0).
    ix = ((grid[..., 0] + 1) * w_in - 1) * 0.5
    iy = ((grid[..., 1] + 1) * h_in - 1) * 0.5
    ix0 = torch.floor(ix)
    iy0 = torch.floor(iy)
    wx1 = ix - ix0
    wy1 = iy - iy0
    wx0 = 1 - wx1
    wy0 = 1 - wy1
    ix0 = ix0.long()
    iy0 = iy0.long()
    ix1 = ix0 + 1
    iy1 = iy0 + 1

    # Zero the weight of every tap that falls outside the image, and clamp its index to stay valid.
    vx0 = (ix0 >= 0) & (ix0 < w_in)
    vx1 = (ix1 >= 0) & (ix1 < w_in)
    vy0 = (iy0 >= 0) & (iy0 < h_in)
    vy1 = (iy1 >= 0) & (iy1 < h_in)
    wx0 = wx0 * vx0
    wx1 = wx1 * vx1
    wy0 = wy0 * vy0
    wy1 = wy1 * vy1
    cx0 = ix0.clamp(0, w_in - 1)
    cx1 = ix1.clamp(0, w_in - 1)
    cy0 = iy0.clamp(0, h_in - 1) * w_in
    cy1 = iy1.clamp(0, h_in - 1) * w_in

    # One gather for all four taps: indices [N, 1, 4 * h * w] broadcast over channels.
    p = h_out * w_out
    idx = torch.stack([cy0 + cx0, cy0 + cx1, cy1 + cx0, cy1 + cx1], dim=1).reshape(n, 1, 4 * p)
    wts = torch.stack([wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1], dim=1).reshape(n, 1, 4, p)
    vals = torch.gather(input.reshape(n, c, h_in * w_in), 2, idx.expand(n, c, 4 * p))
    out = (vals.reshape(n, c, 4, p) * wts).sum(dim=2)
    return out.reshape(n, c, h_out, w_out)


class _GridSampleLinear(torch.autograd.Function):
    """y = A x with A fixed by a grid that needs no gradient; backward is `_GridSampleLinearT`."""

    @staticmethod
    def forward(ctx, input, grid):
        ctx.save_for_backward(grid)
        ctx.input_shape = input.shape
        return torch.grid_sampler_2d(input, grid, 0, 0, False)  # bilinear, zeros, align_corners=False

    @staticmethod
    def backward(ctx, dy):
        (grid,) = ctx.saved_tensors
        dx = _GridSampleLinearT.apply(dy, grid, ctx.input_shape) if ctx.needs_input_grad[0] else None
        return dx, None


class _GridSampleLinearT(torch.autograd.Function):
    """dx = A^T dy (the stock grid-sampler backward, input gradient only); backward is A again."""

    @staticmethod
    def forward(ctx, dy, grid, input_shape):
        ctx.save_for_backward(grid)
        # The kernel needs `input` only for its shape and dtype when the grid gradient is not asked
        # for. On CPU a zero-strided placeholder saves an allocation; elsewhere use a real tensor.
        if dy.device.type == "cpu":
            shape_only = dy.new_zeros(()).expand(input_shape)
        else:
            shape_only = dy.new_empty(input_shape)
        dx, _ = torch.ops.aten.grid_sampler_2d_backward(dy, shape_only, grid, 0, 0, False, [True, False])
        return dx

    @staticmethod
    def backward(ctx, ddx):
        (grid,) = ctx.saved_tensors
        ddy = _GridSampleLinear.apply(ddx, grid) if ctx.needs_input_grad[0] else None
        return ddy, None, None
