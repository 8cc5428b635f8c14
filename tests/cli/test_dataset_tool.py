"""Tests for dataset_tool.py: round trips between formats, LMDB input, synthetic input, errors."""

import io
import json
import os
import re
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
                   "--skip-bad", "data.mdb", "synthetic:"):
        assert option in result.output


def _png16(path: Path, values: np.ndarray) -> None:
    img = PIL.Image.fromarray(values.astype(np.uint16))
    assert img.mode == "I;16"
    img.save(path)


def test_16bit_greyscale_is_scaled_not_clipped(tmp_path):
    src = tmp_path / "depth"
    src.mkdir()
    values = np.linspace(0, 65535, 64).round().reshape(8, 8).astype(np.uint16)
    values[0, :4] = [0, 128, 129, 65535]  # rounding boundaries of v / 257
    _png16(src / "a.png", values)
    dest = tmp_path / "depth.zip"
    result = _run("--source", str(src), "--dest", str(dest))
    assert result.exit_code == 0, result.output
    out = open_dataset(str(dest))[0][0]
    assert out.shape == (1, 8, 8)
    np.testing.assert_array_equal(out[0, 0, :4], [0, 0, 1, 255])
    np.testing.assert_array_equal(out[0], np.round(values / 257).astype(np.uint8))
    assert (out == 255).mean() < 0.05  # the old convert("L") clipped almost everything to 255


def test_16bit_greyscale_scaled_before_resize(tmp_path):
    src = tmp_path / "flat"
    src.mkdir()
    _png16(src / "a.png", np.full((8, 8), 257 * 100, np.uint16))
    dest = tmp_path / "flat.zip"
    assert _run("--source", str(src), "--dest", str(dest), "--resolution", "4x4").exit_code == 0
    out = open_dataset(str(dest))[0][0]
    assert out.shape == (1, 4, 4) and (out == 100).all()


@pytest.mark.parametrize("dtype,mode", [(np.int32, "I"), (np.float32, "F")])
def test_32bit_images_refused_naming_the_file(tmp_path, dtype, mode):
    src = tmp_path / "wide"
    src.mkdir()
    PIL.Image.fromarray(_images(1)[0]).save(src / "ok.png")
    img = PIL.Image.fromarray(np.full((8, 8), 1000, dtype))
    assert img.mode == mode
    img.save(src / "wide.tif")
    dest = tmp_path / "out.zip"
    result = _run("--source", str(src), "--dest", str(dest))
    assert result.exit_code != 0 and not dest.exists()
    assert "wide.tif" in result.output and f"mode {mode}" in result.output
    assert not list(tmp_path.glob(".tmp-*"))


def test_existing_dest_zip_is_never_replaced(tmp_path):
    src = _folder(tmp_path, _images(2))
    dest = tmp_path / "out.zip"
    dest.write_bytes(b"precious")
    result = _run("--source", str(src), "--dest", str(dest))
    assert result.exit_code != 0 and "already exists" in result.output and "delete it first" in result.output
    assert dest.read_bytes() == b"precious"


def test_dest_equal_to_source_refused_and_source_kept(tmp_path, monkeypatch):
    src = _folder(tmp_path, _images(2))
    zipped = tmp_path / "z.zip"
    assert _run("--source", str(src), "--dest", str(zipped)).exit_code == 0
    before = zipped.read_bytes()
    monkeypatch.chdir(tmp_path)
    for dest in (str(zipped), "./z.zip", "z.zip"):  # same file, spelled differently
        result = _run("--source", str(zipped), "--dest", dest)
        assert result.exit_code != 0 and "is the --source itself" in result.output, result.output
    assert zipped.read_bytes() == before
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _run("--source", str(empty), "--dest", str(empty) + "/")
    assert result.exit_code != 0 and "is the --source itself" in result.output


def test_dest_folder_inside_source_refused_zip_inside_allowed(tmp_path):
    src = _folder(tmp_path, _images(2))
    result = _run("--source", str(src), "--dest", str(src / "out"))
    assert result.exit_code != 0 and "inside the --source folder" in result.output
    assert not (src / "out").exists() and not list(src.glob(".tmp-*"))
    result = _run("--source", str(src), "--dest", str(src / "out.zip"))  # a zip is never read as an image
    assert result.exit_code == 0, result.output
    assert len(open_dataset(str(src / "out.zip"))) == 2


def test_dest_that_is_a_file_refused_up_front(tmp_path, monkeypatch):
    src = _folder(tmp_path, _images(2))
    afile = tmp_path / "afile"
    afile.write_text("keep")

    def never(*args, **kwargs):
        raise AssertionError("conversion started")

    monkeypatch.setattr(dataset_tool, "convert", never)
    result = _run("--source", str(src), "--dest", str(afile))
    assert result.exit_code != 0 and "--dest" in result.output and "is an existing file" in result.output
    assert afile.read_text() == "keep"
    for dest in (afile / "x.zip", afile / "sub" / "x.zip", afile / "folder"):
        result = _run("--source", str(src), "--dest", str(dest))
        assert result.exit_code != 0 and f"{afile} is a file, not a folder" in result.output, result.output
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize("labels,match", [
    ([0, "cat"], "\"cat\""),
    ([0, 10**7], "outside 0..99999"),
    ([0, -1], "outside"),
    ([0, True], "true"),
    ([0, 1.5], "1.5"),
    ([0, None], "null"),
    ([[0.5, 1.0], [float("nan"), 0.0]], "NaN"),
    ([[0.5, 1.0], [1e39, 0.0]], r"1e\+39"),  # inf as float32
    ([[0.5, 1.0], []], r"\[\]"),
    ([[0.5, 1.0], [0.5]], "a list of 1 numbers"),
    ([0, [0.5]], "a list of 1 numbers"),
])
def test_unusable_labels_refused_naming_json_and_image(tmp_path, labels, match):
    src = _folder(tmp_path, _images(2), labels=labels)
    dest = tmp_path / "out.zip"
    result = _run("--source", str(src), "--dest", str(dest))
    assert result.exit_code != 0 and not dest.exists()
    line = result.output.strip()
    assert str(src / "dataset.json") in line and "sub/001.png" in line, line  # the second image
    assert re.search(match, line), line


def test_class_label_limit_is_the_one_training_reads(tmp_path):
    from training import dataset as training_dataset

    assert dataset_tool.MAX_CLASSES == training_dataset.MAX_CLASSES
    top = dataset_tool.MAX_CLASSES - 1
    src = _folder(tmp_path, _images(2), labels=[0, top])
    dest = tmp_path / "out.zip"
    assert _run("--source", str(src), "--dest", str(dest)).exit_code == 0
    ds = open_dataset(str(dest), use_labels=True)
    assert ds.label_dim == dataset_tool.MAX_CLASSES and ds[1][1][top] == 1 and ds[1][1].sum() == 1
    src = _folder(tmp_path, _images(2), labels=[0, top + 1], name="over")
    result = _run("--source", str(src), "--dest", str(tmp_path / "over.zip"))
    assert result.exit_code != 0 and f"class index {top + 1} is outside" in result.output


def test_vector_labels_carried_over(tmp_path):
    src = _folder(tmp_path, _images(2), labels=[[0.25, -1], [3, 0.5]])
    dest = tmp_path / "out.zip"
    assert _run("--source", str(src), "--dest", str(dest)).exit_code == 0
    ds = open_dataset(str(dest), use_labels=True)
    assert ds.label_dim == 2
    np.testing.assert_array_equal(ds[1][1], [3, 0.5])


def test_folder_named_lmdb_without_data_mdb_is_an_image_folder(tmp_path):
    images = _images(2)
    src = _folder(tmp_path, images, name="fake_lmdb")
    dest = tmp_path / "out.zip"
    result = _run("--source", str(src), "--dest", str(dest))
    assert result.exit_code == 0, result.output
    ds = open_dataset(str(dest))
    assert len(ds) == 2 and np.array_equal(ds[0][0], images[0].transpose(2, 0, 1))
    (tmp_path / "empty_lmdb").mkdir()
    result = _run("--source", str(tmp_path / "empty_lmdb"), "--dest", str(tmp_path / "e.zip"))
    assert result.exit_code != 0 and "no images found" in result.output and "data.mdb" in result.output


def test_lmdb_detected_by_data_mdb_whatever_its_name(tmp_path):
    lmdb = pytest.importorskip("lmdb")
    path = tmp_path / "bedrooms"
    env = lmdb.open(str(path), map_size=1 << 22)
    with env.begin(write=True) as txn:
        buf = io.BytesIO()
        PIL.Image.fromarray(_images(1)[0]).save(buf, format="png")
        txn.put(b"k", buf.getvalue())
    env.close()
    assert (path / "data.mdb").is_file()
    result = _run("--source", str(path), "--dest", str(tmp_path / "b.zip"))
    assert result.exit_code == 0, result.output
    assert len(open_dataset(str(tmp_path / "b.zip"))) == 1
