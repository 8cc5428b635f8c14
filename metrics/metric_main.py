"""Metric registry, `calc_metric` and `report_metric`.

Names carry their sample count, so any count works: `fid<N>[_full]`, `kid<N>[_full]`, `pr<N><k>[_full]`
(last digit = k, e.g. pr50k3), `ppl[2]_<z|w><full|end>[<N>]` (default 50k), `is<N>`, `swd[<N>]` (default
16k images), `comove[<N>]` (default 50k). <N> is digits with an optional `k` (x1000): 50k, 1k, 64.
`_full` variants use the whole dataset without x-flip as reals (KID up to 1M, PR up to 200k); the legacy
ones use the dataset kwargs as given, capped at the count. Functions decorated `@register_metric` are the
named presets (fid50k_full, ...); the pattern families above resolve every other count.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable

import torch

from dnnlib import util
from metrics import (
    comove,
    frechet_inception_distance,
    inception_score,
    kernel_inception_distance,
    metric_utils,
    perceptual_path_length,
    precision_recall,
    sliced_wasserstein,
)

_metric_dict: dict[str, Callable[[metric_utils.MetricOptions], dict]] = {}
_COUNT = r"(\d+k?)"
FULL = dict(xflip=False, max_size=None)


def register_metric(fn: Callable[[metric_utils.MetricOptions], dict]) -> Callable:
    """Register `fn(opts) -> dict of results` under its function name."""
    if not callable(fn):
        raise ValueError(f"register_metric expects a function, got {fn!r}")
    _metric_dict[fn.__name__] = fn
    return fn


def parse_count(text: str | None, default: int) -> int:
    """'50k' -> 50000, '64' -> 64, None -> default."""
    if not text:
        return default
    return int(text[:-1]) * 1000 if text.endswith("k") else int(text)


def _fid(name, m, opts):
    n, full = parse_count(m[1], 50000), bool(m[2])
    value = frechet_inception_distance.compute_fid(opts, None if full else n, n, **(FULL if full else {}))
    return {name: value}


def _kid(name, m, opts):
    n, full = parse_count(m[1], 50000), bool(m[2])
    value = kernel_inception_distance.compute_kid(opts, 1_000_000 if full else n, n, **(FULL if full else {}))
    return {name: value}


def _pr(name, m, opts):
    n, k, full = parse_count(m[1], 50000), int(m[2]), bool(m[3])
    p, r = precision_recall.compute_pr(opts, 200_000 if full else n, n, k=k, **(FULL if full else {}))
    return {f"{name}_precision": p, f"{name}_recall": r}


def _ppl(name, m, opts):
    crop = not m[1]  # ppl2_* uses the whole image, legacy ppl_* the crop
    value = perceptual_path_length.compute_ppl(opts, parse_count(m[4], 50000), m[2], m[3], crop)
    return {name: value}


def _is(name, m, opts):
    mean, std = inception_score.compute_is(opts, parse_count(m[1], 50000))
    return {f"{name}_mean": mean, f"{name}_std": std}


def _swd(name, m, opts):
    out = sliced_wasserstein.compute_swd(opts, parse_count(m[1], 16384))
    return {f"{name}_{k[4:]}": v for k, v in out.items()}


def _comove(name, m, opts):
    out = comove.compute_comove(opts, parse_count(m[1], 50000))
    return {(name if k == "comove_ratio" else name + k[6:]): v for k, v in out.items()}


FAMILIES: list[tuple[str, Callable]] = [
    (rf"fid{_COUNT}(_full)?", _fid),
    (rf"kid{_COUNT}(_full)?", _kid),
    (r"pr(\d+k?)(\d)(_full)?", _pr),
    (rf"ppl(2?)_(z|w)(full|end){_COUNT}?", _ppl),
    (rf"is{_COUNT}", _is),
    (rf"swd{_COUNT}?", _swd),
    (rf"comove{_COUNT}?", _comove),
]
FAMILY_HELP = ["fid<N>[_full]", "kid<N>[_full]", "pr<N><k>[_full]", "ppl[2]_<z|w><full|end>[<N>]", "is<N>",
               "swd[<N>]", "comove[<N>]"]


def _resolve(name: str) -> Callable[[metric_utils.MetricOptions], dict] | None:
    if name in _metric_dict:
        return _metric_dict[name]
    for pattern, fn in FAMILIES:
        m = re.fullmatch(pattern, name)
        if m and all(parse_count(g, 1) > 0 for g in m.groups() if g and re.fullmatch(r"\d+k?", g)):
            return lambda opts, fn=fn, m=m: fn(name, m, opts)
    return None


def is_valid_metric(name: str) -> bool:
    return _resolve(name) is not None


def check_metric(name: str, G, dataset_kwargs: dict, segmenter=None, segmenter_weights: str | None = None) -> None:
    """Raise ValueError for a metric that is sure to fail on `G` and the data (checked before training,
    so that a run does not stop at its first snapshot): an unknown name, Co-move without heatmaps or
    without a segmenter."""
    if not is_valid_metric(name):
        raise ValueError(f"{name!r} is not a metric; valid: {', '.join(list_valid_metrics())}")
    if re.fullmatch(rf"comove{_COUNT}?", name):
        comove.check_requirements(G, dataset_kwargs, segmenter, segmenter_weights)


def list_valid_metrics() -> list[str]:
    """Registered preset names followed by the pattern families."""
    return sorted(_metric_dict) + FAMILY_HELP


# Presets (the names of the official tables, plus small ones for quick checks).
for _preset in ["fid50k_full", "fid50k", "kid50k_full", "kid50k", "pr50k3_full", "pr50k3", "ppl2_wend",
                "ppl_zfull", "ppl_wfull", "ppl_zend", "ppl_wend", "is50k", "swd", "comove", "fid1k_full",
                "kid2k_full", "pr1k3_full", "comove1k"]:
    def _make(preset: str = _preset):
        def fn(opts: metric_utils.MetricOptions) -> dict:
            return _resolve_family(preset)(opts)
        fn.__name__ = fn.__qualname__ = preset
        return fn
    register_metric(_make())


def _resolve_family(name: str):
    for pattern, fn in FAMILIES:
        m = re.fullmatch(pattern, name)
        if m:
            return lambda opts, fn=fn, m=m: fn(name, m, opts)
    raise ValueError(f"metric={name!r} matches no family")


def calc_metric(metric: str, G=None, dataset_kwargs: dict | None = None, device: torch.device | str = "cpu",
                num_gpus: int = 1, rank: int = 0, cache: bool = True, progress: bool = True,
                detector_sources: dict | None = None, gather: Callable | None = None, **opts_kwargs) -> dict:
    """Compute one metric -> dict(results, metric, total_time, total_time_str, num_gpus, snapshot_pkl, timestamp,
    detectors, data), `detectors` naming the identity of every feature model used ({} for SWD; Co-move's
    segmenter) and `data` the real dataset the metric was given (None without one).

    With num_gpus > 1 every rank must call it; `gather=None` then means
    `torch_utils.distributed.all_gather_cat` (needs an active process group of num_gpus ranks). The
    results are those of one process; ranks other than 0 may get NaN or no values.
    `opts_kwargs` go to `MetricOptions` (seed, batch_size, segmenter, segmenter_weights, dataset...).
    """
    fn = _resolve(metric)
    if fn is None:
        raise ValueError(f"metric={metric!r} is not valid; valid: {', '.join(list_valid_metrics())}")
    opts = metric_utils.MetricOptions(G=G, dataset_kwargs=dict(dataset_kwargs or {}),
                                      device=torch.device(device),
                                      num_gpus=num_gpus, rank=rank, cache=cache, progress=progress,
                                      detector_sources=dict(detector_sources or {}), gather=gather,
                                      **opts_kwargs)
    start = time.time()
    results = fn(opts)
    total = time.time() - start
    return dict(results=util.EasyDict(results), metric=metric, total_time=total,
                total_time_str=util.format_time(total), num_gpus=num_gpus, snapshot_pkl=None,
                timestamp=time.time(), detectors=dict(opts.detectors_used),
                data=opts.dataset_kwargs.get("data"))


def report_metric(result: dict, run_dir: str | None = None, snapshot_path: str | None = None,
                  writer=None, step: int | None = None) -> str:
    """Append the result as one JSON line to `<run_dir>/metric-<name>.jsonl` (else print it); also log
    `Metrics/<key>` scalars to a TensorBoard SummaryWriter when given. Returns the JSON line."""
    result = dict(result)
    if snapshot_path is not None:
        # StyleGAN2-ADA's field name (scripts that pick the best snapshot read it), for .pt files too.
        result["snapshot_pkl"] = os.path.relpath(snapshot_path, run_dir) if run_dir else str(snapshot_path)
    line = json.dumps(result, default=float)
    if run_dir is not None:
        with open(os.path.join(run_dir, f"metric-{result['metric']}.jsonl"), "a", encoding="utf-8") as f:
            f.write(line + "\n")
    else:
        print(line)
    if writer is not None:
        for key, value in result["results"].items():
            writer.add_scalar(f"Metrics/{key}", value, global_step=step)
    return line
