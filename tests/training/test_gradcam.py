"""Tests for training/gradcam.py on tiny hand-checkable discriminators."""

import pytest
import torch
import torch.nn.functional as F

from training.gradcam import cam_score, gradcam, minmax_normalize


def _tiny_d(x, w1, b_head):
    """Two-layer 'D': A = 1x1 conv(x) with weights w1 [C, 1]; score = sum(b_head * A) (linear head)."""
    acts = F.conv2d(x, w1.view(-1, 1, 1, 1))
    return (b_head * acts).sum(), acts


def test_gradcam_hand_computed_values():
    x = torch.tensor([[[[1.0, -2.0], [3.0, 4.0]]]], requires_grad=True)
    w1 = torch.tensor([1.0, -1.0])                        # A_0 = x, A_1 = -x
    b_head = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]], [[2.0, 0.0], [0.0, 0.0]]]])  # dscore/dA
    score, acts = _tiny_d(x, w1, b_head)
    # Weights: w_0 = mean(1, 1, 1, 1) = 1, w_1 = mean(2, 0, 0, 0) = 0.5.
    # canonical: relu(x - 0.5 x) = relu([[.5, -1], [1.5, 2]]) = [[.5, 0], [1.5, 2]]
    #            -> min-max (0..2) -> [[.25, 0], [.75, 1]]
    canon = gradcam(score, {2: acts}, [2], "canonical")[2]
    assert torch.allclose(canon, torch.tensor([[[[0.25, 0.0], [0.75, 1.0]]]]), atol=1e-6)
    # eqgan: relu(x) + relu(-0.5 x) = [[1, 1], [3, 4]] -> (v - 1) / 3 -> [[0, 0], [2/3, 1]]
    eq = gradcam(score, {2: acts}, [2], "eqgan")[2]
    assert torch.allclose(eq, torch.tensor([[[[0.0, 0.0], [2 / 3, 1.0]]]]), atol=1e-6)
    assert not torch.allclose(canon, eq)


def test_gradcam_variants_agree_without_sign_conflicts():
    # All weighted activations positive: ReLU before or after the sum gives the same map.
    acts = (torch.rand(2, 3, 4, 4) + 0.1).requires_grad_()
    head = torch.rand(2, 3, 4, 4)
    score = (head * acts).sum()
    a = gradcam(score, {4: acts}, [4], "canonical")[4]
    b = gradcam(score, {4: acts}, [4], "eqgan")[4]
    assert torch.allclose(a, b, atol=1e-6)


def test_gradcam_grads_reach_input_not_params():
    gen = torch.Generator().manual_seed(0)
    conv1 = torch.nn.Conv2d(1, 4, 3, padding=1)
    conv2 = torch.nn.Conv2d(4, 4, 3, stride=2, padding=1)
    head = torch.nn.Linear(4 * 2 * 2, 1)
    img = torch.randn(3, 1, 4, 4, generator=gen, requires_grad=True)
    a4 = F.leaky_relu(conv1(img), 0.2)
    a2 = F.leaky_relu(conv2(a4), 0.2)
    logits = head(a2.flatten(1))
    cams = gradcam(cam_score(logits), {4: a4, 2: a2}, [4, 2], "eqgan")
    assert set(cams) == {4, 2} and cams[4].shape == (3, 1, 4, 4) and cams[2].shape == (3, 1, 2, 2)
    params = [*conv1.parameters(), *conv2.parameters(), *head.parameters()]
    assert all(p.grad is None for p in params)  # autograd.grad, no accumulation into D's parameters
    for cam in cams.values():
        assert cam.min() >= 0 and cam.max() <= 1
        assert torch.allclose(cam.flatten(1).amax(1), torch.ones(3))  # per-sample normalisation
        assert cam.requires_grad
    logits.sum().backward(retain_graph=True)  # The score's graph was retained for the caller.
    assert conv1.weight.grad is not None
    (g,) = torch.autograd.grad(cams[4].square().sum(), img)
    assert g.abs().sum() > 0


def test_gradcam_weights_are_detached():
    # score = sum(A^2): d score / d A = 2A. With detached weights, d CAM / d A only holds the A factor.
    acts = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], requires_grad=True)
    score = acts.square().sum()
    cam = gradcam(score, {2: acts}, [2])[2]
    # w = mean(2A) = 5; cam = (5A - 5) / (20 - 5) with detached min/max -> d cam_sum / dA = 5 / 15 each.
    (g,) = torch.autograd.grad(cam.sum(), acts)
    assert torch.allclose(g, torch.full_like(acts, 1 / 3))


def test_cam_score_conventions():
    logits = torch.tensor([[0.5], [-1.0]])
    assert torch.isclose(cam_score(logits), torch.tensor(-0.5))
    assert torch.isclose(cam_score(logits, "g_loss"), F.softplus(-logits).sum())
    with pytest.raises(ValueError, match="convention"):
        cam_score(logits, "bce")


def test_minmax_and_errors():
    x = torch.tensor([[[[0.0, float("nan")], [float("inf"), 2.0]]], [[[3.0, 3.0], [3.0, 3.0]]]])
    y = minmax_normalize(x)
    assert torch.isfinite(y).all() and torch.allclose(y[0].flatten(), torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert torch.equal(y[1], torch.zeros_like(y[1]))
    acts = torch.rand(1, 2, 4, 4, requires_grad=True)
    with pytest.raises(ValueError, match="variant"):
        gradcam(acts.sum(), {4: acts}, [4], "plain")
    with pytest.raises(ValueError, match=r"\[8\]"):
        gradcam(acts.sum(), {4: acts}, [8])
