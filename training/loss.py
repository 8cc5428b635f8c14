"""StyleGAN2 losses with lazy regularisation, plus SpatialGAN's GradCAM alignment loss.

Phases (see StyleGAN2-ADA): `Gmain` (adversarial + alignment), `Greg` (path length), `Gboth`,
`Dmain` (adversarial), `Dreg` (R1), `Dboth`. The training loop calls `accumulate_gradients` once per
phase and round; each call back-propagates `gain * loss` so that lazy phases can be scaled by their
interval, and returns D's logits for the round's real images (ADA's signal) when it computed them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from torch_utils import training_stats
from torch_utils.misc import check_choice
from torch_utils.ops.conv2d_grad import no_weight_gradients
from training import alignment, gradcam, heatmaps
from training.config import ALIGN_DEFAULTS

PHASES = ("Gmain", "Greg", "Gboth", "Dmain", "Dreg", "Dboth")


@dataclass
class AlignOptions:
    """SpatialGAN alignment loss options (paper §3.3; conference code differences noted)."""

    enabled: bool = True
    # Defaults from training.config.ALIGN_DEFAULTS (one source: the resolved options write them out).
    weight: float = ALIGN_DEFAULTS["weight"]
    tau: float = ALIGN_DEFAULTS["tau"]
    resolutions: list[int] = field(default_factory=lambda: list(ALIGN_DEFAULTS["resolutions"]))  # D's maps
    indoor: bool = ALIGN_DEFAULTS["indoor"]  # Eq. 5: min over {H_1..H_n, H}
    # The conference code's GradCAM. The journal's canonical one (ReLU after the channel sum, of D's logit)
    # is all zero on many of the fakes D rejects, where the loss then has no gradient; a CPU run trained
    # no steerability with it (README, "GradCAM variant").
    cam_variant: str = ALIGN_DEFAULTS["cam_variant"]  # 'eqgan' (ReLU per channel) | 'canonical' (after the sum)
    cam_score: str = ALIGN_DEFAULTS["cam_score"]  # 'g_loss' (softplus(-D), conference) | 'logit' (maximise D)

    def __post_init__(self) -> None:
        check_choice("align.cam_variant", self.cam_variant, ("canonical", "eqgan"))
        check_choice("align.cam_score", self.cam_score, ("logit", "g_loss"))
        if not self.tau >= 0:
            raise ValueError(f"align.tau must be >= 0, got {self.tau!r}")
        if not self.weight >= 0:
            raise ValueError(f"align.weight must be >= 0, got {self.weight!r}")


def mix_styles(G, ws: torch.Tensor, z: torch.Tensor, c: torch.Tensor, prob: float,
               heatmap_vec: torch.Tensor | None = None) -> torch.Tensor:
    """Style mixing: with probability `prob`, ws[:, k:] come from a second latent, k ~ U{1..num_ws-1}."""
    if prob <= 0:
        return ws
    num_ws = ws.shape[1]
    cutoff = torch.empty([], dtype=torch.int64, device=ws.device).random_(1, num_ws)
    cutoff = torch.where(torch.rand([], device=ws.device) < prob, cutoff, torch.full_like(cutoff, num_ws))
    ws2 = G.mapping(torch.randn_like(z), c, update_emas=False, heatmap_vec=heatmap_vec)
    mask = torch.arange(num_ws, device=ws.device)[None, :, None] >= cutoff
    return torch.where(mask, ws2, ws)


def level_for_resolution(sampler, resolution: int) -> int:
    """Heatmap level compared with D's attention at `resolution`.

    Hierarchical samplers render level l at `level_resolutions[l]` (4/8/16): the level whose native
    resolution is closest (in octaves) to D's feature map. A single-level (multi-object) spec is
    compared at every resolution (paper §3.3, Eq. 5).
    """
    level_res = list(getattr(sampler, "level_resolutions", (4,)))
    dist = [abs(np.log2(resolution) - np.log2(r)) for r in level_res]
    return int(np.argmin(dist))


class StyleGAN2Loss:
    """Non-saturating logistic loss, lazy R1, lazy path length, and the alignment loss.

    Args:
        G, D: the networks (trained copies, not G_ema).
        augment_pipe: module applied to every image D sees, or None.
        r1_gamma: R1 weight gamma (penalty gamma/2 * ||grad||^2).
        style_mixing_prob: probability of mixing two latents per minibatch.
        pl_weight, pl_batch_shrink, pl_decay: path-length regulariser.
        align: alignment-loss options, or None/disabled for the baseline.
    """

    def __init__(self, G, D, augment_pipe=None, r1_gamma: float = 10.0, style_mixing_prob: float = 0.9,
                 pl_weight: float = 2.0, pl_batch_shrink: int = 2, pl_decay: float = 0.01,
                 align: AlignOptions | None = None):
        self.G, self.D, self.augment_pipe = G, D, augment_pipe
        self.r1_gamma = r1_gamma
        self.style_mixing_prob = style_mixing_prob
        self.pl_weight, self.pl_batch_shrink, self.pl_decay = pl_weight, pl_batch_shrink, pl_decay
        self.align = align if (align is not None and align.enabled and G.heatmap_sampler is not None) else None
        self.pl_mean = torch.zeros([])

    # -- state for exact resume ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"pl_mean": self.pl_mean.detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        # In place: a captured training phase (training.phase_graphs) keeps reading this very tensor.
        self.pl_mean.copy_(state["pl_mean"])

    # -- forward helpers ------------------------------------------------------------------------------
    def run_G(self, z, c, spec, style_z=None):
        """Returns (img [N,C,H,W], ws [N,num_ws,w_dim]). style_z: SEL_indoor's per-object z [N, K, z_dim]
        (`G.style_z(spec)`, drawn before the phase; None: drawn here).

        Every call moves G's `w_avg` towards this batch's mean w (as StyleGAN2-ADA does in each phase
        that runs G); the second latent of style mixing does not.
        """
        # The `flatten` ablation feeds the flattened heatmap to the mapping network (None otherwise).
        heatmap_vec = self.G.heatmap_vec(spec) if spec is not None else None
        ws = self.G.mapping(z, c, update_emas=True, heatmap_vec=heatmap_vec)
        ws = mix_styles(self.G, ws, z, c, self.style_mixing_prob, heatmap_vec)
        object_ws = self.G.object_ws(spec, c, style_z=style_z) if spec is not None else None
        img = self.G.synthesis(ws, heatmaps=spec, object_ws=object_ws)
        return img, ws

    def run_D(self, img, c, return_features: bool = False):
        if self.augment_pipe is not None:
            img = self.augment_pipe(img)
        return self.D(img, c, return_features=return_features)

    def _augmenting(self) -> bool:
        return self.augment_pipe is not None and self.augment_pipe.p_value() > 0

    # -- the alignment loss ---------------------------------------------------------------------------
    def alignment_loss(self, gen_img, gen_c, spec, logits, feats) -> torch.Tensor:
        """L_align (Eq. 4) or L_align_indoor (Eq. 5) summed over the GradCAM resolutions.

        GradCAM needs D's view of the image in the heatmap's coordinates, so when augmentation is on
        (geometric ops would move the attention), D is re-run on the un-augmented image.
        """
        opts = self.align
        if self._augmenting():
            logits, feats = self.D(gen_img, gen_c, return_features=True)
        resolutions = [r for r in opts.resolutions if r in feats]
        if not resolutions:
            raise ValueError(f"align.resolutions={opts.resolutions} match none of D's feature maps {sorted(feats)}")
        score = gradcam.cam_score(logits, opts.cam_score)
        cams = gradcam.gradcam(score, {r: feats[r] for r in resolutions}, resolutions, variant=opts.cam_variant)
        levels = [level_for_resolution(self.G.heatmap_sampler, r) for r in resolutions]
        total = gen_img.new_zeros([])
        for res, level in zip(resolutions, levels):
            sub_maps = heatmaps.render(spec, res, level).to(cams[res].dtype)
            if opts.indoor:
                term, choice = alignment.align_loss_indoor(cams[res], sub_maps, tau=opts.tau,
                                                           alive=spec.alive[level], return_choice=True)
                # Fraction of samples whose attention matched the whole map H rather than one object.
                training_stats.report(f"Align/picked_full_{res}", (choice == sub_maps.shape[1]).float())
            else:
                term = alignment.truncated_l1(cams[res], alignment.normalize_target(sub_maps), tau=opts.tau)
            training_stats.report(f"Align/cam_mean_{res}", cams[res].mean())
            training_stats.report(f"Align/heatmap_mean_{res}", sub_maps.mean())
            training_stats.report(f"Loss/G/align_{res}", term)
            total = total + term
        training_stats.report("Loss/G/align", total)
        return total

    # -- phases ----------------------------------------------------------------------------------------
    def accumulate_gradients(self, phase: str, real_img, real_c, gen_z, gen_c, gen_spec,
                             gain: float, gen_style_z: torch.Tensor | None = None) -> torch.Tensor | None:
        """Back-propagate the loss of `phase` for one round, scaled by `gain` (`gen_style_z`: see run_G).

        Returns D's detached logits [N, 1] for `real_img` when the phase ran D on them, else None.
        """
        check_choice("phase", phase, PHASES)
        do_Gmain = phase in ("Gmain", "Gboth")
        do_Dmain = phase in ("Dmain", "Dboth")
        do_Gpl = phase in ("Greg", "Gboth") and self.pl_weight != 0
        do_Dr1 = phase in ("Dreg", "Dboth") and self.r1_gamma != 0
        if do_Gmain:
            self._g_main(gen_z, gen_c, gen_spec, gain, gen_style_z)
        if do_Gpl:
            self._g_pl(gen_z, gen_c, gen_spec, gain, gen_style_z)
        loss_fake = self._d_fake(gen_z, gen_c, gen_spec, gain, gen_style_z) if do_Dmain else None
        if do_Dmain or do_Dr1:
            return self._d_real(real_img, real_c, gain, loss_fake, do_Dr1)
        return None

    def _g_main(self, gen_z, gen_c, spec, gain, style_z=None) -> None:
        with torch.autograd.profiler.record_function("Gmain_forward"):
            gen_img, _ = self.run_G(gen_z, gen_c, spec, style_z)
            logits, feats = self.run_D(gen_img, gen_c, return_features=True)
            training_stats.report("Loss/scores/fake", logits)
            training_stats.report("Loss/signs/fake", logits.sign())
            loss_G = F.softplus(-logits).mean()
            training_stats.report("Loss/G/loss", loss_G)
            if self.align is not None:
                loss_G = loss_G + self.align.weight * self.alignment_loss(gen_img, gen_c, spec, logits, feats)
        with torch.autograd.profiler.record_function("Gmain_backward"):
            loss_G.mul(gain).backward()

    def _g_pl(self, gen_z, gen_c, spec, gain, style_z=None) -> None:
        with torch.autograd.profiler.record_function("Gpl_forward"):
            n = max(gen_z.shape[0] // self.pl_batch_shrink, 1)
            sub_spec = spec.select(slice(0, n)) if spec is not None else None  # a slice: no index tensor
            gen_img, ws = self.run_G(gen_z[:n], gen_c[:n], sub_spec, style_z[:n] if style_z is not None else None)
            noise = torch.randn_like(gen_img) / np.sqrt(gen_img.shape[2] * gen_img.shape[3])
            with no_weight_gradients():  # only d/dws here; G's weight gradients come in the backward
                (grads,) = torch.autograd.grad((gen_img * noise).sum(), ws, create_graph=True)
            lengths = grads.square().sum(2).mean(1).sqrt()
            if self.pl_mean.device != lengths.device:
                self.pl_mean = self.pl_mean.to(lengths.device)
            # The penalty uses the updated mean with its (small, pl_decay-weighted) gradient, as upstream.
            # The running mean is updated in place (a captured phase replays this update on this tensor).
            pl_mean = self.pl_mean.lerp(lengths.mean(), self.pl_decay)
            self.pl_mean.copy_(pl_mean.detach())
            penalty = (lengths - pl_mean).square()
            training_stats.report("Loss/pl_penalty", penalty)
            loss = penalty * self.pl_weight
            training_stats.report("Loss/G/reg", loss)
        with torch.autograd.profiler.record_function("Gpl_backward"):
            # `gen_img[:, 0, 0, 0] * 0` keeps every synthesis output in the graph (DDP-friendly, no-op).
            (gen_img[:, 0, 0, 0] * 0 + loss).mean().mul(gain).backward()

    def _d_fake(self, gen_z, gen_c, spec, gain, style_z=None) -> torch.Tensor:
        """D's loss on generated images; returns the per-sample loss [N, 1] (detached) for logging."""
        with torch.autograd.profiler.record_function("Dgen_forward"):
            with torch.no_grad():
                gen_img, _ = self.run_G(gen_z, gen_c, spec, style_z)
            logits = self.run_D(gen_img, gen_c)
            training_stats.report("Loss/scores/fake", logits)
            training_stats.report("Loss/signs/fake", logits.sign())
            loss = F.softplus(logits)
        with torch.autograd.profiler.record_function("Dgen_backward"):
            loss.mean().mul(gain).backward()
        return loss.detach()

    def _d_real(self, real_img, real_c, gain, loss_fake: torch.Tensor | None, do_r1: bool) -> torch.Tensor:
        """D's loss on real images (the adversarial part when `loss_fake` is given, R1 when `do_r1`).
        Returns the detached logits [N, 1]."""
        do_main = loss_fake is not None
        name = "Dreal_Dr1" if do_main and do_r1 else ("Dreal" if do_main else "Dr1")
        with torch.autograd.profiler.record_function(name + "_forward"):
            real = real_img.detach().requires_grad_(do_r1)
            logits = self.run_D(real, real_c)
            training_stats.report("Loss/scores/real", logits)
            training_stats.report("Loss/signs/real", logits.sign())
            loss = logits.new_zeros([])
            if do_main:
                loss_real = F.softplus(-logits)
                training_stats.report("Loss/D/loss", loss_fake + loss_real.detach())  # per sample, both terms
                loss = loss + loss_real.mean()
            if do_r1:
                with no_weight_gradients():
                    (grads,) = torch.autograd.grad(logits.sum(), real, create_graph=True, only_inputs=True)
                penalty = grads.square().sum([1, 2, 3])
                training_stats.report("Loss/r1_penalty", penalty)
                loss_r1 = penalty * (self.r1_gamma / 2)
                training_stats.report("Loss/D/reg", loss_r1)
                loss = loss + loss_r1.mean()
        with torch.autograd.profiler.record_function(name + "_backward"):
            loss.mul(gain).backward()
        return logits.detach()
