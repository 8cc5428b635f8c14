"""grid_sample: equals F.grid_sample (bilinear, zeros, align_corners=False), twice differentiable."""

import pytest
import torch
import torch.nn.functional as F

from torch_utils.ops.grid_sample import grid_sample


def stock(x, g):
    return F.grid_sample(x, g, mode="bilinear", padding_mode="zeros", align_corners=False)


@pytest.mark.parametrize("shape,out_hw", [((2, 3, 7, 9), (5, 6)), ((1, 1, 1, 1), (3, 3)), ((3, 2, 16, 4), (16, 4))])
def test_matches_stock_grid_sample(shape, out_hw):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64)
    g = torch.rand(shape[0], *out_hw, 2, dtype=torch.float64) * 3 - 1.5  # includes out-of-range
    torch.testing.assert_close(grid_sample(x, g), stock(x, g))
    torch.testing.assert_close(grid_sample(x.float(), g.float()), stock(x.float(), g.float()),
                               rtol=1e-5, atol=1e-5)


def test_exact_pixel_centres_and_edges():
    x = torch.arange(12, dtype=torch.float64).reshape(1, 1, 3, 4)
    # Pixel centres: x_j = (2j + 1) / W - 1; identity affine grid reproduces the image.
    theta = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]], dtype=torch.float64)
    g = F.affine_grid(theta, [1, 1, 3, 4], align_corners=False)
    torch.testing.assert_close(grid_sample(x, g), x)
    # Edges (+-1) and far outside.
    g = torch.tensor([[[[-1.0, -1.0], [1.0, 1.0], [5.0, 0.0], [-3.0, -3.0]]]], dtype=torch.float64)
    torch.testing.assert_close(grid_sample(x, g), stock(x, g))


def test_gradients_match_stock():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64, requires_grad=True)
    g = (torch.rand(2, 4, 4, 2, dtype=torch.float64) * 2.4 - 1.2).requires_grad_()
    go = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    ours = torch.autograd.grad(grid_sample(x, g), (x, g), go)
    ref = torch.autograd.grad(stock(x, g), (x, g), go)
    for o, r in zip(ours, ref):
        torch.testing.assert_close(o, r)


def test_gradcheck_and_gradgradcheck():
    torch.manual_seed(2)
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    g = (torch.rand(1, 3, 3, 2, dtype=torch.float64) * 2.4 - 1.2).requires_grad_()
    assert torch.autograd.gradcheck(grid_sample, (x, g))
    assert torch.autograd.gradgradcheck(lambda x: grid_sample(x, g.detach()), (x,))
    assert torch.autograd.gradgradcheck(grid_sample, (x, g))


def central_differences(fn, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """d fn / d x by central differences, one element at a time (fn: tensor -> scalar tensor)."""
    numeric = torch.zeros_like(x)
    for i in range(x.numel()):
        d = torch.zeros(x.numel(), dtype=x.dtype).reshape(x.shape)
        d.view(-1)[i] = eps
        numeric.view(-1)[i] = (fn((x + d).detach()) - fn((x - d).detach())) / (2 * eps)
    return numeric


def test_second_derivative_against_finite_differences():
    """R1 through the augmentation: d/dx of |d(loss)/dx|^2, versus finite differences of the first grad."""
    torch.manual_seed(3)
    g = torch.rand(1, 5, 5, 2, dtype=torch.float64) * 2.2 - 1.1
    w = torch.randn(1, 2, 5, 5, dtype=torch.float64)

    def r1(x, create_graph):
        out = torch.tanh(grid_sample(x, g)) * w  # a nonlinearity so the second derivative is not zero
        (gx,) = torch.autograd.grad(out.sum(), x, create_graph=create_graph)
        return gx.square().sum()

    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    (analytic,) = torch.autograd.grad(r1(x, True), x)
    numeric = central_differences(lambda t: r1(t.requires_grad_(), False), x.detach())
    assert analytic.abs().max() > 1e-3
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-6)


def test_invalid_arguments():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="input"):
        grid_sample(torch.randn(3, 4, 4), torch.zeros(3, 2, 2, 2))
    with pytest.raises(ValueError, match="grid"):
        grid_sample(x, torch.zeros(2, 2, 2, 3))
    with pytest.raises(ValueError, match="grid"):
        grid_sample(x, torch.zeros(1, 2, 2, 2))


def test_linear_and_gather_routes_agree_to_second_order():
    """Constant grid -> stock kernels (y = A x); grid with requires_grad -> gather route."""
    torch.manual_seed(4)
    g = torch.rand(2, 5, 4, 2, dtype=torch.float64) * 2.6 - 1.3
    w = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    results = []
    for grid in (g, g.clone().requires_grad_()):
        x = torch.randn(2, 3, 6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0),
                        requires_grad=True)
        y = grid_sample(x, grid)
        (gx,) = torch.autograd.grad((torch.sin(y) * w).sum(), x, create_graph=True)
        (ggx,) = torch.autograd.grad(gx.square().sum(), x)
        results.append((y, gx, ggx))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


def test_third_order_on_the_linear_route():
    """Every order is A or A^T on the stock kernels; gradgradcheck of a grad exercises both twice."""
    torch.manual_seed(5)
    g = torch.rand(1, 3, 3, 2, dtype=torch.float64) * 2.2 - 1.1
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, 3, 3, dtype=torch.float64)

    def grad_of(x):
        (gx,) = torch.autograd.grad((torch.tanh(grid_sample(x, g)) * v).sum(), x, create_graph=True)
        return gx

    assert torch.autograd.gradgradcheck(grad_of, (x,))


def test_second_derivative_with_grid_gradient():
    """The gather route: d/dgrid of |d(loss)/dx|^2 against finite differences."""
    torch.manual_seed(6)
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    g0 = torch.rand(1, 2, 2, 2, dtype=torch.float64) * 1.6 - 0.8

    def penalty(g, create_graph):
        xx = x.clone().requires_grad_()
        (gx,) = torch.autograd.grad(torch.tanh(grid_sample(xx, g)).sum(), xx, create_graph=create_graph)
        return gx.square().sum()

    g = g0.clone().requires_grad_()
    (analytic,) = torch.autograd.grad(penalty(g, True), g)
    numeric = central_differences(lambda t: penalty(t.requires_grad_(), False), g0)
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-6)
