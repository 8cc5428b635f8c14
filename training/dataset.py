"""Training datasets: image folders / zips in the StyleGAN2-ADA format, built-in synthetic data, and the
infinite distributed sampler that feeds the training loop.

Format (unchanged from StyleGAN2-ADA so existing datasets load as they are): a folder or an uncompressed
zip of images (any still-image format PIL decodes, found recursively, also in symlinked folders, and
sorted by relative path), plus an optional root `dataset.json` = {"labels": [[relpath, label], ...]} or
{"labels": null}. Integer labels become one-hot vectors (label_dim = max + 1); list labels become
float32 vectors. Images must be square with a power-of-two side, 1 or 3 channels, all of the same shape.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from tqdm import tqdm

import dnnlib
from training import image_files, synthetic

DEFAULT_SYNTHETIC_SIZE = 100_000


MAX_CLASSES = 100_000  # integer labels become one-hot vectors of max + 1 entries
CHECK_PROGRESS_MIN = 20_000  # images; smaller datasets are checked in about a second, silently


class DatasetError(ValueError):
    """Bad dataset or dataset argument; the message names the file, zip member or argument."""


# ---------------------------------------------------------------------------------------------------
# Base class: x-flip doubling, subsets and labels on top of a raw image source.


class Dataset(torch.utils.data.Dataset):
    """Shared machinery. Subclasses set `_raw_shape` [N, C, H, W] and implement `_load_raw_image`.

    Items: (uint8 ndarray [C, H, W], float32 ndarray [label_dim]).
    """

    def __init__(self, name: str, raw_shape: list[int], raw_labels: np.ndarray | None, use_labels: bool,
                 xflip: bool, max_size: int | None, random_seed: int):
        self.name = name
        self._raw_shape = list(raw_shape)
        self._use_labels = bool(use_labels)
        self._xflip_enabled = bool(xflip)
        self._max_size = max_size
        self._random_seed = int(random_seed)
        num_raw = raw_shape[0]
        if raw_labels is None or not use_labels:
            raw_labels = np.zeros([num_raw, 0], np.float32)
        self._raw_labels = raw_labels.astype(np.float32)
        self._raw_idx = self._select_subset(num_raw, max_size, random_seed)
        self._xflip = np.zeros(len(self._raw_idx), np.uint8)
        if xflip:  # second half: the same images mirrored
            self._raw_idx = np.tile(self._raw_idx, 2)
            self._xflip = np.concatenate([self._xflip, np.ones_like(self._xflip)])

    @staticmethod
    def _select_subset(num_raw: int, max_size: int | None, seed: int) -> np.ndarray:
        """All indices, or a seeded random subset of `max_size` kept in sorted order."""
        idx = np.arange(num_raw, dtype=np.int64)
        if max_size is not None:
            if isinstance(max_size, bool) or not isinstance(max_size, (int, np.integer)) or max_size < 1:
                raise DatasetError(f"max_size must be a positive integer or None, got {max_size!r}")
            if max_size < num_raw:
                idx = np.sort(np.random.RandomState(seed % (1 << 32)).permutation(num_raw)[:max_size])
        return idx

    def _load_raw_image(self, raw_idx: int) -> np.ndarray:
        raise NotImplementedError

    def check_images(self, progress: bool = False) -> None:
        """Check every image the dataset will serve before training starts (DatasetError naming the
        first bad one); datasets whose images cannot differ have nothing to check."""

    def __len__(self) -> int:
        return len(self._raw_idx)

    def __getitem__(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        """-> (uint8 [C, H, W], float32 [label_dim])."""
        image = self._load_raw_image(int(self._raw_idx[idx]))
        if self._xflip[idx]:
            image = image[:, :, ::-1]
        return np.ascontiguousarray(image), self.get_label(idx)

    def get_label(self, idx: int) -> np.ndarray:
        return self._raw_labels[self._raw_idx[idx]].copy()

    def get_details(self, idx: int) -> dnnlib.EasyDict:
        """raw_idx (index into the unsubsetted source), xflip (bool) and raw_label of item `idx`."""
        raw = int(self._raw_idx[idx])
        return dnnlib.EasyDict(raw_idx=raw, xflip=bool(self._xflip[idx]), raw_label=self._raw_labels[raw].copy())

    @property
    def image_shape(self) -> list[int]:
        return list(self._raw_shape[1:])

    @property
    def num_channels(self) -> int:
        return self._raw_shape[1]

    @property
    def resolution(self) -> int:
        return self._raw_shape[2]

    @property
    def label_shape(self) -> list[int]:
        return list(self._raw_labels.shape[1:])

    @property
    def label_dim(self) -> int:
        return self._raw_labels.shape[1]

    @property
    def has_labels(self) -> bool:
        return self.label_dim > 0

    @property
    def kwargs(self) -> dict:
        """JSON-able arguments such that `open_dataset(**kwargs)` reopens this dataset."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, len={len(self)}, shape={self.image_shape}, "
                f"label_dim={self.label_dim}, xflip={self._xflip_enabled})")


# ---------------------------------------------------------------------------------------------------
# Image folders and zips.

_CHANNELS_BY_MODE = {"L": 1, "1": 1, "RGB": 3, "P": 3, "CMYK": 3, "YCbCr": 3, "LAB": 3, "HSV": 3}


def _channels_of(img: PIL.Image.Image, where: str) -> int:
    """1 or 3 from the PIL mode (palette images count as RGB); DatasetError for alpha or odd modes."""
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        raise DatasetError(f"{where}: image has an alpha channel (mode {img.mode}); only 1- or 3-channel "
                           "images are supported (dataset_tool.py converts opaque ones; composite transparent ones first)")
    if img.mode not in _CHANNELS_BY_MODE:
        hint = " (dataset_tool.py scales 16-bit greyscale to 8 bits)" if img.mode.startswith("I;16") else ""
        raise DatasetError(f"{where}: unsupported image mode {img.mode!r}; expected 8-bit greyscale or RGB{hint}")
    return _CHANNELS_BY_MODE[img.mode]


def _check_image_shape(shape: list[int], where: str) -> None:
    """Square, power-of-two side (>= 4), 1 or 3 channels."""
    c, h, w = shape
    if h != w:
        raise DatasetError(f"{where}: image is {w}x{h}; images must be square")
    if w < 4 or w & (w - 1):
        raise DatasetError(f"{where}: image side {w} is not a power of two >= 4")
    if c not in (1, 3):
        raise DatasetError(f"{where}: image has {c} channels; expected 1 or 3")


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Encoded image bytes -> uint8 [C, H, W] (upright by its EXIF orientation); DatasetError naming
    `where` for corrupt/alpha images."""
    try:
        img = image_files.open_image(data)
        channels = _channels_of(img, where)
        target = "L" if channels == 1 else "RGB"
        arr = np.array(img if img.mode == target else img.convert(target))  # a copy: writable
    except DatasetError:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError ... for broken files
        raise DatasetError(f"{where}: cannot decode image ({image_files.decode_error(exc)})") from None
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return arr.transpose(2, 0, 1)


def _parse_labels(data: bytes | None, fnames: list[str], where: str) -> np.ndarray | None:
    """dataset.json contents -> float32 [N, label_dim] in `fnames` order, or None for no labels."""
    if data is None:
        return None
    try:
        table = json.loads(data.decode("utf-8"))["labels"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{where}: invalid dataset.json ({exc}); expected {{\"labels\": [[path, label], ...]}}")
    if table is None:
        return None
    try:
        by_name = image_files.label_table(table)
    except image_files.LabelConflict as exc:
        raise DatasetError(f"{where}: {exc}") from None
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: 'labels' must be a list of [relpath, label] pairs") from None
    missing = [f for f in fnames if f not in by_name]
    if missing:
        raise DatasetError(f"{where}: no label for image {missing[0]!r} ({len(missing)} images unlabelled)")
    labels = [by_name[f] for f in fnames]
    if all(isinstance(x, int) and not isinstance(x, bool) for x in labels):
        # Checked on the Python ints: JSON's integers are unbounded, and int64 would overflow first.
        bad = next(((f, x) for f, x in zip(fnames, labels) if not 0 <= x < MAX_CLASSES), None)
        if bad is not None and bad[1] < 0:
            raise DatasetError(f"{where}: integer label {bad[1]} of {bad[0]!r} is negative; class indices are >= 0")
        if bad is not None:
            raise DatasetError(f"{where}: integer label {bad[1]} of {bad[0]!r} means {bad[1] + 1} classes (one-hot "
                               f"vectors of that length); at most {MAX_CLASSES} are supported")
        ints = np.asarray(labels, np.int64)
        onehot = np.zeros([len(ints), int(ints.max()) + 1], np.float32)
        onehot[np.arange(len(ints)), ints] = 1
        return onehot
    try:
        vectors = np.asarray(labels, np.float32)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: labels must all be integers or equal-length number lists") from None
    if vectors.ndim != 2:
        raise DatasetError(f"{where}: labels must all be integers or equal-length number lists")
    if not np.isfinite(vectors).all():
        bad = fnames[int(np.argwhere(~np.isfinite(vectors))[0, 0])]
        raise DatasetError(f"{where}: the label of {bad!r} is not finite (NaN or inf)")
    return vectors


class ImageFolderDataset(Dataset):
    """Images in a directory (recursive) or an uncompressed .zip, in the StyleGAN2-ADA layout."""

    def __init__(self, path: str, resolution: int | None = None, max_size: int | None = None,
                 use_labels: bool = False, xflip: bool = False, random_seed: int = 0):
        self._path = os.fspath(path)
        # kwargs reopen it by absolute path: calc_metrics.py and --resume may start in another folder.
        self._abspath = os.path.abspath(self._path)
        self._zipfile: zipfile.ZipFile | None = None
        self._zip_pid: int | None = None
        self._type = self._detect_type(self._path)
        exts = image_files.image_extensions()
        self._image_fnames = sorted(f for f in self._all_names() if image_files.is_image_name(f, exts))
        if not self._image_fnames:
            hint = ""
            if self._type == "dir" and os.path.isfile(os.path.join(self._path, "data.mdb")):
                hint = " (it looks like an LMDB database: convert it with dataset_tool.py first)"
            raise DatasetError(f"no images found in dataset {self._path}{hint}")
        first = self._load_raw_image(0, expected=None)
        raw_shape = [len(self._image_fnames), *first.shape]
        if resolution is not None and resolution != raw_shape[2]:
            raise DatasetError(f"resolution={resolution} does not match dataset {self._path} "
                               f"({raw_shape[3]}x{raw_shape[2]} images)")
        labels = _parse_labels(self._read_optional("dataset.json"), self._image_fnames,
                               self._where("dataset.json"))
        name = os.path.splitext(os.path.basename(os.path.normpath(self._path)))[0]
        super().__init__(name, raw_shape, labels, use_labels, xflip, max_size, random_seed)

    @staticmethod
    def _detect_type(path: str) -> str:
        if os.path.isdir(path):
            return "dir"
        if not os.path.exists(path):
            raise DatasetError(f"dataset not found: {path}")
        if os.path.splitext(path)[1].lower() == ".zip":
            return "zip"
        raise DatasetError(f"dataset must be a directory or a .zip file, got {path}")

    def _where(self, fname: str) -> str:
        """Human-readable location of `fname` for error messages."""
        return f"{self._path}:{fname}" if self._type == "zip" else os.path.join(self._path, fname)

    def _get_zipfile(self) -> zipfile.ZipFile:
        # One handle per process: a handle inherited through fork shares its file offset with the
        # parent, so DataLoader workers must open their own, once, not once per item.
        if self._zipfile is None or self._zip_pid != os.getpid():
            try:
                self._zipfile = zipfile.ZipFile(self._path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise DatasetError(f"{self._path}: cannot open zip ({exc})") from None
            self._zip_pid = os.getpid()
        return self._zipfile

    def _all_names(self) -> list[str]:
        if self._type == "dir":
            return list(image_files.walk_files(self._path))
        names = [n for n in self._get_zipfile().namelist() if not n.endswith("/")]
        dups = image_files.duplicate_names(names)
        if dups:
            raise DatasetError(f"{self._path}: the zip holds {len(dups)} names more than once (e.g. {dups[0]!r}; "
                               "an archive appended to?); only the last copy of each could be read: rebuild it")
        return names

    def _read_bytes(self, fname: str) -> bytes:
        try:
            if self._type == "zip":
                return self._get_zipfile().read(fname)
            with open(os.path.join(self._path, fname), "rb") as f:
                return f.read()
        except (OSError, KeyError, zipfile.BadZipFile) as exc:
            raise DatasetError(f"{self._where(fname)}: cannot read ({exc})") from None

    def _read_optional(self, fname: str) -> bytes | None:
        if self._type == "zip":
            return self._read_bytes(fname) if fname in self._get_zipfile().namelist() else None
        return self._read_bytes(fname) if os.path.isfile(os.path.join(self._path, fname)) else None

    def _load_raw_image(self, raw_idx: int, expected: list[int] | None | str = "dataset") -> np.ndarray:
        """uint8 [C, H, W] of image `raw_idx`, validated against the dataset's shape."""
        fname = self._image_fnames[raw_idx]
        where = self._where(fname)
        image = decode_image(self._read_bytes(fname), where)
        _check_image_shape(list(image.shape), where)
        expected = self.image_shape if expected == "dataset" else expected
        if expected is not None:
            self._check_like_the_first(list(image.shape), expected, where)
        return image

    def _check_like_the_first(self, shape: list[int], expected: list[int], where: str) -> None:
        if shape != expected:
            raise DatasetError(f"{where}: image shape {shape} differs from that of the first image, "
                               f"{self._where(self._image_fnames[0])} ({expected}); all images must have the "
                               "same size and channels (dataset_tool.py --resolution converts them)")

    def check_images(self, progress: bool = False) -> None:
        """Read every image's header (size, channels, alpha; not the pixels) and check it against the
        first image's: a mixed-size, non-square or RGBA image stops the run before it starts instead of
        when a DataLoader worker reaches it, hours in. Only the images of the subset are read (≈ 60 µs
        each; `progress`: a bar for large datasets). A whole zip's result is remembered under the cache
        folder (keyed by its path, size and modification time), so a resumed run does not read the
        headers again."""
        marker = self._checked_marker()
        if marker is not None and marker.is_file():
            return
        raw = np.unique(self._raw_idx)
        expected = self.image_shape
        bar = tqdm(total=len(raw), desc=f"checking {self._path}", unit="img", file=sys.stderr, dynamic_ncols=True,
                   disable=not progress or len(raw) < CHECK_PROGRESS_MIN)
        with bar:
            for raw_idx in raw:
                fname = self._image_fnames[raw_idx]
                where = self._where(fname)
                shape = self._header_shape(fname, where)
                _check_image_shape(shape, where)
                self._check_like_the_first(shape, expected, where)
                bar.update(1)
        if marker is not None and len(raw) == len(self._image_fnames):
            try:
                with dnnlib.util.atomic_write(marker, "w") as f:
                    json.dump(dict(path=self._path, shape=expected, images=len(raw)), f)
            except OSError:
                pass  # only a cache: the next run checks again

    def _header_shape(self, fname: str, where: str) -> list[int]:
        """[C, H, W] from the image's header alone."""
        try:
            if self._type == "zip":
                f = self._get_zipfile().open(fname)
            else:
                f = open(os.path.join(self._path, fname), "rb")
            with f, PIL.Image.open(f) as img:
                return [_channels_of(img, where), img.height, img.width]
        except DatasetError:
            raise
        except Exception as exc:
            raise DatasetError(f"{where}: cannot read image ({image_files.decode_error(exc)})") from None

    def _checked_marker(self) -> Path | None:
        """The cache file that says this zip (path, size, modification time) passed `check_images`."""
        if self._type != "zip":
            return None  # a folder's files can change one by one: checked every time
        st = os.stat(self._path)
        key = f"{self._abspath}|{st.st_size}|{st.st_mtime_ns}"
        try:
            folder = dnnlib.util.cache_dir("checked-datasets")
        except OSError:
            return None
        return folder / (hashlib.sha1(key.encode()).hexdigest() + ".json")

    def close(self) -> None:
        if self._zipfile is not None:
            self._zipfile.close()
        self._zipfile = None
        self._zip_pid = None

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _zipfile=None, _zip_pid=None)  # reopened lazily after unpickling

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    @property
    def image_fnames(self) -> list[str]:
        """Relative paths of all raw images (before subsetting / mirroring), sorted."""
        return list(self._image_fnames)

    @property
    def kwargs(self) -> dict:
        return dict(data=self._abspath, resolution=self.resolution, use_labels=self._use_labels,
                    xflip=self._xflip_enabled, max_size=self._max_size, random_seed=self._random_seed)


# ---------------------------------------------------------------------------------------------------
# Synthetic data rendered on the fly.


class SyntheticDataset(Dataset):
    """Built-in data from `training.synthetic`, generated from (seed, index); never stored. No labels."""

    def __init__(self, kind: str, resolution: int, size: int = DEFAULT_SYNTHETIC_SIZE, seed: int = 0,
                 use_labels: bool = False, xflip: bool = False, max_size: int | None = None):
        if kind not in synthetic.KINDS:
            raise DatasetError(f"unknown synthetic dataset kind {kind!r}; expected one of {list(synthetic.KINDS)}")
        if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) \
                or resolution < 4 or resolution & (resolution - 1):
            raise DatasetError(f"synthetic resolution must be a power of two >= 4, got {resolution!r}")
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise DatasetError(f"synthetic size must be a positive integer, got {size!r}")
        self._kind, self._seed = kind, int(seed)
        # max_size keeps the first images rather than a random subset: they are all alike anyway, and
        # this keeps `size` and `max_size` interchangeable for `kwargs`.
        num = int(size) if max_size is None else min(int(size), int(max_size))
        super().__init__(f"synthetic-{kind}{resolution}", [num, 3, int(resolution), int(resolution)], None,
                         use_labels, xflip, None, int(seed))

    def _load_raw_image(self, raw_idx: int) -> np.ndarray:
        return synthetic.render(self._kind, self.resolution, self._seed, raw_idx).image.transpose(2, 0, 1)

    def render(self, idx: int) -> synthetic.SyntheticSample:
        """Full sample (image, masks, centres, classes) of raw image `idx` (no mirroring)."""
        return synthetic.render(self._kind, self.resolution, self._seed, int(self._raw_idx[idx]))

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def kwargs(self) -> dict:
        num = self._raw_shape[0]
        return dict(data=f"synthetic:{self._kind}:{self.resolution}", resolution=self.resolution,
                    use_labels=self._use_labels, xflip=self._xflip_enabled,
                    max_size=None if num == DEFAULT_SYNTHETIC_SIZE else num, random_seed=self._seed)


def open_dataset(data: str, resolution: int | None = None, use_labels: bool = False, xflip: bool = False,
                 max_size: int | None = None, random_seed: int = 0) -> Dataset:
    """Open a directory, a .zip, or `synthetic:<kind>[:<resolution>]`.

    For synthetic data `random_seed` is the content seed and `max_size` keeps the first images; for
    folders/zips `random_seed` picks the `max_size` subset.
    """
    data = os.fspath(data)
    if data.startswith("synthetic:"):
        return _open_synthetic(data, resolution, use_labels, xflip, max_size, random_seed)
    return ImageFolderDataset(data, resolution=resolution, max_size=max_size, use_labels=use_labels,
                              xflip=xflip, random_seed=random_seed)


def _open_synthetic(data: str, resolution: int | None, use_labels: bool, xflip: bool, max_size: int | None,
                    random_seed: int) -> SyntheticDataset:
    parts = data.split(":")
    if len(parts) not in (2, 3):
        raise DatasetError(f"invalid synthetic dataset {data!r}; expected synthetic:<kind>[:<resolution>]")
    res = resolution
    if len(parts) == 3:
        try:
            res = int(parts[2])
        except ValueError:
            raise DatasetError(f"invalid resolution {parts[2]!r} in {data!r}") from None
        if resolution is not None and resolution != res:
            raise DatasetError(f"resolution={resolution} does not match {data!r}")
    if res is None:
        raise DatasetError(f"{data!r} needs a resolution: synthetic:<kind>:<resolution> or resolution=...")
    return SyntheticDataset(parts[1], res, seed=random_seed, use_labels=use_labels, xflip=xflip,
                            max_size=max_size)


# ---------------------------------------------------------------------------------------------------
# Sampler.


class InfiniteSampler(torch.utils.data.Sampler):
    """Endless, resumable index stream shared out between ranks.

    One seeded permutation, then the stream walks it cyclically; after visiting position i it swaps that
    element with a random earlier position inside a window (`window_size` x len), so the order drifts
    from pass to pass. Swaps only touch already-visited positions of the current pass, so every pass of
    `dataset_len` global steps yields each index exactly once. Rank r takes global steps r, r + R, ...
    `start` = items this rank already consumed; iteration then continues exactly where it left off
    (replaying the swaps costs O(start * num_replicas) cheap steps, no per-step allocations).
    `shuffle=False` streams 0, 1, 2, ... cyclically with no swaps.
    """

    _CHUNK = 4096  # random offsets are drawn in fixed-size chunks, so replay and live runs stay aligned

    def __init__(self, dataset_len: int, rank: int = 0, num_replicas: int = 1, shuffle: bool = True,
                 seed: int = 0, window_size: float = 0.5, start: int = 0):
        super().__init__()
        if isinstance(dataset_len, bool) or not isinstance(dataset_len, (int, np.integer)) or dataset_len < 1:
            raise ValueError(f"dataset_len must be a positive integer, got {dataset_len!r}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} must be in [0, num_replicas={num_replicas})")
        if not 0.0 <= window_size <= 1.0:
            raise ValueError(f"window_size must be in [0, 1], got {window_size!r}")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start!r}")
        self.dataset_len, self.rank, self.num_replicas = int(dataset_len), int(rank), int(num_replicas)
        self.shuffle, self.seed, self.window_size, self.start = bool(shuffle), int(seed), window_size, int(start)

    def __iter__(self) -> Iterator[int]:
        n, reps, rank = self.dataset_len, self.num_replicas, self.rank
        rng = np.random.default_rng(self.seed)
        order = (rng.permutation(n) if self.shuffle else np.arange(n)).tolist()
        window = int(round(n * self.window_size)) if self.shuffle else 0
        first = self.start * reps + rank  # global step of this rank's next item
        step = 0
        while True:
            offsets = rng.integers(0, max(window, 1), size=self._CHUNK).tolist() if window >= 2 else None
            for k in range(self._CHUNK):
                i = step % n
                if step >= first and step % reps == rank:
                    yield order[i]
                if offsets is not None:
                    # Swap with an earlier position of this pass (never wrapping), keeping each pass a permutation.
                    j = i - offsets[k] % (i + 1) if i < window else i - offsets[k]
                    order[i], order[j] = order[j], order[i]
                step += 1
