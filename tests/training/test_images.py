"""Image grids: conversion, tiling, heatmap tiles, PNG writing."""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch

from training import images
from training.heatmaps import HeatmapSpec


def test_to_uint8_matches_stylegan_convention():
    img = torch.tensor([-1.0, 0.0, 1.0, 2.0]).reshape(1, 1, 2, 2).expand(1, 3, 2, 2)
    out = images.to_uint8(img)
    assert out.shape == (1, 2, 2, 3) and out.dtype == torch.uint8
    assert out[0, :, :, 0].flatten().tolist() == [0, 128, 255, 255]


def test_tile_places_images_row_major(tmp_path):
    imgs = np.stack([np.full([2, 3, 3], i, dtype=np.uint8) for i in range(5)])
    grid = images.tile(imgs, cols=3)
    assert grid.shape == (4, 9, 3)
    assert grid[0, 3, 0] == 1 and grid[2, 0, 0] == 3 and grid[2, 6, 0] == 0  # last cell stays black
    images.save_image(grid, tmp_path / "g.png")
    assert np.array_equal(np.asarray(PIL.Image.open(tmp_path / "g.png")), grid)


def test_heatmap_tiles_light_up_at_the_centres():
    spec = HeatmapSpec(centers=[torch.tensor([[[0.25, 0.75]]])], sigmas=[torch.tensor([[0.05]])])
    tile = images.heatmap_tiles(spec, 16)
    assert tile.shape == (1, 16, 16, 3)
    y, x = np.unravel_index(tile[0].sum(-1).argmax(), (16, 16))
    assert abs(x - 3.5) <= 1 and abs(y - 11.5) <= 1
    assert tile[0, 0, 15].sum() == 0  # far from the centre: dark
