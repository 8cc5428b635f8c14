"""Pictures of heatmap specs (pure torch/numpy, no matplotlib): colour-mapped heatmaps with centre
markers, and heatmaps tinted over a generated image. Used by generate.py, the editor and snapshots."""

from __future__ import annotations

import numpy as np
import torch

from training.heatmaps import HeatmapSpec, as_int, compose, render

# A dark-to-bright "inferno-like" colour map: (value, RGB) control points, linearly interpolated.
# It never produces the marker colours below (no pure cyan/green/magenta), so markers stay visible.
_CMAP_POINTS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_CMAP_COLOURS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]],
                         np.float64)
# Marker colour per level (cycled for deeper levels).
MARKER_COLOURS = np.array([[0, 255, 255], [0, 255, 0], [255, 0, 255], [255, 255, 255]], np.uint8)


def colormap(values: np.ndarray) -> np.ndarray:
    """values [...] in [0, 1] (clipped) -> uint8 [..., 3]."""
    v = np.clip(np.nan_to_num(np.asarray(values, np.float64)), 0, 1)
    rgb = [np.interp(v, _CMAP_POINTS, _CMAP_COLOURS[:, ch]) for ch in range(3)]
    return np.rint(np.stack(rgb, axis=-1)).astype(np.uint8)


def _check_sample(spec: HeatmapSpec, sample: int) -> int:
    sample = as_int("sample", sample)  # NumPy / tensor integers too, as everywhere in the API
    if not 0 <= sample < spec.batch_size:
        raise ValueError(f"sample={sample!r} out of range: the spec has samples 0..{spec.batch_size - 1}")
    return sample


def _level_map(spec: HeatmapSpec, sample: int, size: int, level: int) -> np.ndarray:
    """[size, size] float in [0, 1]: sum of the level's sub-maps, clamped for display (overlapping
    blobs add up beyond 1)."""
    one = spec.select([sample]).detach().to("cpu")
    return compose(render(one, size, level), "sum")[0, 0].clamp(0, 1).float().numpy()


def draw_markers(canvas: np.ndarray, spec: HeatmapSpec, sample: int, level: int,
                 x0: int = 0, size: int | None = None) -> None:
    """Draw filled square markers (in place) at the alive centres of `level`, in the panel that starts at
    column x0 and is size x size (default: the canvas height). Off-image centres are skipped."""
    size = size or canvas.shape[0]
    half = max(1, size // 64)
    colour = MARKER_COLOURS[level % len(MARKER_COLOURS)]
    centers = spec.centers[level][sample].detach().cpu().float().numpy()
    alive = spec.alive[level][sample].detach().cpu().numpy()
    for (cx, cy), a in zip(centers, alive):
        if a <= 0 or not (0 <= cx < 1 and 0 <= cy < 1):
            continue
        col, row = int(cx * size), int(cy * size)
        rows = slice(max(row - half, 0), row + half + 1)
        cols = slice(x0 + max(col - half, 0), x0 + min(col + half + 1, size))
        canvas[rows, cols] = colour


def heatmap_image(spec: HeatmapSpec, sample: int = 0, resolution: int = 128,
                  level: int | None = None) -> np.ndarray:
    """uint8 [R, R * L, 3]: each level's summed heatmap, colour-mapped, side by side (level=None), or
    uint8 [R, R, 3] for one level; markers at the alive centres (cyan level 0, green 1, magenta 2)."""
    sample = _check_sample(spec, sample)
    if level is not None and not (isinstance(level, int) and 0 <= level < spec.num_levels):
        raise ValueError(f"level={level!r} out of range: the spec has levels 0..{spec.num_levels - 1}")
    if not isinstance(resolution, int) or resolution < 4:
        raise ValueError(f"resolution must be an int >= 4, got {resolution!r}")
    levels = range(spec.num_levels) if level is None else [level]
    panels = []
    for lvl in levels:
        panel = colormap(_level_map(spec, sample, resolution, lvl))
        draw_markers(panel, spec, sample, lvl)
        panels.append(panel)
    return np.concatenate(panels, axis=1)


def overlay(image: np.ndarray, spec: HeatmapSpec, sample: int = 0, alpha: float = 0.5) -> np.ndarray:
    """Tint uint8 [H, W, 3] `image` (square) with the heatmap of `spec[sample]` and mark its centres.

    The heatmap is the pixel-wise max over levels of each level's summed map m in [0, 1]; a pixel
    becomes (1 - alpha m) * image + alpha m * colormap(m), so where m = 0 the image is unchanged.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or image.shape[0] != image.shape[1]:
        raise ValueError(f"image must be a square uint8 [H, W, 3] array, "
                         f"got {image.dtype} {list(image.shape)}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    sample = _check_sample(spec, sample)
    size = image.shape[0]
    m = np.max([_level_map(spec, sample, size, lvl) for lvl in range(spec.num_levels)], axis=0)
    w = (alpha * m)[..., None]
    out = np.rint((1 - w) * image + w * colormap(m)).astype(np.uint8)
    for lvl in range(spec.num_levels):
        draw_markers(out, spec, sample, lvl)
    return out


def to_image(img: torch.Tensor) -> np.ndarray:
    """Network image [3, H, W] (or [1, 3, H, W]) in [-1, 1] -> uint8 [H, W, 3] (for `overlay`)."""
    if img.ndim == 4:
        img = img[0]
    img = (img.detach().float().cpu().clamp(-1, 1) + 1) * 127.5
    return img.round().to(torch.uint8).permute(1, 2, 0).numpy()
