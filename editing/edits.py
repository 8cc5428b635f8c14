"""Heatmap edits: pure functions HeatmapSpec -> new HeatmapSpec (the input is never modified).

Every edit applies to all samples of the spec. Coordinates are normalised (fractions of the image
width/height, x right, y down), as in `training.heatmaps`.

  move(spec, level, index, dx, dy)       shift one centre; on a hierarchical spec, moving the level-0
                                         centre moves every deeper centre by the same vector (Fig. 10)
  scale(spec, level, index, factor)      sigma *= factor (factor > 0)
  remove(spec, index, *, level=0)        alive = 0 for one sub-map (an object of a multi-object spec)
  restyle(spec, index, seed)             new appearance seed for object `index` (multi-object specs)
  drag_centers(spec, handle, target, radius, alpha, level=0, return_moved=False)
                                         paper Eq. 6: centres within `radius` of the handle move by
                                         alpha * (target - handle) (+ which centres moved)
CLI strings: parse_move('LEVEL:INDEX:DX,DY'), parse_scale('LEVEL:INDEX:FACTOR'), parse_remove('INDEX')
(or 'LEVEL:INDEX'), parse_restyle('INDEX:SEED'); `apply_edits(spec, [Edit, ...])` applies a list (a bare
string is refused: '1:2' could be a remove or a restyle, so parse it with the parser of its option).

Levels, indices and seeds may be any integral scalar (int, NumPy integer, integer tensor); a non-integer
is a TypeError (a ValueError for seeds), an integer out of range a ValueError naming it. Every edit checks
its input spec and its result (`HeatmapSpec.check_values`): finite centres, sigmas > 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from training.heatmaps import HeatmapSpec, as_int

EDIT_OPS = ("move", "scale", "remove", "restyle")


# ---------------------------------------------------------------------------------------------------
# Validation.


def _check_spec(spec) -> HeatmapSpec:
    if not isinstance(spec, HeatmapSpec):
        raise TypeError(f"spec must be a HeatmapSpec, got {type(spec).__name__}")
    return spec.check_values()


def _checked_result(out: HeatmapSpec, what: str) -> HeatmapSpec:
    """`out` if its values are valid, else ValueError naming the edit (e.g. a float32 overflow)."""
    try:
        return out.check_values()
    except ValueError as e:
        raise ValueError(f"{what} gives an invalid spec: {e}") from None


def _check_level(spec: HeatmapSpec, level) -> int:
    level = as_int("level", level)
    if not 0 <= level < spec.num_levels:
        raise ValueError(f"level={level!r} out of range: the spec has levels 0..{spec.num_levels - 1}")
    return level


def _check_index(spec: HeatmapSpec, level: int, index) -> int:
    k = spec.centers_per_level[level]
    index = as_int("index", index)
    if not 0 <= index < k:
        raise ValueError(f"index={index!r} out of range: level {level} has centres 0..{k - 1}")
    return index


def _check_finite(name: str, value) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------------
# Edits.


def move(spec: HeatmapSpec, level: int, index: int, dx: float, dy: float) -> HeatmapSpec:
    """Move centre `index` of `level` by (dx, dy) (fractions of width/height). On a hierarchical spec,
    moving the level-0 centre also moves every centre of the deeper levels by (dx, dy)."""
    level = _check_level(_check_spec(spec), level)
    index = _check_index(spec, level, index)
    delta = torch.tensor([_check_finite("dx", dx), _check_finite("dy", dy)])
    out = spec.clone()
    c = out.centers[level]
    c[:, index] += delta.to(c)
    if spec.hierarchical and level == 0:
        for deeper in out.centers[1:]:
            deeper += delta.to(deeper)
    return _checked_result(out, f"move by dx={dx!r}, dy={dy!r}")  # 1e300 is finite, but not in float32.


def scale(spec: HeatmapSpec, level: int, index: int, factor: float) -> HeatmapSpec:
    """Multiply the std of centre `index` of `level` by `factor` > 0 (> 1 widens the blob)."""
    level = _check_level(_check_spec(spec), level)
    index = _check_index(spec, level, index)
    factor = _check_finite("factor", factor)
    if factor <= 0:
        raise ValueError(f"factor must be > 0, got {factor!r}")
    out = spec.clone()
    out.sigmas[level][:, index] *= factor
    return _checked_result(out, f"scale by factor={factor!r}")  # Can overflow/underflow float32.


def remove(spec: HeatmapSpec, index: int, *, level: int = 0) -> HeatmapSpec:
    """Kill sub-map `index` of `level` (alive = 0; it then renders as zero). Multi-object specs have one
    level, so `level` is 0 there; hierarchical specs accept any level. `level` is keyword-only: the other
    edits take (level, index) positionally, and remove(spec, 2, 3) would read the wrong way round."""
    level = _check_level(_check_spec(spec), level)
    index = _check_index(spec, level, index)
    out = spec.clone()
    out.alive[level][:, index] = 0
    return out


def restyle(spec: HeatmapSpec, index: int, seed: int) -> HeatmapSpec:
    """Give object `index` (level 0) the appearance seed `seed` (0 <= seed < 2^63). Needs style seeds."""
    if _check_spec(spec).style_seeds is None:
        raise ValueError(f"restyle needs a spec with style_seeds (a multi-object spec); this one is "
                         f"kind={spec.kind!r} without them")
    index = _check_index(spec, 0, index)
    seed = as_int("seed", seed, ValueError)
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2^63), got {seed!r}")
    out = spec.clone()
    out.style_seeds[:, index] = seed
    return out


def drag_centers(spec: HeatmapSpec, handle: Sequence[float] | torch.Tensor,
                 target: Sequence[float] | torch.Tensor, radius: float, alpha: float = 1.0,
                 level: int = 0, return_moved: bool = False):
    """Coarse drag (paper Eq. 6): each centre c of `level` with ||c - handle|| <= radius becomes
    c + alpha * (target - handle); other centres stay. handle/target are (x, y) normalised (fractions
    of the image, not pixels).

    On a hierarchical spec, when a level-0 centre moves, the deeper centres of that sample follow by the
    same vector (as with `move`). `return_moved=True` returns (spec, moved [N, K_level] bool): which
    centres the drag caught — none means the fine (feature-space) step has to do all the work.
    """
    level = _check_level(_check_spec(spec), level)
    handle_t = torch.as_tensor(handle, dtype=torch.float32).flatten()
    target_t = torch.as_tensor(target, dtype=torch.float32).flatten()
    for name, t in (("handle", handle_t), ("target", target_t)):
        if t.numel() != 2 or not torch.isfinite(t).all():
            raise ValueError(f"{name} must be 2 finite numbers (x, y), got {t.tolist()}")
        if not ((t >= 0) & (t <= 1)).all():  # pixel coordinates would silently catch nothing
            raise ValueError(f"{name} {t.tolist()} is outside the image: give (x, y) as fractions of the "
                             "image in [0, 1] (pixels divided by the image size)")
    radius, alpha = _check_finite("radius", radius), _check_finite("alpha", alpha)
    if not 0 <= radius <= math.sqrt(2):
        raise ValueError(f"radius must be in [0, sqrt(2)] (a fraction of the image), got {radius!r}")
    out = spec.clone()
    c = out.centers[level]
    shift = (alpha * (target_t - handle_t)).to(c)
    near = (c - handle_t.to(c)).norm(dim=-1) <= radius                             # [N, K]
    c += near.unsqueeze(-1).to(c) * shift
    if spec.hierarchical and level == 0:
        moved = near.any(dim=1).view(-1, 1, 1)                                     # [N, 1, 1]
        for deeper in out.centers[1:]:
            deeper += moved.to(deeper) * shift
    out = _checked_result(out, "drag_centers")
    return (out, near) if return_moved else out


# ---------------------------------------------------------------------------------------------------
# Edit lists and CLI parsing.


@dataclass(frozen=True)
class Edit:
    """One scripted edit. `op` in EDIT_OPS; the other fields are used as the op needs them."""

    op: str
    level: int = 0
    index: int = 0
    dx: float = 0.0
    dy: float = 0.0
    factor: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.op not in EDIT_OPS:
            raise ValueError(f"Edit op={self.op!r} is not one of {list(EDIT_OPS)}")

    def option(self) -> str:
        """The edit as generate.py's option, e.g. '--move=0:1:0.1,-0.05' (what error messages name)."""
        value = {"move": f"{self.level}:{self.index}:{self.dx:g},{self.dy:g}",
                 "scale": f"{self.level}:{self.index}:{self.factor:g}",
                 "remove": f"{self.level}:{self.index}", "restyle": f"{self.index}:{self.seed}"}[self.op]
        return f"--{self.op}={value}"


def apply_edit(spec: HeatmapSpec, edit: Edit) -> HeatmapSpec:
    """`edit` applied to `spec` (a new spec). TypeError unless `edit` is an `Edit`."""
    if not isinstance(edit, Edit):
        hint = (" (parse CLI strings with parse_move / parse_scale / parse_remove / parse_restyle)"
                if isinstance(edit, str) else "")
        raise TypeError(f"an edit must be an Edit, got {type(edit).__name__} {edit!r}{hint}")
    try:
        if edit.op == "move":
            return move(spec, edit.level, edit.index, edit.dx, edit.dy)
        if edit.op == "scale":
            return scale(spec, edit.level, edit.index, edit.factor)
        if edit.op == "remove":
            return remove(spec, edit.index, level=edit.level)
        return restyle(spec, edit.index, edit.seed)
    except ValueError as e:  # with several edits, say which one
        raise ValueError(f"{edit.option()}: {e}") from None


def apply_edits(spec: HeatmapSpec, edits: Iterable[Edit]) -> HeatmapSpec:
    """Apply `edits` (a list of `Edit`) in order; returns a new spec (the input is unchanged even when
    `edits` is empty). TypeError for a string or a bare Edit in place of the list, or a non-Edit item."""
    if isinstance(edits, (str, Edit)):
        raise TypeError(f"edits must be a list of Edit, got {type(edits).__name__} {edits!r}")
    out = _check_spec(spec).clone()
    for edit in edits:
        out = apply_edit(out, edit)
    return out


def _int(text: str, what: str, whole: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"{what} {text!r} in {whole!r} is not an integer") from None
    if value < 0:
        raise ValueError(f"{what} {text!r} in {whole!r} must be >= 0")
    return value


def _float(text: str, what: str, whole: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"{what} {text!r} in {whole!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{what} {text!r} in {whole!r} must be finite")
    return value


def _fields(text: str, count: int, form: str) -> list[str]:
    if not isinstance(text, str):
        raise TypeError(f"edit string must be a str, got {type(text).__name__}")
    parts = text.split(":")
    if len(parts) != count:
        raise ValueError(f"edit {text!r} must look like {form!r}")
    return parts


def parse_move(text: str) -> Edit:
    """'LEVEL:INDEX:DX,DY' -> Edit('move'), e.g. '0:0:0.1,-0.05'."""
    level, index, delta = _fields(text, 3, "LEVEL:INDEX:DX,DY")
    d = delta.split(",")
    if len(d) != 2:
        raise ValueError(f"offset {delta!r} in {text!r} must be 'DX,DY'")
    return Edit("move", level=_int(level, "level", text), index=_int(index, "index", text),
                dx=_float(d[0], "dx", text), dy=_float(d[1], "dy", text))


def parse_scale(text: str) -> Edit:
    """'LEVEL:INDEX:FACTOR' -> Edit('scale'), FACTOR > 0."""
    level, index, factor = _fields(text, 3, "LEVEL:INDEX:FACTOR")
    f = _float(factor, "factor", text)
    if f <= 0:
        raise ValueError(f"factor {factor!r} in {text!r} must be > 0")
    return Edit("scale", level=_int(level, "level", text), index=_int(index, "index", text), factor=f)


def parse_remove(text: str) -> Edit:
    """'INDEX' (level 0) or 'LEVEL:INDEX' -> Edit('remove')."""
    parts = _fields(text, text.count(":") + 1 if isinstance(text, str) else 1, "INDEX")
    if len(parts) == 1:
        return Edit("remove", index=_int(parts[0], "index", text))
    if len(parts) == 2:
        return Edit("remove", level=_int(parts[0], "level", text), index=_int(parts[1], "index", text))
    raise ValueError(f"edit {text!r} must look like 'INDEX' or 'LEVEL:INDEX'")


def parse_restyle(text: str) -> Edit:
    """'INDEX:SEED' -> Edit('restyle')."""
    index, seed = _fields(text, 2, "INDEX:SEED")
    return Edit("restyle", index=_int(index, "index", text), seed=_int(seed, "seed", text))
