"""training/config.py: presets resolve at their resolution; auto formulas, lazy-reg correction, overrides."""

import dataclasses
import json

import pytest

from training import config
from training.config import CONFIG_DIR, ConfigError, resolve_options


def info(resolution: int, channels: int = 3, label_dim: int = 0) -> dict:
    """A dataset description as train.py builds it (no data needed)."""
    return dict(kwargs=dict(path=f"synthetic:shapes:{resolution}"), name=f"fake{resolution}",
                resolution=resolution, num_channels=channels, label_dim=label_dim)


@pytest.mark.parametrize("name", config.list_presets())
def test_every_preset_resolves_at_its_resolution(name):
    preset = config.load_preset(name)
    res = preset.get("resolution") or 64  # auto / cifar take the dataset's resolution
    opts = resolve_options(name, info(res))
    assert opts["cfg"] == name and opts["resolution"] == res
    assert opts["G_kwargs"]["img_resolution"] == res and opts["D_kwargs"]["img_resolution"] == res
    assert opts["batch"] % opts["batch_gpu"] == 0 and opts["kimg"] > 0
    assert (opts["G_kwargs"]["spatial_kwargs"] is None) == (preset.get("spatial") is None)
    if preset.get("spatial") is None:
        assert opts["align"] is None  # alignment needs heatmaps
    assert json.loads(json.dumps(opts)) == opts  # training_options.json must round-trip


def test_preset_list_is_complete_and_unknown_cfg_lists_them():
    names = config.list_presets()
    assert {"auto", "paper256", "tiny", "tiny-spatial", "tiny-spatial-indoor"} <= set(names)
    with pytest.raises(ConfigError, match="nonesuch") as err:
        config.load_preset("nonesuch")
    assert "paper256" in str(err.value)


def test_preset_from_json_path_and_invalid_json(tmp_path):
    good = tmp_path / "mine.json"
    preset = {k: v for k, v in config.load_preset("tiny").items() if k != "name"}
    good.write_text(json.dumps(dict(preset, kimg=3)))
    assert config.load_preset(str(good))["kimg"] == 3
    opts = resolve_options(str(good), info(32))
    assert opts["cfg"] == "mine" and opts["kimg"] == 3
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        config.load_preset(str(bad))


@pytest.mark.parametrize("change, message", [
    (lambda p: [p], "must be a JSON object"),
    (lambda p: {k: v for k, v in p.items() if k != "gamma"}, "has no 'gamma'"),
    (lambda p: dict(p, lrate=1e39), r"'lrate' must be a number in \(0, 1\]"),
    (lambda p: dict(p, channel_max="abc"), "'channel_max' must be an integer"),
    (lambda p: dict(p, style_mixing=float("nan")), "'style_mixing' must be a number in"),
    (lambda p: dict(p, channel_base=None, fmaps=None), "needs 'channel_base'"),
])
def test_bad_preset_files_are_named_with_the_setting(tmp_path, change, message):
    preset = {k: v for k, v in config.load_preset("tiny").items() if k not in ("name", "_path")}
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(change(preset)))
    with pytest.raises(ConfigError, match=message) as err:
        resolve_options(str(path), info(32))
    assert "mine.json" in str(err.value)


# res: (1-GPU mb, gamma, ema), (8-GPU mb, gamma, ema) -- the facts table of StyleGAN2-ADA's `auto`.
AUTO_TABLE = {
    64: ((32, 0.0256, 10), (64, 0.0128, 20)),
    128: ((32, 0.1024, 10), (64, 0.0512, 20)),
    256: ((16, 0.8192, 5), (64, 0.2048, 20)),
    512: ((8, 6.5536, 2.5), (64, 0.8192, 20)),
    1024: ((4, 52.43, 1.25), (32, 6.5536, 10)),
}


@pytest.mark.parametrize("res", sorted(AUTO_TABLE))
@pytest.mark.parametrize("gpus", [1, 8])
def test_auto_formulas_match_the_table(res, gpus):
    mb, gamma, ema = AUTO_TABLE[res][0 if gpus == 1 else 1]
    hp = config.auto_hyperparameters(res, gpus)
    assert hp["batch"] == mb and hp["ema_kimg"] == pytest.approx(ema)
    assert hp["gamma"] == pytest.approx(gamma, rel=1e-3)  # the table rounds 52.4288 to 52.43
    assert hp["mbstd"] == 4
    assert hp["fmaps"] == (1 if res >= 512 else 0.5) and hp["lrate"] == (0.002 if res >= 1024 else 0.0025)
    opts = resolve_options("auto", info(res), world_size=gpus)
    assert opts["batch"] == mb and opts["ema_kimg"] == pytest.approx(ema)
    assert opts["loss_kwargs"]["r1_gamma"] == pytest.approx(gamma, rel=1e-3)
    assert opts["D_kwargs"]["epilogue_kwargs"]["mbstd_group_size"] == 4
    assert opts["batch_gpu"] * gpus == mb  # auto: ref_gpus = gpus, one round per step


def test_lazy_regularisation_optimiser_correction_paper256():
    opts = resolve_options("paper256", info(256))
    assert opts["G_reg_interval"] == 4 and opts["D_reg_interval"] == 16
    G, D = opts["G_opt_kwargs"], opts["D_opt_kwargs"]
    assert G["lr"] == pytest.approx(0.0020) and G["betas"] == pytest.approx([0.0, 0.99 ** 0.8])
    assert D["lr"] == pytest.approx(0.0025 * 16 / 17) and D["betas"] == pytest.approx([0.0, 0.99 ** (16 / 17)])
    assert G["eps"] == D["eps"] == 1e-8


def test_zero_regulariser_weight_keeps_the_published_correction():
    """StyleGAN2-ADA keeps the intervals 4/16 whatever pl_weight and gamma are (cifar has pl_weight 0)."""
    opts = resolve_options("cifar", info(32))
    assert opts["loss_kwargs"]["pl_weight"] == 0 and opts["G_reg_interval"] == 4
    assert opts["G_opt_kwargs"]["lr"] == pytest.approx(0.0025 * 4 / 5)
    assert opts["G_opt_kwargs"]["betas"] == pytest.approx([0.0, 0.99 ** 0.8])
    opts = resolve_options("paper256", info(256), gamma=0)
    assert opts["D_reg_interval"] == 16 and opts["D_opt_kwargs"]["lr"] == pytest.approx(0.0025 * 16 / 17)


def test_batch_gpu_derivation_and_errors():
    opts = resolve_options("paper256", info(256))  # mb 64 over ref_gpus 8: 8 per round
    assert (opts["batch"], opts["batch_gpu"]) == (64, 8)
    opts = resolve_options("paper256", info(256), world_size=8)
    assert (opts["batch"], opts["batch_gpu"]) == (64, 8)
    assert resolve_options("tiny", info(32), batch=12, batch_gpu=3)["batch_gpu"] == 3
    # An explicit --batch alone: one round per step on each process (StyleGAN2-ADA's batch_gpu = batch/gpus).
    assert resolve_options("paper256", info(256), batch=32)["batch_gpu"] == 32
    assert resolve_options("paper256", info(256), world_size=4, batch=32)["batch_gpu"] == 8
    with pytest.raises(ConfigError, match="--batch=4 is not divisible by --batch-gpu=3"):
        resolve_options("tiny", info(32), batch=4, batch_gpu=3)
    with pytest.raises(ConfigError, match="number of processes"):
        resolve_options("tiny", info(32), world_size=4, batch=6)
    with pytest.raises(ConfigError, match="--batch must be positive"):
        resolve_options("tiny", info(32), batch=0)


def test_other_option_errors():
    with pytest.raises(ConfigError, match="--p is required"):
        resolve_options("tiny", info(32), aug="fixed")
    with pytest.raises(ConfigError, match="--gamma"):
        resolve_options("tiny", info(32), gamma=-1)
    with pytest.raises(ConfigError, match="--kimg"):
        resolve_options("tiny", info(32), kimg=-1)


def test_encoding_none_turns_spatial_preset_into_baseline():
    opts = resolve_options("tiny-spatial", info(32), spatial=dict(encoding="none"), align=dict(enabled=None))
    assert opts["G_kwargs"]["spatial_kwargs"] is None and opts["align"] is None


def test_align_false_keeps_the_encoding():
    opts = resolve_options("tiny-spatial", info(32), align=dict(enabled=False))
    assert opts["G_kwargs"]["spatial_kwargs"]["encoding"] == "sel_norm"
    assert opts["align"] is None
    default = resolve_options("tiny-spatial", info(32))
    assert default["align"] is not None and default["align"]["weight"] == 1.0


def test_an_align_block_is_completed_with_the_loss_defaults(tmp_path):
    """A user preset's `align` block may leave keys out: the options (and so the snapshots) get the
    loss's own defaults written out, so that a later change of a default shows up on resume."""
    from training.loss import AlignOptions

    preset = json.loads((CONFIG_DIR / "tiny-spatial.json").read_text())
    preset["align"] = {"weight": 2.0}
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(preset))
    align = resolve_options(str(path), info(32))["align"]
    defaults = dataclasses.asdict(AlignOptions())
    del defaults["enabled"]
    assert align == {**defaults, "weight": 2.0}


def test_align_on_a_baseline_needs_an_encoding():
    with pytest.raises(ConfigError, match="--align=true needs a heatmap encoding"):
        resolve_options("tiny", info(32), align=dict(enabled=True))


@pytest.mark.parametrize("cfg, spatial, align, match", [
    ("tiny", {}, dict(weight=3.0, tau=0.5), "--align-weight, --tau: no effect without heatmaps"),
    ("tiny-spatial", dict(encoding="none"), dict(enabled=True), "--align=1: .*--encoding=none turns them off"),
    ("tiny-spatial", dict(encoding="none"), dict(cam_score="g_loss"), "--cam-score: .*--encoding=none"),
    ("tiny-spatial", {}, dict(enabled=False, tau=0.3), "--tau: no effect with --align=0"),
])
def test_alignment_options_that_would_be_ignored_are_refused(cfg, spatial, align, match):
    """An ablation that silently drops its alignment settings would be mislabelled (the run name lists them)."""
    with pytest.raises(ConfigError, match=match):
        resolve_options(cfg, info(32), spatial=spatial, align=align)


def test_spatial_overrides_on_baseline_and_spatial_presets():
    opts = resolve_options("tiny", info(32), spatial=dict(encoding="sel_concat", resolutions=[4, 8]),
                           align=dict(enabled=True, weight=0.5))
    sk = opts["G_kwargs"]["spatial_kwargs"]
    assert sk["encoding"] == "sel_concat" and sk["resolutions"] == [4, 8] and sk["sampler"] == "hierarchical"
    assert opts["align"]["weight"] == 0.5
    opts = resolve_options("tiny-spatial", info(32), spatial=dict(sampler="noise", processing="fine"),
                           align=dict(tau=0.1))
    sk = opts["G_kwargs"]["spatial_kwargs"]
    assert (sk["sampler"], sk["processing"], sk["encoding"]) == ("noise", "fine", "sel_norm")
    assert opts["align"]["tau"] == 0.1
    # Overrides must not leak into the preset files' cached state.
    assert config.load_preset("tiny-spatial")["spatial"]["sampler"] == "hierarchical"


def test_channels_last_reaches_both_networks_only_with_fp16_blocks():
    opts = resolve_options("paper256", info(256), channels_last=True)
    assert opts["G_kwargs"]["synthesis_kwargs"]["fp16_channels_last"] is True
    assert opts["D_kwargs"]["block_kwargs"] == {"fp16_channels_last": True}
    plain = resolve_options("paper256", info(256))
    assert "fp16_channels_last" not in plain["G_kwargs"]["synthesis_kwargs"] and "block_kwargs" not in plain["D_kwargs"]
    fp32 = resolve_options("paper256", info(256), channels_last=True, fp32=True)  # no fp16 blocks: nothing to do
    assert "block_kwargs" not in fp32["D_kwargs"]


PAPER_PRESETS = ["baseline256", "ffhq256", "lsun-cat256", "lsun-church256", "lsun-bedroom256", "eqgan-sa256"]
TRAINING_BLOCK = ["batch", "gamma", "lrate", "ema_kimg", "ema_rampup", "kimg", "mbstd", "fmaps", "map_layers",
                  "pl_weight", "style_mixing", "aug", "num_fp16_res", "conv_clamp", "d_architecture", "z_dim",
                  "w_dim", "channel_max"]


def test_paper_presets_share_one_training_block():
    """The paper keeps the hyper-parameters unchanged between its rows (§4.1): only the method differs.
    The block is the conference code's command (no augmentation, PL or style mixing)."""
    presets = {name: config.load_preset(name) for name in PAPER_PRESETS}
    for key in TRAINING_BLOCK:
        values = {name: p.get(key) for name, p in presets.items()}
        assert len(set(map(json.dumps, values.values()))) == 1, (key, values)
    first = presets["baseline256"]
    assert (first["aug"], first["pl_weight"], first["style_mixing"], first["batch"]) == ("noaug", 0, 0, 64)
    assert config.load_preset("paper256")["aug"] == "ada"  # StyleGAN2-ADA's own preset is unchanged


def test_conference_preset_sels_on_torgb_dropped_with_another_encoding():
    opts = resolve_options("eqgan-sa256", info(256))
    assert opts["G_kwargs"]["spatial_kwargs"]["torgb"] is True
    indoor = resolve_options("eqgan-sa256", info(256), spatial=dict(encoding="sel_indoor", sampler="multi_object"))
    assert "torgb" not in indoor["G_kwargs"]["spatial_kwargs"]
    concat = resolve_options("eqgan-sa256", info(256), spatial=dict(encoding="sel_concat"))
    assert concat["G_kwargs"]["spatial_kwargs"]["torgb"] is True


def test_kernel_options_reach_the_fine_convs_only_with_fine_processing():
    """Paper §4.3 enlarges the convs that see the full-size heatmap; an older snapshot's options (without
    the fine_* keys) keep rebuilding its 3x3 fine convs."""
    fine = resolve_options("lsun-cat256", info(256), spatial=dict(processing="fine", kernel_size=7, dilation=2))
    sk = fine["G_kwargs"]["spatial_kwargs"]
    assert (sk["kernel_size"], sk["dilation"], sk["fine_kernel_size"], sk["fine_dilation"]) == (7, 2, 7, 2)
    coarse = resolve_options("lsun-cat256", info(256), spatial=dict(kernel_size=7))
    assert coarse["G_kwargs"]["spatial_kwargs"]["kernel_size"] == 7
    assert "fine_kernel_size" not in coarse["G_kwargs"]["spatial_kwargs"]
