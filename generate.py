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

import click
import numpy as np
import torch

from dnnlib.util import parse_int_list


def _edits(move, scale, remove, restyle):
    from editing import edits

    out = [edits.parse_move(t) for t in move] + [edits.parse_scale(t) for t in scale]
    out += [edits.parse_remove(t) for t in remove] + [edits.parse_restyle(t) for t in restyle]
    return out


def _specs(G, heatmap_seeds, layout, edit_list):
    """[(name, spec|None)] for every heatmap source, with the edits applied."""
    from editing import edits, synthesis
    from training.heatmaps import HeatmapSpec

    if G.heatmap_sampler is None:
        if heatmap_seeds or layout or edit_list:
            raise click.ClickException("this network has no heatmap encoding (StyleGAN2 baseline): "
                                       "--heatmap-seeds, --layout and edits do not apply")
        return [("", None)]
    if layout is not None:
        spec = HeatmapSpec.load(layout)
        return [(f"-{os.path.splitext(os.path.basename(layout))[0]}", edits.apply_edits(spec, edit_list))]
    return [(f"-hm{s:04d}", edits.apply_edits(synthesis.spec_from_seed(G, s), edit_list)) for s in heatmap_seeds]


def _image(G, z, spec, c, trunc, noise_mode, show_heatmaps):
    from editing import synthesis
    from training import images

    img = images.to_uint8(synthesis.synthesize(G, z, spec, c, trunc, noise_mode)).numpy()
    if show_heatmaps and spec is not None:
        img = np.concatenate([img, images.heatmap_tiles(spec, img.shape[1], img.shape[3])], axis=2)
    return img[0]


def _projected(G, path, outdir, noise_mode, spec):
    from editing import synthesis
    from training import images

    try:
        ws = torch.from_numpy(np.load(path)["w"])
    except (OSError, KeyError, ValueError) as err:
        raise click.ClickException(f"--projected-w={path}: cannot read key 'w' ({err})") from None
    if ws.ndim != 3 or ws.shape[1:] != (G.num_ws, G.w_dim):
        raise click.ClickException(f"--projected-w={path}: w has shape {list(ws.shape)}, expected "
                                   f"[N, {G.num_ws}, {G.w_dim}]")
    for i, w in enumerate(ws):
        img = images.to_uint8(synthesis.synthesize_ws(G, w[None], spec, noise_mode)).numpy()[0]
        images.save_image(img, os.path.join(outdir, f"proj{i:02d}.png"))


@click.command(help=__doc__, context_settings={"max_content_width": 110})
@click.option("--network", "network_path", required=True, metavar="PATH", help="Snapshot (.pt)")
@click.option("--seeds", help="Latent seeds, e.g. 0,1,5-9")
@click.option("--heatmap-seeds", help="Heatmap seeds (default: the latent seed of each image)")
@click.option("--layout", type=click.Path(dir_okay=False), help="Heatmap spec JSON (from --save-layout)")
@click.option("--move", multiple=True, metavar="L:I:DX,DY", help="Move centre I of level L by DX,DY (fractions)")
@click.option("--scale", multiple=True, metavar="L:I:F", help="Multiply sigma of centre I of level L by F")
@click.option("--remove", multiple=True, metavar="I", help="Remove object I (level 0), or L:I")
@click.option("--restyle", multiple=True, metavar="I:SEED", help="New appearance seed for object I (indoor)")
@click.option("--trunc", "truncation_psi", type=float, default=1, show_default=True, help="Truncation psi")
@click.option("--class", "class_idx", type=int, help="Class label (conditional networks)")
@click.option("--noise-mode", type=click.Choice(["const", "random", "none"]), default="const", show_default=True)
@click.option("--projected-w", type=click.Path(dir_okay=False), help="Generate from a projected W (.npz, key 'w')")
@click.option("--grid", is_flag=True, help="Also write all images as one grid.png")
@click.option("--fixed-layout", is_flag=True, help="Write layout-grid.png: rows = heatmap seeds, cols = latent seeds")
@click.option("--show-heatmaps", is_flag=True, help="Put each image's heatmaps beside it")
@click.option("--save-layout", is_flag=True, help="Write each image's (edited) heatmap spec as JSON")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--outdir", required=True, metavar="DIR", help="Where to save the output images")
def main(**args):
    try:
        generate(**args)
    except click.ClickException:
        raise
    except (ValueError, OSError) as err:
        if os.environ.get("SPATIALGAN_DEBUG"):
            raise
        raise click.ClickException(str(err)) from None


def generate(network_path, seeds, heatmap_seeds, layout, move, scale, remove, restyle, truncation_psi, class_idx,
             noise_mode, projected_w, grid, fixed_layout, show_heatmaps, save_layout, device, outdir):
    from editing import synthesis
    from training import images

    seeds = parse_int_list(seeds, "--seeds") if seeds is not None else None
    hm_seeds = parse_int_list(heatmap_seeds, "--heatmap-seeds") if heatmap_seeds is not None else None
    if seeds is None and projected_w is None:
        raise click.ClickException("--seeds is required unless --projected-w is given")
    if layout is not None and hm_seeds is not None:
        raise click.ClickException("give either --layout or --heatmap-seeds, not both")
    device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                          ("cpu" if device == "auto" else device))
    G = synthesis.load_generator(network_path, device)
    os.makedirs(outdir, exist_ok=True)
    edit_list = _edits(move, scale, remove, restyle)
    if projected_w is not None:
        spec = _specs(G, hm_seeds or [0], layout, edit_list)[0][1]
        return _projected(G, projected_w, outdir, noise_mode, spec)
    c = synthesis.class_label(G, class_idx)
    sources = _specs(G, hm_seeds, layout, edit_list) if (hm_seeds or layout) else None
    rows = []
    for name, spec in (sources or [("", None)]):
        row = []
        for seed in seeds:
            if sources is None and G.heatmap_sampler is not None:
                name, spec = f"-hm{seed:04d}", synthesis.spec_from_seed(G, seed)
                from editing import edits

                spec = edits.apply_edits(spec, edit_list)
            print(f"Generating image for seed {seed}{name.replace('-', ' ')} ({len(row) + 1}/{len(seeds)}) ...")
            img = _image(G, synthesis.z_from_seed(G, seed), spec, c, truncation_psi, noise_mode, show_heatmaps)
            base = os.path.join(outdir, f"seed{seed:04d}{name}")
            images.save_image(img, base + ".png")
            if save_layout and spec is not None:
                spec.save(base + ".json")
            row.append(img)
        rows.append(np.stack(row))
    if grid:
        images.save_image(images.tile(np.concatenate(rows), len(seeds)), os.path.join(outdir, "grid.png"))
    if fixed_layout:
        if sources is None:
            raise click.ClickException("--fixed-layout needs --heatmap-seeds (rows) or --layout")
        images.save_image(images.tile(np.concatenate(rows), len(seeds)), os.path.join(outdir, "layout-grid.png"))


if __name__ == "__main__":
    sys.exit(main())
