"""Style mixing: images whose w layers `--styles` come from a column seed and the rest from a row seed.

Examples:

\b
  # Coarse styles (layers 0-6) of seeds 85,100 over seeds 1-4 (StyleGAN2-ADA's example)
  python style_mixing.py --network=snap.pt --rows=1-4 --cols=85,100 --outdir=out
\b
  # SpatialGAN: every cell uses heatmap seed 7, so only the appearance changes across the grid
  python style_mixing.py --network=snap.pt --rows=0-3 --cols=10-12 --styles=4-7 --heatmap-seed=7 --outdir=out

Writes `<row>-<col>.png` for every pair and `grid.png`: the column sources on the top row, the row sources
in the left column, a blank corner, and the mixes in between. On a SpatialGAN network each cell uses the
heatmaps of its row seed (the row image's layout), unless --heatmap-seed gives one layout for all images.
"""

from __future__ import annotations

import os
import sys

import click
import numpy as np
import torch

from dnnlib.cli import FiniteFloatRange, check_seeds, pick_device, prepare_outdir, user_errors
from dnnlib.util import parse_int_list

DEFAULT_STYLES = list(range(7))  # StyleGAN2-ADA's default '0-6': the coarse and middle layers


def resolve_styles(text: str | None, num_ws: int) -> list[int]:
    """w-layer indices to copy from the column seed: the default is clipped to num_ws, explicit ones
    must exist."""
    if text is None:
        return [i for i in DEFAULT_STYLES if i < num_ws]
    styles = parse_int_list(text, "--styles")
    bad = [i for i in styles if i >= num_ws]
    if bad:
        raise click.ClickException(f"--styles={text}: layer(s) {bad} out of range; this network has w layers "
                                   f"0..{num_ws - 1}")
    return sorted(set(styles))


def heatmap_specs(G, seeds: list[int], heatmap_seed: int | None) -> dict[int, object]:
    """{seed: spec} for every source seed: its own heatmaps, or heatmap seed `heatmap_seed` for all
    (None values on a StyleGAN2 baseline)."""
    from editing import synthesis

    if G.heatmap_sampler is None:
        if heatmap_seed is not None:
            raise click.ClickException("--heatmap-seed: this network has no heatmap encoding (StyleGAN2 baseline)")
        return {s: None for s in seeds}
    if heatmap_seed is not None:
        shared = synthesis.spec_from_seed(G, heatmap_seed)
        return {s: shared for s in seeds}
    return {s: synthesis.spec_from_seed(G, s) for s in seeds}


def render(G, ws: torch.Tensor, spec, trunc: float, noise_mode: str) -> np.ndarray:
    """uint8 [H, W, C] image of ws [1, num_ws, w_dim] under `spec`."""
    from editing import synthesis
    from training import images

    img = synthesis.synthesize_ws(G, ws, spec, noise_mode=noise_mode, truncation_psi=trunc)
    return images.to_uint8(img).numpy()[0]


def mix_grid(G, rows: list[int], cols: list[int], styles: list[int], specs: dict[int, object], trunc: float,
             noise_mode: str, outdir: str) -> np.ndarray:
    """Write `<row>-<col>.png` for every pair; return the uint8 grid with sources on top/left."""
    from editing import synthesis
    from training import images

    def ws_of(seed: int, spec) -> torch.Tensor:
        # The mapping of the flatten encoding depends on the heatmaps, so map under the cell's spec.
        return synthesis.map_ws(G, synthesis.z_from_seed(G, seed), spec, truncation_psi=trunc)

    col_imgs = [render(G, ws_of(c, specs[c]), specs[c], trunc, noise_mode) for c in cols]
    cells = [np.zeros_like(col_imgs[0])] + col_imgs
    for r in rows:
        spec = specs[r]
        row_ws = ws_of(r, spec)
        cells.append(render(G, row_ws, spec, trunc, noise_mode))
        for c in cols:
            print(f"Generating image for row seed {r}, column seed {c} ...")
            ws = row_ws.clone()
            ws[:, styles] = ws_of(c, spec)[:, styles]
            img = render(G, ws, spec, trunc, noise_mode)
            images.save_image(img, os.path.join(outdir, f"{r}-{c}.png"))
            cells.append(img)
    return images.tile(np.stack(cells), len(cols) + 1)


@click.command(help=__doc__, context_settings={"max_content_width": 110})
@click.option("--network", "network_path", required=True, metavar="PATH",
              help="Snapshot (.pt), a run directory (its newest snapshot) or a URL to load G_ema from")
@click.option("--rows", "row_seeds", required=True, metavar="LIST", help="Row seeds (the base latents), e.g. 0-3")
@click.option("--cols", "col_seeds", required=True, metavar="LIST", help="Column seeds (the copied styles)")
@click.option("--styles", metavar="LIST", help="w layers taken from the column seed  [default: 0-6, clipped]")
@click.option("--trunc", "truncation_psi", type=FiniteFloatRange(), default=1, show_default=True, help="Truncation psi")
@click.option("--noise-mode", type=click.Choice(["const", "random", "none"]), default="const", show_default=True,
              help="Per-pixel noise: the stored constant, fresh random, or none")
@click.option("--heatmap-seed", type=click.IntRange(min=0), metavar="INT",
              help="SpatialGAN: one heatmap seed for every image (default: each row's seed)")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where to run G (auto: CUDA when available)")
@click.option("--outdir", required=True, metavar="DIR", help="Where to save the output images")
@user_errors()
def main(**args):
    style_mix(**args)

def style_mix(network_path, row_seeds, col_seeds, styles, truncation_psi, noise_mode, heatmap_seed, device,
              outdir) -> None:
    from editing import synthesis
    from training import images

    rows = check_seeds(parse_int_list(row_seeds, "--rows"), "--rows")
    cols = check_seeds(parse_int_list(col_seeds, "--cols"), "--cols")
    if heatmap_seed is not None:
        check_seeds([heatmap_seed], "--heatmap-seed", heatmap=True)
    G = synthesis.load_generator(network_path, pick_device(device))
    if G.c_dim:
        raise click.ClickException(f"this network is conditional ({G.c_dim} classes); style mixing supports "
                                   f"unconditional networks only")
    layers = resolve_styles(styles, G.num_ws)
    specs = heatmap_specs(G, sorted(set(rows + cols)), heatmap_seed)
    prepare_outdir(outdir)
    grid = mix_grid(G, rows, cols, layers, specs, truncation_psi, noise_mode, outdir)
    images.save_image(grid, os.path.join(outdir, "grid.png"))


if __name__ == "__main__":
    sys.exit(main())
