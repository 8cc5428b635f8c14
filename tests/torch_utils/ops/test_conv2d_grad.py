"""conv2d_grad: the same values and gradients of every order as PyTorch's convolutions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from torch_utils.ops import conv2d_grad

# (transposed, x shape, w shape, stride, padding, output_padding, groups): the geometries the networks
# use (3x3 same, 1x1, stride-2 down with odd sizes, stride-2 transposed up), plus groups.
CASES = [
    (False, [2, 4, 7, 7], [3, 4, 3, 3], 1, 1, 0, 1),
    (False, [2, 4, 6, 5], [3, 4, 1, 1], 1, 0, 0, 1),
    (False, [2, 4, 9, 8], [3, 4, 3, 3], 2, 0, 0, 1),
    (False, [2, 4, 7, 7], [6, 2, 3, 3], 2, 1, 0, 2),
    (True, [2, 4, 4, 5], [4, 3, 3, 3], 2, 0, 0, 1),
    (True, [2, 4, 4, 4], [4, 3, 3, 3], 2, 1, 1, 1),
    (True, [2, 4, 3, 3], [4, 2, 3, 3], 2, 0, 1, 2),
]


def _ours(transposed, x, w, stride, padding, output_padding, groups):
    if transposed:
        return conv2d_grad.conv_transpose2d(x, w, stride, padding, output_padding, groups)
    return conv2d_grad.conv2d(x, w, stride, padding, groups)


def _native(transposed, x, w, stride, padding, output_padding, groups):
    if transposed:
        return F.conv_transpose2d(x, w, stride=stride, padding=padding, output_padding=output_padding, groups=groups)
    return F.conv2d(x, w, stride=stride, padding=padding, groups=groups)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{'T' if c[0] else 'C'}{c[1]}w{c[2]}s{c[3]}p{c[4]}op{c[5]}g{c[6]}")
def test_gradients_to_third_order(case):
    transposed, xs, ws, *args = case
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(xs, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(ws, dtype=torch.float64, generator=gen, requires_grad=True)
    torch.testing.assert_close(_ours(transposed, x, w, *args), _native(transposed, x, w, *args))
    assert torch.autograd.gradcheck(lambda x, w: _ours(transposed, x, w, *args), (x, w))
    assert torch.autograd.gradgradcheck(lambda x, w: _ours(transposed, x, w, *args), (x, w))

    # Third order, numerically: the gradient function's own first and second derivatives. (PyTorch's
    # native third derivative of conv_transpose2d with output_padding raises an error.)
    def gradients(x, w):
        return torch.autograd.grad(_ours(transposed, x, w, *args).square().sum(), (x, w), create_graph=True)

    assert torch.autograd.gradgradcheck(gradients, (x, w))


DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device")])]


@pytest.mark.parametrize("device", DEVICES)
def test_path_length_style_double_backward_matches_native_in_channels_last_float32(device, monkeypatch):
    """grad w.r.t. the input with create_graph, then backward through it (path length / R1)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn([3, 8, 9, 9], generator=gen).to(device).contiguous(memory_format=torch.channels_last)
    w0 = torch.randn([8, 8, 3, 3], generator=gen).to(device)

    def run(fn, no_wgrad):
        x, w = x0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
        y = fn(False, fn(True, x, w, 2, 1, 1, 1), w, 1, 1, 0, 1)  # up then same: both directions
        with conv2d_grad.no_weight_gradients(no_wgrad):
            (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        (gx.square().sum() + y.mean()).backward()
        return gx.detach(), x.grad, w.grad

    for ours, native in zip(run(_ours, True), run(_native, False)):
        torch.testing.assert_close(ours, native, rtol=1e-3, atol=1e-3)


def test_no_weight_gradients_skips_them_and_nests(monkeypatch):
    calls = []
    weight_grad = torch.nn.grad.conv2d_weight
    monkeypatch.setattr(torch.nn.grad, "conv2d_weight", lambda *a, **k: calls.append(1) or weight_grad(*a, **k))
    x = torch.randn([2, 3, 6, 6], requires_grad=True)
    w = torch.randn([4, 3, 3, 3], requires_grad=True)
    with conv2d_grad.no_weight_gradients():
        with conv2d_grad.no_weight_gradients():
            pass
        (gx,) = torch.autograd.grad(conv2d_grad.conv2d(x, w, padding=1).sum(), x)
    assert calls == []
    torch.testing.assert_close(gx, torch.autograd.grad(F.conv2d(x, w, padding=1).sum(), x)[0])
    with conv2d_grad.no_weight_gradients(False):
        conv2d_grad.conv2d(x, w, padding=1).sum().backward()
    assert calls == [1] and w.grad is not None
