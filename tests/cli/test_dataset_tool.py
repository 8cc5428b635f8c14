"""Tests for dataset_tool.py: round trips between formats, LMDB input, synthetic input, errors."""

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner

import dataset_tool
from training.dataset import open_dataset

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str):
    return CliRunner().invoke(dataset_tool.main, list(args))


def _images(n: int, res: int = 8, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(res, res, 3), dtype=np.uint8) for _ in range(n)]


def _folder(tmp_path, images, labels=None, name="src") -> Path:
    root = tmp_path / name
    (root / "sub").mkdir(parents=True)
    names = []
    for i, img in enumerate(images):
        rel = f"sub/{i:03d}.png" if i % 2 else f"{i:03d}.png"  # recursive search, sorted by relpath
        PIL.Image.fromarray(img).save(root / rel)
        names.append(rel)
    if labels is not None:
        (root / "dataset.json").write_text(json.dumps({"labels": [[n, lab] for n, lab in zip(names, labels)]}))
    return root


def _sorted_images(images):
    """Images in the order the tool visits them (sorted relative paths)."""
    rels = [f"sub/{i:03d}.png" if i % 2 else f"{i:03d}.png" for i in range(len(images))]
    return [images[i] for i in sorted(range(len(images)), key=lambda i: rels[i])]


def test_folder_to_zip_round_trip_with_labels(tmp_path):
    images = _images(4)
    src = _folder(tmp_path, images, labels=[0, 1, 2, 3])
    dest = tmp_path / "out.zip"
    result = _run("--source", str(src), "--dest", str(dest))
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(dest) as zf:
        names = zf.namelist()
        assert all(info.compress_type == zipfile.ZIP_STORED for info in zf.infolist())
        meta = json.loads(zf.read("dataset.json"))
    assert "00000/img00000003.png" in names
    assert [lab for _, lab in meta["labels"]] == [0, 2, 1, 3]  # 000, 002, sub/001, sub/003
    ds = open_dataset(str(dest), use_labels=True)
    assert len(ds) == 4 and ds.label_dim == 4
    np.testing.assert_array_equal(ds[1][1], [0, 0, 1, 0])
    for i, ref in enumerate(_sorted_images(images)):
        assert np.array_equal(ds[i][0], ref.transpose(2, 0, 1))
    assert not list(tmp_path.glob(".tmp-*"))  # temp file renamed away


def test_zip_to_folder_and_resize(tmp_path):
    src = _folder(tmp_path, _images(3, res=20))
    zipped = tmp_path / "a.zip"
    assert _run("--source", str(src), "--dest", str(zipped), "--resolution", "16x16",
                "--transform", "center-crop").exit_code == 0
    folder = tmp_path / "b"
    result = _run("--source", str(zipped), "--dest", str(folder), "--resize-filter", "box")
    assert result.exit_code == 0, result.output
    assert (folder / "dataset.json").is_file() and (folder / "00000" / "img00000002.png").is_file()
    a, b = open_dataset(str(zipped)), open_dataset(str(folder))
    assert b.image_shape == [3, 16, 16] and len(b) == 3
    assert all(np.array_equal(a[i][0], b[i][0]) for i in range(3))


def test_center_crop_wide_letterboxes(tmp_path):
    src = tmp_path / "wide"
    src.mkdir()
    PIL.Image.fromarray(np.full((8, 16, 3), 200, np.uint8)).save(src / "w.png")
    dest = tmp_path / "w.zip"
    assert _run("--source", str(src), "--dest", str(dest), "--resolution", "16x16",
                "--transform", "center-crop-wide").exit_code == 0
    img = open_dataset(str(dest))[0][0]
    assert img.shape == (3, 16, 16)
    assert img[:, :4].max() == 0 and img[:, -4:].max() == 0 and img[:, 6:10].min() > 150


def test_lmdb_to_zip(tmp_path):
    lmdb = pytest.importorskip("lmdb")
    images = _images(3)
    path = tmp_path / "bedroom_train_lmdb"
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, img in enumerate(images):
            buf = io.BytesIO()
            PIL.Image.fromarray(img).save(buf, format="webp", lossless=True)
            txn.put(f"key{i}".encode(), buf.getvalue())
    env.close()
    dest = tmp_path / "lsun.zip"
    result = _run("--source", str(path), "--dest", str(dest), "--max-images", "2")
    assert result.exit_code == 0, result.output
    ds = open_dataset(str(dest))
    assert len(ds) == 2 and np.array_equal(ds[1][0], images[1].transpose(2, 0, 1))


def test_synthetic_to_zip_matches_synthetic_dataset(tmp_path):
    dest = tmp_path / "rooms.zip"
    result = _run("--source", "synthetic:rooms:16", "--dest", str(dest), "--max-images=8")
    assert result.exit_code == 0, result.output
    ds, ref = open_dataset(str(dest)), open_dataset("synthetic:rooms:16")
    assert len(ds) == 8 and ds.image_shape == [3, 16, 16]
    assert all(np.array_equal(ds[i][0], ref[i][0]) for i in range(8))


def test_skip_bad_counts_and_default_refuses(tmp_path):
    src = _folder(tmp_path, _images(3))
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    dest = tmp_path / "out.zip"
    result = _run("--source", str(src), "--dest", str(dest))
    assert result.exit_code != 0 and "broken.png" in result.output and not dest.exists()
    result = _run("--source", str(src), "--dest", str(dest), "--skip-bad")
    assert result.exit_code == 0, result.output
    assert "Skipped 1 unreadable image" in result.output
    assert len(open_dataset(str(dest))) == 3


def test_errors_are_one_line_without_traceback(tmp_path):
    src = _folder(tmp_path, _images(1))
    (src / "bad.jpg").write_bytes(b"nope")
    proc = subprocess.run([sys.executable, str(REPO / "dataset_tool.py"), "--source", str(src),
                           "--dest", str(tmp_path / "x.zip")], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "bad.jpg" in errors[0] and "Traceback" not in proc.stderr


@pytest.mark.parametrize("res,match", [("256x128", "square"), ("48x48", "power of two"), ("big", "WxH")])
def test_bad_resolution_refused(tmp_path, res, match):
    result = _run("--source", "synthetic:shapes", "--dest", str(tmp_path / "o.zip"), "--resolution", res)
    assert result.exit_code != 0 and match in result.output


def test_unwritable_dest_and_bad_sources(tmp_path):
    (tmp_path / "file").write_text("x")
    result = _run("--source", "synthetic:shapes:8", "--dest", str(tmp_path / "file" / "o.zip"), "--max-images=1")
    assert result.exit_code != 0 and "cannot write" in result.output
    result = _run("--source", str(tmp_path / "missing"), "--dest", str(tmp_path / "o.zip"))
    assert result.exit_code != 0 and "not found" in result.output
    result = _run("--source", "synthetic:clouds", "--dest", str(tmp_path / "o.zip"))
    assert result.exit_code != 0 and "clouds" in result.output
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    result = _run("--source", "synthetic:shapes:8", "--dest", str(tmp_path / "full"), "--max-images=1")
    assert result.exit_code != 0 and "not empty" in result.output


def test_mixed_sizes_without_resolution_refused(tmp_path):
    src = tmp_path / "mixed"
    src.mkdir()
    PIL.Image.fromarray(_images(1, 8)[0]).save(src / "a.png")
    PIL.Image.fromarray(_images(1, 16)[0]).save(src / "b.png")
    result = _run("--source", str(src), "--dest", str(tmp_path / "m.zip"))
    assert result.exit_code != 0 and "b.png" in result.output


def test_help_documents_options():
    result = _run("--help")
    assert result.exit_code == 0
    for option in ("--source", "--dest", "--resolution", "--resize-filter", "--transform", "--max-images",
                   "--skip-bad", "_lmdb", "synthetic:"):
        assert option in result.output
