"""Losses: each term's value on tiny fixed cases, gradient routing, and a few steps of every preset."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from torch_utils import training_stats
from training import gradcam
from training.config import CONFIG_DIR, list_presets, resolve_options
from training.dataset import open_dataset
from training.loss import AlignOptions, StyleGAN2Loss, level_for_resolution, mix_styles
from training.networks import Discriminator, Generator
from training.training_loop import build_run, start_data, train_step

SPATIAL = dict(encoding="sel_norm", sampler="hierarchical", resolutions=[4, 8, 16], hidden_channels=8)


def tiny_G(spatial=None, res=16) -> Generator:
    return Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=res, img_channels=3,
                     mapping_kwargs=dict(num_layers=2),
                     synthesis_kwargs=dict(channel_base=256, channel_max=16, num_fp16_res=0, conv_clamp=None),
                     spatial_kwargs=spatial)


def tiny_D(res=16) -> Discriminator:
    return Discriminator(c_dim=0, img_resolution=res, img_channels=3, channel_base=256, channel_max=16,
                         num_fp16_res=0, conv_clamp=None, epilogue_kwargs=dict(mbstd_group_size=2))


class LinearD(torch.nn.Module):
    """D(x) = sum(a * x): its input gradient is `a`, so R1 has a closed form."""

    def __init__(self, res=16):
        super().__init__()
        self.a = torch.nn.Parameter(torch.linspace(-1, 1, 3 * res * res).reshape(1, 3, res, res))

    def forward(self, img, c, return_features=False):
        logits = (img * self.a).sum([1, 2, 3])[:, None]
        return (logits, {}) if return_features else logits


COLLECTOR: list[training_stats.Collector] = []  # the current test's collector (set by `fresh_stats`)


def collect(name: str) -> float:
    """Mean of `name` over everything the current test reported."""
    COLLECTOR[0].update()
    return COLLECTOR[0].mean(name)


@pytest.fixture(autouse=True)
def fresh_stats():
    training_stats.reset()
    COLLECTOR[:] = [training_stats.Collector(regex=".*")]
    yield
    training_stats.reset()


def test_generator_loss_is_nonsaturating_logistic():
    torch.manual_seed(0)
    G, D = tiny_G(), tiny_D()
    loss = StyleGAN2Loss(G, D, style_mixing_prob=0, pl_weight=0, r1_gamma=0)
    z, c = torch.randn(4, 16), torch.zeros(4, 0)
    G.requires_grad_(True)
    D.requires_grad_(False)  # the training loop freezes the other network during a phase
    loss.accumulate_gradients("Gmain", None, None, z, c, None, gain=1)
    with torch.no_grad():  # noise strengths start at 0, so the random noise does not matter here
        expected = F.softplus(-D(G(z, c), c)).mean().item()
    assert collect("Loss/G/loss") == pytest.approx(expected, rel=1e-5)
    assert all(p.grad is None for p in D.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in G.parameters())


def test_r1_penalty_has_closed_form_for_linear_D():
    G, D = tiny_G(), LinearD()
    gamma = 3.0
    loss = StyleGAN2Loss(G, D, r1_gamma=gamma, style_mixing_prob=0)
    real = torch.rand(2, 3, 16, 16) * 2 - 1
    D.requires_grad_(True)
    loss.accumulate_gradients("Dreg", real, torch.zeros(2, 0), None, None, None, gain=1)
    assert collect("Loss/r1_penalty") == pytest.approx(D.a.square().sum().item(), rel=1e-5)
    assert collect("Loss/D/reg") == pytest.approx(gamma / 2 * D.a.square().sum().item(), rel=1e-5)
    # d/da of gamma/2 * ||a||^2 = gamma * a: R1's gradient reaches D's parameters.
    assert torch.allclose(D.a.grad, gamma * D.a.detach(), atol=1e-5)


def test_discriminator_loss_values():
    torch.manual_seed(1)
    G, D = tiny_G(), LinearD()
    loss = StyleGAN2Loss(G, D, r1_gamma=0, style_mixing_prob=0)
    real, z, c = torch.rand(2, 3, 16, 16), torch.randn(2, 16), torch.zeros(2, 0)
    D.requires_grad_(True)
    real_logits = loss.accumulate_gradients("Dmain", real, c, z, c, None, gain=1)
    with torch.no_grad():  # noise strengths start at 0: G(z) is the image D saw
        expected = (F.softplus(D(G(z, c), c)) + F.softplus(-D(real, c))).mean().item()
        assert torch.equal(real_logits, D(real, c))  # returned for ADA
    assert collect("Loss/D/loss") == pytest.approx(expected, rel=1e-5)
    assert collect("Loss/signs/real") == pytest.approx(torch.sign(D(real, c)).mean().item())
    assert loss.accumulate_gradients("Gmain", None, None, z, c, None, gain=1) is None


def test_every_training_forward_of_G_updates_w_avg_but_not_the_mixing_latent():
    torch.manual_seed(4)
    G, D = tiny_G(), tiny_D()
    loss = StyleGAN2Loss(G, D, style_mixing_prob=1, pl_weight=2)
    z, c = torch.randn(4, 16), torch.zeros(4, 0)
    for phase in ("Gmain", "Greg", "Dmain"):
        before = G.mapping.w_avg.clone()
        G.requires_grad_(phase.startswith("G"))
        real = torch.rand(4, 3, 16, 16) * 2 - 1 if phase == "Dmain" else None
        n = 2 if phase == "Greg" else 4  # path length runs on batch / pl_batch_shrink
        with torch.no_grad():
            w_mean = G.mapping(z[:n], c[:n]).mean(dim=0)[0]
        loss.accumulate_gradients(phase, real, c if real is not None else None, z, c, None, gain=1)
        beta = G.mapping.w_avg_beta
        assert torch.allclose(G.mapping.w_avg, w_mean.lerp(before, beta), atol=1e-6), phase


def test_path_length_updates_running_mean_and_reaches_G_only():
    torch.manual_seed(2)
    G, D = tiny_G(), tiny_D()
    loss = StyleGAN2Loss(G, D, pl_weight=2, pl_decay=0.01, style_mixing_prob=0)
    G.requires_grad_(True)
    D.requires_grad_(False)
    loss.accumulate_gradients("Greg", None, None, torch.randn(4, 16), torch.zeros(4, 0), None, gain=4)
    assert loss.pl_mean.item() > 0
    penalty = collect("Loss/pl_penalty")
    assert penalty == pytest.approx(collect("Loss/G/reg") / 2, rel=1e-5)
    assert all(p.grad is None for p in D.parameters())
    assert sum(p.grad.abs().sum().item() for p in G.parameters() if p.grad is not None) > 0


INDOOR = dict(encoding="sel_indoor", sampler="multi_object", hidden_channels=8)


@pytest.mark.parametrize("spatial, indoor", [(SPATIAL, False), (INDOOR, True)], ids=["sel_norm", "sel_indoor"])
def test_alignment_loss_trains_G_and_never_D(spatial, indoor):
    torch.manual_seed(3)
    G, D = tiny_G(spatial), tiny_D()
    D.requires_grad_(False)  # as in every G phase of the loop: GradCAM must still work on a frozen D
    spec = G.heatmap_sampler(4, generator=torch.Generator().manual_seed(0))
    z, c = torch.randn(4, 16), torch.zeros(4, 0)
    grads = {}
    for weight in (0.0, 1.0):
        G.zero_grad(set_to_none=True)
        loss = StyleGAN2Loss(G, D, style_mixing_prob=0, align=AlignOptions(weight=weight, indoor=indoor))
        G.requires_grad_(True)
        torch.manual_seed(5)
        loss.accumulate_gradients("Gmain", None, None, z, c, spec, gain=1)
        assert all(p.grad is None for p in D.parameters()), "D must stay frozen under L_align"
        grads[weight] = torch.cat([p.grad.flatten() for p in G.parameters() if p.grad is not None])
    assert collect("Loss/G/align") > 0
    assert not torch.allclose(grads[0.0], grads[1.0]), "the alignment term changed no gradient of G"
    if indoor:  # Eq. 5's choice per sample (the full map or one object's), logged as a fraction of 4
        assert collect("Align/picked_full_4") * 4 in (0, 1, 2, 3, 4)


def test_default_gradcam_still_sees_the_fakes_that_D_rejects():
    """Why the conference code's GradCAM is the default: once D rejects the fakes (as it soon does in
    training), the canonical GradCAM of D's logit, ReLU(sum_c w_c A_c), is all zero on many of them, so
    L_align has no gradient there. The default (ReLU per channel, of the G loss) keeps a map for each."""
    torch.manual_seed(0)
    G, D = tiny_G(SPATIAL), tiny_D()
    data = open_dataset("synthetic:shapes:16", max_size=64)
    reals = torch.stack([torch.as_tensor(data[i][0]) for i in range(64)]).float() / 127.5 - 1
    c = torch.zeros(8, 0)
    opt = torch.optim.Adam(D.parameters(), lr=0.002, betas=(0.0, 0.99))
    for step in range(50):  # D alone, on fresh fakes of a fixed G
        with torch.no_grad():
            fakes = G(torch.randn(8, 16), c, heatmaps=G.heatmap_sampler(8))
        loss = F.softplus(D(fakes, c)).mean() + F.softplus(-D(reals[torch.randint(0, 64, (8,))], c)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        fakes = G(torch.randn(16, 16), c.new_zeros(16, 0), heatmaps=G.heatmap_sampler(16))

    def all_zero_cams(variant: str, score: str) -> int:
        logits, feats = D(fakes, c.new_zeros(16, 0), return_features=True)
        assert logits.mean() < -2, "D should reject the fakes"
        cams = gradcam.gradcam(gradcam.cam_score(logits, score), feats, [4, 8], variant=variant)
        return sum(int((cam.flatten(1).amax(1) == 0).sum()) for cam in cams.values())

    default = AlignOptions()
    assert all_zero_cams(default.cam_variant, default.cam_score) == 0
    assert all_zero_cams("canonical", "logit") >= 4
    assert all_zero_cams("canonical", "g_loss") == 0  # the G loss flips the weights' sign on such a fake


def test_align_disabled_gives_baseline_loss():
    G, D = tiny_G(SPATIAL), tiny_D()
    loss = StyleGAN2Loss(G, D, align=AlignOptions(enabled=False))
    assert loss.align is None
    spec = G.heatmap_sampler(2, generator=torch.Generator().manual_seed(1))
    G.requires_grad_(True)
    loss.accumulate_gradients("Gmain", None, None, torch.randn(2, 16), torch.zeros(2, 0), spec, gain=1)
    assert training_stats.Collector().names().count("Loss/G/align") == 0


def test_style_mixing_probability_extremes():
    G = tiny_G()
    z, c = torch.randn(3, 16), torch.zeros(3, 0)
    ws = G.mapping(z, c)
    assert torch.equal(mix_styles(G, ws, z, c, 0.0), ws)
    torch.manual_seed(0)
    mixed = mix_styles(G, ws, z, c, 1.0)
    same = (mixed == ws).all(-1).all(0)  # [num_ws]: True where the layer kept the first latent
    assert same[0] and not same.all(), "with prob 1 a suffix of layers must come from the second latent"
    first_mixed = int((~same).nonzero()[0])
    assert (~same[first_mixed:]).all() and same[:first_mixed].all()


def test_level_for_resolution_routes_by_octave():
    class Hier:
        level_resolutions = (4, 8, 16)

    class Multi:
        level_resolutions = (4,)

    assert [level_for_resolution(Hier, r) for r in (4, 8, 16, 32)] == [0, 1, 2, 2]
    assert [level_for_resolution(Multi, r) for r in (4, 8, 16)] == [0, 0, 0]


def test_bad_align_options_name_the_value():
    with pytest.raises(ValueError, match="cam_variant"):
        AlignOptions(cam_variant="bogus")
    with pytest.raises(ValueError, match="tau"):
        AlignOptions(tau=-1)
    with pytest.raises(ValueError, match="phase"):
        StyleGAN2Loss(tiny_G(), tiny_D()).accumulate_gradients("Gfoo", None, None, None, None, None, 1)


# ---------------------------------------------------------------------------------------------------
# A few training steps for every preset and every ablation switch, shrunk to CPU size.

def shrink_preset(name: str, tmp_path) -> str:
    """The preset with its hyper-parameters and SpatialGAN switches, but tiny widths, written to a file."""
    preset = json.loads((CONFIG_DIR / f"{name}.json").read_text())
    preset.update(z_dim=16, w_dim=16, channel_base=256, channel_max=16, map_layers=2, num_fp16_res=0,
                  conv_clamp=None, auto=False, fmaps=None, batch=4, mbstd=2, ref_gpus=1, lrate=0.002,
                  gamma=preset.get("gamma") or 0.1, ema_kimg=1)
    if preset.get("spatial"):
        preset["spatial"]["hidden_channels"] = 8
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(preset))
    return str(path)


def run_steps(cfg: str, steps: int = 2, data: str = "synthetic:shapes:16", **overrides) -> None:
    ds = open_dataset(data)
    info = dict(kwargs=ds.kwargs, name=ds.name, resolution=ds.resolution, num_channels=3, label_dim=0)
    opts = resolve_options(cfg, info, 1, **dict(dict(batch=4, batch_gpu=2, workers=0, metrics=[]), **overrides))
    run = build_run(opts, torch.device("cpu"))
    start_data(run)
    g_before = [p.clone() for p in run.G.parameters()]
    for _ in range(steps):
        train_step(run)
    assert all(torch.isfinite(p).all() for p in run.G.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(g_before, run.G.parameters()))


@pytest.mark.slow
@pytest.mark.parametrize("name", list_presets())
def test_every_preset_trains_at_tiny_size(name, tmp_path):
    data = "synthetic:rooms:16" if "bedroom" in name or "indoor" in name else "synthetic:shapes:16"
    run_steps(shrink_preset(name, tmp_path), data=data)


ABLATIONS = {
    "table4-noise": dict(sampler="noise"),
    "table4-non-hierarchical": dict(sampler="non_hierarchical"),
    "table5-flatten": dict(encoding="flatten"),
    "table5-sel-concat": dict(encoding="sel_concat"),
    "fine-processing-dilated": dict(processing="fine", dilation=2),
    "kernel-7": dict(kernel_size=7),
    "table1-conf-multi-object": dict(sampler="multi_object", resolutions="all", compose="separate"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablation_switches_train(name, tmp_path):
    run_steps(shrink_preset("tiny-spatial", tmp_path), spatial=ABLATIONS[name])


def test_align_off_and_ada_geometric_augmentation_train(tmp_path):
    # R1 through the geometric augmentation needs the twice-differentiable grid sampler.
    run_steps(shrink_preset("tiny-spatial", tmp_path), steps=1, align={"enabled": False}, aug="fixed", p=1.0,
              augpipe="bgc", gamma=1.0)
