"""Co-move Ratio (SpatialGAN paper, Sec. 4.2 "Quantitative Analysis of Spatial Steerability").

Per sample:
1. z ~ N(0, I) and a heatmap spec from `G.heatmap_sampler`; pick a random alive sub-heatmap of level 0.
2. I0 = G(z, c, heatmaps=spec, noise_mode='const') (constant noise, so only the spec differs between I0 and
   I1); segment I0. The object is the mask containing the centre pixel (the smallest one if several);
   if no mask contains it the sample is skipped (counted as `skipped_no_object`).
3. Move the centre by p: |p| ~ U[0.1, 0.25] of the image side, direction ~ U[0, 2 pi); p is re-drawn (up to
   100 times, else skipped as `skipped_no_move`) until the new centre lies inside the image. The move goes
   through `editing.edits.move(spec, level, index, dx, dy)` (hierarchical specs: moving level 0 moves the
   deeper levels).
4. I1 = G(z, c, heatmaps=moved spec); segment I1. The moved object is the I1 object with the smallest
   feature distance to the original one. Feature = mean RGB colour inside the mask (in [0, 1]); when the
   segmenter returns class labels, only objects of the same class are candidates (all objects if none
   shares the class). No object in I1 -> skipped (`skipped_no_match`).
5. q = centroid(moved object in I1) - centroid(object in I0) (centroid = mean pixel position, normalised);
   ratio = p.q / |p|^2 (1 = the object follows the heatmap exactly, 0 = it ignores it).
Reported: mean, std, standard error (std / sqrt(used)), used and skipped counts. The paper averages 50k
samples (`comove50k`); per-sample ratios are noisy (segmentation jitter, objects partly occluded), so the
standard error is what tells whether a difference between models is real: with std ~0.5 a 1k-sample run
has SE ~0.016, 50k ~0.002.

Segmenters (`get_segmenter`): a callable `image uint8 [3, H, W] tensor -> (masks bool [K, H, W], classes
list[str] | None)`; `synthetic:<kind>` -> `training.synthetic.segment(kind, image ndarray)`; `maskrcnn` ->
torchvision's maskrcnn_resnet50_fpn with a user-supplied weights file (score and mask threshold 0.5): a
state dict, or a training checkpoint {'model': state dict}, loaded with weights_only=True and checked
against the architecture (keys and shapes) before use; a wrong file is a ValueError naming it.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable

import numpy as np
import torch

from editing import edits
from metrics import metric_utils

Segmenter = Callable[[torch.Tensor], tuple[torch.Tensor, "list[str] | None"]]
_CLS_KEY = "roi_heads.box_predictor.cls_score.weight"  # [num_classes, 1024] in maskrcnn_resnet50_fpn


# ---------------------------------------------------------------------------------------------------
# Segmenters.


def _synthetic_segmenter(kind: str) -> Segmenter:
    from training import synthetic  # Written alongside; imported lazily.

    def segment(image: torch.Tensor):
        masks, classes = synthetic.segment(kind, image.cpu().numpy())
        return torch.as_tensor(np.asarray(masks), dtype=torch.bool).reshape(-1, *image.shape[1:]), classes
    return segment


def _maskrcnn_expected_shapes(num_classes: int) -> dict[str, torch.Size]:
    """Parameter/buffer shapes of maskrcnn_resnet50_fpn(num_classes); built on the meta device (no memory,
    ~50 ms) so that a wrong file is refused before the real model is allocated."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    with torch.device("meta"):
        model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes)
    return {k: v.shape for k, v in model.state_dict().items()}


def _name_some(items: list[str], limit: int = 3) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _read_checkpoint(weights: str):
    """torch.load(weights_only=True) of `weights`; OSError / ValueError naming the file on failure."""
    try:
        f = open(weights, "rb")
    except OSError as exc:
        raise OSError(f"cannot read segmenter weights {weights}: {exc.strerror or exc}") from None
    with f:  # from here on, any failure is the file's content
        try:
            return torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            if "weights only" in str(exc).lower():
                raise ValueError(f"segmenter weights {weights}: the file holds Python objects, not only tensors "
                                 "(save it with torch.save(model.state_dict(), FILE))") from None
            raise ValueError(f"segmenter weights {weights}: not a PyTorch checkpoint ({exc})") from None
        except Exception as exc:  # KeyError, EOFError, RuntimeError, OSError ... for foreign or truncated files
            text = str(exc).strip()
            detail = text.split(". ")[0].splitlines()[0][:100] if text else "file ends early"
            raise ValueError(f"segmenter weights {weights}: not a PyTorch checkpoint, or a truncated one "
                             f"({type(exc).__name__}: {detail})") from None


def _check_maskrcnn_state(state, weights: str) -> int:
    """num_classes of a maskrcnn_resnet50_fpn state dict; ValueError naming `weights` and the first
    missing / unexpected / misshapen entries otherwise."""
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise ValueError(f"segmenter weights {weights}: not a state dict (the file holds a {type(state).__name__})")
    cls = state.get(_CLS_KEY)
    if not isinstance(cls, torch.Tensor) or cls.ndim != 2 or cls.shape[0] < 1:
        raise ValueError(f"segmenter weights {weights}: not Mask R-CNN weights: missing key {_CLS_KEY} "
                         f"(a [num_classes, 1024] tensor); the file has {_name_some(sorted(state)) or 'no keys'}")
    expected = _maskrcnn_expected_shapes(int(cls.shape[0]))
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        what = [f"missing keys {_name_some(missing)}"] if missing else []
        what += [f"unexpected keys {_name_some(unexpected)}"] if unexpected else []
        raise ValueError(f"segmenter weights {weights}: not maskrcnn_resnet50_fpn weights: {'; '.join(what)}")
    wrong = [f"{k} is {list(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}, "
             f"expected {list(expected[k])}"
             for k, v in state.items() if not isinstance(v, torch.Tensor) or v.shape != expected[k]]
    if wrong:
        raise ValueError(f"segmenter weights {weights}: not maskrcnn_resnet50_fpn weights for "
                         f"{cls.shape[0]} classes: {_name_some(wrong, 2)}")
    return int(cls.shape[0])


def load_maskrcnn_state(weights: str) -> tuple[dict[str, torch.Tensor], int]:
    """(state dict, num_classes) from a torchvision maskrcnn_resnet50_fpn weights file: a plain state dict
    or a training checkpoint {'model': state dict, ...}. OSError when the file cannot be read, ValueError
    naming the file and what is wrong when it is not such weights. No pickled code is executed."""
    state = _read_checkpoint(weights)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    return state, _check_maskrcnn_state(state, weights)


def _require_weights(weights: str | None) -> None:
    if not weights:
        raise ValueError("The maskrcnn segmenter needs a torchvision maskrcnn_resnet50_fpn state dict: "
                         "pass --segmenter-weights=FILE; nothing is downloaded.")


def _require_spatial(G) -> None:
    if getattr(G, "heatmap_sampler", None) is None:
        raise ValueError("comove needs a spatial generator (G.heatmap_sampler is None: the baseline "
                         "cannot move objects)")


def _maskrcnn_segmenter(weights: str | None, device: torch.device) -> Segmenter:
    _require_weights(weights)
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    state, num_classes = load_maskrcnn_state(weights)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes)
    model.load_state_dict(state)
    model.eval().to(device)

    @torch.no_grad()
    def segment(image: torch.Tensor):
        out = model([image.to(device).float() / 255])[0]
        keep = out["scores"] >= 0.5
        masks = out["masks"][keep, 0] >= 0.5
        return masks.cpu(), [str(int(label)) for label in out["labels"][keep]]
    return segment


def get_segmenter(segmenter, weights: str | None = None, device: torch.device | str = "cpu") -> Segmenter:
    """Resolve a segmenter name (`synthetic:<kind>` | `maskrcnn`) or pass a callable through."""
    if callable(segmenter):
        return segmenter
    if isinstance(segmenter, str) and segmenter.startswith("synthetic:") and len(segmenter) > 10:
        return _synthetic_segmenter(segmenter.split(":", 1)[1])
    if segmenter == "maskrcnn":
        return _maskrcnn_segmenter(weights, torch.device(device))
    raise ValueError(f"segmenter={segmenter!r} is not one of 'synthetic:<kind>', 'maskrcnn' or a callable")


# ---------------------------------------------------------------------------------------------------
# Geometry helpers.


def centroid(mask: torch.Tensor) -> torch.Tensor:
    """Mean pixel position of a bool mask `[H, W]` as normalised (x, y); pixel i sits at (i + 0.5) / size."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    h, w = mask.shape
    return torch.stack([(xs.float().mean() + 0.5) / w, (ys.float().mean() + 0.5) / h])


def object_at(masks: torch.Tensor, x: float, y: float) -> int | None:
    """Index of the smallest mask `[K, H, W]` containing the pixel under normalised (x, y), or None."""
    h, w = masks.shape[1:]
    px, py = min(max(int(x * w), 0), w - 1), min(max(int(y * h), 0), h - 1)
    hits = [k for k in range(masks.shape[0]) if masks[k, py, px]]
    return min(hits, key=lambda k: int(masks[k].sum())) if hits else None


def mean_colours(image: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean colour in [0, 1] inside each mask: image uint8 `[3, H, W]`, masks `[K, H, W]` -> `[K, 3]`."""
    m = masks.float()
    return (m[:, None] * image[None].float() / 255).sum(dim=(2, 3)) / m.sum(dim=(1, 2))[:, None].clamp_min(1)


def match_object(colour0: torch.Tensor, class0, colours1: torch.Tensor, classes1) -> int | None:
    """Index of the object in I1 closest in colour, restricted to class0 when classes are known."""
    if colours1.shape[0] == 0:
        return None
    candidates = list(range(colours1.shape[0]))
    if class0 is not None and classes1 is not None:
        candidates = [k for k in candidates if classes1[k] == class0] or candidates
    dist = (colours1[candidates] - colour0).norm(dim=1)
    return candidates[int(dist.argmin())]


def draw_offset(rng: np.random.RandomState, cx: float, cy: float, lo: float = 0.1, hi: float = 0.25,
                tries: int = 100) -> tuple[float, float] | None:
    """Random p with |p| ~ U[lo, hi], angle ~ U[0, 2 pi), re-drawn until (cx, cy) + p lies in [0, 1]^2."""
    for _ in range(tries):
        r, a = rng.uniform(lo, hi), rng.uniform(0, 2 * math.pi)
        dx, dy = r * math.cos(a), r * math.sin(a)
        if 0 <= cx + dx <= 1 and 0 <= cy + dy <= 1:
            return dx, dy
    return None


# ---------------------------------------------------------------------------------------------------
# The metric.


def _segment(segmenter: Segmenter, image: torch.Tensor):
    masks, classes = segmenter(image.cpu())
    masks = torch.as_tensor(masks, dtype=torch.bool)
    keep = masks.flatten(1).any(dim=1)  # empty masks have no centroid
    classes = None if classes is None else [c for c, k in zip(classes, keep.tolist()) if k]
    return masks[keep], classes


def _plan_moves(spec, rng: np.random.RandomState, move_fn, counts: dict) -> tuple[list, list]:
    """Per sample: (index, cx, cy, dx, dy) or None, and the list of per-sample moved specs."""
    plans, moved = [], []
    for i in range(spec.batch_size):
        alive = torch.nonzero(spec.alive[0][i] > 0.5).flatten().tolist()
        plan = None
        if alive:
            k = alive[rng.randint(len(alive))]
            cx, cy = (float(v) for v in spec.centers[0][i, k])
            offset = draw_offset(rng, cx, cy)
            plan = None if offset is None else (k, cx, cy, *offset)
        if plan is None:
            counts["skipped_no_move"] += 1
        one = spec.select(i)
        moved.append(one if plan is None else move_fn(one, 0, plan[0], plan[3], plan[4]))
        plans.append(plan)
    return plans, moved


def _sample_ratio(segmenter: Segmenter, img0: torch.Tensor, img1: torch.Tensor, plan, counts: dict):
    """Co-move ratio of one sample (uint8 images `[3, H, W]`), or None (skipped, counted)."""
    _, cx, cy, dx, dy = plan
    masks0, classes0 = _segment(segmenter, img0)
    k0 = object_at(masks0, cx, cy) if masks0.shape[0] else None
    if k0 is None:
        counts["skipped_no_object"] += 1
        return None
    masks1, classes1 = _segment(segmenter, img1)
    colour0 = mean_colours(img0, masks0[k0:k0 + 1])[0]
    class0 = None if classes0 is None else classes0[k0]
    k1 = match_object(colour0, class0, mean_colours(img1, masks1), classes1)
    if k1 is None:
        counts["skipped_no_match"] += 1
        return None
    q = centroid(masks1[k1]) - centroid(masks0[k0])
    p = torch.tensor([dx, dy])
    return float((p * q).sum() / p.square().sum())


@torch.no_grad()
def _batch_ratios(opts, segmenter, move_fn, n: int, batch_idx: int, counts: dict) -> list[float]:
    G = opts.G
    gen = metric_utils.batch_generator(opts, batch_idx, salt=29)
    rng = np.random.RandomState((opts.seed * 1_000_003 + batch_idx) % 2**32)
    z = metric_utils.randn([n, G.z_dim], gen, opts.device)
    c = metric_utils.sample_labels(opts, n, rng)
    spec = G.heatmap_sampler(n, generator=gen, device=opts.device)
    plans, moved = _plan_moves(spec, rng, move_fn, counts)
    img0 = metric_utils.to_uint8(G(z, c, heatmaps=spec, truncation_psi=1, noise_mode="const"))
    spec1 = type(spec).cat(moved)
    img1 = metric_utils.to_uint8(G(z, c, heatmaps=spec1, truncation_psi=1, noise_mode="const"))
    ratios = []
    for i, plan in enumerate(plans):
        if plan is not None:
            r = _sample_ratio(segmenter, img0[i], img1[i], plan, counts)
            if r is not None:
                ratios.append(r)
    return ratios


def default_segmenter(opts: metric_utils.MetricOptions):
    """`opts.segmenter`, else `synthetic:<kind>` when the real data is a built-in synthetic set (its
    objects are recognisable from pixels), else a ValueError asking for one."""
    if opts.segmenter is not None:
        return opts.segmenter
    data = str(opts.dataset_kwargs.get("data", ""))
    if data.startswith("synthetic:"):
        return "synthetic:" + data.split(":")[1]
    raise ValueError(f"comove needs a segmenter for --data={data or '?'}: pass --segmenter=maskrcnn "
                     f"--segmenter-weights=FILE (or synthetic:<kind> for the built-in datasets)")


def check_requirements(G, dataset_kwargs: dict, segmenter=None, segmenter_weights: str | None = None) -> None:
    """Raise ValueError now (before a training run starts) for what `compute_comove` would fail on
    later: a generator without heatmaps, no segmenter for the data, bad Mask R-CNN weights."""
    _require_spatial(G)
    opts = metric_utils.MetricOptions(G=G, dataset_kwargs=dict(dataset_kwargs), segmenter=segmenter,
                                      segmenter_weights=segmenter_weights, progress=False)
    chosen = default_segmenter(opts)
    if chosen == "maskrcnn":
        _require_weights(segmenter_weights)
        load_maskrcnn_state(segmenter_weights)  # validates the file (shapes, class count)
    elif not callable(chosen):
        get_segmenter(chosen)  # names an unknown synthetic kind or segmenter


def compute_comove(opts: metric_utils.MetricOptions, num_samples: int, batch_size: int = 16,
                   move_fn=None) -> dict[str, float]:
    """Co-move ratio statistics over `num_samples` samples (see the module docstring)."""
    _require_spatial(opts.G)
    chosen = default_segmenter(opts)
    segmenter = get_segmenter(chosen, opts.segmenter_weights, opts.device)
    # The result line says which segmenter found the objects, as it names the feature models of FID.
    if isinstance(chosen, str):
        opts.detectors_used["segmenter"] = f"maskrcnn:{opts.segmenter_weights}" if chosen == "maskrcnn" else chosen
    else:
        opts.detectors_used["segmenter"] = getattr(chosen, "__name__", "callable")
    move_fn = move_fn or edits.move
    counts = dict(skipped_no_move=0, skipped_no_object=0, skipped_no_match=0)
    ratios: list[float] = []
    keys: list[int] = []
    with metric_utils.progress_bar(opts, num_samples, "comove") as bar:
        for b, n in metric_utils.rank_batches(opts, num_samples, batch_size):
            batch = _batch_ratios(opts, segmenter, move_fn, n, b, counts)
            ratios, keys = ratios + batch, keys + [b] * len(batch)
            bar.update(n * opts.num_gpus)
    # Same calls on every rank (a rank without batches sends empty tensors); batch order as one process.
    all_ratios = metric_utils.gather_rows(opts, torch.tensor(ratios, dtype=torch.float64),
                                          torch.tensor(keys, dtype=torch.int64)).numpy()
    totals = opts.gather(torch.tensor([list(counts.values())], dtype=torch.int64)).sum(0).tolist()
    return summarize(all_ratios, dict(zip(counts, totals)))


def summarize(ratios: np.ndarray, skipped: dict[str, int]) -> dict[str, float]:
    """Mean, std, standard error and counts of per-sample ratios."""
    used = int(ratios.size)
    mean = float(ratios.mean()) if used else float("nan")
    std = float(ratios.std(ddof=1)) if used > 1 else float("nan")
    sem = std / math.sqrt(used) if used > 1 else float("nan")
    return dict(comove_ratio=mean, comove_std=std, comove_sem=sem, comove_used=used,
                comove_skipped=sum(skipped.values()), **{f"comove_{k}": v for k, v in skipped.items()})
