"""Alignment losses between D's GradCAM maps and G's input heatmaps (paper §3.3, Eqs. 4-5).

Truncation (tau = 0.25, paper §3.3 and conference code, peers facts §1.6): e = |CAM - H| per pixel;
pixels with e <= tau count as "close enough" and are ignored, i.e. the loss is the mean of e over the
pixels with e > tau. When at most one pixel exceeds tau the loss falls back to the mean of e over all
pixels (small, and never an empty mean) -- exactly the conference code's rule. Non-finite pixels of e
are left out of both means. The mask is piecewise constant, so gradients reach only the selected
pixels (or every pixel in the fall-back case), each with weight 1 / (number of pixels averaged).

Eq. 5 (indoor) chooses, per sample, the candidate at the minimum distance: the truncated L1 norm (the
mean over all pixels of e with e <= tau set to 0), and trains it with the rule above.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from torch_utils import misc
from training.gradcam import minmax_normalize

REDUCTIONS = ("batch", "none")


def _truncated_mean(e: torch.Tensor, dims: tuple[int, ...], tau: float) -> torch.Tensor:
    """Truncated mean of e over `dims` without a host sync (torch.where instead of Python branches)."""
    finite = torch.isfinite(e)
    e = torch.where(finite, e, torch.zeros_like(e))
    above = (e > tau) & finite
    n_above = above.sum(dims).to(e.dtype)
    n_finite = finite.sum(dims).to(e.dtype)
    mean_above = (e * above).sum(dims) / n_above.clamp_min(1)
    mean_all = e.sum(dims) / n_finite.clamp_min(1)
    return torch.where(n_above > 1, mean_above, mean_all)


def truncated_l1(cam: torch.Tensor, target: torch.Tensor, tau: float = 0.25,
                 reduction: str = "batch") -> torch.Tensor:
    """Truncated L1 distance between cam and target, both [N, 1, r, r] in [0, 1].

    reduction 'batch': scalar -- mean of e = |cam - target| over the pixels of the WHOLE tensor with
    e > tau, or over all pixels when at most one pixel has e > tau (conference semantics).
    reduction 'none': [N] -- the same rule applied to each sample separately.
    """
    misc.check_choice("reduction", reduction, REDUCTIONS)
    if not tau >= 0:
        raise ValueError(f"tau must be >= 0, got {tau!r}")
    misc.assert_shape(cam, [None, 1, None, None], "cam")
    misc.assert_shape(target, list(cam.shape), "target")
    e = (cam - target).abs()
    dims = (0, 1, 2, 3) if reduction == "batch" else (1, 2, 3)
    return _truncated_mean(e, dims, tau)


def normalize_target(h: torch.Tensor) -> torch.Tensor:
    """Target map from sub-maps h [N, K, r, r]: H = sum_k h_k, then per-sample min-max to [0, 1] with
    detached stats -> [N, 1, r, r]. (The conference code averages the sub-maps instead; after the
    min-max normalisation the two are identical.)"""
    misc.assert_shape(h, [None, None, None, None], "h")
    return minmax_normalize(h.sum(dim=1, keepdim=True))


def align_loss(cams: Mapping[int, torch.Tensor], targets: Mapping[int, torch.Tensor],
               tau: float = 0.25) -> torch.Tensor:
    """L_align (Eq. 4): sum over levels r of truncated_l1(cams[r], targets[r], tau) (batch reduction).

    cams, targets: {r: [N, 1, r, r] in [0, 1]} with the same keys (use `normalize_target` for targets).
    """
    if set(cams) != set(targets) or not cams:
        raise ValueError(f"cams and targets must have the same non-empty keys, got {sorted(cams)} and "
                         f"{sorted(targets)}")
    return sum(truncated_l1(cams[r], targets[r], tau) for r in sorted(cams))


def indoor_candidates(sub_maps: torch.Tensor) -> torch.Tensor:
    """Candidates of Eq. 5 from sub-maps [N, K, r, r]: {H_1, ..., H_K, H = sum_k H_k}, each per-sample
    min-max normalised with detached stats -> [N, K + 1, r, r]."""
    misc.assert_shape(sub_maps, [None, None, None, None], "sub_maps")
    n, k, r0, r1 = sub_maps.shape
    cands = torch.cat([sub_maps, sub_maps.sum(dim=1, keepdim=True)], dim=1)
    return minmax_normalize(cands.reshape(n * (k + 1), 1, r0, r1)).reshape(n, k + 1, r0, r1)


def truncated_l1_norm(e: torch.Tensor, tau: float, dims: tuple[int, ...]) -> torch.Tensor:
    """||e||_1 with the values <= tau truncated to 0, as a mean over `dims` (all pixels; non-finite ones
    count as 0). Unlike `_truncated_mean` it grows with the number of pixels that are off, which is
    what "the minimum distance" of Eq. 5 compares."""
    e = torch.where(torch.isfinite(e), e, torch.zeros_like(e))
    return (e * (e > tau)).mean(dims)


def align_loss_indoor(cam: torch.Tensor, sub_maps: torch.Tensor, tau: float = 0.25,
                      alive: torch.Tensor | None = None, return_choice: bool = False):
    """L_align_indoor (Eq. 5): per sample, the candidate of {H_1..H_K, H} at the minimum truncated L1
    distance to the CAM (`truncated_l1_norm`), and its loss by the same rule as L_align (the truncated
    mean of `truncated_l1`); the mean over samples. Choosing by the truncated mean instead would prefer a
    candidate with a few large errors over one with many moderate ones, whatever their L1 distance.

    cam [N, 1, r, r] in [0, 1]; sub_maps [N, K, r, r] (rendered object Gaussians); alive [N, K] 0/1
    (optional) excludes dead objects from the candidates (the sum H is always a candidate).
    Returns the scalar loss, or (loss, choice [N] int64) with return_choice=True, where choice = k < K
    picks H_{k+1} and choice = K picks the full H. Gradients flow only through the chosen candidate.
    """
    misc.assert_shape(cam, [None, 1, None, None], "cam")
    n, k = sub_maps.shape[:2]
    misc.assert_shape(sub_maps, [cam.shape[0], None, cam.shape[2], cam.shape[3]], "sub_maps")
    cands = indoor_candidates(sub_maps)                                        # [N, K+1, r, r]
    e = (cam - cands).abs()                                                    # [N, K+1, r, r]
    dist = truncated_l1_norm(e.detach(), tau, (2, 3))                          # [N, K+1]
    if alive is not None:
        misc.assert_shape(alive, [n, k], "alive")
        usable = torch.cat([alive.to(torch.bool), alive.new_ones(n, 1, dtype=torch.bool)], dim=1)
        dist = torch.where(usable, dist, torch.full_like(dist, float("inf")))
    choice = dist.argmin(dim=1)                                                # [N]
    chosen = e.gather(1, choice.view(n, 1, 1, 1).expand(n, 1, *e.shape[2:]))   # [N, 1, r, r]
    loss = _truncated_mean(chosen, (1, 2, 3), tau).mean()
    return (loss, choice) if return_choice else loss
