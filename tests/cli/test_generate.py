"""generate.py on tiny trained snapshots: seeds, heatmap seeds, layouts, edits, grids and errors."""

import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import generate
from cli_support import REPO, RES
from cli_support import load_rgb as load
from editing import synthesis


def gen(network: Path, outdir: Path, *args: str):
    res = CliRunner().invoke(generate.main, [f"--network={network}", f"--outdir={outdir}", "--device=cpu", *args])
    # Anything but SystemExit escaping main would be a traceback on the real command line.
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    return res


def ok(network: Path, outdir: Path, *args: str) -> Path:
    res = gen(network, outdir, *args)
    assert res.exit_code == 0, res.output
    return outdir


def error_line(res) -> str:
    """The single 'Error: ...' line of a failed run."""
    assert res.exit_code != 0 and "Traceback" not in res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    return lines[0]


def error(network: Path, outdir: Path, *args: str) -> str:
    """Run expecting failure; return the single 'Error: ...' line."""
    return error_line(gen(network, outdir, *args))


def one_image(network: Path, outdir: Path, *args: str) -> np.ndarray:
    """The only seed*.png a run writes."""
    ok(network, outdir, *args)
    (path,) = outdir.glob("seed*.png")
    return load(path)


def test_seed_list_and_range(spatial, tmp_path):
    ok(spatial, tmp_path, "--seeds=1,3-4")
    names = sorted(p.name for p in tmp_path.glob("seed*.png"))
    assert names == ["seed0001-hm0001.png", "seed0003-hm0003.png", "seed0004-hm0004.png"]
    imgs = [load(tmp_path / n) for n in names]
    assert all(img.shape == (RES, RES, 3) for img in imgs)
    assert not np.array_equal(imgs[0], imgs[1])
    assert not list(tmp_path.glob(".*"))  # the --outdir write test leaves nothing behind


def test_baseline_seeds_and_projection(baseline, tmp_path):
    ok(baseline, tmp_path / "a", "--seeds=0-1")
    assert sorted(p.name for p in (tmp_path / "a").glob("*.png")) == ["seed0000.png", "seed0001.png"]
    assert load(tmp_path / "a" / "seed0001.png").shape == (RES, RES, 3)
    G = synthesis.load_generator(str(baseline))
    np.savez(tmp_path / "w.npz", w=synthesis.map_ws(G, synthesis.z_from_seed(G, 1)).numpy())
    ok(baseline, tmp_path / "b", f"--projected-w={tmp_path / 'w.npz'}")
    assert np.array_equal(load(tmp_path / "b" / "proj00.png"), load(tmp_path / "a" / "seed0001.png"))


def test_a_run_directory_means_its_newest_snapshot(baseline, tmp_path):
    ok(baseline, tmp_path / "a", "--seeds=1")
    ok(baseline.parent, tmp_path / "b", "--seeds=1")  # the run directory the snapshot sits in
    assert np.array_equal(load(tmp_path / "a" / "seed0001.png"), load(tmp_path / "b" / "seed0001.png"))
    (tmp_path / "empty").mkdir()
    assert "holds no network-snapshot" in error(tmp_path / "empty", tmp_path / "c", "--seeds=1")


def test_grid(spatial, tmp_path):
    ok(spatial, tmp_path / "a", "--seeds=0-2", "--grid")
    grid = load(tmp_path / "a" / "grid.png")
    assert grid.shape == (RES, 3 * RES, 3)
    assert np.array_equal(grid[:, RES:2 * RES], load(tmp_path / "a" / "seed0001-hm0001.png"))
    ok(spatial, tmp_path / "b", "--seeds=0-2", "--heatmap-seeds=5,6", "--grid")
    assert load(tmp_path / "b" / "grid.png").shape == (2 * RES, 3 * RES, 3)


def test_heatmap_seeds_are_independent_of_latent_seeds(spatial, tmp_path):
    ok(spatial, tmp_path, "--seeds=1,2", "--heatmap-seeds=7,8")
    assert not np.array_equal(load(tmp_path / "seed0001-hm0007.png"), load(tmp_path / "seed0002-hm0007.png"))
    assert not np.array_equal(load(tmp_path / "seed0001-hm0007.png"), load(tmp_path / "seed0001-hm0008.png"))
    # Default: each image's heatmap seed is its latent seed.
    same = one_image(spatial, tmp_path / "default", "--seeds=7")
    assert np.array_equal(same, one_image(spatial, tmp_path / "explicit", "--seeds=7", "--heatmap-seeds=7"))


def test_layout_round_trip(spatial, tmp_path):
    first = one_image(spatial, tmp_path / "a", "--seeds=2", "--heatmap-seeds=9", "--save-layout")
    layout = tmp_path / "a" / "seed0002-hm0009.json"
    assert layout.is_file()
    again = one_image(spatial, tmp_path / "b", "--seeds=2", f"--layout={layout}")
    assert (tmp_path / "b" / "seed0002-layout-seed0002-hm0009.png").is_file()
    assert np.array_equal(first, again)
    assert "either --layout or --heatmap-seeds" in error(spatial, tmp_path / "c", "--seeds=2", f"--layout={layout}",
                                                        "--heatmap-seeds=1")


def test_move_and_move_back(spatial, tmp_path):
    base = one_image(spatial, tmp_path / "a", "--seeds=3", "--heatmap-seeds=4", "--save-layout")
    moved = one_image(spatial, tmp_path / "b", "--seeds=3", "--heatmap-seeds=4", "--move=0:0:0.25,0",
                      "--save-layout")
    assert not np.array_equal(base, moved)
    (moved_layout,) = (tmp_path / "b").glob("*.json")
    back = one_image(spatial, tmp_path / "c", "--seeds=3", f"--layout={moved_layout}", "--move=0:0:-0.25,0")
    assert np.array_equal(base, back)


def test_scale_changes_the_image(spatial, tmp_path):
    base = one_image(spatial, tmp_path / "a", "--seeds=3")
    assert not np.array_equal(base, one_image(spatial, tmp_path / "b", "--seeds=3", "--scale=0:0:2.5"))


def test_remove_and_restyle_on_indoor(indoor, tmp_path):
    base = one_image(indoor, tmp_path / "a", "--seeds=5", "--heatmap-seeds=6", "--save-layout")
    removed = one_image(indoor, tmp_path / "b", "--seeds=5", "--heatmap-seeds=6", "--remove=0")
    restyled = one_image(indoor, tmp_path / "c", "--seeds=5", "--heatmap-seeds=6", "--restyle=1:12345",
                         "--save-layout")
    assert not np.array_equal(base, removed) and not np.array_equal(base, restyled)
    (layout,) = (tmp_path / "c").glob("*.json")
    assert '12345' in layout.read_text()


def test_out_of_range_edits_are_clear_errors(spatial, indoor, tmp_path):
    # Each names the option it came from: with several edits it is clear which one is wrong.
    assert "--move=0:9:0.1,0: index=9 out of range" in error(spatial, tmp_path, "--seeds=0", "--move=0:0:0.1,0",
                                                             "--move=0:9:0.1,0")
    assert "--scale=7:0:2: level=7 out of range" in error(spatial, tmp_path, "--seeds=0", "--scale=7:0:2")
    assert "--remove=0:5: index=5 out of range" in error(indoor, tmp_path, "--seeds=0", "--remove=5")
    assert "--restyle=0:9223372036854775808: seed must be" in error(indoor, tmp_path, "--seeds=0",
                                                                    "--restyle=0:9223372036854775808")
    assert "restyle" in error(spatial, tmp_path, "--seeds=0", "--restyle=0:1")  # no style seeds
    assert "DX,DY" in error(spatial, tmp_path, "--seeds=0", "--move=0:0:0.1")
    assert not list(tmp_path.glob("*.png"))


def test_fixed_layout_grid(spatial, tmp_path):
    ok(spatial, tmp_path, "--seeds=0-2", "--heatmap-seeds=4,5", "--fixed-layout")
    grid = load(tmp_path / "layout-grid.png")
    assert grid.shape == (2 * RES, 3 * RES, 3)
    assert np.array_equal(grid[RES:, :RES], load(tmp_path / "seed0000-hm0005.png"))
    assert "--fixed-layout needs" in error(spatial, tmp_path / "x", "--seeds=0-2", "--fixed-layout")


def test_show_heatmaps_widens_the_image(spatial, tmp_path):
    plain = one_image(spatial, tmp_path / "a", "--seeds=1")
    wide = one_image(spatial, tmp_path / "b", "--seeds=1", "--show-heatmaps")
    assert wide.shape == (RES, 2 * RES, 3)
    assert np.array_equal(wide[:, :RES], plain) and wide[:, RES:].max() > 0


@pytest.mark.parametrize("args", [["--heatmap-seeds=1"], ["--move=0:0:0.1,0"], ["--remove=0"], ["--fixed-layout"],
                                  ["--show-heatmaps"], ["--save-layout"]])
def test_heatmap_options_on_baseline(baseline, tmp_path, args):
    assert "no heatmap encoding" in error(baseline, tmp_path, "--seeds=0", *args)


def test_projected_w(spatial, tmp_path):
    G = synthesis.load_generator(str(spatial))
    ws = torch.cat([synthesis.map_ws(G, synthesis.z_from_seed(G, s), synthesis.spec_from_seed(G, 0))
                    for s in (3, 4)])
    good = tmp_path / "w.npz"
    np.savez(good, w=ws.numpy())
    ok(spatial, tmp_path / "a", f"--projected-w={good}")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["proj00.png", "proj01.png"]
    # W of latent seed 3 under heatmap seed 0 reproduces that seed's image.
    seeded = one_image(spatial, tmp_path / "b", "--seeds=3", "--heatmap-seeds=0")
    assert np.array_equal(load(tmp_path / "a" / "proj00.png"), seeded)
    bad = tmp_path / "bad.npz"
    np.savez(bad, w=ws[:, :2].numpy())
    assert "expected [N, " in error(spatial, tmp_path / "c", f"--projected-w={bad}")
    np.savez(tmp_path / "nokey.npz", x=ws.numpy())
    assert "key 'w'" in error(spatial, tmp_path / "c", f"--projected-w={tmp_path / 'nokey.npz'}")
    for extra in (["--seeds=0"], ["--trunc=0.5"], ["--grid"], ["--heatmap-seeds=0,1"], ["--save-layout"]):
        line = nothing_generated(spatial, tmp_path / "d", f"--projected-w={good}", *extra)
        assert "no effect with --projected-w" in line, (extra, line)


def test_missing_network_seeds_and_bad_outdir(spatial, tmp_path):
    assert "missing.pt" in error(tmp_path / "missing.pt", tmp_path, "--seeds=0")
    assert "--seeds is required" in error(spatial, tmp_path)
    (tmp_path / "afile").write_text("x")
    line = error(spatial, tmp_path / "afile" / "sub", "--seeds=0")  # outdir below a file
    assert f"--outdir={tmp_path / 'afile' / 'sub'}" in line and "Not a directory" in line


def test_malformed_seeds_on_the_command_line(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "generate.py"), f"--network={tmp_path / 'x.pt'}",
                           "--seeds=1,x-3", f"--outdir={tmp_path}"], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--seeds" in lines[0] and "x-3" in lines[0]


def test_help_documents_every_option():
    res = CliRunner().invoke(generate.main, ["--help"], terminal_width=200)
    assert res.exit_code == 0
    for param in generate.main.params:
        if param.name != "help":
            assert param.help, f"{param.opts} has no help text"
    assert "--heatmap-seeds" in res.output and "--projected-w" in res.output


def unwritable_dir() -> str:
    """A directory that exists but where no file can be created, even by root (sysfs)."""
    path = "/sys/kernel"
    try:
        fd, probe = tempfile.mkstemp(dir=path)
    except OSError:
        return path
    os.close(fd)
    os.unlink(probe)
    pytest.skip(f"{path} is writable here")


def nothing_generated(network: Path, outdir: Path, *args: str) -> str:
    """Run expecting failure before any image: one 'Error: ...' line, no progress line, no output dir."""
    res = gen(network, outdir, *args)
    assert "Generating" not in res.stdout and not outdir.exists()
    return error_line(res)


def test_unwritable_outdir_fails_before_generating(spatial, tmp_path):
    path = unwritable_dir()
    res = gen(spatial, Path(path), "--seeds=0")
    assert "Generating" not in res.stdout
    line = error_line(res)
    assert line.startswith(f"Error: --outdir={path}: cannot create or write") and ".tmp" not in line


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_trunc(spatial, tmp_path, value):
    res = gen(spatial, tmp_path / "out", "--seeds=0", f"--trunc={value}")
    assert res.exit_code == 2 and "'--trunc'" in res.output and "not a finite number" in res.output
    assert not (tmp_path / "out").exists()


def test_class_on_unconditional_network(spatial, tmp_path):
    line = nothing_generated(spatial, tmp_path / "out", "--seeds=0", "--class=3")
    assert "--class" in line and "unconditional" in line and "class 3" in line


def saved_layout(network: Path, outdir: Path) -> dict:
    ok(network, outdir, "--seeds=0", "--heatmap-seeds=1", "--save-layout")
    (path,) = outdir.glob("*.json")
    return json.loads(path.read_text())


@pytest.mark.parametrize("field,where,value,message", [
    ("centers", (0, 0, 0, 1), math.nan, "centers[0] must be finite"),
    ("centers", (2, 0, 3, 0), math.inf, "centers[2] must be finite"),
    ("sigmas", (1, 0, 1), math.nan, "sigmas[1] must be finite and > 0"),
    ("sigmas", (0, 0, 0), 0.0, "sigmas[0] must be finite and > 0"),
    ("sigmas", (2, 0, 2), -0.1, "sigmas[2] must be finite and > 0"),
])
def test_layout_with_bad_values(spatial, tmp_path, field, where, value, message):
    """Previously a NaN gave an all-black image with exit status 0, and sigma <= 0 was accepted."""
    d = saved_layout(spatial, tmp_path / "a")
    target = d[field]
    for i in where[:-1]:
        target = target[i]
    target[where[-1]] = value
    layout = tmp_path / "bad-layout.json"
    layout.write_text(json.dumps(d))  # Python writes NaN / Infinity, and reads them back
    line = nothing_generated(spatial, tmp_path / "out", "--seeds=0", f"--layout={layout}")
    assert "--layout" in line and "bad-layout.json" in line and message in line


def test_layout_that_is_not_text(spatial, tmp_path):
    layout = tmp_path / "image.json"
    layout.write_bytes(b"\x89PNG\r\n\x1a\n\x80\x00\xff")
    line = nothing_generated(spatial, tmp_path / "out", "--seeds=0", f"--layout={layout}")
    assert "--layout" in line and str(layout) in line and "not UTF-8 JSON text" in line
    line = nothing_generated(spatial, tmp_path / "out", "--seeds=0", f"--layout={tmp_path / 'missing.json'}")
    assert "--layout" in line and "missing.json" in line


def test_layout_from_another_network(spatial, indoor, tmp_path):
    d = saved_layout(indoor, tmp_path / "a")
    (layout,) = (tmp_path / "a").glob("*.json")
    line = nothing_generated(spatial, tmp_path / "out", "--seeds=0", f"--layout={layout}")
    assert line == (f"Error: --layout={layout}: heatmap spec has centres per level [3], this network was built "
                    f"for [1, 2, 4]")
    two = tmp_path / "two.json"
    two.write_text(json.dumps(dict(d, centers=[c * 2 for c in d["centers"]], sigmas=[s * 2 for s in d["sigmas"]],
                                   alive=[a * 2 for a in d["alive"]], style_seeds=d["style_seeds"] * 2)))
    line = nothing_generated(indoor, tmp_path / "out", "--seeds=0", f"--layout={two}")
    assert f"--layout={two}: the file holds 2 samples" in line


def test_projected_w_bad_values(spatial, tmp_path):
    G = synthesis.load_generator(str(spatial))
    ws = synthesis.map_ws(G, synthesis.z_from_seed(G, 3), synthesis.spec_from_seed(G, 0)).numpy()
    bad = ws.copy()
    bad[0, 1, 2] = np.nan
    np.savez(tmp_path / "nan.npz", w=bad)
    line = nothing_generated(spatial, tmp_path / "out", f"--projected-w={tmp_path / 'nan.npz'}")
    assert f"--projected-w={tmp_path / 'nan.npz'}: w contains NaN or infinite values" in line
    np.save(tmp_path / "plain.npy", ws)
    line = nothing_generated(spatial, tmp_path / "out", f"--projected-w={tmp_path / 'plain.npy'}")
    assert "--projected-w" in line and "not an .npz archive" in line
    np.savez(tmp_path / "text.npz", w=np.array(["a", "b"]))
    assert "--projected-w" in nothing_generated(spatial, tmp_path / "out", f"--projected-w={tmp_path / 'text.npz'}")
    np.savez(tmp_path / "empty.npz", w=ws[:0])
    assert "N >= 1" in nothing_generated(spatial, tmp_path / "out", f"--projected-w={tmp_path / 'empty.npz'}")


def test_seeds_beyond_generator_range(spatial, tmp_path):
    line = nothing_generated(spatial, tmp_path / "out", f"--seeds={2**32}")
    assert line == f"Error: --seeds: seed {2**32} out of range [0, 2^32) (NumPy RandomState seeds)"
    line = nothing_generated(spatial, tmp_path / "out", "--seeds=0", f"--heatmap-seeds={2**64}")
    assert line == f"Error: --heatmap-seeds: seed {2**64} out of range [0, 2^64) (torch.Generator seeds)"


def test_network_given_as_a_url(spatial, tmp_path):
    by_path = one_image(spatial, tmp_path / "a", "--seeds=3")
    assert np.array_equal(one_image(spatial.as_uri(), tmp_path / "b", "--seeds=3"), by_path)
