"""style_mixing.py on tiny trained snapshots: files, grid layout, styles, heatmap seeds, errors."""

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import generate
import style_mixing
from cli_support import RES
from cli_support import load_rgb as load
from test_generate import unwritable_dir


def invoke(command, network: Path, outdir: Path, *args: str):
    res = CliRunner().invoke(command, [f"--network={network}", f"--outdir={outdir}", "--device=cpu", *args])
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    return res


def mix(network: Path, outdir: Path, *args: str) -> Path:
    res = invoke(style_mixing.main, network, outdir, *args)
    assert res.exit_code == 0, res.output
    return outdir


def mix_error(network: Path, outdir: Path, *args: str) -> str:
    res = invoke(style_mixing.main, network, outdir, *args)
    assert res.exit_code != 0 and "Traceback" not in res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    return lines[0]


def generated(network: Path, outdir: Path, seed: int, heatmap_seed: int | None = None) -> np.ndarray:
    """generate.py's image of a latent seed (and heatmap seed) for cross-checks."""
    extra = [] if heatmap_seed is None else [f"--heatmap-seeds={heatmap_seed}"]
    res = invoke(generate.main, network, outdir, f"--seeds={seed}", *extra)
    assert res.exit_code == 0, res.output
    (path,) = outdir.glob(f"seed{seed:04d}*.png")
    return load(path)


def cell(grid: np.ndarray, row: int, col: int) -> np.ndarray:
    return grid[row * RES:(row + 1) * RES, col * RES:(col + 1) * RES]


def test_files_and_grid_layout(spatial, tmp_path):
    out = mix(spatial, tmp_path / "mix", "--rows=1-3", "--cols=5,6", "--styles=0-2")
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"{r}-{c}.png" for r in (1, 2, 3) for c in (5, 6)] + ["grid.png"])
    grid = load(out / "grid.png")
    assert grid.shape == (4 * RES, 3 * RES, 3)
    assert cell(grid, 0, 0).max() == 0  # blank corner
    # Sources: columns on top, rows on the left, each as generate.py draws that seed.
    assert np.array_equal(cell(grid, 0, 2), generated(spatial, tmp_path / "g6", 6))
    assert np.array_equal(cell(grid, 3, 0), generated(spatial, tmp_path / "g3", 3))
    mixed = load(out / "2-5.png")
    assert np.array_equal(cell(grid, 2, 1), mixed)
    assert not np.array_equal(mixed, cell(grid, 2, 0)) and not np.array_equal(mixed, cell(grid, 0, 1))


def test_all_styles_from_the_column_keep_the_row_heatmaps(spatial, tmp_path):
    """Copying every w layer gives the column's latent drawn with the row seed's heatmaps."""
    out = mix(spatial, tmp_path / "mix", "--rows=2", "--cols=7")  # default 0-6 covers all 6 layers at 16px
    assert np.array_equal(load(out / "2-7.png"), generated(spatial, tmp_path / "g", 7, heatmap_seed=2))


def test_heatmap_seed_is_used_for_every_cell(spatial, tmp_path):
    out = mix(spatial, tmp_path / "mix", "--rows=1,2", "--cols=3", "--styles=0-1", "--heatmap-seed=9")
    grid = load(out / "grid.png")
    assert np.array_equal(cell(grid, 1, 0), generated(spatial, tmp_path / "g1", 1, heatmap_seed=9))
    assert np.array_equal(cell(grid, 0, 1), generated(spatial, tmp_path / "g3", 3, heatmap_seed=9))
    default = mix(spatial, tmp_path / "default", "--rows=1,2", "--cols=3", "--styles=0-1")
    assert not np.array_equal(load(out / "1-3.png"), load(default / "1-3.png"))


def test_baseline(baseline, tmp_path):
    out = mix(baseline, tmp_path / "mix", "--rows=0,1", "--cols=2", "--styles=3-5")
    assert load(out / "grid.png").shape == (3 * RES, 2 * RES, 3)
    assert np.array_equal(cell(load(out / "grid.png"), 1, 0), generated(baseline, tmp_path / "g", 0))
    assert "no heatmap encoding" in mix_error(baseline, tmp_path / "x", "--rows=0", "--cols=1", "--heatmap-seed=3")


def test_errors(spatial, tmp_path):
    assert "--styles" in mix_error(spatial, tmp_path, "--rows=0", "--cols=1", "--styles=0,40")
    assert "--rows" in mix_error(spatial, tmp_path, "--rows=a", "--cols=1")
    assert "--cols" in mix_error(spatial, tmp_path, "--rows=0", "--cols=3-1")
    assert "missing.pt" in mix_error(tmp_path / "missing.pt", tmp_path, "--rows=0", "--cols=1")
    assert not list(tmp_path.glob("*.png"))


def test_help_documents_every_option():
    for param in style_mixing.main.params:
        assert param.help, f"{param.opts} has no help text"


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_trunc(spatial, tmp_path, value):
    res = invoke(style_mixing.main, spatial, tmp_path / "out", "--rows=0", "--cols=1", f"--trunc={value}")
    assert res.exit_code == 2 and "'--trunc'" in res.output and "not a finite number" in res.output
    assert not (tmp_path / "out").exists()


def test_unwritable_outdir_fails_before_generating(spatial, tmp_path):
    def check(outdir: Path) -> None:
        res = invoke(style_mixing.main, spatial, outdir, "--rows=0", "--cols=1")
        assert res.exit_code != 0 and "Generating" not in res.stdout
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"Error: --outdir={outdir}: cannot create or write")

    (tmp_path / "afile").write_text("x")
    check(tmp_path / "afile" / "sub")
    check(Path(unwritable_dir()))


def test_seeds_beyond_numpy_range(spatial, tmp_path):
    line = mix_error(spatial, tmp_path / "out", "--rows=0", f"--cols={2**32}")
    assert line == f"Error: --cols: seed {2**32} out of range [0, 2^32) (NumPy RandomState seeds)"
    line = mix_error(spatial, tmp_path / "out", "--rows=0", "--cols=1", f"--heatmap-seed={2**64}")
    assert line == f"Error: --heatmap-seed: seed {2**64} out of range [0, 2^64) (torch.Generator seeds)"
    assert not (tmp_path / "out").exists()
