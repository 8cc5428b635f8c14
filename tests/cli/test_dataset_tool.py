"""Tests for dataset_tool.py: round trips between formats, LMDB, CIFAR-10, MNIST and synthetic input,
--width/--height and center-crop-wide, transparency, errors."""

import gzip
import io
import json
import os
import pickle
import re
import signal
import struct
import subprocess
import sys
import tarfile
import time
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


def _error_line(result) -> str:
    """The run failed with exactly one one-line "Error: ..." as its last output line (progress bars may
    come before it)."""
    assert result.exit_code != 0, result.output
    lines = result.output.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error:")]
    assert lines[-1].startswith("Error: ") and len(errors) == 1, result.output
    assert "Traceback" not in result.output
    return lines[-1]


def test_center_crop_wide_letterboxes_at_width_by_height(tmp_path):
    rng = np.random.default_rng(1)
    small = rng.integers(1, 256, size=(12, 16, 3), dtype=np.uint8)  # the expected 16x12 letterbox content
    src = tmp_path / "wide"
    src.mkdir()
    PIL.Image.fromarray(np.kron(small, np.ones((2, 2, 1), np.uint8))).save(src / "a_exact.png")  # 32x24 = 4:3
    wider = np.zeros((12, 20, 3), np.uint8)
    wider[:, 2:18] = small
    wider[:, :2] = wider[:, 18:] = [255, 0, 0]  # cropped away: the 4:3 region is the centre 16 of 20 columns
    PIL.Image.fromarray(wider).save(src / "b_wider.png")
    taller = np.zeros((20, 16, 3), np.uint8)
    taller[4:16] = small
    PIL.Image.fromarray(taller).save(src / "c_taller.png")  # the centre 12 rows are kept
    PIL.Image.fromarray(small[:6, :8]).save(src / "d_small.png")  # 8x6 < 16x12: dropped, not upscaled
    dest = tmp_path / "w.zip"
    result = _run("--source", str(src), "--dest", str(dest), "--width=16", "--height=12",
                  "--transform=center-crop-wide", "--resize-filter=box")
    assert result.exit_code == 0, result.output
    assert "Dropped 1 image smaller than 16x12" in result.output and "Wrote 3 images" in result.output
    ds = open_dataset(str(dest))
    assert len(ds) == 3 and ds.image_shape == [3, 16, 16]
    for i in range(3):
        img = ds[i][0].transpose(1, 2, 0)
        assert img[:2].max() == 0 and img[14:].max() == 0  # black bars above and below
        np.testing.assert_array_equal(img[2:14], small)


def test_center_crop_wide_square_and_all_dropped(tmp_path):
    src = tmp_path / "wide"
    src.mkdir()
    PIL.Image.fromarray(np.full((8, 16, 3), 200, np.uint8)).save(src / "w.png")
    dest = tmp_path / "w.zip"
    result = _run("--source", str(src), "--dest", str(dest), "--resolution", "8x8",
                  "--transform", "center-crop-wide")
    assert result.exit_code == 0, result.output  # W = H: the centred 8x8 square, nothing to letterbox
    assert (open_dataset(str(dest))[0][0] == 200).all()
    result = _run("--source", str(src), "--dest", str(tmp_path / "x.zip"), "--resolution", "16x16",
                  "--transform", "center-crop-wide")
    line = _error_line(result)
    assert "no images were written" in line and "dropped 1 image too small" in line and "16x16" in line
    assert not (tmp_path / "x.zip").exists()


@pytest.mark.parametrize("args,match", [
    (["--width=16", "--height=8"], "only for --transform=center-crop-wide"),
    (["--width=8", "--height=16", "--transform=center-crop-wide"], "height must be 1..8"),
    (["--width=12", "--height=8", "--transform=center-crop-wide"], "power of two"),
    (["--height=12"], "power of two"),
    (["--resolution=8x8", "--width=16"], "disagrees"),
    (["--resolution=16x8", "--height=16", "--transform=center-crop-wide"], "disagrees"),
    (["--resolution=16x8"], "square"),
    (["--transform=center-crop-wide"], "needs --width and --height"),
])
def test_bad_width_height_refused_in_one_line(tmp_path, args, match):
    line = _error_line(_run("--source", "synthetic:shapes:8", "--dest", str(tmp_path / "o.zip"), *args))
    assert match in line, line


@pytest.mark.parametrize("args", [["--width=8"], ["--height=8"], ["--width=8", "--height=8"],
                                  ["--resolution=8x8", "--width=8"], ["--resolution=8"]])
def test_width_height_and_resolution_agree(tmp_path, args):
    ref = tmp_path / "ref.zip"
    assert _run("--source", "synthetic:shapes:16", "--dest", str(ref), "--max-images=2",
                "--resolution=8x8").exit_code == 0
    dest = tmp_path / "o.zip"
    result = _run("--source", "synthetic:shapes:16", "--dest", str(dest), "--max-images=2", *args)
    assert result.exit_code == 0, result.output
    a, b = open_dataset(str(ref)), open_dataset(str(dest))
    assert b.image_shape == [3, 8, 8] and all(np.array_equal(a[i][0], b[i][0]) for i in range(2))


# ---------------------------------------------------------------------------------------------------
# CIFAR-10 (python tarball) and MNIST (IDX) sources, built from tiny fake files.

CIFAR_BATCHES = [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)]


def _py2_pickle(rows: np.ndarray, labels: list[int]) -> bytes:
    """A batch byte for byte the way Python 2's cPickle (protocol 2) wrote the real CIFAR-10 files: str keys
    and array data (read back as bytes), numpy.core.multiarray._reconstruct, a dtype with a '|' byte order."""
    def s(b: bytes) -> bytes:  # Python 2 str: SHORT_BINSTRING / BINSTRING
        return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b

    def g(module: str, name: str) -> bytes:  # GLOBAL
        return f"c{module}\n{name}\n".encode()

    dtype = (g("numpy", "dtype") + s(b"u1") + b"\x89\x88\x87R"  # dtype('u1', False, True)
             + b"(K\x03" + s(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
    array = (g("numpy.core.multiarray", "_reconstruct") + g("numpy", "ndarray") + b"K\x00\x85" + s(b"b")
             + b"\x87R" + b"(K\x01J" + struct.pack("<i", len(rows)) + b"M" + struct.pack("<H", rows.shape[1])
             + b"\x86" + dtype + b"\x89" + s(rows.tobytes()) + b"tb")
    listed = b"](" + b"".join(b"K" + bytes([x]) for x in labels) + b"e"
    return (b"\x80\x02}(" + s(b"batch_label") + s(b"training batch 1 of 5") + s(b"data") + array
            + s(b"labels") + listed + b"u.")


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 32, 32, 3] -> CIFAR rows [N, 3072]: the R, G and B planes one after the other."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))


def _cifar_tarball(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _fake_cifar(per_batch: int = 2, seed: int = 0):
    """Five batches (the first in Python 2's format, the rest pickled by Python 3) -> members, images,
    labels."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(5 * per_batch, 32, 32, 3), dtype=np.uint8)
    labels = [int(x) for x in rng.integers(0, 10, size=5 * per_batch)]
    members = {}
    for b, name in enumerate(CIFAR_BATCHES):
        part, labs = images[b * per_batch:(b + 1) * per_batch], labels[b * per_batch:(b + 1) * per_batch]
        batch = {b"batch_label": b"training batch", b"data": _cifar_rows(part), b"labels": labs}
        members[name] = _py2_pickle(_cifar_rows(part), labs) if b == 0 else pickle.dumps(batch, protocol=4)
    return members, images, labels


def test_cifar10_tarball_to_zip_with_labels(tmp_path):
    members, images, labels = _fake_cifar()
    members = {"cifar-10-batches-py/batches.meta": b"ignored", **members}
    src = _cifar_tarball(tmp_path / "cifar-10-python.tar.gz", members)
    dest = tmp_path / "cifar10.zip"
    result = _run("--source", str(src), "--dest", str(dest))
    assert result.exit_code == 0, result.output
    ds = open_dataset(str(dest), use_labels=True)
    assert len(ds) == 10 and ds.image_shape == [3, 32, 32] and ds.label_dim == max(labels) + 1
    with zipfile.ZipFile(dest) as zf:
        assert [lab for _, lab in json.loads(zf.read("dataset.json"))["labels"]] == labels
    for i in range(10):  # batch order 1..5, rows in order; the channel-major rows became HWC pixels
        np.testing.assert_array_equal(ds[i][0], images[i].transpose(2, 0, 1))


def test_cifar10_recognised_by_members_and_other_tarballs_refused(tmp_path):
    members, images, _ = _fake_cifar(per_batch=1)
    src = _cifar_tarball(tmp_path / "my-copy.tar.gz", {f"./{k}": v for k, v in members.items()})
    dest = tmp_path / "c.zip"
    result = _run("--source", str(src), "--dest", str(dest), "--max-images=3", "--width=16")
    assert result.exit_code == 0, result.output
    assert len(open_dataset(str(dest))) == 3 and open_dataset(str(dest)).image_shape == [3, 16, 16]
    other = _cifar_tarball(tmp_path / "photos.tar.gz", {"photos/a.png": b"png"})
    line = _error_line(_run("--source", str(other), "--dest", str(tmp_path / "o.zip")))
    assert str(other) in line and "CIFAR-10" in line
    partial = _cifar_tarball(tmp_path / "cifar-10-python.tar.gz", {k: members[k] for k in CIFAR_BATCHES[:4]})
    line = _error_line(_run("--source", str(partial), "--dest", str(tmp_path / "p.zip")))
    assert str(partial) in line and "lacks cifar-10-batches-py/data_batch_5" in line
    (tmp_path / "bad.tar.gz").write_bytes(b"not gzip at all")
    line = _error_line(_run("--source", str(tmp_path / "bad.tar.gz"), "--dest", str(tmp_path / "b.zip")))
    assert "bad.tar.gz" in line


class _Evil:
    """Unpickling this would run `call(*args)` (how a hostile pickle runs code)."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


@pytest.mark.parametrize("evil", ["system", "exec", "nested"])
def test_cifar10_malicious_pickle_refused_without_running_it(tmp_path, evil):
    marker = tmp_path / "pwned"
    members, _, _ = _fake_cifar(per_batch=1)
    payload = {
        "system": _Evil(os.system, f"touch {marker}"),
        "exec": _Evil(exec, f"open({str(marker)!r}, 'w').close()"),
        "nested": {b"data": [_Evil(Path.touch, marker)], b"labels": [0]},
    }[evil]
    members[CIFAR_BATCHES[2]] = pickle.dumps(payload, protocol=2)
    src = _cifar_tarball(tmp_path / "cifar-10-python.tar.gz", members)
    dest = tmp_path / "c.zip"
    line = _error_line(_run("--source", str(src), "--dest", str(dest)))
    assert f"{src}:{CIFAR_BATCHES[2]}" in line and "refused to unpickle" in line, line
    assert not marker.exists() and not dest.exists()


@pytest.mark.parametrize("batch,match", [
    (pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]})[:-20], "cannot unpickle"),
    (pickle.dumps({b"data": np.zeros((1, 1024), np.uint8), b"labels": [0]}, protocol=4), r"\[N, 3072\]"),
    (pickle.dumps({b"data": np.zeros((1, 3072), np.float32), b"labels": [0]}, protocol=4), "float32"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, protocol=4), "list of 2 class"),
    (pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}, protocol=4), "0-9"),
    (pickle.dumps([1, 2], protocol=4), "expected a dict"),
], ids=["truncated", "shape", "dtype", "count", "label-range", "not-a-dict"])
def test_cifar10_damaged_batch_named(tmp_path, batch, match):
    members, _, _ = _fake_cifar(per_batch=1)
    members[CIFAR_BATCHES[1]] = batch
    src = _cifar_tarball(tmp_path / "cifar-10-python.tar.gz", members)
    line = _error_line(_run("--source", str(src), "--dest", str(tmp_path / "c.zip")))
    assert CIFAR_BATCHES[1] in line and re.search(match, line), line


def _idx_gz(path: Path, magic: int, dims: tuple, payload: bytes) -> Path:
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(f">{1 + len(dims)}I", magic, *dims) + payload)
    return path


def _fake_mnist(folder: Path, n: int = 3, prefix: str = "train"):
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = [7, 0, 3, 9, 1][:n]
    img_path = _idx_gz(folder / f"{prefix}-images-idx3-ubyte.gz", 2051, (n, 28, 28), images.tobytes())
    lab_path = _idx_gz(folder / f"{prefix}-labels-idx1-ubyte.gz", 2049, (n,), bytes(labels))
    return img_path, lab_path, images, labels


@pytest.mark.parametrize("prefix", ["train", "t10k"])
def test_mnist_idx_to_zip_padded_with_labels(tmp_path, prefix):
    img_path, _, images, labels = _fake_mnist(tmp_path / "mnist", prefix=prefix)
    dest = tmp_path / "mnist.zip"
    result = _run("--source", str(img_path), "--dest", str(dest))
    assert result.exit_code == 0, result.output
    ds = open_dataset(str(dest), use_labels=True)
    assert len(ds) == 3 and ds.image_shape == [1, 32, 32] and ds.label_dim == 8
    with zipfile.ZipFile(dest) as zf:
        assert [lab for _, lab in json.loads(zf.read("dataset.json"))["labels"]] == labels
    for i in range(3):
        out = ds[i][0][0]
        np.testing.assert_array_equal(out[2:30, 2:30], images[i])
        assert out[:2].max() == out[30:].max() == out[:, :2].max() == out[:, 30:].max() == 0


@pytest.mark.parametrize("damage,match", [
    ("no-labels", "labels file .*train-labels-idx1-ubyte.gz not found"),
    ("images-magic", "train-images-idx3-ubyte.gz: IDX magic number 2049, expected 2051"),
    ("labels-magic", "train-labels-idx1-ubyte.gz: IDX magic number 2051, expected 2049"),
    ("short-images", "train-images-idx3-ubyte.gz: header promises 3x28x28 = 2352 bytes of data, the file "
                     "holds 2351"),
    ("label-count", "train-labels-idx1-ubyte.gz: 2 labels for the 3 images"),
    ("not-28", "train-images-idx3-ubyte.gz: images are 14x56"),
    ("not-gzip", "cannot read .*train-images-idx3-ubyte.gz"),
])
def test_mnist_bad_files_named(tmp_path, damage, match):
    img_path, lab_path, images, labels = _fake_mnist(tmp_path / "mnist")
    if damage == "no-labels":
        lab_path.unlink()
    elif damage == "images-magic":
        _idx_gz(img_path, 2049, (3, 28, 28), images.tobytes())
    elif damage == "labels-magic":
        _idx_gz(lab_path, 2051, (3,), bytes(labels))
    elif damage == "short-images":
        _idx_gz(img_path, 2051, (3, 28, 28), images.tobytes()[:-1])
    elif damage == "label-count":
        _idx_gz(lab_path, 2049, (2,), bytes(labels[:2]))
    elif damage == "not-28":
        _idx_gz(img_path, 2051, (3, 56, 14), images.tobytes())
    else:
        img_path.write_bytes(b"plain bytes")
    dest = tmp_path / "m.zip"
    line = _error_line(_run("--source", str(img_path), "--dest", str(dest)))
    assert re.search(match, line), line
    assert not dest.exists()


# ---------------------------------------------------------------------------------------------------
# Transparency: refused when any pixel has alpha < 255, dropped losslessly when all are opaque.


def _alpha_images(tmp_path) -> dict[str, np.ndarray]:
    """Writes opaque and transparent variants; returns the expected 8-bit output of the opaque ones."""
    src = tmp_path / "alpha"
    src.mkdir()
    rgb = _images(1)[0]
    grey = rgb[..., 0]
    rgba = np.dstack([rgb, np.full((8, 8), 255, np.uint8)])
    PIL.Image.fromarray(rgba).save(src / "opaque_rgba.png")
    PIL.Image.fromarray(np.dstack([grey, np.full((8, 8), 255, np.uint8)]), "LA").save(src / "opaque_la.png")
    rgba[3, 5, 3] = 254
    PIL.Image.fromarray(rgba).save(tmp_path / "clear_rgba.png")
    PIL.Image.fromarray(np.dstack([grey, np.where(grey > 128, 0, 255).astype(np.uint8)]), "LA").save(
        tmp_path / "clear_la.png")
    pal = PIL.Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).convert("P")
    pal.save(tmp_path / "clear_palette.png", transparency=10)  # palette entry 10 is used by one pixel
    keyed = PIL.Image.fromarray(rgb)
    keyed.save(tmp_path / "clear_colour_key.png", transparency=tuple(int(v) for v in rgb[0, 0]))
    return {"opaque_la.png": grey, "opaque_rgba.png": rgb}


@pytest.mark.parametrize("name", ["clear_rgba.png", "clear_la.png", "clear_palette.png",
                                  "clear_colour_key.png"])
def test_transparent_images_refused_naming_the_file(tmp_path, name):
    _alpha_images(tmp_path)
    src = tmp_path / "one"
    src.mkdir()
    (tmp_path / name).rename(src / name)
    dest = tmp_path / "out.zip"
    line = _error_line(_run("--source", str(src), "--dest", str(dest)))
    assert f"{src / name}: image has transparency" in line and "alpha < 255" in line and "--skip-bad" in line
    assert not dest.exists() and not list(tmp_path.glob(".tmp-*"))


def test_opaque_alpha_dropped_losslessly_and_skip_bad_skips_transparent(tmp_path):
    expected = _alpha_images(tmp_path)
    src = tmp_path / "alpha"
    dest = tmp_path / "opaque.zip"
    # An opaque RGBA and an opaque LA image cannot share a dataset (3 vs 1 channels): one run each.
    for name, ref in expected.items():
        one = tmp_path / name.replace(".", "_")
        one.mkdir()
        (src / name).rename(one / name)
        out = tmp_path / f"{one.name}.zip"
        result = _run("--source", str(one), "--dest", str(out))
        assert result.exit_code == 0, result.output
        img = open_dataset(str(out))[0][0]
        if ref.ndim == 3:
            np.testing.assert_array_equal(img, ref.transpose(2, 0, 1))
        else:
            np.testing.assert_array_equal(img[0], ref)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (tmp_path / "opaque_rgba_png" / "opaque_rgba.png").rename(mixed / "a.png")
    for i, name in enumerate(["clear_rgba.png", "clear_palette.png"]):
        (tmp_path / name).rename(mixed / f"b{i}.png")
    (mixed / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    result = _run("--source", str(mixed), "--dest", str(dest), "--skip-bad")
    assert result.exit_code == 0, result.output
    assert "Skipped 2 images with transparent pixels" in result.output
    assert "Skipped 1 unreadable image" in result.output
    assert len(open_dataset(str(dest))) == 1


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


@pytest.mark.parametrize("res,match", [("256x128", "square"), ("48x48", "power of two"), ("big", "WxH"),
                                       ("16x0", "positive")])
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


def test_mixed_sizes_without_resolution_refused_or_skipped(tmp_path):
    src = tmp_path / "mixed"
    src.mkdir()
    PIL.Image.fromarray(_images(1, 8)[0]).save(src / "a.png")
    PIL.Image.fromarray(_images(1, 16)[0]).save(src / "b.png")
    PIL.Image.fromarray(_images(1, 8, seed=1)[0]).save(src / "c.png")
    line = _error_line(_run("--source", str(src), "--dest", str(tmp_path / "m.zip")))
    assert "b.png: image is 16x16 RGB but the first image" in line and "a.png" in line
    assert "--resolution" in line and "--skip-bad" in line
    result = _run("--source", str(src), "--dest", str(tmp_path / "m.zip"), "--skip-bad")
    assert result.exit_code == 0, result.output
    assert "Skipped 1 image of another size" in result.output and len(open_dataset(str(tmp_path / "m.zip"))) == 2


@pytest.mark.parametrize("as_zip", [False, True])
def test_greyscale_images_among_colour_ones_become_rgb(tmp_path, as_zip):
    """Photo collections hold the odd greyscale JPEG: it is written as RGB (equal channels), also when
    it comes first, since the source's headers are read before converting."""
    src = tmp_path / "src"
    src.mkdir()
    grey = _images(1)[0][:, :, 0]
    PIL.Image.fromarray(grey).save(src / "a.png")  # first: greyscale
    PIL.Image.fromarray(_images(1, seed=1)[0]).save(src / "b.png")
    if as_zip:
        with zipfile.ZipFile(tmp_path / "src.zip", "w") as zf:
            for name in ("a.png", "b.png"):
                zf.write(src / name, name)
        src = tmp_path / "src.zip"
    result = _run("--source", str(src), "--dest", str(tmp_path / "out.zip"))
    assert result.exit_code == 0, result.output
    assert "Converted 1 greyscale image to RGB" in result.output
    ds = open_dataset(str(tmp_path / "out.zip"))
    assert ds.image_shape == [3, 8, 8] and all(np.array_equal(ds[0][0][c], grey) for c in range(3))
    only_grey = _folder(tmp_path, [img[:, :, 0] for img in _images(2)], name="grey")
    assert _run("--source", str(only_grey), "--dest", str(tmp_path / "grey.zip")).exit_code == 0
    assert open_dataset(str(tmp_path / "grey.zip")).image_shape == [1, 8, 8]  # stays greyscale


def test_outputs_get_the_umask_permissions(tmp_path):
    """mkstemp / mkdtemp make private paths; a dataset on a shared disk must be readable by the group."""
    old = os.umask(0o027)
    try:
        src = _folder(tmp_path, _images(2))
        assert _run("--source", str(src), "--dest", str(tmp_path / "out.zip")).exit_code == 0
        assert _run("--source", str(src), "--dest", str(tmp_path / "out")).exit_code == 0
    finally:
        os.umask(old)
    assert (tmp_path / "out.zip").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o750


@pytest.mark.parametrize("as_zip", [False, True])
def test_labels_of_the_folder_that_holds_every_image(tmp_path, as_zip):
    """`zip -r data.zip data/` puts dataset.json one level down: its labels are used; a dataset.json
    elsewhere is named in a warning, never silently dropped."""
    images = _images(2)
    root = tmp_path / "src"
    (root / "data" / "deeper").mkdir(parents=True)
    for i, img in enumerate(images):
        PIL.Image.fromarray(img).save(root / "data" / f"{i}.png")
    (root / "data" / "dataset.json").write_text(json.dumps({"labels": [["0.png", 1], ["1.png", 0]]}))
    (root / "data" / "deeper" / "dataset.json").write_text(json.dumps({"labels": None}))
    src = root
    if as_zip:
        src = tmp_path / "src.zip"
        with zipfile.ZipFile(src, "w") as zf:
            for path in sorted(root.rglob("*")):
                if path.is_file():
                    zf.write(path, path.relative_to(root).as_posix())
    result = _run("--source", str(src), "--dest", str(tmp_path / "out.zip"))
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("Warning: ignoring")]
    assert len(warnings) == 1 and "deeper/dataset.json" in warnings[0]
    with zipfile.ZipFile(tmp_path / "out.zip") as zf:
        assert [lab for _, lab in json.loads(zf.read("dataset.json"))["labels"]] == [1, 0]


def test_symlinked_folders_are_converted_and_duplicate_zip_names_refused(tmp_path):
    src = _folder(tmp_path, _images(2))
    (tmp_path / "more").mkdir()
    PIL.Image.fromarray(_images(1, seed=5)[0]).save(tmp_path / "more" / "x.png")
    (src / "linked").symlink_to(tmp_path / "more")
    result = _run("--source", str(src), "--dest", str(tmp_path / "out.zip"))
    assert result.exit_code == 0 and "Wrote 3 images" in result.output, result.output
    dup = tmp_path / "dup.zip"
    with zipfile.ZipFile(dup, "w") as zf:
        zf.write(src / "000.png", "a.png")
    with pytest.warns(UserWarning), zipfile.ZipFile(dup, "a") as zf:
        zf.write(src / "sub" / "001.png", "a.png")
    line = _error_line(_run("--source", str(dup), "--dest", str(tmp_path / "d.zip")))
    assert "dup.zip" in line and "'a.png'" in line and "more than once" in line


def test_a_symlink_dest_is_refused_before_converting(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    line = _error_line(_run("--source", "synthetic:shapes:8", "--dest", str(tmp_path / "link"), "--max-images=2"))
    assert "symbolic link" in line and str(tmp_path / "empty") in line
    assert not list(tmp_path.glob(".tmp-*")) and not list((tmp_path / "empty").iterdir())


def test_sigterm_removes_the_unfinished_output(tmp_path):
    """`kill` (or a job's time limit) cleans up like Ctrl-C: no hidden full-size temporary file left."""
    proc = subprocess.Popen([sys.executable, str(REPO / "dataset_tool.py"), "--source=synthetic:shapes:32",
                             f"--dest={tmp_path / 'big.zip'}", "--max-images=100000"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        for _ in range(600):  # until it is writing
            if any(p.stat().st_size > 0 for p in tmp_path.glob(".tmp-*.zip")):
                break
            time.sleep(0.1)
        else:
            pytest.fail("dataset_tool.py never started writing")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert not list(tmp_path.iterdir())


def test_help_documents_options():
    result = _run("--help")
    assert result.exit_code == 0
    for option in ("--source", "--dest", "--resolution", "--width", "--height", "--resize-filter",
                   "--transform", "--max-images", "--skip-bad", "data.mdb", "synthetic:",
                   "cifar-10-python.tar.gz", "train-images-idx3-ubyte.gz", "transparent"):
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
    result = _run("--source", str(src), "--dest", str(dest), "--skip-bad")
    assert result.exit_code == 0 and "Skipped 1 32-bit integer/float image" in result.output, result.output
    assert len(open_dataset(str(dest))) == 1


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


def test_an_image_labelled_twice_differently_is_refused(tmp_path):
    src = _folder(tmp_path, _images(2), labels=[0, 1])
    table = json.loads((src / "dataset.json").read_text())["labels"]
    (src / "dataset.json").write_text(json.dumps({"labels": table + [["sub/001.png", 0]]}))
    line = _error_line(_run("--source", str(src), "--dest", str(tmp_path / "out.zip")))
    assert str(src / "dataset.json") in line and "'sub/001.png' is listed twice, with labels 1 and 0" in line


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
