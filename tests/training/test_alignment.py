"""Tests for training/alignment.py: truncation semantics, gradients and the indoor min over candidates."""

import pytest
import torch

from training.alignment import (
    align_loss,
    align_loss_indoor,
    indoor_candidates,
    normalize_target,
    truncated_l1,
)


def _maps(values):
    return torch.tensor(values, dtype=torch.float32).view(len(values), 1, 2, 2)


def test_truncated_l1_all_below_tau_is_plain_mean():
    cam = _maps([[0.1, 0.2, 0.3, 0.4]])
    target = _maps([[0.0, 0.0, 0.5, 0.5]])  # errors 0.1, 0.2, 0.2, 0.1
    assert torch.isclose(truncated_l1(cam, target), torch.tensor(0.15))


def test_truncated_l1_mixed_uses_only_above_tau():
    cam = _maps([[1.0, 0.9, 0.1, 0.0]])
    target = _maps([[0.0, 0.0, 0.0, 0.0]])  # errors 1.0, 0.9 (> tau), 0.1, 0.0 (ignored)
    assert torch.isclose(truncated_l1(cam, target), torch.tensor(0.95))
    # Exactly one pixel above tau: fall back to the mean over all pixels.
    one = _maps([[1.0, 0.1, 0.1, 0.0]])
    assert torch.isclose(truncated_l1(one, target), torch.tensor(0.3))
    # e == tau counts as "close enough".
    at_tau = _maps([[0.25, 0.25, 0.25, 1.0]])
    assert torch.isclose(truncated_l1(at_tau, target, tau=0.25), torch.tensor(1.75 / 4))


def test_truncated_l1_batch_vs_per_sample():
    cam = _maps([[1.0, 0.9, 0.1, 0.0], [0.2, 0.1, 0.0, 0.0]])
    target = torch.zeros_like(cam)
    per = truncated_l1(cam, target, reduction="none")
    assert per.shape == (2,)
    assert torch.allclose(per, torch.tensor([0.95, 0.075]))
    # Whole batch: two pixels above tau in total -> their mean.
    assert torch.isclose(truncated_l1(cam, target), torch.tensor(0.95))
    with pytest.raises(ValueError, match="reduction"):
        truncated_l1(cam, target, reduction="mean")
    with pytest.raises(ValueError, match="target"):
        truncated_l1(cam, target[:1])


def test_align_loss_gradient_reaches_cam_only_above_tau():
    cam = _maps([[1.0, 0.9, 0.1, 0.0]]).requires_grad_()
    target = _maps([[0.0, 0.0, 0.0, 0.0]]).requires_grad_()
    target_det = target.detach()
    loss = align_loss({2: cam}, {2: target_det})
    loss.backward()
    assert torch.allclose(cam.grad.flatten(), torch.tensor([0.5, 0.5, 0.0, 0.0]))
    assert target.grad is None
    two = align_loss({2: cam, 4: torch.ones(1, 1, 4, 4)}, {2: target_det, 4: torch.zeros(1, 1, 4, 4)})
    assert torch.isclose(two, loss.detach() + 1)
    with pytest.raises(ValueError, match="same non-empty keys"):
        align_loss({2: cam}, {4: target_det})


def test_normalize_target():
    h = torch.rand(3, 4, 8, 8)
    t = normalize_target(h)
    assert t.shape == (3, 1, 8, 8)
    assert torch.allclose(t.flatten(1).amin(1), torch.zeros(3))
    assert torch.allclose(t.flatten(1).amax(1), torch.ones(3))
    # Same as normalising the channel mean (conference code).
    m = h.mean(1, keepdim=True)
    lo, hi = m.flatten(1).amin(1).view(-1, 1, 1, 1), m.flatten(1).amax(1).view(-1, 1, 1, 1)
    assert torch.allclose(t, (m - lo) / (hi - lo), atol=1e-5)


def _blob(r, cx, cy, s=0.15):
    p = (torch.arange(r) + 0.5) / r
    return torch.exp(-((p.view(1, -1) - cx) ** 2 + (p.view(-1, 1) - cy) ** 2) / (2 * s * s))


def test_indoor_min_picks_closest_candidate():
    r = 8
    subs = torch.stack([_blob(r, 0.2, 0.2), _blob(r, 0.8, 0.3), _blob(r, 0.5, 0.8)]).unsqueeze(0)
    subs = subs.repeat(3, 1, 1, 1)
    cands = indoor_candidates(subs)
    assert cands.shape == (3, 4, r, r)
    cam = torch.stack([cands[0, 1], cands[1, 3], cands[2, 2] * 0.9]).unsqueeze(1).requires_grad_()
    loss, choice = align_loss_indoor(cam, subs, return_choice=True)
    assert choice.tolist() == [1, 3, 2]
    per_cand = torch.stack([truncated_l1(cam.detach(), cands[:, k:k + 1], reduction="none")
                            for k in range(4)], 1)
    assert torch.isclose(loss, per_cand.gather(1, choice.view(3, 1)).mean())
    assert torch.isclose(align_loss_indoor(cam, subs), loss)
    # A dead object is never chosen.
    alive = torch.ones(3, 3)
    alive[0, 1] = 0
    _, choice = align_loss_indoor(cam, subs, alive=alive, return_choice=True)
    assert choice[0] != 1 and choice[1:].tolist() == [3, 2]
    loss.backward()
    assert cam.grad is not None and torch.isfinite(cam.grad).all()


def test_indoor_choice_is_the_minimum_truncated_l1_distance_not_the_truncated_mean():
    """Eq. 5 takes the candidate at the minimum (truncated) L1 distance. Candidate A is off by 0.5 on 4
    of 16 pixels (truncated L1 0.125, mean of its large errors 0.5); candidate B is off by 0.3 on all 16
    (truncated L1 0.3, mean of its large errors 0.3): A is closer, although its truncated mean is larger.
    Both already span [0, 1], so the candidates' min-max normalisation leaves them as built; the summed
    candidate H takes part too, and the choice must be whichever is nearest by truncated L1."""
    cam = torch.full([16], 0.5)
    cam[4], cam[5] = 0.3, 0.7
    a = cam.clone()
    a[0], a[1], a[2], a[3] = 0.0, 1.0, 0.0, 1.0                              # 4 errors of 0.5
    b = cam + torch.tensor([0.3, -0.3]).repeat(8)                           # 16 errors of 0.3
    b[4], b[5] = 0.0, 1.0
    assert torch.allclose((cam - b).abs(), torch.full([16], 0.3))
    cam, subs = cam.view(1, 1, 4, 4), torch.stack([a, b]).view(1, 2, 4, 4)
    cands = indoor_candidates(subs)
    torch.testing.assert_close(cands[:, :2], subs)
    e = (cam - cands).abs()
    trunc_l1 = (e * (e > 0.25)).mean((2, 3))[0]
    trunc_mean = torch.stack([truncated_l1(cam, cands[:, k:k + 1]) for k in range(3)])
    assert trunc_l1[0] < trunc_l1[1] and trunc_mean[0] > trunc_mean[1]  # A beats B only by distance
    best = int(trunc_l1.argmin())
    assert int(trunc_mean.argmin()) != best  # so the two rules disagree here
    loss, choice = align_loss_indoor(cam, subs, return_choice=True)
    assert choice.tolist() == [best]
    # The loss of the chosen candidate follows L_align's rule (mean over the pixels above tau).
    assert torch.isclose(loss, trunc_mean[best])
