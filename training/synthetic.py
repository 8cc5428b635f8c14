"""Built-in synthetic datasets: pure-numpy renderers with known objects, and a label-free segmenter.

Two kinds, both deterministic in (seed, index) and rendered directly at any power-of-two resolution:

- `shapes`: one creature per image (ellipse body, two triangular ears, two eyes, a nose) in a saturated
  colour on a desaturated textured background. Stand-in for FFHQ / LSUN Cat.
- `rooms`: a bed plus two of {window, painting, lamp} on a wall/floor background. Every class owns a
  hue band that no other class and no background pixel uses, so objects can be recovered from pixels
  alone (`segment`). Stand-in for LSUN Bedroom.

Coordinates: pixel (row i, column j) has centre ((j + 0.5) / R, (i + 0.5) / R) in normalised (x, y).
Edges are anti-aliased from a signed distance: coverage = clip(0.5 - distance_in_pixels, 0, 1); an
object's mask holds the pixels its visible coverage reaches 0.5.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.ndimage

KINDS = ("shapes", "rooms")
ROOM_CLASSES = ("bed", "window", "painting", "lamp")

# Hue bands (degrees) in which each room class is drawn, and the wider bands the segmenter accepts.
# Bands of different classes never overlap, and the background saturation stays below SAT_OBJECT.
_ROOM_HUE_DRAW = {"bed": (348.0, 372.0), "window": (196.0, 214.0), "painting": (100.0, 140.0),
                  "lamp": (42.0, 56.0)}
_ROOM_HUE_SEGMENT = {"bed": (325.0, 385.0), "window": (180.0, 240.0), "painting": (75.0, 165.0),
                     "lamp": (28.0, 70.0)}
BG_MAX_SAT = 0.14  # backgrounds never exceed this HSV saturation
SAT_OBJECT = 0.27  # saturation that only object pixels reach (seed of the `shapes` segmenter)
# Every room part is drawn with chroma (max - min of RGB) in about [0.37, 0.5] and backgrounds stay
# below 0.1, so a pixel half covered by an object has chroma near this value.
ROOM_CHROMA_EDGE = 0.22


@dataclass
class SyntheticSample:
    """One rendered image with its ground-truth objects.

    image: uint8 [H, W, 3]; masks: bool [K, H, W] (visible pixels of each instance);
    centers: float32 [K, 2] mask centroids as normalised (x, y); classes: K class names.
    """

    image: np.ndarray
    masks: np.ndarray
    centers: np.ndarray
    classes: list[str]


# ---------------------------------------------------------------------------------------------------
# Colour helpers (vectorised).


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Hue in degrees (any range), s and v in [0, 1], broadcastable -> float RGB [..., 3] in [0, 1]."""
    h, s, v = np.broadcast_arrays(np.asarray(h, np.float64) % 360.0, np.asarray(s, np.float64),
                                  np.asarray(v, np.float64))
    k = np.stack([(5.0 + h / 60.0) % 6.0, (3.0 + h / 60.0) % 6.0, (1.0 + h / 60.0) % 6.0], axis=-1)
    ramp = np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return v[..., None] - v[..., None] * s[..., None] * ramp


def rgb_to_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float RGB [..., 3] in [0, 1] -> (hue degrees in [0, 360), saturation, value)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(axis=-1)
    c = v - rgb.min(axis=-1)
    s = np.where(v > 0, c / np.maximum(v, 1e-12), 0.0)
    safe = np.maximum(c, 1e-12)
    h = np.where(v == r, ((g - b) / safe) % 6.0, np.where(v == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    h = np.where(c > 0, h * 60.0, 0.0)
    return h % 360.0, s, v


# ---------------------------------------------------------------------------------------------------
# Geometry: signed distances in pixels (negative inside) and anti-aliased coverage.


class _Canvas:
    """Pixel-centre coordinate grids for a square image of side `res` (in pixel units)."""

    def __init__(self, res: int):
        self.res = res
        axis = np.arange(res, dtype=np.float64) + 0.5
        self.x, self.y = np.meshgrid(axis, axis)  # [R, R] each, x along columns

    def px(self, value: float) -> float:
        """Normalised length -> pixels."""
        return value * self.res


def coverage(sdf: np.ndarray) -> np.ndarray:
    """Signed distance in pixels -> anti-aliased coverage in [0, 1] (one-pixel ramp)."""
    return np.clip(0.5 - sdf, 0.0, 1.0)


def sdf_ellipse(cv: _Canvas, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipse (normalised centre and radii)."""
    dx = (cv.x - cv.px(cx)) / cv.px(rx)
    dy = (cv.y - cv.px(cy)) / cv.px(ry)
    f = dx * dx + dy * dy - 1.0
    grad = 2.0 * np.sqrt((dx / cv.px(rx)) ** 2 + (dy / cv.px(ry)) ** 2)
    # First-order distance f/|grad f|; exact enough near the edge, which is all the ramp needs.
    return np.where(grad > 1e-9, f / np.maximum(grad, 1e-9), -1e9)


def sdf_box(cv: _Canvas, x0: float, y0: float, x1: float, y1: float, radius: float = 0.0) -> np.ndarray:
    """Signed distance to an axis-aligned box [x0, x1] x [y0, y1] (normalised) with rounded corners."""
    r = cv.px(radius)
    qx = np.abs(cv.x - cv.px(x0 + x1) / 2) - (cv.px(x1 - x0) / 2 - r)
    qy = np.abs(cv.y - cv.px(y0 + y1) / 2) - (cv.px(y1 - y0) / 2 - r)
    outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    return outside + np.minimum(np.maximum(qx, qy), 0.0) - r


def sdf_polygon(cv: _Canvas, vertices: list[tuple[float, float]]) -> np.ndarray:
    """Signed distance (exact inside, slightly under-estimated near outer corners) to a convex polygon."""
    pts = np.asarray(vertices, np.float64) * cv.res
    area = np.sum(pts[:, 0] * np.roll(pts[:, 1], -1) - np.roll(pts[:, 0], -1) * pts[:, 1])
    sign = 1.0 if area > 0 else -1.0  # makes every edge normal point outwards
    dist = np.full(cv.x.shape, -np.inf)
    for a, b in zip(pts, np.roll(pts, -1, axis=0)):
        ex, ey = b - a
        nx, ny = sign * ey, -sign * ex
        norm = np.hypot(nx, ny) + 1e-12
        dist = np.maximum(dist, ((cv.x - a[0]) * nx + (cv.y - a[1]) * ny) / norm)
    return dist


def paint(img: np.ndarray, alpha: np.ndarray, color: np.ndarray) -> None:
    """Composite `color` ([3] or [H, W, 3]) over `img` [H, W, 3] in place with coverage `alpha` [H, W]."""
    img *= 1.0 - alpha[..., None]
    img += alpha[..., None] * color


def smooth_noise(rng: np.random.Generator, res: int, cells: int) -> np.ndarray:
    """Low-frequency noise [res, res] in about [-1, 1]: a random `cells` x `cells` grid, bilinearly upsampled."""
    grid = rng.uniform(-1.0, 1.0, size=(cells, cells))
    pos = (np.arange(res) + 0.5) / res * (cells - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, cells - 2)
    frac = pos - lo
    interp = np.zeros((res, cells))
    interp[np.arange(res), lo] = 1.0 - frac
    interp[np.arange(res), lo + 1] = frac
    return interp @ grid @ interp.T  # separable bilinear interpolation as two small matmuls


# ---------------------------------------------------------------------------------------------------
# Shapes: one creature.


def _shapes_background(rng: np.random.Generator, cv: _Canvas) -> np.ndarray:
    """Desaturated gradient + low-frequency noise + faint stripes -> float RGB [R, R, 3]."""
    t = (cv.x * np.cos(rng.uniform(0, 2 * np.pi)) + cv.y * np.sin(rng.uniform(0, 2 * np.pi))) / cv.res
    t = (t - t.min()) / max(np.ptp(t), 1e-9)
    hues = rng.uniform(0, 360, size=2)
    sats = rng.uniform(0.0, BG_MAX_SAT * 0.7, size=2)
    vals = rng.uniform(0.3, 0.9, size=2)
    v = vals[0] + (vals[1] - vals[0]) * t + 0.08 * smooth_noise(rng, cv.res, 5)
    freq = rng.uniform(2.0, 8.0)
    v = v + 0.04 * np.sin(2 * np.pi * freq * (cv.x + cv.y * rng.uniform(-1, 1)) / cv.res)
    s = sats[0] + (sats[1] - sats[0]) * t
    # Interpolating two hues directly could cross a saturated band; lerp the RGB of the two tints instead.
    rgb0 = hsv_to_rgb(hues[0], s, np.clip(v, 0.05, 1.0))
    rgb1 = hsv_to_rgb(hues[1], s, np.clip(v, 0.05, 1.0))
    return rgb0 * (1 - t[..., None]) + rgb1 * t[..., None]


def _render_shapes(rng: np.random.Generator, res: int) -> tuple[np.ndarray, list[np.ndarray], list[str]]:
    """Draw one creature -> (float RGB [R, R, 3], [visible coverage [R, R]], ['creature'])."""
    cv = _Canvas(res)
    img = _shapes_background(rng, cv)
    cx, cy = np.clip(rng.normal(0.5, 0.07, size=2), 0.32, 0.68)
    cy = cy + 0.04  # ears stick out upwards; keep the whole creature inside the frame
    rx = rng.uniform(0.17, 0.26)
    ry = rx * rng.uniform(0.8, 1.1)
    hue, sat, val = rng.uniform(0, 360), rng.uniform(0.55, 0.9), rng.uniform(0.55, 0.95)
    body = coverage(sdf_ellipse(cv, cx, cy, rx, ry))
    ears = np.zeros_like(body)
    spread, width, length = rng.uniform(0.45, 0.75), rng.uniform(0.28, 0.42), rng.uniform(1.35, 1.6)
    for side in (-1.0, 1.0):
        ang = -np.pi / 2 + side * spread  # measured from +x, y down: -pi/2 is straight up
        base = [(cx + rx * 0.9 * np.cos(ang + d), cy + ry * 0.9 * np.sin(ang + d)) for d in (-width, width)]
        tip = (cx + rx * length * np.cos(ang), cy + ry * length * np.sin(ang))
        ears = np.maximum(ears, coverage(sdf_polygon(cv, [base[0], tip, base[1]])))
    paint(img, ears, hsv_to_rgb(hue, sat, val * 0.8))
    paint(img, body, hsv_to_rgb(hue, sat, val))
    _draw_face(rng, cv, img, cx, cy, rx, ry, hue)
    return img, [np.maximum(body, ears)], ["creature"]


def _draw_face(rng: np.random.Generator, cv: _Canvas, img: np.ndarray, cx: float, cy: float,
               rx: float, ry: float, hue: float) -> None:
    """Eyes (white + dark pupil) and a nose, all strictly inside the body so the mask is unchanged."""
    eye_r = rx * rng.uniform(0.13, 0.19)
    eye_dx, eye_dy = rx * rng.uniform(0.3, 0.42), ry * rng.uniform(0.05, 0.22)
    look = rng.uniform(-0.3, 0.3, size=2) * eye_r
    for side in (-1.0, 1.0):
        ex, ey = cx + side * eye_dx, cy - eye_dy
        paint(img, coverage(sdf_ellipse(cv, ex, ey, eye_r, eye_r)), hsv_to_rgb(0, 0.03, 0.97))
        pupil = coverage(sdf_ellipse(cv, ex + look[0], ey + look[1], eye_r * 0.5, eye_r * 0.55))
        paint(img, pupil, hsv_to_rgb(0, 0.0, 0.08))
    ny, nw = cy + ry * rng.uniform(0.12, 0.25), rx * rng.uniform(0.08, 0.13)
    nose = coverage(sdf_polygon(cv, [(cx - nw, ny), (cx + nw, ny), (cx, ny + nw * 1.2)]))
    paint(img, nose, hsv_to_rgb(hue + 180.0, 0.5, 0.3))


# ---------------------------------------------------------------------------------------------------
# Rooms: bed + two of {window, painting, lamp}.


def _room_background(rng: np.random.Generator, cv: _Canvas, horizon: float) -> np.ndarray:
    """Wall above the horizon, floor with planks below; all desaturated -> float RGB [R, R, 3]."""
    wall_h, floor_h = rng.uniform(0, 360, size=2)
    wall_v = rng.uniform(0.62, 0.88) + 0.05 * smooth_noise(rng, cv.res, 4) - 0.1 * cv.y / cv.res
    plank = 0.05 * np.sin(2 * np.pi * rng.uniform(5, 10) * cv.x / cv.res + rng.uniform(0, 6)) ** 2
    floor_v = rng.uniform(0.35, 0.55) + 0.05 * smooth_noise(rng, cv.res, 6) - plank
    wall = hsv_to_rgb(wall_h, rng.uniform(0.02, BG_MAX_SAT * 0.7), np.clip(wall_v, 0, 1))
    floor = hsv_to_rgb(floor_h, rng.uniform(0.04, BG_MAX_SAT * 0.8), np.clip(floor_v, 0, 1))
    img = wall.copy()
    paint(img, coverage(cv.px(horizon) - cv.y), floor)
    return img


def _class_hue(rng: np.random.Generator, cls: str) -> float:
    lo, hi = _ROOM_HUE_DRAW[cls]
    return rng.uniform(lo, hi)


def _draw_bed(rng, cv, img, box) -> np.ndarray:
    """Headboard, blanket with stripes and a pillow; returns the bed's coverage."""
    x0, y0, x1, y1 = box  # the box spans headboard (top) to blanket (bottom)
    hue = _class_hue(rng, "bed")
    top = y0 + (y1 - y0) * rng.uniform(0.25, 0.35)  # where the blanket starts
    head = coverage(sdf_box(cv, x0 + 0.01, y0, x1 - 0.01, top + (y1 - top) * 0.3, radius=0.01))
    blanket = coverage(sdf_box(cv, x0, top, x1, y1, radius=0.008))
    stripes = 0.08 * np.sin(2 * np.pi * rng.uniform(3, 7) * cv.x / cv.px(x1 - x0))
    paint(img, head, hsv_to_rgb(hue, 0.8, 0.5))
    paint(img, blanket, hsv_to_rgb(hue + stripes * 40, 0.6, 0.72 + stripes))
    pw = (x1 - x0) * rng.uniform(0.3, 0.42)
    px0 = x0 + (x1 - x0) * rng.uniform(0.06, 0.1)
    pillow = coverage(sdf_box(cv, px0, top + 0.01, px0 + pw, top + (y1 - top) * 0.35, radius=0.015))
    paint(img, pillow, hsv_to_rgb(hue, 0.42, 0.97))
    return np.maximum(head, blanket)


def _draw_window(rng, cv, img, box) -> np.ndarray:
    """Dark-blue frame, light-blue sky panes, cross mullions; returns the window's coverage."""
    x0, y0, x1, y1 = box
    hue = _class_hue(rng, "window")
    frame = coverage(sdf_box(cv, x0, y0, x1, y1))
    paint(img, frame, hsv_to_rgb(hue, 0.75, 0.55))
    t = max(0.012, (x1 - x0) * 0.08)
    sky_v = np.clip(0.98 - 0.2 * (cv.y - cv.px(y0)) / cv.px(y1 - y0), 0.7, 1.0)
    paint(img, coverage(sdf_box(cv, x0 + t, y0 + t, x1 - t, y1 - t)), hsv_to_rgb(hue, 0.48, sky_v))
    mx, my, m = (x0 + x1) / 2, (y0 + y1) / 2, t / 2
    mullions = np.maximum(coverage(sdf_box(cv, mx - m, y0, mx + m, y1)), coverage(sdf_box(cv, x0, my - m, x1, my + m)))
    paint(img, mullions, hsv_to_rgb(hue, 0.75, 0.55))
    return frame


def _draw_painting(rng, cv, img, box) -> np.ndarray:
    """Dark-green frame around a canvas of concentric / striped greens; returns the painting's coverage."""
    x0, y0, x1, y1 = box
    hue = _class_hue(rng, "painting")
    frame = coverage(sdf_box(cv, x0, y0, x1, y1))
    paint(img, frame, hsv_to_rgb(hue, 0.8, 0.5))
    t = max(0.01, (x1 - x0) * 0.1)
    u = (cv.x - cv.px((x0 + x1) / 2)) / cv.px(x1 - x0)
    w = (cv.y - cv.px((y0 + y1) / 2)) / cv.px(y1 - y0)
    if rng.random() < 0.5:
        phase = np.hypot(u, w) * rng.uniform(6, 12)  # concentric rings
    else:
        phase = (u * rng.uniform(-1, 1) + w) * rng.uniform(4, 10)  # slanted stripes
    wave = np.sin(2 * np.pi * phase)
    canvas = hsv_to_rgb(hue + 15 * wave, 0.55, 0.8 + 0.12 * wave)
    paint(img, coverage(sdf_box(cv, x0 + t, y0 + t, x1 - t, y1 - t)), canvas)
    return frame


def _draw_lamp(rng, cv, img, box) -> np.ndarray:
    """Floor lamp: glowing trapezoid shade, pole and base, all yellow; returns the lamp's coverage."""
    x0, y0, x1, y1 = box
    hue = _class_hue(rng, "lamp")
    mx, w, h = (x0 + x1) / 2, x1 - x0, y1 - y0
    shade_bottom = y0 + h * 0.35
    shade = coverage(sdf_polygon(cv, [(mx - w * 0.3, y0), (mx + w * 0.3, y0), (x1, shade_bottom), (x0, shade_bottom)]))
    pole_w = max(w * 0.12, 1.6 / cv.res)  # stays at least ~1.5 px wide so it survives in the mask
    pole = coverage(sdf_box(cv, mx - pole_w / 2, shade_bottom - 0.01, mx + pole_w / 2, y1 - h * 0.05))
    base = coverage(sdf_box(cv, mx - w * 0.35, y1 - h * 0.07, mx + w * 0.35, y1, radius=0.005))
    stand = np.maximum(pole, base)
    paint(img, stand, hsv_to_rgb(hue, 0.75, 0.55))
    paint(img, shade, hsv_to_rgb(hue, 0.5, 0.97))
    return np.maximum(stand, shade)


_ROOM_DRAW: dict[str, Callable] = {"bed": _draw_bed, "window": _draw_window, "painting": _draw_painting,
                                   "lamp": _draw_lamp}


def _room_box(rng: np.random.Generator, cls: str, horizon: float, scale: float) -> tuple[float, ...]:
    """Random normalised bounding box (x0, y0, x1, y1) for one object of class `cls`."""
    if cls == "bed":
        w, h = rng.uniform(0.36, 0.5) * scale, rng.uniform(0.16, 0.24) * scale
        y1 = rng.uniform(max(horizon + h + 0.05, 0.75), 0.95)
    elif cls == "lamp":
        w, h = rng.uniform(0.09, 0.13) * scale, rng.uniform(0.28, 0.38) * scale
        y1 = rng.uniform(horizon + 0.08, 0.95)
    else:  # wall objects: window, painting
        w, h = rng.uniform(0.16, 0.26) * scale, rng.uniform(0.16, 0.26) * scale
        y1 = rng.uniform(0.06 + h, horizon - 0.04)
    x0 = rng.uniform(0.04, 0.96 - w)
    top = y1 - h * (1.45 if cls == "bed" else 1.0)  # include the bed's headboard
    return x0, top, x0 + w, y1


def _boxes_overlap(a: tuple[float, ...], b: tuple[float, ...], margin: float) -> bool:
    return not (a[2] + margin < b[0] or b[2] + margin < a[0] or a[3] + margin < b[1] or b[3] + margin < a[1])


def _layout_room(rng: np.random.Generator, classes: list[str], horizon: float) -> list[tuple[float, ...]]:
    """Non-overlapping boxes by rejection sampling; shrinks objects if a layout keeps failing."""
    boxes: list[tuple[float, ...]] = []
    for cls in classes:
        for attempt in range(200):
            box = _room_box(rng, cls, horizon, scale=0.8 ** (attempt // 25))
            if not any(_boxes_overlap(box, other, 0.03) for other in boxes):
                break
        boxes.append(box)  # after 200 tries accept an overlap; masks stay exact (visible pixels)
    return boxes


def _render_rooms(rng: np.random.Generator, res: int) -> tuple[np.ndarray, list[np.ndarray], list[str]]:
    """Draw a room -> (float RGB [R, R, 3], visible coverages, class names)."""
    cv = _Canvas(res)
    horizon = rng.uniform(0.5, 0.6)
    img = _room_background(rng, cv, horizon)
    others = list(rng.permutation(["window", "painting", "lamp"])[:2])
    classes = ["bed"] + sorted(others, key=ROOM_CLASSES.index)
    boxes = _layout_room(rng, classes, horizon)
    covers: list[np.ndarray] = []
    for cls, box in zip(classes, boxes):
        cov = _ROOM_DRAW[cls](rng, cv, img, box)
        covers = [c * (1.0 - cov) for c in covers]  # later objects occlude earlier ones
        covers.append(cov)
    return img, covers, classes


# ---------------------------------------------------------------------------------------------------
# Public API.


def _check_kind_and_resolution(kind: str, resolution: int) -> None:
    if kind not in KINDS:
        raise ValueError(f"synthetic kind={kind!r} is not one of {list(KINDS)}")
    if not isinstance(resolution, (int, np.integer)) or resolution < 4 or resolution & (resolution - 1):
        raise ValueError(f"resolution must be a power of two >= 4, got {resolution!r}")


def mask_centers(masks: np.ndarray) -> np.ndarray:
    """bool [K, H, W] -> float32 [K, 2] normalised (x, y) centroids of pixel centres (0.5 for empty masks)."""
    k, h, w = masks.shape
    centers = np.full((k, 2), 0.5, np.float32)
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        if len(xs):
            centers[i] = ((xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h)
    return centers


def render(kind: str, resolution: int, seed: int, index: int) -> SyntheticSample:
    """Render image `index` of the synthetic dataset `kind` with content seed `seed` (deterministic)."""
    _check_kind_and_resolution(kind, resolution)
    rng = np.random.default_rng([int(seed), int(index), KINDS.index(kind)])
    draw = _render_shapes if kind == "shapes" else _render_rooms
    img, covers, classes = draw(rng, int(resolution))
    image = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    masks = np.stack([c >= 0.5 for c in covers]) if covers else np.zeros((0, resolution, resolution), bool)
    return SyntheticSample(image=image, masks=masks, centers=mask_centers(masks), classes=list(classes))


def _to_hwc_float(image: np.ndarray) -> np.ndarray:
    """uint8 [3, H, W] or [H, W, 3] -> float [H, W, 3] in [0, 1]."""
    image = np.asarray(image)
    if image.ndim != 3 or 3 not in (image.shape[0], image.shape[-1]):
        raise ValueError(f"image must have shape [3, H, W] or [H, W, 3], got {list(image.shape)}")
    if image.shape[-1] != 3:
        image = image.transpose(1, 2, 0)
    return image.astype(np.float64) / 255.0


def _largest_parts(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Keep connected components with area >= max(min_area, 5% of the largest); empty if none qualifies."""
    labels, count = scipy.ndimage.label(mask)
    if count == 0:
        return np.zeros_like(mask)
    areas = np.bincount(labels.ravel())[1:]
    keep = np.nonzero(areas >= max(min_area, 0.05 * areas.max()))[0] + 1
    return np.isin(labels, keep)


def _shapes_creature(chroma: np.ndarray, sat: np.ndarray, val: np.ndarray, min_area: int) -> np.ndarray | None:
    """The creature's mask from chroma alone, or None when no saturated blob is big enough."""
    labels, count = scipy.ndimage.label((sat >= SAT_OBJECT) & (val >= 0.12))
    if count == 0:
        return None
    areas = np.bincount(labels.ravel())[1:]
    if areas.max() < min_area:
        return None
    seed = labels == np.argmax(areas) + 1
    # Body colours vary per image, so put the edge threshold halfway between body and background chroma:
    # that is where an anti-aliased edge pixel is half covered.
    threshold = 0.5 * (np.median(chroma[seed]) + np.median(chroma[~seed])) if (~seed).any() else 0.0
    near = scipy.ndimage.binary_dilation(seed, iterations=2)
    labels, count = scipy.ndimage.label(near & (chroma >= threshold))
    if count == 0:
        return None
    areas = np.bincount(labels.ravel())[1:]
    # Eyes and nose are not saturated but lie inside the body: fill the holes they leave.
    return scipy.ndimage.binary_fill_holes(labels == np.argmax(areas) + 1)


def segment(kind: str, image: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Recover objects from pixels alone (works on generated images too).

    image: uint8 [3, H, W] or [H, W, 3]. Returns (masks bool [K, H, W], class names); `shapes` gives at
    most one 'creature', `rooms` at most one instance per class, in ROOM_CLASSES order.
    """
    if kind not in KINDS:
        raise ValueError(f"synthetic kind={kind!r} is not one of {list(KINDS)}")
    rgb = _to_hwc_float(image)
    hue, sat, val = rgb_to_hsv(rgb)
    chroma = rgb.max(axis=-1) - rgb.min(axis=-1)
    h, w = sat.shape
    min_area = max(4, int(0.002 * h * w))
    masks, classes = [], []
    if kind == "shapes":
        found = _shapes_creature(chroma, sat, val, min_area)
        if found is not None:
            masks.append(found)
            classes.append("creature")
    else:
        for cls in ROOM_CLASSES:
            lo, hi = _ROOM_HUE_SEGMENT[cls]
            in_band = ((hue - lo) % 360.0) <= (hi - lo)
            found = _largest_parts(scipy.ndimage.binary_fill_holes((chroma >= ROOM_CHROMA_EDGE) & in_band), min_area)
            if found.sum() >= min_area:
                masks.append(found)
                classes.append(cls)
    stacked = np.stack(masks) if masks else np.zeros((0, h, w), bool)
    return stacked, classes
