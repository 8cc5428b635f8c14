"""Presets (JSON files in `configs/`) and their resolution into the full run configuration.

A preset holds resolution-independent hyper-parameters plus SpatialGAN switches. `resolve_options`
combines it with the dataset, the world size and command-line overrides into one JSON-able dict —
the `training_options.json` of a run — from which every object of the run is built.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
G_REG_INTERVAL = 4
D_REG_INTERVAL = 16


class ConfigError(ValueError):
    """An unknown preset or an invalid option value."""


def list_presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_preset(name_or_path: str) -> dict[str, Any]:
    """Load a preset by name (`paper256`) or from a JSON file path."""
    path = Path(name_or_path)
    if not (path.suffix == ".json" and path.is_file()):
        path = CONFIG_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise ConfigError(f"Unknown --cfg {name_or_path!r}; choose one of {', '.join(list_presets())} "
                          f"or give a path to a JSON preset")
    try:
        with open(path) as f:
            preset = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"Preset {path} is not valid JSON: {err}") from None
    if not isinstance(preset, dict):
        raise ConfigError(f"Preset {path} must be a JSON object of settings, got a {type(preset).__name__}")
    preset.setdefault("name", path.stem)
    preset.setdefault("description", "")
    preset["_path"] = str(path)
    return preset


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# key -> (check, what it must be). None is allowed only where the check says so.
_PRESET_SCHEMA = {
    "z_dim": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    "w_dim": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    "map_layers": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    "channel_max": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    "num_fp16_res": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
    "batch": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    "mbstd": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    "conv_clamp": (lambda v: v is None or (_is_number(v) and v > 0), "null or a number > 0"),
    "lrate": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "gamma": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "pl_weight": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "style_mixing": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "ema_kimg": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "ema_rampup": (lambda v: v is None or (_is_number(v) and v > 0), "null or a number > 0"),
    "kimg": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "kimg_per_tick": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "d_architecture": (lambda v: isinstance(v, str), "a string"),
    "spatial": (lambda v: v is None or isinstance(v, dict), "null or an object"),
    "align": (lambda v: v is None or isinstance(v, dict), "null or an object"),
    "metrics": (lambda v: isinstance(v, list) and all(isinstance(m, str) for m in v), "a list of metric names"),
}


def check_preset(preset: dict[str, Any]) -> None:
    """Raise ConfigError naming the preset file and the first missing or ill-typed setting."""
    where = preset.get("_path", preset.get("name"))
    for key, (ok, what) in _PRESET_SCHEMA.items():
        if key not in preset:
            raise ConfigError(f"Preset {where} has no {key!r} (it must be {what})")
        if not ok(preset[key]):
            raise ConfigError(f"Preset {where}: {key!r} must be {what}, got {preset[key]!r}")
    fmaps, base = preset.get("fmaps"), preset.get("channel_base")
    if not ((isinstance(base, int) and base >= 1) or (base is None and _is_number(fmaps) and fmaps > 0)):
        raise ConfigError(f"Preset {where} needs 'channel_base' (an integer >= 1) or 'fmaps' (a number > 0)")


def auto_hyperparameters(resolution: int, gpus: int) -> dict[str, Any]:
    """StyleGAN2-ADA's `auto` formulas (facts §1.2)."""
    mb = max(min(gpus * min(4096 // resolution, 32), 64), gpus)
    return dict(ref_gpus=gpus, batch=mb, mbstd=min(mb // gpus, 4), fmaps=1 if resolution >= 512 else 0.5,
                lrate=0.002 if resolution >= 1024 else 0.0025, gamma=0.0002 * resolution ** 2 / mb,
                ema_kimg=mb * 10 / 32)


def _channel_base(preset: dict[str, Any]) -> int:
    if preset.get("channel_base") is not None:
        return int(preset["channel_base"])
    return int(preset["fmaps"] * 32768)


def network_kwargs(preset: dict[str, Any], resolution: int, channels: int, label_dim: int,
                   fp32: bool, channels_last: bool = False, freezed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """Constructor kwargs of G and D for a preset, image shape and label size. `channels_last` runs the
    fp16 blocks in the channels-last memory format, `freezed` freezes that many D layers from the input
    side (Freeze-D); each is only added to the kwargs when set."""
    base, cmax = _channel_base(preset), int(preset["channel_max"])
    num_fp16_res = 0 if fp32 else int(preset["num_fp16_res"])
    conv_clamp = None if fp32 else preset["conv_clamp"]
    G_kwargs = dict(z_dim=preset["z_dim"], c_dim=label_dim, w_dim=preset["w_dim"], img_resolution=resolution,
                    img_channels=channels, mapping_kwargs=dict(num_layers=preset["map_layers"]),
                    synthesis_kwargs=dict(channel_base=base, channel_max=cmax, num_fp16_res=num_fp16_res,
                                          conv_clamp=conv_clamp),
                    spatial_kwargs=copy.deepcopy(preset.get("spatial")))
    D_kwargs = dict(c_dim=label_dim, img_resolution=resolution, img_channels=channels,
                    architecture=preset["d_architecture"], channel_base=base, channel_max=cmax,
                    num_fp16_res=num_fp16_res, conv_clamp=conv_clamp,
                    epilogue_kwargs=dict(mbstd_group_size=preset["mbstd"]))
    if channels_last and num_fp16_res > 0:
        G_kwargs["synthesis_kwargs"]["fp16_channels_last"] = True
        D_kwargs["block_kwargs"] = dict(fp16_channels_last=True)
    if freezed:
        from training.networks import num_block_layers  # here: config stays importable without torch

        most = num_block_layers(resolution, preset["d_architecture"])
        if not 0 < freezed <= most:
            raise ConfigError(f"--freezed must be in [0, {most}] (the layers of D's blocks at {resolution}²), "
                              f"got {freezed}")
        D_kwargs["freeze_layers"] = int(freezed)
    return G_kwargs, D_kwargs


def optimizer_kwargs(lr: float, reg_interval: int | None) -> dict[str, Any]:
    """Adam (0, 0.99) with the lazy-regularisation correction: lr * r and betas ** r, r = k / (k + 1)."""
    ratio = reg_interval / (reg_interval + 1) if reg_interval else 1.0
    return dict(lr=lr * ratio, betas=[0.0, 0.99 ** ratio], eps=1e-8)


SPATIAL_OVERRIDES = ("encoding", "sampler", "resolutions", "processing", "compose", "kernel_size", "dilation")
ALIGN_OVERRIDES = ("weight", "tau", "resolutions", "indoor", "cam_variant", "cam_score")
# The alignment loss's defaults (training.loss.AlignOptions takes them from here): what a preset's `align`
# block leaves out is filled into the resolved options, so that a snapshot records every setting it used.
ALIGN_DEFAULTS = dict(weight=1.0, tau=0.25, resolutions=[4, 8, 16], indoor=False, cam_variant="eqgan",
                      cam_score="g_loss")


# The `align` block's keys as train.py spells them (for messages).
ALIGN_OPTIONS = {"weight": "--align-weight", "tau": "--tau", "resolutions": "--align-res", "indoor": "--align-indoor",
                 "cam_variant": "--cam-variant", "cam_score": "--cam-score"}


def _apply_spatial_overrides(preset: dict[str, Any], spatial: dict[str, Any], align: dict[str, Any]) -> None:
    """Table 1/4/5 switches: change the preset's `spatial` / `align` blocks in place."""
    enabled = align.pop("enabled", None)
    given_align = {k: v for k, v in align.items() if v is not None}
    named = ", ".join(ALIGN_OPTIONS.get(k, k) for k in given_align)
    if given_align and enabled is False:
        raise ConfigError(f"{named}: no effect with --align=0 (they set the GradCAM alignment loss)")
    if spatial.get("encoding") == "none":
        if enabled or given_align:
            raise ConfigError(f"{named or '--align=1'}: the GradCAM alignment loss needs heatmaps, and "
                              "--encoding=none turns them off")
        preset["spatial"], preset["align"] = None, None
        return
    given = {k: v for k, v in spatial.items() if v is not None}
    if given and preset.get("spatial") is None:
        # Turning SpatialGAN on over a baseline preset starts from the paper's single-object setting.
        preset["spatial"] = dict(encoding="sel_norm", sampler="hierarchical", sampler_kwargs={},
                                 resolutions=[4, 8, 16], processing="coarse", compose="sum", kernel_size=3,
                                 dilation=1, hidden_channels=64)
    if preset.get("spatial") is not None:
        spatial = preset["spatial"]
        spatial.update(given)
        if given.get("encoding") not in (None, "sel_norm", "sel_concat"):
            spatial.pop("torgb", None)  # the ToRGB SEL of a conference preset: no SEL to put there
        if spatial.get("processing") == "fine":  # §4.3: the receptive field of the full-size heatmap's convs
            for key in ("kernel_size", "dilation"):
                if key in given:
                    spatial[f"fine_{key}"] = given[key]
    if given_align and not enabled and preset.get("spatial") is None:
        raise ConfigError(f"{named}: no effect without heatmaps (they set the GradCAM alignment loss of a "
                          "SpatialGAN --cfg or --encoding)")
    if enabled is False:
        preset["align"] = None
    elif (enabled or given_align) and preset.get("spatial") is not None:
        if preset.get("align") is None:
            preset["align"] = copy.deepcopy(ALIGN_DEFAULTS)
        preset["align"].update(given_align)
    elif enabled and preset.get("spatial") is None:
        raise ConfigError("--align=true needs a heatmap encoding (--encoding or a SpatialGAN --cfg)")


def _batch_sizes(preset: dict[str, Any], world_size: int, batch: int | None,
                 batch_gpu: int | None) -> tuple[int, int]:
    """(global batch, per-round batch). A preset keeps its per-GPU batch (preset batch / ref_gpus) on
    any number of processes; an explicit `--batch` without `--batch-gpu` means one round per step
    (batch_gpu = batch / processes), as in StyleGAN2-ADA."""
    explicit = batch is not None
    batch = int(batch if explicit else preset["batch"])
    if batch < 1:
        raise ConfigError(f"--batch must be positive, got {batch}")
    if batch % world_size:
        raise ConfigError(f"--batch={batch} is not divisible by the number of processes ({world_size})")
    per_rank = batch // world_size
    if batch_gpu is None and explicit:
        batch_gpu = per_rank
    elif batch_gpu is None:
        ref = preset.get("ref_gpus") or world_size
        batch_gpu = max(min(per_rank, int(preset["batch"]) // int(ref)), 1)
        while per_rank % batch_gpu:
            batch_gpu -= 1
    if batch_gpu < 1 or per_rank % batch_gpu:
        raise ConfigError(f"--batch={batch} is not divisible by --batch-gpu={batch_gpu} x {world_size} processes")
    return batch, int(batch_gpu)


def resolve_options(cfg: str, dataset: dict[str, Any], world_size: int = 1, **overrides) -> dict[str, Any]:
    """Build the complete, JSON-able run configuration.

    Args:
        cfg: preset name or JSON path.
        dataset: `{'kwargs': open_dataset kwargs, 'name', 'resolution', 'num_channels', 'label_dim'}`.
        world_size: number of training processes.
        overrides: CLI options (None = keep the preset's value). Keys: kimg, batch, batch_gpu, gamma, seed,
            snap, tick, workers, aug, p, target, augpipe, fp32, channels_last, cuda_graphs, freezed, metrics,
            pl_weight, style_mixing, ema_kimg, transfer (starting from a network-only file), metric_kwargs (segmenter,
            segmenter_weights for Co-move during training), plus `spatial={...}`
            (SPATIAL_OVERRIDES) and `align={..., 'enabled': bool}`.
    """
    preset = load_preset(cfg)
    resolution = int(dataset["resolution"])
    if preset.get("auto"):
        preset.update(auto_hyperparameters(resolution, world_size))
    check_preset(preset)
    _apply_spatial_overrides(preset, dict(overrides.pop("spatial", None) or {}),
                             dict(overrides.pop("align", None) or {}))

    def get(key: str, default=None):
        return overrides.get(key) if overrides.get(key) is not None else default

    for key in ("gamma", "pl_weight", "style_mixing", "ema_kimg"):
        if get(key) is not None:
            preset[key] = get(key)
    if preset["gamma"] < 0:
        raise ConfigError(f"--gamma must be >= 0, got {preset['gamma']}")
    batch, batch_gpu = _batch_sizes(preset, world_size, get("batch"), get("batch_gpu"))
    aug, p = get("aug", preset.get("aug", "ada")), get("p")
    if aug not in ("noaug", "ada", "fixed"):
        raise ConfigError(f"--aug must be noaug, ada or fixed, got {aug!r}")
    if (aug == "fixed") != (p is not None):
        raise ConfigError("--p is required with --aug=fixed and only allowed with it")
    if p is not None and not 0 <= p <= 1:
        raise ConfigError(f"--p must be in [0, 1], got {p}")
    target = get("target", 0.6)
    if not 0 < target < 1:
        raise ConfigError(f"--target must be in (0, 1), got {target}")
    if get("target") is not None and aug != "ada":
        raise ConfigError(f"--target is only used with --aug=ada (this run has --aug={aug})")
    if get("augpipe") is not None and aug == "noaug":
        raise ConfigError("--augpipe needs augmentation (this run has --aug=noaug)")
    G_kwargs, D_kwargs = network_kwargs(preset, resolution, int(dataset["num_channels"]),
                                        int(dataset["label_dim"]), bool(get("fp32", False)),
                                        bool(get("channels_last", False)), int(get("freezed", 0)))
    lr = preset["lrate"]
    # The intervals (and so the lr/beta correction) stay when a regulariser's weight is 0, as in
    # StyleGAN2-ADA: `cifar`, --pl-weight=0 and --gamma=0 keep the published optimiser settings.
    G_reg, D_reg = G_REG_INTERVAL, D_REG_INTERVAL
    # Starting from trained weights (transfer learning): ADA adapts 5x faster and the EMA has no
    # ramp-up, as StyleGAN2-ADA does for any --resume.
    transfer = bool(get("transfer", False))
    kimg = get("kimg", preset["kimg"])
    if kimg <= 0:
        raise ConfigError(f"--kimg must be positive, got {kimg}")
    return dict(
        cfg=preset["name"], description=preset["description"], dataset_name=dataset["name"],
        dataset_kwargs=dataset["kwargs"], G_kwargs=G_kwargs, D_kwargs=D_kwargs,
        G_opt_kwargs=optimizer_kwargs(lr, G_reg), D_opt_kwargs=optimizer_kwargs(lr, D_reg),
        G_reg_interval=G_reg, D_reg_interval=D_reg,
        loss_kwargs=dict(r1_gamma=preset["gamma"], style_mixing_prob=preset["style_mixing"],
                         pl_weight=preset["pl_weight"], pl_batch_shrink=2, pl_decay=0.01),
        align=(copy.deepcopy({**ALIGN_DEFAULTS, **preset["align"]})
               if preset.get("spatial") and preset.get("align") is not None else None),
        augment=dict(mode=aug, augpipe=get("augpipe", preset.get("augpipe", "bgc")), p=p, target=target,
                     interval=4, kimg=get("ada_kimg", 100 if transfer else 500)),
        batch=batch, batch_gpu=batch_gpu, world_size=world_size, kimg=kimg,
        kimg_per_tick=get("tick", preset["kimg_per_tick"]), snap=get("snap", 50),
        ema_kimg=preset["ema_kimg"], ema_rampup=None if transfer else preset["ema_rampup"], seed=get("seed", 0),
        workers=get("workers", 3), metrics=list(get("metrics", preset.get("metrics", []))), fp32=bool(get("fp32", False)),
        allow_tf32=bool(get("allow_tf32", False)), cudnn_benchmark=bool(get("cudnn_benchmark", True)),
        cuda_graphs=bool(get("cuda_graphs", False)),
        resolution=resolution, transfer=transfer,
        metric_kwargs={k: v for k, v in dict(get("metric_kwargs", {})).items() if v is not None},
    )
