"""Image grids for runs and for generate.py: conversion, tiling, PNG writing, heatmap tiles."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch

from dnnlib.util import atomic_write


def to_uint8(img: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] float in [-1, 1] -> uint8 [N, H, W, C] (x * 127.5 + 128, clamped, as StyleGAN2-ADA)."""
    return (img.detach().float() * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()


def tile(images: np.ndarray, cols: int) -> np.ndarray:
    """uint8 [N, H, W, C] -> one [rows*H, cols*W, C] grid (missing cells stay black)."""
    n, h, w, c = images.shape
    rows = -(-n // cols)
    grid = np.zeros([rows * h, cols * w, c], dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = images[i]
    return grid


def save_image(img: np.ndarray, path: str | os.PathLike) -> None:
    """Write a uint8 [H, W, C] array as PNG, atomically (C = 1 or 3)."""
    img = img[:, :, 0] if img.shape[2] == 1 else img
    with atomic_write(path) as f:
        PIL.Image.fromarray(img).save(f, format="PNG")


save_image_grid = save_image

# Colours for heatmap levels / objects: red, green, blue, yellow, magenta, cyan.
_PALETTE = np.array([[255, 64, 64], [64, 220, 64], [80, 120, 255], [240, 220, 40], [230, 60, 230], [40, 220, 230]],
                    dtype=np.float32)


def heatmap_tiles(spec, resolution: int, channels: int = 3) -> np.ndarray:
    """uint8 [N, R, R, C] picture of each sample's heatmaps: every level (hierarchical) or every object
    (multi-object) rendered at the image resolution in its own colour, brightest wins."""
    from training import heatmaps

    n = spec.batch_size
    canvas = np.zeros([n, resolution, resolution, 3], dtype=np.float32)
    layers = []
    for level in range(spec.num_levels):
        maps = heatmaps.render(spec, resolution, level).detach().cpu().float().numpy()  # [N, K, R, R]
        if spec.num_levels == 1:
            layers += [maps[:, k] for k in range(maps.shape[1])]
        else:
            layers.append(np.clip(maps.sum(1), 0, 1))
    for i, layer in enumerate(layers):
        canvas = np.maximum(canvas, layer[..., None] * _PALETTE[i % len(_PALETTE)])
    out = canvas.clip(0, 255).astype(np.uint8)
    return out.mean(-1, keepdims=True).astype(np.uint8) if channels == 1 else out


@dataclass
class GridSetup:
    cols: int
    rows: int
    real_indices: list[int]
    z: torch.Tensor
    c: torch.Tensor
    spec: object | None


def grid_size(resolution: int) -> tuple[int, int]:
    """(cols, rows) of snapshot grids: about 1920x1080 pixels, 4..16 cells per side."""
    return int(np.clip(1920 // resolution, 4, 16)), int(np.clip(1080 // resolution, 4, 16))


def setup_grid(dataset, G, seed: int = 0) -> GridSetup:
    """Fixed real images, latents, labels and heatmaps for a run's image grids (own RNG, not training's)."""
    cols, rows = grid_size(dataset.resolution)
    n = cols * rows
    gen = torch.Generator().manual_seed(seed + 123)
    real_indices = torch.randint(len(dataset), [n], generator=gen).tolist()
    z = torch.randn([n, G.z_dim], generator=gen)
    if dataset.has_labels:
        c = torch.from_numpy(np.stack([dataset.get_label(i) for i in real_indices]))
    else:
        c = torch.zeros([n, G.c_dim])
    spec = G.heatmap_sampler(n, generator=gen) if G.heatmap_sampler is not None else None
    return GridSetup(cols, rows, real_indices, z, c, spec)


def real_grid(dataset, setup: GridSetup) -> np.ndarray:
    imgs = np.stack([dataset[i][0].transpose(1, 2, 0) for i in setup.real_indices])
    return tile(imgs, setup.cols)


@torch.no_grad()
def render_grid(G, setup: GridSetup, device: torch.device, batch: int = 16) -> np.ndarray:
    """G's images for the grid (noise_mode='const'); SpatialGAN samples get their heatmaps beside them."""
    tiles = []
    for start in range(0, setup.z.shape[0], batch):
        rows = list(range(start, min(start + batch, setup.z.shape[0])))
        spec = setup.spec.select(rows).to(device) if setup.spec is not None else None
        img = G(setup.z[rows].to(device), setup.c[rows].to(device), heatmaps=spec, noise_mode="const")
        img = to_uint8(img).numpy()
        if spec is not None:
            img = np.concatenate([img, heatmap_tiles(spec, img.shape[1], img.shape[3])], axis=2)
        tiles.append(img)
    return tile(np.concatenate(tiles), setup.cols)
