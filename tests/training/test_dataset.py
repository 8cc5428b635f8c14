"""Tests for training/dataset.py: folder/zip datasets, labels, mirroring, subsets, errors, sampler."""

import io
import itertools
import json
import pickle
import zipfile

import numpy as np
import PIL.Image
import pytest

from training.dataset import (DatasetError, ImageFolderDataset, InfiniteSampler, SyntheticDataset,
                              open_dataset)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PIL.Image.fromarray(arr).save(buf, format="png")
    return buf.getvalue()


def _images(n: int, res: int = 8, channels: int = 3, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (res, res, channels) if channels > 1 else (res, res)
    return [rng.integers(0, 256, size=shape, dtype=np.uint8) for _ in range(n)]


def _write(tmp_path, files: dict, as_zip: bool, name: str = "data"):
    """files: relpath -> bytes. Returns the dataset path (folder or zip)."""
    if as_zip:
        path = tmp_path / f"{name}.zip"
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
            for rel, data in files.items():
                zf.writestr(rel, data)
        return str(path)
    root = tmp_path / name
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return str(root)


def _dataset_files(images, labels=None) -> dict:
    names = [f"{i // 1000:05d}/img{i:08d}.png" for i in range(len(images))]
    files = {n: _png(img) for n, img in zip(names, images)}
    table = None if labels is None else [[n, lab] for n, lab in zip(names, labels)]
    files["dataset.json"] = json.dumps({"labels": table}).encode()
    return files


@pytest.mark.parametrize("as_zip", [False, True])
def test_reads_images_and_integer_labels(tmp_path, as_zip):
    images = _images(5)
    path = _write(tmp_path, _dataset_files(images, labels=[0, 2, 1, 2, 0]), as_zip)
    ds = ImageFolderDataset(path, use_labels=True)
    assert len(ds) == 5 and ds.image_shape == [3, 8, 8] and ds.resolution == 8 and ds.num_channels == 3
    assert ds.name == "data" and ds.has_labels and ds.label_dim == 3 and ds.label_shape == [3]
    for i, ref in enumerate(images):
        img, label = ds[i]
        assert img.dtype == np.uint8 and np.array_equal(img, ref.transpose(2, 0, 1))
        assert label.dtype == np.float32
    np.testing.assert_array_equal(ds[1][1], [0, 0, 1])
    np.testing.assert_array_equal(ds.get_label(2), [0, 1, 0])


@pytest.mark.parametrize("as_zip", [False, True])
def test_vector_labels_and_labels_off(tmp_path, as_zip):
    path = _write(tmp_path, _dataset_files(_images(3), labels=[[0.5, 1.0], [2.0, -1.0], [0.0, 0.25]]), as_zip)
    ds = open_dataset(path, use_labels=True)
    np.testing.assert_allclose(ds[1][1], [2.0, -1.0])
    off = open_dataset(path, use_labels=False)
    assert not off.has_labels and off.label_dim == 0 and off[0][1].shape == (0,)


def test_greyscale_and_recursive_non_png(tmp_path):
    grey = _images(2, channels=1)
    buf = io.BytesIO()
    PIL.Image.fromarray(grey[1]).save(buf, format="bmp")
    path = _write(tmp_path, {"a/x.png": _png(grey[0]), "b/c/y.bmp": buf.getvalue(), "notes.txt": b"hi"}, False)
    ds = open_dataset(path)
    assert len(ds) == 2 and ds.image_shape == [1, 8, 8]
    assert np.array_equal(ds[1][0][0], grey[1])


@pytest.mark.parametrize("as_zip", [False, True])
def test_xflip_doubles_with_mirrored_second_half(tmp_path, as_zip):
    images = _images(3)
    ds = open_dataset(_write(tmp_path, _dataset_files(images), as_zip), xflip=True)
    assert len(ds) == 6
    for i in range(3):
        assert np.array_equal(ds[i][0], images[i].transpose(2, 0, 1))
        assert np.array_equal(ds[i + 3][0], images[i].transpose(2, 0, 1)[:, :, ::-1])
        assert ds[i + 3][0].flags.c_contiguous
    assert ds.get_details(4).xflip and ds.get_details(4).raw_idx == 1 and not ds.get_details(1).xflip


def test_max_size_subset_is_seeded_and_sorted(tmp_path):
    path = _write(tmp_path, _dataset_files(_images(12)), True)
    a = open_dataset(path, max_size=5, random_seed=1)
    b = open_dataset(path, max_size=5, random_seed=1)
    raw_a = [a.get_details(i).raw_idx for i in range(len(a))]
    assert len(a) == 5 and raw_a == sorted(raw_a) and len(set(raw_a)) == 5
    assert raw_a == [b.get_details(i).raw_idx for i in range(len(b))]
    subsets = {tuple(open_dataset(path, max_size=5, random_seed=s).get_details(i).raw_idx for i in range(5))
               for s in range(4)}
    assert len(subsets) > 1  # the seed matters
    assert len(open_dataset(path, max_size=100)) == 12


def test_kwargs_reopen_same_dataset(tmp_path):
    path = _write(tmp_path, _dataset_files(_images(6), labels=[0, 1, 0, 1, 1, 0]), True)
    ds = open_dataset(path, use_labels=True, xflip=True, max_size=4, random_seed=3)
    again = open_dataset(**json.loads(json.dumps(ds.kwargs)))
    assert len(again) == len(ds) == 8
    for i in range(len(ds)):
        assert np.array_equal(ds[i][0], again[i][0]) and np.array_equal(ds[i][1], again[i][1])


def test_zip_handle_is_reused_and_not_pickled(tmp_path):
    ds = open_dataset(_write(tmp_path, _dataset_files(_images(3)), True))
    ds[0]
    handle = ds._zipfile
    ds[1], ds[2]
    assert handle is not None and ds._zipfile is handle  # opened once per process, not per item
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._zipfile is None
    assert np.array_equal(clone[2][0], ds[2][0])


def test_corrupt_and_truncated_members_are_named(tmp_path):
    good = _png(_images(1)[0])
    for bad_name, bad in [("00000/img00000001.png", b"not an image"), ("00000/img00000002.png", good[:60])]:
        files = {"00000/img00000000.png": good, bad_name: bad}
        path = _write(tmp_path, files, True, name=bad_name[-6:-4])
        ds = open_dataset(path)
        with pytest.raises(DatasetError, match=bad_name):
            ds[1]


def _shape_error(tmp_path, arrays, match, as_zip=True):
    files = {f"img{i}.png": _png(a) for i, a in enumerate(arrays)}
    path = _write(tmp_path, files, as_zip)
    with pytest.raises(DatasetError, match=match):
        ds = open_dataset(path)
        for i in range(len(ds)):
            ds[i]


def test_mixed_sizes_rejected(tmp_path):
    _shape_error(tmp_path, [_images(1, 8)[0], _images(1, 16)[0]], r"img1\.png.*same size")


def test_non_square_rejected(tmp_path):
    _shape_error(tmp_path, [np.zeros((8, 16, 3), np.uint8)], r"img0\.png.*square")


def test_non_power_of_two_rejected(tmp_path):
    _shape_error(tmp_path, [np.zeros((12, 12, 3), np.uint8)], r"img0\.png.*power of two")


def test_rgba_rejected(tmp_path):
    _shape_error(tmp_path, [np.zeros((8, 8, 4), np.uint8)], r"img0\.png.*alpha")


def test_mixed_channels_rejected(tmp_path):
    _shape_error(tmp_path, [_images(1)[0], _images(1, channels=1)[0]], r"img1\.png", as_zip=False)


def test_missing_and_empty_datasets(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        open_dataset(str(tmp_path / "nope.zip"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        open_dataset(str(tmp_path / "empty"))
    with pytest.raises(DatasetError, match="no images"):
        open_dataset(_write(tmp_path, {"dataset.json": b'{"labels": null}'}, True))
    (tmp_path / "bad.zip").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="bad.zip"):
        open_dataset(str(tmp_path / "bad.zip"))


def test_resolution_mismatch_and_missing_label(tmp_path):
    path = _write(tmp_path, _dataset_files(_images(2)), True)
    assert open_dataset(path, resolution=8).resolution == 8
    with pytest.raises(DatasetError, match="resolution=16"):
        open_dataset(path, resolution=16)
    files = _dataset_files(_images(2), labels=[1, 0])
    files["dataset.json"] = json.dumps({"labels": [["00000/img00000000.png", 1]]}).encode()
    with pytest.raises(DatasetError, match="img00000001"):
        open_dataset(_write(tmp_path, files, False, name="lab"), use_labels=True)


def test_huge_and_non_finite_labels_are_refused_by_name(tmp_path):
    # One-hot vectors of max + 1 entries: a stray 10**6 must not try to allocate terabytes.
    files = _dataset_files(_images(2), labels=[0, 10 ** 6])
    with pytest.raises(DatasetError, match=r"dataset.json.*1000000.*at most"):
        open_dataset(_write(tmp_path, files, False, name="huge"))
    files = _dataset_files(_images(2), labels=[[0.5], [float("nan")]])
    with pytest.raises(DatasetError, match=r"img00000001.*not finite"):
        open_dataset(_write(tmp_path, files, False, name="nan"))
    # JSON integers are unbounded: one beyond int64 is named like any other, not an OverflowError.
    for name, label, match in [("vast", 10 ** 30, "at most"), ("negative", -10 ** 30, ">= 0")]:
        files = _dataset_files(_images(2), labels=[0, label])
        with pytest.raises(DatasetError, match=rf"dataset.json.*{label}.*img00000001.*{match}"):
            open_dataset(_write(tmp_path, files, False, name=name))
    # Large but allowed class counts are one-hot without an N x N identity matrix.
    files = _dataset_files(_images(2), labels=[3, 20000])
    ds = open_dataset(_write(tmp_path, files, False, name="many"), use_labels=True)
    assert ds.label_dim == 20001 and ds.get_label(1)[20000] == 1 and ds.get_label(1).sum() == 1


@pytest.mark.parametrize("as_zip", [False, True])
def test_check_images_finds_a_bad_image_anywhere_from_its_header(tmp_path, as_zip):
    """Opening reads the first image only; check_images reads every header (not the pixels)."""
    good = [_png(a) for a in _images(3)]
    cases = {"size": _png(_images(1, res=16)[0]), "grey": _png(_images(1, channels=1)[0]),
             "alpha": _png(np.zeros((8, 8, 4), np.uint8)), "header": good[0][:40]}
    for case, bad in cases.items():
        path = _write(tmp_path, {"a.png": good[0], "b.png": good[1], "c.png": bad, "d.png": good[2]}, as_zip, case)
        ds = open_dataset(path)
        with pytest.raises(DatasetError, match=r"c\.png"):
            ds.check_images()
    truncated = good[2][:-30]  # header intact, pixels cut short: found only when decoded
    ds = open_dataset(_write(tmp_path, {"a.png": good[0], "b.png": truncated}, as_zip, "pixels"))
    ds.check_images()
    with pytest.raises(DatasetError, match=r"b\.png.*truncated"):
        ds[1]


def test_check_images_reads_only_the_subset(tmp_path):
    files = {f"img{i}.png": _png(a) for i, a in enumerate(_images(6))}
    files["img9.png"] = _png(_images(1, res=16)[0])
    path = _write(tmp_path, files, True)
    outcomes = set()
    for seed in range(8):
        ds = open_dataset(path, max_size=3, random_seed=seed)
        has_bad = 6 in {ds.get_details(i).raw_idx for i in range(len(ds))}
        try:
            ds.check_images()
            outcomes.add(("passed", has_bad))
        except DatasetError as exc:
            assert "img9" in str(exc)
            outcomes.add(("failed", has_bad))
    assert outcomes == {("passed", False), ("failed", True)}


def test_a_checked_zip_is_not_read_again_until_it_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("SPATIALGAN_CACHE", str(tmp_path / "cache"))
    path = _write(tmp_path, _dataset_files(_images(3)), True)
    reads = []
    original = ImageFolderDataset._header_shape
    monkeypatch.setattr(ImageFolderDataset, "_header_shape",
                        lambda self, *a: reads.append(a[0]) or original(self, *a))
    open_dataset(path).check_images()
    assert len(reads) == 3 and len(list((tmp_path / "cache" / "checked-datasets").iterdir())) == 1
    open_dataset(path).check_images()
    assert len(reads) == 3  # remembered: a resumed run does not read the headers again
    open_dataset(path, max_size=2).check_images()
    assert len(reads) == 3  # a subset is covered by the whole zip's check
    with zipfile.ZipFile(path, "a") as zf:  # changed: size and time differ
        zf.writestr("00000/img00000003.png", _png(_images(1, res=16)[0]))
    with pytest.raises(DatasetError, match="img00000003"):
        open_dataset(path).check_images()
    assert len(reads) == 7
    folder = _write(tmp_path, _dataset_files(_images(2)), False, name="folder")
    for _ in range(2):  # a folder's files can change one by one: read every time
        open_dataset(folder).check_images()
    assert len(reads) == 11


def test_symlinked_folders_duplicate_zip_members_and_non_images(tmp_path):
    images = _images(3)
    (tmp_path / "elsewhere").mkdir()
    PIL.Image.fromarray(images[0]).save(tmp_path / "elsewhere" / "a.png")
    root = tmp_path / "data"
    root.mkdir()
    PIL.Image.fromarray(images[1]).save(root / "b.png")
    (root / "manual.pdf").write_bytes(b"%PDF-1.4 not an image")
    (root / "clip.mpg").write_bytes(b"\x00\x00\x01\xba")
    (root / "linked").symlink_to(tmp_path / "elsewhere")
    ds = open_dataset(str(root))
    assert ds.image_fnames == ["b.png", "linked/a.png"]
    assert np.array_equal(ds[1][0], images[0].transpose(2, 0, 1))
    path = tmp_path / "dup.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.png", _png(images[1]))
        zf.writestr("y.png", _png(images[2]))
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(path, "a") as zf:
        zf.writestr("x.png", _png(images[0]))
    with pytest.raises(DatasetError, match=r"dup.zip.*more than once.*'x.png'"):
        open_dataset(str(path))


def test_items_are_writable_and_kwargs_hold_an_absolute_path(tmp_path, monkeypatch):
    """Greyscale items came out read-only (torch warns when it wraps them); a relative --data must
    still be found when calc_metrics.py reopens the dataset from another folder."""
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, {"a.png": _png(_images(1, channels=1)[0])}, True, name="rel")
    ds = open_dataset("rel.zip")
    assert ds[0][0].flags.writeable and ds.kwargs["data"] == str(tmp_path / "rel.zip")
    monkeypatch.chdir(tmp_path.parent)
    assert np.array_equal(open_dataset(**ds.kwargs)[0][0], ds[0][0])


def test_an_image_labelled_twice_differently_is_refused(tmp_path):
    files = _dataset_files(_images(2), labels=[0, 1])
    table = json.loads(files["dataset.json"])["labels"]
    files["dataset.json"] = json.dumps({"labels": table + [[table[0][0], 1]]}).encode()
    with pytest.raises(DatasetError, match=r"dataset.json: '00000/img00000000.png' is listed twice"):
        open_dataset(_write(tmp_path, files, True), use_labels=True)


def test_an_lmdb_folder_gets_a_hint(tmp_path):
    (tmp_path / "cat_lmdb").mkdir()
    (tmp_path / "cat_lmdb" / "data.mdb").write_bytes(b"")
    with pytest.raises(DatasetError, match="no images.*LMDB.*dataset_tool.py"):
        open_dataset(str(tmp_path / "cat_lmdb"))


# ---------------------------------------------------------------------------------------------------
# Synthetic datasets.


def test_synthetic_dataset_is_deterministic_and_reopens():
    ds = open_dataset("synthetic:shapes:16", max_size=10, xflip=True)
    assert len(ds) == 20 and ds.image_shape == [3, 16, 16] and not ds.has_labels
    img, label = ds[3]
    assert img.dtype == np.uint8 and label.shape == (0,)
    assert np.array_equal(img, open_dataset("synthetic:shapes", resolution=16)[3][0])
    assert np.array_equal(ds[13][0], img[:, :, ::-1])
    again = open_dataset(**json.loads(json.dumps(ds.kwargs)))
    assert len(again) == 20 and np.array_equal(again[5][0], ds[5][0])
    other_seed = SyntheticDataset("shapes", 16, seed=1)
    assert not np.array_equal(other_seed[3][0], img)
    assert open_dataset(**other_seed.kwargs)[3][0].tobytes() == other_seed[3][0].tobytes()


@pytest.mark.parametrize("data,res", [("synthetic:clouds:32", None), ("synthetic:rooms:33", None),
                                      ("synthetic:rooms:abc", None), ("synthetic:rooms", None),
                                      ("synthetic:rooms:32", 64)])
def test_synthetic_bad_specs(data, res):
    with pytest.raises(DatasetError):
        open_dataset(data, resolution=res)


# ---------------------------------------------------------------------------------------------------
# InfiniteSampler.


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_sampler_is_deterministic_and_seeded():
    a = _take(InfiniteSampler(10, seed=1), 50)
    assert a == _take(InfiniteSampler(10, seed=1), 50)
    assert a != _take(InfiniteSampler(10, seed=2), 50)
    assert all(0 <= i < 10 for i in a)


def test_sampler_each_pass_is_a_permutation_and_order_drifts():
    stream = _take(InfiniteSampler(20, seed=0), 80)
    passes = [stream[k:k + 20] for k in range(0, 80, 20)]
    assert all(sorted(p) == list(range(20)) for p in passes)
    assert len({tuple(p) for p in passes}) > 1  # window swaps reshuffle between passes
    assert _take(InfiniteSampler(5, shuffle=False), 7) == [0, 1, 2, 3, 4, 0, 1]


@pytest.mark.parametrize("n", [10, 11])
def test_two_ranks_are_disjoint_and_cover(n):
    full = _take(InfiniteSampler(n, seed=4), 4 * n)
    r0 = _take(InfiniteSampler(n, rank=0, num_replicas=2, seed=4), 2 * n)
    r1 = _take(InfiniteSampler(n, rank=1, num_replicas=2, seed=4), 2 * n)
    assert r0 == full[0::2] and r1 == full[1::2]  # ranks interleave the global stream
    first_pass_0, first_pass_1 = r0[: (n + 1) // 2], r1[: n // 2]
    assert not set(first_pass_0) & set(first_pass_1)
    assert sorted(first_pass_0 + first_pass_1) == list(range(n))


@pytest.mark.parametrize("rank,start", [(0, 0), (0, 7), (1, 13), (2, 5000)])
def test_sampler_resume_is_exact(rank, start):
    kw = dict(dataset_len=9, rank=rank, num_replicas=3, seed=5)
    uninterrupted = _take(InfiniteSampler(**kw), start + 30)
    assert _take(InfiniteSampler(**kw, start=start), 30) == uninterrupted[start:]


@pytest.mark.parametrize("bad", [dict(dataset_len=0), dict(dataset_len=4, rank=2, num_replicas=2),
                                 dict(dataset_len=4, window_size=1.5), dict(dataset_len=4, start=-1)])
def test_sampler_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        InfiniteSampler(**bad)
