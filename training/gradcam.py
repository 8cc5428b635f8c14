"""GradCAM attention maps of the discriminator, differentiable w.r.t. D's activations (paper §3.1, §3.3).

Procedure, for each requested resolution r with block-output activations A = feats[r] [N, C, r, r]:
  1. weights w_c = spatial mean of d score / d A_c, from `torch.autograd.grad(score, feats,
     retain_graph=True)`: no module hooks and no parameter gradients (nothing is accumulated in
     `.grad`). The weights are DETACHED, as in the conference code: G is trained through A only.
  2. variant 'canonical' (Selvaraju et al.): CAM = ReLU(sum_c w_c A_c)  -- ReLU after the sum.
     variant 'eqgan' (conference code, peers facts §1.5): CAM = sum_c ReLU(w_c A_c) -- ReLU per
     channel before the sum, so negatively weighted channels can never cancel positive evidence.
  3. per-sample min-max normalisation to [0, 1]; min and max are DETACHED (so the loss shapes the map,
     not its range), eps guards a constant map, NaN -> 0 and +-inf -> 1/0.
The CAM stays differentiable w.r.t. A, hence w.r.t. the image and G.

Sign convention of the score (`cam_score`): the paper's maps use gradients that MAXIMISE D(x), i.e.
score = sum_i D(x_i) ('logit', this module's default); the conference code differentiates the G loss
sum_i softplus(-D(x_i)) ('g_loss'), whose gradient is the same up to a negative per-sample factor
-sigmoid(-D(x_i)). Per sample that flips the sign of every w_c, which changes which channels survive
the ReLU; the paper reports the maps to be almost the same either way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from torch_utils import misc
from torch_utils.ops.conv2d_grad import no_weight_gradients

CAM_VARIANTS = ("canonical", "eqgan")
SCORE_CONVENTIONS = ("logit", "g_loss")


def cam_score(logits: torch.Tensor, convention: str = "logit") -> torch.Tensor:
    """Scalar whose gradient defines the CAM weights. logits [N] or [N, 1] (D outputs).

    'logit':  sum_i D(x_i)                  (maximise D; paper §3.1; this function's default)
    'g_loss': sum_i softplus(-D(x_i))       (G non-saturating loss; conference code; training's default,
                                             see AlignOptions)
    """
    misc.check_choice("convention", convention, SCORE_CONVENTIONS)
    if convention == "logit":
        return logits.sum()
    return F.softplus(-logits).sum()


def minmax_normalize(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-sample min-max to [0, 1] of x [N, ...] with detached min/max; non-finite values made finite.

    A constant map becomes all zeros (0 / eps) rather than NaN.
    """
    flat = x.detach().flatten(1)
    finite = torch.isfinite(flat)
    big = torch.finfo(flat.dtype).max
    lo = torch.where(finite, flat, torch.full_like(flat, big)).amin(1)
    hi = torch.where(finite, flat, torch.full_like(flat, -big)).amax(1)
    lo = torch.where(hi >= lo, lo, torch.zeros_like(lo))  # No finite value at all: leave as is.
    hi = torch.where(hi >= lo, hi, torch.zeros_like(hi))
    shape = [-1] + [1] * (x.ndim - 1)
    out = (x - lo.view(shape)) / (hi - lo).view(shape).clamp_min(eps)
    return torch.nan_to_num(out, nan=0.0, posinf=1.0, neginf=0.0)


def _cam_from_weights(weights: torch.Tensor, acts: torch.Tensor, variant: str) -> torch.Tensor:
    """weights [N, C, 1, 1] (detached), acts [N, C, r, r] -> unnormalised CAM [N, 1, r, r]."""
    weighted = weights * acts
    if variant == "canonical":
        return F.relu(weighted.sum(dim=1, keepdim=True))
    return F.relu(weighted).sum(dim=1, keepdim=True)


def gradcam(score: torch.Tensor, feats: Mapping[int, torch.Tensor], resolutions: Sequence[int],
            variant: str = "canonical") -> dict[int, torch.Tensor]:
    """GradCAM of `score` at the D activations `feats[r]` for every r in `resolutions`.

    score: a scalar (or [N], which is summed) computed from `feats` -- see `cam_score`.
    feats: {r: [N, C_r, r, r]} block outputs of the same forward pass (not detached).
    Returns {r: CAM [N, 1, r, r] in [0, 1]}, differentiable w.r.t. feats (see the module docstring).
    The graph of `score` is retained, so the caller may still back-propagate through it.
    """
    misc.check_choice("variant", variant, CAM_VARIANTS)
    resolutions = [int(r) for r in resolutions]
    if not resolutions:
        raise ValueError("resolutions must name at least one feature resolution, got []")
    missing = [r for r in resolutions if r not in feats]
    if missing:
        raise ValueError(f"resolutions {missing} not in feats (available: {sorted(feats)})")
    if score.ndim > 1 or (score.ndim == 1 and score.numel() != feats[resolutions[0]].shape[0]):
        raise ValueError(f"score must be a scalar or [N], got shape {list(score.shape)}")
    acts = [feats[r] for r in resolutions]
    for r, a in zip(resolutions, acts):
        misc.assert_shape(a, [None, None, r, r], f"feats[{r}]")
    with no_weight_gradients():  # d score / d acts only: D's weight gradients would be thrown away
        grads = torch.autograd.grad(score.sum(), acts, retain_graph=True, allow_unused=True)
    cams = {}
    for r, a, g in zip(resolutions, acts, grads):
        if g is None:  # score does not depend on this block: zero weights, an all-zero CAM.
            g = torch.zeros_like(a)
        weights = g.detach().mean(dim=(2, 3), keepdim=True)
        cams[r] = minmax_normalize(_cam_from_weights(weights, a, variant))
    return cams
