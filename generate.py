"""Generate images from a snapshot: latent seeds x heatmap seeds (or a saved layout), with scripted edits.

Examples:

\b
  python generate.py --network=snap.pt --seeds=0-7 --outdir=out
\b
  # SpatialGAN: latent seeds 0-3 with heatmap seed 5, the whole object moved right by 10% of the width
  python generate.py --network=snap.pt --seeds=0-3 --heatmap-seeds=5 --move=0:0:0.1,0 --outdir=out
\b
  # Fig. 5 / Fig. 10 grid: rows share a heatmap, columns share a latent
  python generate.py --network=snap.pt --seeds=0-5 --heatmap-seeds=0-3 --fixed-layout --outdir=out
\b
  # Indoor model: remove object 1, give object 2 a new appearance, save the edited layout
  python generate.py --network=bed.pt --seeds=3 --heatmap-seeds=3 --remove=1 --restyle=2:77 --save-layout --outdir=out
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import click
import numpy as np
import torch

from dnnlib.cli import FiniteFloatRange, check_seeds, pick_device, prepare_outdir, user_errors
from dnnlib.util import parse_int_list


@dataclass
class Cell:
    """One image to generate: latent seed, file-name suffix naming its heatmap source, and that spec."""

    seed: int
    suffix: str
    spec: object | None  # HeatmapSpec, or None for a StyleGAN2 baseline


def parse_edits(move, scale, remove, restyle) -> list:
    """The --move/--scale/--remove/--restyle strings as a list of `editing.edits.Edit`, in that order."""
    from editing import edits

    out = [edits.parse_move(t) for t in move] + [edits.parse_scale(t) for t in scale]
    out += [edits.parse_remove(t) for t in remove] + [edits.parse_restyle(t) for t in restyle]
    return out


def check_heatmap_options(G, hm_seeds, layout, edit_list, fixed_layout: bool, heatmap_output: bool = False) -> None:
    """Reject heatmap options a network cannot use, before any image is written."""
    if G.heatmap_sampler is None and (hm_seeds is not None or layout is not None or edit_list or fixed_layout
                                      or heatmap_output):
        raise click.ClickException("this network has no heatmap encoding (StyleGAN2 baseline): --heatmap-seeds, "
                                   "--layout, --fixed-layout, --show-heatmaps, --save-layout and edits do not apply")
    if fixed_layout and hm_seeds is None and layout is None:
        raise click.ClickException("--fixed-layout needs --heatmap-seeds (rows) or --layout")


def load_layout(G, path: str | None):
    """The --layout file as a HeatmapSpec checked against G (None without --layout)."""
    from editing import synthesis
    from training.heatmaps import HeatmapSpec

    if path is None:
        return None
    try:
        spec = HeatmapSpec.load(path)
    except (OSError, ValueError) as e:
        raise click.ClickException(f"--layout: {str(e).splitlines()[0]}") from None
    try:
        synthesis.check_spec(G, spec)
        if spec.batch_size != 1:
            raise ValueError(f"the file holds {spec.batch_size} samples, a layout is one")
    except ValueError as e:
        raise click.ClickException(f"--layout={path}: {e}") from None
    return spec


def load_projected_w(G, path: str) -> torch.Tensor:
    """ws [N, num_ws, w_dim] float32 from a projected-W file (npz, key 'w'), all finite."""
    try:
        data = np.load(path)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
        with data:
            ws = torch.from_numpy(np.asarray(data["w"], dtype=np.float32))
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise click.ClickException(f"--projected-w={path}: cannot read key 'w' ({err})") from None
    if ws.ndim != 3 or ws.shape[1:] != (G.num_ws, G.w_dim) or ws.shape[0] == 0:
        raise click.ClickException(f"--projected-w={path}: w has shape {list(ws.shape)}, expected "
                                   f"[N, {G.num_ws}, {G.w_dim}] with N >= 1")
    if not bool(torch.isfinite(ws).all()):
        raise click.ClickException(f"--projected-w={path}: w contains NaN or infinite values")
    return ws


def edited_spec(G, heatmap_seed: int | None, layout, edit_list: list):
    """The spec of a heatmap seed or of a loaded layout spec, with the edits applied (None for a
    baseline)."""
    from editing import edits, synthesis

    if G.heatmap_sampler is None:
        return None
    spec = layout if layout is not None else synthesis.spec_from_seed(G, heatmap_seed)
    return edits.apply_edits(spec, edit_list)


def plan_rows(G, seeds: list[int], hm_seeds: list[int] | None, layout, layout_path: str | None, edit_list: list):
    """Rows of cells: one row per heatmap seed (or the layout, a loaded spec) when given; otherwise a
    single row where each latent seed also serves as its own heatmap seed (baseline: no heatmaps)."""
    if G.heatmap_sampler is None:
        return [[Cell(s, "", None) for s in seeds]]
    if layout is not None:
        spec = edited_spec(G, None, layout, edit_list)
        name = os.path.splitext(os.path.basename(layout_path))[0]
        return [[Cell(s, f"-layout-{name}", spec) for s in seeds]]
    if hm_seeds is not None:
        specs = [(h, edited_spec(G, h, None, edit_list)) for h in hm_seeds]
        return [[Cell(s, f"-hm{h:04d}", spec) for s in seeds] for h, spec in specs]
    return [[Cell(s, f"-hm{s:04d}", edited_spec(G, s, None, edit_list)) for s in seeds]]


def render(G, cell: Cell, c, trunc: float, noise_mode: str, show_heatmaps: bool) -> np.ndarray:
    """uint8 [H, W(+W), C] image of one cell, its heatmaps to the right when asked."""
    from editing import synthesis
    from training import images

    z = synthesis.z_from_seed(G, cell.seed)
    img = synthesis.synthesize(G, z, cell.spec, c=c, truncation_psi=trunc, noise_mode=noise_mode)
    img = images.to_uint8(img).numpy()
    if show_heatmaps and cell.spec is not None:
        img = np.concatenate([img, images.heatmap_tiles(cell.spec, img.shape[1], img.shape[3])], axis=2)
    return img[0]


def generate_projected(G, ws: torch.Tensor, outdir: str, noise_mode: str, spec, c) -> None:
    """proj%02d.png for every w of ws [N, num_ws, w_dim] (see `load_projected_w`)."""
    from editing import synthesis
    from training import images

    for i, w in enumerate(ws):
        img = images.to_uint8(synthesis.synthesize_ws(G, w[None], spec, noise_mode=noise_mode, c=c)).numpy()[0]
        images.save_image(img, os.path.join(outdir, f"proj{i:02d}.png"))


@click.command(help=__doc__, context_settings={"max_content_width": 110})
@click.option("--network", "network_path", required=True, metavar="PATH",
              help="Snapshot (.pt), a run directory (its newest snapshot) or a URL to load G_ema from")
@click.option("--seeds", metavar="LIST", help="Latent seeds, e.g. 0,1,5-9 (required unless --projected-w)")
@click.option("--heatmap-seeds", metavar="LIST",
              help="Heatmap seeds, one row of images each (default: each image uses its latent seed)")
@click.option("--layout", type=click.Path(dir_okay=False), help="Heatmap spec JSON (from --save-layout) for all images")
@click.option("--move", multiple=True, metavar="L:I:DX,DY", help="Move centre I of level L by DX,DY (fractions)")
@click.option("--scale", multiple=True, metavar="L:I:F", help="Multiply sigma of centre I of level L by F")
@click.option("--remove", multiple=True, metavar="I", help="Remove object I (level 0), or L:I")
@click.option("--restyle", multiple=True, metavar="I:SEED", help="New appearance seed for object I (indoor)")
@click.option("--trunc", "truncation_psi", type=FiniteFloatRange(), default=1, show_default=True, help="Truncation psi")
@click.option("--class", "class_idx", type=int, help="Class label (conditional networks)")
@click.option("--noise-mode", type=click.Choice(["const", "random", "none"]), default="const", show_default=True,
              help="Per-pixel noise: the stored constant, fresh random, or none")
@click.option("--projected-w", type=click.Path(dir_okay=False),
              help="Generate from a projected W (.npz, key 'w', [N, num_ws, w_dim]) instead of seeds")
@click.option("--grid", is_flag=True, help="Also write all images as one grid.png")
@click.option("--fixed-layout", is_flag=True, help="Write layout-grid.png: rows = heatmap seeds, cols = latent seeds")
@click.option("--show-heatmaps", is_flag=True, help="Put each image's heatmaps beside it")
@click.option("--save-layout", is_flag=True, help="Write each image's (edited) heatmap spec as JSON next to it")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where to run G (auto: CUDA when available)")
@click.option("--outdir", required=True, metavar="DIR", help="Where to save the output images")
@user_errors()
def main(**args):
    generate(**args)

def generate(network_path, seeds, heatmap_seeds, layout, move, scale, remove, restyle, truncation_psi, class_idx,
             noise_mode, projected_w, grid, fixed_layout, show_heatmaps, save_layout, device, outdir):
    from editing import synthesis
    from training import images

    seeds = check_seeds(parse_int_list(seeds, "--seeds"), "--seeds") if seeds is not None else None
    if heatmap_seeds is not None:
        hm_seeds = check_seeds(parse_int_list(heatmap_seeds, "--heatmap-seeds"), "--heatmap-seeds", heatmap=True)
    else:
        hm_seeds = None
    if seeds is None and projected_w is None:
        raise click.ClickException("--seeds is required unless --projected-w is given")
    if projected_w is not None:
        # Projected W already fixes the latents (no seeds, no truncation) and gives one image per w.
        ignored = [name for name, given in (("--seeds", seeds is not None), ("--trunc", truncation_psi != 1),
                                            ("--grid", grid), ("--fixed-layout", fixed_layout),
                                            ("--show-heatmaps", show_heatmaps), ("--save-layout", save_layout),
                                            ("more than one --heatmap-seeds", hm_seeds is not None and len(hm_seeds) > 1))
                   if given]
        if ignored:
            raise click.ClickException(f"{', '.join(ignored)}: no effect with --projected-w (one image per "
                                       f"projected w, under one heatmap: --heatmap-seeds=S or --layout)")
    if layout is not None and hm_seeds is not None:
        raise click.ClickException("give either --layout or --heatmap-seeds, not both")
    edit_list = parse_edits(move, scale, remove, restyle)
    G = synthesis.load_generator(network_path, pick_device(device))
    check_heatmap_options(G, hm_seeds, layout, edit_list, fixed_layout and projected_w is None,
                          show_heatmaps or save_layout)
    layout_spec = load_layout(G, layout)
    try:
        c = synthesis.class_label(G, class_idx) if projected_w is None or class_idx is not None else None
    except ValueError as e:
        raise click.ClickException(f"--class: {e}") from None
    if projected_w is not None:
        ws = load_projected_w(G, projected_w)
        if getattr(G, "encoding", None) == "flatten":
            if hm_seeds is not None or layout_spec is not None or edit_list:
                raise click.ClickException("this network feeds its heatmaps to the mapping network (encoding "
                                           "'flatten'): a projected w already fixes them, so heatmap seeds, "
                                           "--layout and edits do not apply")
            spec = None
        else:
            spec = edited_spec(G, hm_seeds[0] if hm_seeds else 0, layout_spec, edit_list)  # heatmap seed 0 by default
        prepare_outdir(outdir)
        return generate_projected(G, ws, outdir, noise_mode, spec, c)
    rows = plan_rows(G, seeds, hm_seeds, layout_spec, layout, edit_list)
    prepare_outdir(outdir)
    out = []
    for row in rows:
        for i, cell in enumerate(row):
            what = f" {cell.suffix[1:]}" if cell.suffix else ""  # "hm0003", "layout-<file>"
            print(f"Generating image for seed {cell.seed}{what} ({i + 1}/{len(row)}) ...")
            img = render(G, cell, c, truncation_psi, noise_mode, show_heatmaps)
            base = os.path.join(outdir, f"seed{cell.seed:04d}{cell.suffix}")
            images.save_image(img, base + ".png")
            if save_layout and cell.spec is not None:
                cell.spec.save(base + ".json")
            out.append(img)
    for flag, name in ((grid, "grid.png"), (fixed_layout, "layout-grid.png")):
        if flag:
            images.save_image(images.tile(np.stack(out), len(seeds)), os.path.join(outdir, name))


if __name__ == "__main__":
    sys.exit(main())
