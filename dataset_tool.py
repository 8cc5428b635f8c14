"""Convert image folders, zips, LSUN LMDB databases, CIFAR-10, MNIST or built-in synthetic data into a
training dataset.

The output (an uncompressed .zip or a folder) uses the StyleGAN2-ADA layout: PNGs named
`NNNNN/imgNNNNNNNN.png` and a root `dataset.json` with {"labels": [[relpath, label], ...]} or
{"labels": null}. Labels in a source `dataset.json` are carried over after checking that training can use
them: all class indices (integers 0 .. MAX_CLASSES - 1, one-hot in training) or all number lists of one
length. CIFAR-10 (the python tarball) and MNIST (the IDX .gz files) bring their class indices 0-9.
Images are written as 8-bit greyscale or RGB PNGs, the modes `training.dataset` reads: 16-bit greyscale
sources (PIL modes I;16*) are scaled to 8 bits (v / 257, rounded), palette images become RGB, an alpha
channel (or a transparent palette entry / colour key) is dropped only when every pixel is fully opaque,
and images with any transparent pixel (alpha < 255) or 32-bit integer / float images (modes I, F; no
known value range) are refused with the file's name (--skip-bad skips and counts them instead).
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import pickle
import shutil
import struct
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import click
import numpy as np
import PIL.Image
from tqdm import tqdm

from dnnlib.cli import interrupt_on_sigterm
from dnnlib.util import umask
from training import image_files, synthetic  # PIL / numpy / scipy only: the tool starts without torch

DEFAULT_SYNTHETIC_IMAGES = 10_000
DEFAULT_SYNTHETIC_RESOLUTION = 64
FLOAT32_MAX = float(np.finfo(np.float32).max)
# Integer labels become one-hot vectors of max + 1 entries; the same limit as training.dataset.MAX_CLASSES
# (not imported from there: that module needs torch, which this tool does not load).
MAX_CLASSES = 100_000
CIFAR10_TARBALL = "cifar-10-python.tar.gz"
CIFAR10_BATCHES = tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6))
CIFAR10_MAX_BATCH_BYTES = 256 << 20  # a real batch is ~31 MB; refuse absurd members before reading them
MNIST_IMAGES_SUFFIX = "images-idx3-ubyte.gz"  # train-images-idx3-ubyte.gz, t10k-images-idx3-ubyte.gz
MNIST_PAD = 2  # 28x28 -> 32x32, zero-padded on every side


@dataclass
class SourceItem:
    """One source image: `name` for messages, `load()` -> PIL image (may raise), `label` (JSON value)."""

    name: str
    load: Callable[[], PIL.Image.Image]
    label: object = None


@dataclass
class Source:
    """A sized stream of items, whether the source carries labels, and whether it holds colour images
    (None: unknown before reading them; the first image decides)."""

    count: int
    items: Iterator[SourceItem]
    has_labels: bool
    colour: bool | None = None


# ---------------------------------------------------------------------------------------------------
# Sources.


_GREY_MODES = ("1", "L", "LA", "La", "I", "F")  # and I;16*: 1-bit, 8/16/32-bit greyscale (with alpha)


def _is_colour(mode: str) -> bool:
    return mode not in _GREY_MODES and not mode.startswith("I;16")


def _any_colour(names: list[str], open_file: Callable[[str], IO[bytes]]) -> bool:
    """Whether any of the images is in colour, from their headers (≈ 60 µs each; unreadable ones are
    left to the conversion, which reports them)."""
    for name in names:
        try:
            with open_file(name) as f, PIL.Image.open(f) as img:
                if _is_colour(img.mode):
                    return True
        except Exception:
            continue
    return False


def _find_labels(names: list[str], json_names: list[str], read: Callable[[str], bytes],
                 where: Callable[[str], str]) -> list | None:
    """The labels of `names` from the root dataset.json or, failing that, from the dataset.json of the one
    folder that holds every image (what `zip -r data.zip data/` makes). Any other dataset.json is named in
    a warning: its labels are not used."""
    top = os.path.commonpath(names).replace(os.sep, "/") if names else ""
    top = top if top and top not in names else os.path.dirname(top)  # one image: its folder
    used = "dataset.json" if "dataset.json" in json_names else f"{top}/dataset.json" if top else None
    used = used if used in json_names else None
    for name in json_names:
        if name != used:
            click.echo(f"Warning: ignoring {where(name)}: labels are read from a dataset.json at the top of "
                       "the source or in the folder that holds every image", err=True)
    if used is None:
        return None
    table = _labels_from_json(read(used), where(used))
    prefix = "" if used == "dataset.json" else top + "/"
    return _labels_for(table, [n[len(prefix):] for n in names], where(used))


def _labels_from_json(data: bytes | None, where: str) -> dict | None:
    if data is None:
        return None
    try:
        table = json.loads(data.decode("utf-8")).get("labels")
        return None if table is None else image_files.label_table(table)
    except (ValueError, TypeError, AttributeError) as exc:
        raise click.ClickException(f"invalid labels file {where}: {exc}") from None


def _is_number(x) -> bool:
    """A JSON number that stays finite as float32 (training's label dtype)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and abs(x) <= FLOAT32_MAX


def _label_kind(label) -> str | int:
    """'class' for a class index, the length for a number list; ValueError saying what is wrong."""
    if isinstance(label, int) and not isinstance(label, bool):
        if not 0 <= label < MAX_CLASSES:
            raise ValueError(f"class index {label} is outside 0..{MAX_CLASSES - 1}")
        return "class"
    if isinstance(label, list) and label and all(_is_number(x) for x in label):
        return len(label)
    raise ValueError(f"label {json.dumps(label)[:60]} is neither a class index (an integer 0..{MAX_CLASSES - 1}) "
                     "nor a non-empty list of finite numbers")


def _describe(kind: str | int) -> str:
    return "a class index" if kind == "class" else f"a list of {kind} numbers"


def _labels_for(table: dict | None, names: list[str], where: str) -> list | None:
    """The labels of `names` from a dataset.json table (None: no labels), checked the way training reads
    them (training.dataset): every image labelled, all class indices or all number lists of one length."""
    if table is None:
        return None
    labels, first = [], None
    for name in names:
        if name not in table:
            raise click.ClickException(f"{where} has no label for image {name}")
        try:
            kind = _label_kind(table[name])
        except ValueError as exc:
            raise click.ClickException(f"{where}: image {name}: {exc}") from None
        if first is None:
            first = (name, kind)
        elif kind != first[1]:
            raise click.ClickException(f"{where}: image {name} has {_describe(kind)} as label but {first[0]} has "
                                       f"{_describe(first[1])}; labels must be all class indices or all "
                                       "number lists of one length")
        labels.append(table[name])
    return labels


def _open_folder(path: str) -> Source:
    exts = image_files.image_extensions()
    files = list(image_files.walk_files(path))
    names = sorted(n for n in files if image_files.is_image_name(n, exts))
    json_names = sorted(n for n in files if os.path.basename(n) == "dataset.json")

    def open_file(name: str) -> IO[bytes]:
        return open(os.path.join(path, name), "rb")

    labels = _find_labels(names, json_names, lambda n: Path(path, n).read_bytes(), lambda n: os.path.join(path, n))

    def load_file(name: str) -> Callable[[], PIL.Image.Image]:
        def load() -> PIL.Image.Image:
            with open_file(name) as f:
                return image_files.open_image(f.read())
        return load

    items = (SourceItem(os.path.join(path, n), load_file(n), lab)
             for n, lab in zip(names, labels or [None] * len(names)))
    return Source(len(names), items, labels is not None, _any_colour(names, open_file))


def _open_zip(path: str) -> Source:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise click.ClickException(f"cannot open zip {path}: {exc}") from None
    exts = image_files.image_extensions()
    members = [n for n in zf.namelist() if not n.endswith("/")]
    dups = image_files.duplicate_names(members)
    if dups:
        raise click.ClickException(f"{path}: the zip holds {len(dups)} names more than once (e.g. {dups[0]!r}; an "
                                   "archive appended to?); only the last copy of each can be read: rebuild the zip")
    names = sorted(n for n in members if image_files.is_image_name(n, exts))
    json_names = sorted(n for n in members if os.path.basename(n) == "dataset.json")
    labels = _find_labels(names, json_names, zf.read, lambda n: f"{path}:{n}")

    def load_member(name: str) -> Callable[[], PIL.Image.Image]:
        return lambda: image_files.open_image(zf.read(name))

    items = (SourceItem(f"{path}:{n}", load_member(n), lab) for n, lab in zip(names, labels or [None] * len(names)))
    return Source(len(names), items, labels is not None, _any_colour(names, zf.open))


def _open_lmdb(path: str) -> Source:
    try:
        import lmdb
    except ImportError:
        raise click.ClickException("reading LSUN LMDB needs the 'lmdb' package: pip install lmdb") from None
    try:
        env = lmdb.open(path, readonly=True, lock=False, readahead=False, max_readers=1)
        count = env.stat()["entries"]
    except lmdb.Error as exc:
        raise click.ClickException(f"cannot open LMDB {path}: {exc}") from None

    def items() -> Iterator[SourceItem]:
        with env.begin(write=False) as txn:
            for key, value in txn.cursor():
                data = bytes(value)
                yield SourceItem(f"{path}:{key.decode('utf-8', 'replace')}",
                                 lambda d=data: image_files.open_image(d))

    return Source(count, items(), False)


def _array_source(path: str, images: np.ndarray, labels: list[int]) -> Source:
    """Items from uint8 [N, H, W] or [N, H, W, 3] arrays with one class index per image."""
    items = (SourceItem(f"{path}#{i}", lambda i=i: PIL.Image.fromarray(images[i]), int(labels[i]))
             for i in range(len(images)))
    return Source(len(images), items, True)


class _RefusedGlobal(pickle.UnpicklingError):
    pass


# What a pickle of numpy arrays may name (numpy 1.x spells the module numpy.core, 2.x numpy._core). Each
# entry maps to the object of the numpy that runs here; nothing else can be looked up, so a pickle cannot
# reach os.system, eval, subprocess, ... (every way it has to call something goes through find_class).
_RECONSTRUCT = np.ndarray((0,), np.uint8).__reduce__()[0]
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds plain containers and numpy arrays only; any other global is refused before it is imported."""

    def find_class(self, module: str, name: str):
        try:
            return _PICKLE_ALLOWED[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None


def _cifar_batch(data: bytes, where: str) -> tuple[np.ndarray, list[int]]:
    """One CIFAR-10 python batch -> (uint8 [N, 32, 32, 3], class indices)."""
    try:
        # encoding="bytes": the batches were written by Python 2 (str keys/data come back as bytes).
        batch = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _RefusedGlobal as exc:
        raise click.ClickException(f"{where}: refused to unpickle the global {exc}: a CIFAR-10 batch may "
                                   "only hold numpy arrays and lists (the file is damaged or malicious)") from None
    except Exception as exc:  # any unpickling failure means a damaged batch
        raise click.ClickException(f"{where}: cannot unpickle CIFAR-10 batch: {type(exc).__name__}: "
                                   f"{exc}") from None
    if not isinstance(batch, dict):
        raise click.ClickException(f"{where}: expected a dict with data and labels, got "
                                   f"{type(batch).__name__}")
    images = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 2
            and images.shape[1] == 3 * 32 * 32):
        is_array = isinstance(images, np.ndarray)
        what = f"{images.dtype} array {list(images.shape)}" if is_array else type(images).__name__
        raise click.ClickException(f"{where}: 'data' must be a uint8 array [N, 3072], got {what}")
    if not (isinstance(labels, list) and len(labels) == len(images)
            and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 10 for x in labels)):
        raise click.ClickException(f"{where}: 'labels' must be a list of {len(images)} class indices 0-9")
    # Rows are channel-major: 1024 red, 1024 green, 1024 blue values, each a 32x32 plane in row order.
    return images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _read_cifar_batches(path: str) -> dict[str, bytes] | None:
    """The raw data_batch_1..5 members of a .tar.gz, or None when it holds none of them."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:  # one pass over the stream, no extraction to disk
                name = member.name.removeprefix("./")
                if name not in CIFAR10_BATCHES:
                    continue
                if not member.isfile() or member.size > CIFAR10_MAX_BATCH_BYTES:
                    raise click.ClickException(f"{path}:{name}: not a regular file of at most "
                                               f"{CIFAR10_MAX_BATCH_BYTES >> 20} MiB")
                found[name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise click.ClickException(f"cannot read tarball {path}: {type(exc).__name__}: {exc}") from None
    return found or None


def _open_cifar10(path: str, batches: dict[str, bytes]) -> Source:
    missing = [name for name in CIFAR10_BATCHES if name not in batches]
    if missing:
        raise click.ClickException(f"{path}: CIFAR-10 tarball lacks {', '.join(missing)}")
    parts = [_cifar_batch(batches.pop(name), f"{path}:{name}") for name in CIFAR10_BATCHES]
    images = np.ascontiguousarray(np.concatenate([p[0] for p in parts]))
    return _array_source(path, images, [label for p in parts for label in p[1]])


def _read_idx(path: str, magic: int, ndim: int) -> tuple[tuple[int, ...], bytes]:
    """A gzipped IDX file of unsigned bytes: (dimensions, payload); errors name the file."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise click.ClickException(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise click.ClickException(f"{path}: {len(raw)} bytes is too short for an IDX header")
    found, *dims = struct.unpack(f">{1 + ndim}I", raw[:header])
    if found != magic:
        raise click.ClickException(f"{path}: IDX magic number {found}, expected {magic} "
                                   f"({'images' if magic == 2051 else 'labels'} of unsigned bytes)")
    payload, size = raw[header:], math.prod(dims)
    if len(payload) != size:
        raise click.ClickException(f"{path}: header promises {'x'.join(map(str, dims))} = {size} bytes of "
                                   f"data, the file holds {len(payload)}")
    return tuple(dims), payload


def _open_mnist(path: str) -> Source:
    """<set>-images-idx3-ubyte.gz with <set>-labels-idx1-ubyte.gz beside it -> 32x32 greyscale, labels."""
    folder, base = os.path.split(path)
    labels_path = os.path.join(folder, base[:-len(MNIST_IMAGES_SUFFIX)] + "labels-idx1-ubyte.gz")
    if not os.path.isfile(labels_path):
        raise click.ClickException(f"{path}: MNIST labels file {labels_path} not found (it must lie beside "
                                   "the images file)")
    (count, rows, cols), pixels = _read_idx(path, 2051, 3)
    if (rows, cols) != (28, 28):
        raise click.ClickException(f"{path}: images are {cols}x{rows}; MNIST images are 28x28")
    (label_count,), labels = _read_idx(labels_path, 2049, 1)
    if label_count != count:
        raise click.ClickException(f"{labels_path}: {label_count} labels for the {count} images of {path}")
    images = np.frombuffer(pixels, np.uint8).reshape(count, 28, 28)
    images = np.pad(images, ((0, 0), (MNIST_PAD, MNIST_PAD), (MNIST_PAD, MNIST_PAD)))  # black border
    return _array_source(path, images, list(labels))


def _open_synthetic(spec: str, resolution: int | None, max_images: int | None) -> Source:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[1] not in synthetic.KINDS:
        raise click.ClickException(f"invalid synthetic source {spec!r}; expected synthetic:<kind>[:<res>] "
                                   f"with kind in {list(synthetic.KINDS)}")
    res = resolution or DEFAULT_SYNTHETIC_RESOLUTION
    if len(parts) == 3:
        try:
            res = int(parts[2])
            _check_side(res)
        except ValueError:
            raise click.ClickException(f"invalid resolution {parts[2]!r} in {spec!r}; "
                                       "expected a power of two >= 4") from None
    count = DEFAULT_SYNTHETIC_IMAGES if max_images is None else max_images
    # Seed 0 is what `open_dataset('synthetic:<kind>:<res>')` renders, so the two agree pixel for pixel.
    items = (SourceItem(f"{spec}#{i}", lambda i=i: PIL.Image.fromarray(synthetic.render(parts[1], res, 0, i).image))
             for i in range(count))
    return Source(count, items, False)


def open_source(source: str, resolution: int | None, max_images: int | None) -> Source:
    """Detect the kind of `source` and open it (see --source in the CLI help)."""
    if source.startswith("synthetic:"):
        return _open_synthetic(source, resolution, max_images)
    if os.path.isdir(source):
        # An LMDB environment is a folder holding data.mdb; the name (LSUN's *_lmdb) proves nothing.
        if os.path.isfile(os.path.join(source, "data.mdb")):
            return _open_lmdb(source)
        src = _open_folder(source)
        if src.count == 0:
            raise click.ClickException(f"no images found in folder {source} (and no data.mdb: not an LMDB "
                                       "database either)")
        return src
    if not os.path.exists(source):
        raise click.ClickException(f"source not found: {source}")
    name = os.path.basename(source).lower()
    if os.path.isfile(source) and name.endswith(".zip"):
        src = _open_zip(source)
        if src.count == 0:
            raise click.ClickException(f"no images found in zip {source}")
        return src
    if os.path.isfile(source) and name.endswith(MNIST_IMAGES_SUFFIX):
        return _open_mnist(source)
    if os.path.isfile(source) and name.endswith((".tar.gz", ".tgz")):
        batches = _read_cifar_batches(source)
        if batches is None:
            raise click.ClickException(f"{source}: no cifar-10-batches-py/data_batch_1..5 inside; the only "
                                       f"tarball read is CIFAR-10's python version ({CIFAR10_TARBALL})")
        return _open_cifar10(source, batches)
    raise click.ClickException(f"unsupported source {source}: expected a folder, a .zip, an LMDB directory, "
                               f"{CIFAR10_TARBALL}, train-{MNIST_IMAGES_SUFFIX} or synthetic:<kind>[:<res>]")


# ---------------------------------------------------------------------------------------------------
# Image transforms.


def _check_side(side: int) -> None:
    if side < 4 or side & (side - 1):
        raise ValueError(f"{side} is not a power of two >= 4")


def parse_resolution(text: str | None) -> tuple[int, int] | None:
    """'256x128' -> (256, 128), '256' -> (256, 256); checked later by `output_size`."""
    if text is None:
        return None
    parts = text.lower().split("x")
    try:
        if len(parts) in (1, 2) and min(int(p) for p in parts) > 0:
            return int(parts[0]), int(parts[-1])
    except ValueError:
        pass
    raise click.ClickException(f"--resolution={text!r}: expected WxH with positive sides, e.g. 256x256")


def output_size(resolution: str | None, width: int | None, height: int | None,
                transform: str | None) -> tuple[int, int] | None:
    """(width, height) from --resolution and/or --width/--height, or None to keep the source size. The
    output is always a width x width square; height < width only letterboxes (center-crop-wide)."""
    options = (("resolution", resolution), ("width", width), ("height", height))
    given = " ".join(f"--{k}={v}" for k, v in options if v is not None)
    w, h = parse_resolution(resolution) or (None, None)
    if (None not in (width, w) and width != w) or (None not in (height, h) and height != h):
        raise click.ClickException(f"{given}: --resolution disagrees with --width/--height; give one of them")
    w, h = width if width is not None else w, height if height is not None else h
    if w is None and h is None:
        if transform == "center-crop-wide":
            raise click.ClickException("--transform=center-crop-wide needs --width and --height "
                                       "(or --resolution)")
        return None
    w, h = w or h, h or w  # one side alone: a square
    if w < 4 or w & (w - 1):
        raise click.ClickException(f"{given}: the width (the side of the square output) must be a power of "
                                   "two >= 4")
    if h != w and transform != "center-crop-wide":
        raise click.ClickException(f"{given}: training needs square images (W = H); a height below the width "
                                   "is only for --transform=center-crop-wide (letterbox on a WxW square)")
    if not 1 <= h <= w:
        raise click.ClickException(f"{given}: the height must be 1..{w}: center-crop-wide letterboxes the "
                                   "image on a WxW square")
    return w, h


def _center_crop(img: PIL.Image.Image) -> PIL.Image.Image:
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    return img.crop((left, top, left + side, top + side))


def _center_crop_wide(img: PIL.Image.Image, width: int, height: int, resample: int) -> PIL.Image.Image | None:
    """Crop the largest centred region of aspect width:height, resize it to width x height and paste it
    vertically centred on a black width x width square. None when that region is smaller than
    width x height (the image is dropped rather than upscaled)."""
    if img.width * height >= img.height * width:  # wider than the target: keep the full height
        crop_w, crop_h = round(img.height * width / height), img.height
    else:  # taller: keep the full width
        crop_w, crop_h = img.width, round(img.width * height / width)
    if crop_w < width or crop_h < height:
        return None
    left, top = (img.width - crop_w) // 2, (img.height - crop_h) // 2
    img = img.crop((left, top, left + crop_w, top + crop_h))
    if img.size != (width, height):
        img = img.resize((width, height), resample)
    canvas = PIL.Image.new(img.mode, (width, width))
    canvas.paste(img, (0, (width - height) // 2))
    return canvas


class UnusableImage(ValueError):
    """An image that decodes but cannot become a training image; `kind` names such images in the summary."""

    kind = "unusable image"


class TransparentImage(UnusableImage):
    kind = "image with transparent pixels"


class OtherShapeImage(UnusableImage):
    kind = "image of another size or colour mode than the first"


class WideNumberImage(UnusableImage):
    kind = "32-bit integer/float image"


def _alpha(img: PIL.Image.Image) -> np.ndarray | None:
    """The alpha plane of an image that carries transparency (an alpha band, a transparent palette entry
    or a colour key), else None."""
    if img.mode.startswith("I;16"):  # 16-bit greyscale PNG with a tRNS colour key
        key = img.info.get("transparency")
        return None if key is None else np.where(np.asarray(img) == key, 0, 255).astype(np.uint8)
    palette_alpha = img.mode == "P" and img.palette is not None and img.palette.mode.endswith("A")
    if not (img.mode in ("LA", "La", "PA", "RGBA", "RGBa") or "transparency" in img.info or palette_alpha):
        return None  # (Image.has_transparency_data, which needs Pillow >= 10.1)
    bands = img.getbands()
    if bands[-1] in ("A", "a"):
        return np.asarray(img.getchannel(len(bands) - 1))
    return np.asarray(img.convert("RGBA").getchannel("A"))


def _drop_alpha(img: PIL.Image.Image) -> PIL.Image.Image:
    """`img` (checked to be fully opaque) without its transparency data; pixel values unchanged."""
    if img.mode in ("LA", "La"):
        return img.getchannel(0)
    if img.mode in ("RGBA", "RGBa"):  # premultiplied by alpha = 255 is the plain colour
        return PIL.Image.merge("RGB", img.split()[:3])
    if img.mode in ("P", "PA"):
        return img.convert("RGBA").convert("RGB")
    img = img.copy()
    img.info.pop("transparency", None)
    return img


def to_8bit(img: PIL.Image.Image) -> PIL.Image.Image:
    """Mode L or RGB. Transparency is dropped when every pixel is fully opaque (alpha 255), else
    TransparentImage. 16-bit greyscale (I;16, I;16L, I;16B, I;16N) is scaled by 255/65535 (v / 257, rounded,
    so 65535 -> 255); 1-bit -> L; palette / other colour modes -> RGB. WideNumberImage for 32-bit integer
    or float greyscale (modes I, F): their value range is unknown, so any scaling would be a guess."""
    alpha = _alpha(img)
    if alpha is not None:
        clear = int((alpha < 255).sum())
        if clear:
            raise TransparentImage(f"image has transparency (mode {img.mode}): {clear} of {alpha.size} "
                                   "pixels have alpha < 255; training reads RGB or greyscale only, so flatten "
                                   "it onto a background first")
        img = _drop_alpha(img)
    if img.mode in ("L", "RGB"):
        return img
    if img.mode.startswith("I;16"):
        wide = np.asarray(img).astype(np.uint32)
        return PIL.Image.fromarray(((wide + 128) // 257).astype(np.uint8))  # 2-D uint8: mode L
    if img.mode in ("I", "F"):
        kind = "integer" if img.mode == "I" else "floating-point"
        raise WideNumberImage(f"32-bit {kind} image (PIL mode {img.mode}) has no known value range; convert "
                              "it to 8- or 16-bit greyscale or RGB first")
    return img.convert("L" if img.mode == "1" else "RGB")


def transform_image(img: PIL.Image.Image, size: tuple[int, int] | None, transform: str | None,
                    resample: int) -> np.ndarray | None:
    """PIL image -> uint8 [S, S] (greyscale) or [S, S, 3] with S = size[0] (the source size when `size` is
    None); None when center-crop-wide drops it as too small. UnusableImage from `to_8bit`."""
    img = to_8bit(img)
    if transform == "center-crop":
        img = _center_crop(img)
    elif transform == "center-crop-wide":
        img = _center_crop_wide(img, size[0], size[1], resample)
        if img is None:
            return None
    if size is not None and img.size != (size[0], size[0]):
        img = img.resize((size[0], size[0]), resample)
    return np.asarray(img)


# ---------------------------------------------------------------------------------------------------
# Writers: everything goes to a temporary sibling first and is renamed into place at the end.


def _inside(path: str, folder: str) -> bool:
    """Whether resolved `path` is `folder` or lies below it."""
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # different drives (Windows)
        return False


def check_dest(dest: str, source: str) -> None:
    """Refuse, before any work, a --dest that would destroy or mix with data: the --source itself (or a
    folder inside the source folder), an existing zip, an existing file, a non-empty folder, or a path
    whose parent is a file. Nothing existing is ever replaced."""
    is_zip = dest.lower().endswith(".zip")
    real_dest = os.path.realpath(dest)
    if not source.startswith("synthetic:") and os.path.exists(source):
        real_source = os.path.realpath(source)
        if real_dest == real_source or (os.path.exists(dest) and os.path.samefile(dest, source)):
            raise click.ClickException(f"--dest {dest} is the --source itself; write to a new path")
        if not is_zip and os.path.isdir(real_source) and _inside(real_dest, real_source):
            raise click.ClickException(f"--dest folder {dest} is inside the --source folder {source}; the output "
                                       "would mix with its input: choose a folder outside it")
    if os.path.islink(dest):
        raise click.ClickException(f"--dest {dest} is a symbolic link; give the path it points to "
                                   f"({os.path.realpath(dest)}) or a new one")
    if is_zip and os.path.lexists(dest):
        raise click.ClickException(f"--dest {dest} already exists; delete it first or choose another name "
                                   "(an existing zip is never replaced)")
    if not is_zip and os.path.lexists(dest) and not os.path.isdir(dest):
        raise click.ClickException(f"--dest {dest} is an existing file; give a new .zip path or a new or empty "
                                   "folder")
    if not is_zip and os.path.isdir(dest) and os.listdir(dest):
        raise click.ClickException(f"--dest folder {dest} exists and is not empty")
    ancestor = os.path.dirname(os.path.abspath(dest))
    while not os.path.lexists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise click.ClickException(f"cannot write --dest {dest}: {ancestor} is a file, not a folder")


class _Writer:
    """Writes `relpath -> bytes` into a temp zip or folder beside `dest` (checked by `check_dest`);
    `commit()` renames it into place."""

    def __init__(self, dest: str):
        self.dest = os.path.abspath(dest)
        self.is_zip = dest.lower().endswith(".zip")
        parent = os.path.dirname(self.dest)
        try:
            os.makedirs(parent, exist_ok=True)
            # mkstemp / mkdtemp make private (0600 / 0700) paths; the dataset gets the usual umask
            # permissions, so that the group can read it from a shared disk.
            if self.is_zip:
                fd, self.tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".zip", dir=parent)
                os.fchmod(fd, 0o666 & ~umask())
                os.close(fd)
                self.zip = zipfile.ZipFile(self.tmp, "w", compression=zipfile.ZIP_STORED)
            else:
                self.tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
                os.chmod(self.tmp, 0o777 & ~umask())
        except OSError as exc:
            raise click.ClickException(f"cannot write --dest {dest}: {exc.strerror or exc}") from None

    def add(self, relpath: str, data: bytes) -> None:
        if self.is_zip:
            self.zip.writestr(relpath, data)
            return
        path = os.path.join(self.tmp, relpath)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)

    def commit(self) -> None:
        if self.is_zip:
            self.zip.close()
            with open(self.tmp, "rb") as f:  # on disk before the rename: a crash leaves no empty zip
                os.fsync(f.fileno())
            os.replace(self.tmp, self.dest)
        else:
            if os.path.isdir(self.dest):
                os.rmdir(self.dest)  # empty (checked above)
            os.rename(self.tmp, self.dest)

    def abort(self) -> None:
        if self.is_zip:
            self.zip.close()
            os.unlink(self.tmp)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PIL.Image.fromarray(arr).save(buf, format="png", compress_level=0, optimize=False)
    return buf.getvalue()


def _describe_shape(shape: tuple) -> str:
    return f"{shape[1]}x{shape[0]} " + ("RGB" if len(shape) == 3 else "greyscale")


def _check_output_shape(arr: np.ndarray, expected: tuple | None, name: str, first: str | None) -> tuple:
    """The first image fixes the shape; it must be square power-of-two; later ones must match it
    (OtherShapeImage, which --skip-bad skips)."""
    if expected is None:
        h, w = arr.shape[:2]
        if h != w or h < 4 or h & (h - 1):
            raise click.ClickException(f"{name}: image is {w}x{h}; training needs square power-of-two images "
                                       "(use --width/--height or --resolution, and --transform)")
        return arr.shape
    if arr.shape != expected:
        hint = ("; --resolution (or --width) resizes every image to one size" if arr.shape[:2] != expected[:2]
                else "")
        raise OtherShapeImage(f"image is {_describe_shape(arr.shape)} but the first image, {first}, is "
                              f"{_describe_shape(expected)}{hint}")
    return expected


def _as_rgb(arr: np.ndarray) -> np.ndarray:
    """uint8 [S, S] greyscale -> [S, S, 3] with equal channels (lossless)."""
    return np.repeat(arr[:, :, None], 3, axis=2)


def _count(n: int, phrase: str) -> str:
    """'1 unreadable image', '2 images with transparent pixels'."""
    return f"{n} {phrase if n == 1 else phrase.replace('image', 'images', 1)}"


# ---------------------------------------------------------------------------------------------------
# Conversion.


@dataclass
class Result:
    written: int
    skipped: Counter  # kind of image ("unreadable image", UnusableImage.kind) -> count; only with --skip-bad
    dropped: int = 0  # too small for center-crop-wide
    to_rgb: int = 0  # greyscale images written as RGB (the source also holds colour ones)


def convert(source: Source, writer: _Writer, size: tuple[int, int] | None, transform: str | None,
            resample: int, max_images: int | None, skip_bad: bool) -> Result:
    """Copy images from `source` to `writer`, resized to `size` (see `output_size`)."""
    total = source.count if max_images is None else min(source.count, max_images)
    labels: list | None = [] if source.has_labels else None
    result = Result(0, Counter())
    shape, first = None, None
    with tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True) as bar:
        for item in source.items:
            if max_images is not None and result.written >= max_images:
                break
            try:
                img = item.load()
            except Exception as exc:  # any decoder failure means "unreadable image"
                if not skip_bad:
                    raise click.ClickException(f"cannot read image {item.name}: {image_files.decode_error(exc)} "
                                               "(use --skip-bad to skip unreadable images)") from None
                result.skipped["unreadable image"] += 1
                continue
            try:
                arr = transform_image(img, size, transform, resample)
                grey_to_rgb = (arr is not None and arr.ndim == 2
                               and (source.colour or (shape is not None and len(shape) == 3)))
                if grey_to_rgb:
                    arr = _as_rgb(arr)  # one greyscale photo among colour ones
                if arr is not None:
                    shape = _check_output_shape(arr, shape, item.name, first)
            except UnusableImage as exc:
                if not skip_bad:
                    raise click.ClickException(f"{item.name}: {exc} (use --skip-bad to skip such "
                                               "images)") from None
                result.skipped[exc.kind] += 1
                continue
            except ValueError as exc:
                raise click.ClickException(f"{item.name}: {exc}") from None
            if arr is None:
                result.dropped += 1
                continue
            first = first or item.name
            result.to_rgb += grey_to_rgb  # counted once the image is written, not when it is skipped
            relpath = f"{result.written // 1000:05d}/img{result.written:08d}.png"
            writer.add(relpath, _png_bytes(arr))
            if labels is not None:
                labels.append([relpath, item.label])
            result.written += 1
            bar.update(1)
    if result.written == 0:
        why = [f"skipped {_count(n, kind)}" for kind, n in result.skipped.items()]
        if result.dropped:
            why.append(f"dropped {_count(result.dropped, 'image')} too small for center-crop-wide at "
                       f"{size[0]}x{size[1]}")
        raise click.ClickException("no images were written: " + ("; ".join(why) or
                                                                 "the source holds no readable images"))
    writer.add("dataset.json", json.dumps({"labels": labels}).encode("utf-8"))
    return result


@click.command(context_settings=dict(help_option_names=["-h", "--help"]))
@click.option("--source", required=True, metavar="PATH",
              help="Input: an image folder (searched recursively), a .zip of images, an LSUN LMDB directory "
                   "(recognised by its data.mdb, e.g. bedroom_train_lmdb/), CIFAR-10's python tarball "
                   f"({CIFAR10_TARBALL}, or any .tar.gz holding cifar-10-batches-py/data_batch_1..5: "
                   "32x32 RGB, labels 0-9), MNIST's train-images-idx3-ubyte.gz (labels from "
                   "train-labels-idx1-ubyte.gz beside it; padded to 32x32, labels 0-9), or "
                   f"synthetic:<kind>[:<res>] with kind in {', '.join(synthetic.KINDS)}. A dataset.json in a "
                   f"folder/zip supplies labels (class indices 0..{MAX_CLASSES - 1} or number lists). 16-bit "
                   "greyscale is scaled to 8 bits; alpha is dropped if fully opaque; images with transparent "
                   "pixels and 32-bit integer/float images are refused.")
@click.option("--dest", required=True, metavar="PATH",
              help="Output: a new .zip (uncompressed) or a new/empty folder; neither the source nor a folder "
                   "inside it. "
                   "Written atomically; an existing zip is never replaced.")
@click.option("--max-images", type=click.IntRange(min=1), default=None,
              help=f"Stop after this many images [default: all; {DEFAULT_SYNTHETIC_IMAGES} for synthetic].")
@click.option("--width", type=click.IntRange(min=1), default=None,
              help="Output width, a power of two; the output is always a width x width square [default: keep "
                   f"the source size; {DEFAULT_SYNTHETIC_RESOLUTION} for synthetic without <res>].")
@click.option("--height", type=click.IntRange(min=1), default=None,
              help="Output height; must equal --width except with --transform=center-crop-wide, where a "
                   "smaller height letterboxes the image [default: --width]. Either one alone gives a "
                   "square.")
@click.option("--resolution", metavar="WxH", default=None,
              help="Same as --width=W --height=H, e.g. 256x256 (must agree with them when both are given).")
@click.option("--resize-filter", type=click.Choice(["box", "lanczos"]), default="lanczos", show_default=True,
              help="Resampling filter used when resizing.")
@click.option("--transform", type=click.Choice(["center-crop", "center-crop-wide"]), default=None,
              help="center-crop: crop the largest centred square, then resize. center-crop-wide: crop the "
                   "largest centred region of aspect width:height, resize it to width x height and paste it "
                   "vertically centred on a black width x width square; images smaller than width x height "
                   "after that crop are dropped and counted (needs a size). Default: resize without "
                   "cropping.")
@click.option("--skip-bad", is_flag=True,
              help="Skip unreadable images and images that cannot be used (transparent pixels, 32-bit "
                   "integer/float) and report how many; without it the first one stops the run.")
def main(source: str, dest: str, max_images: int | None, width: int | None, height: int | None,
         resolution: str | None, resize_filter: str, transform: str | None, skip_bad: bool) -> None:
    """Convert images into a SpatialGAN / StyleGAN2-ADA training dataset.

    \b
    Examples:
      python dataset_tool.py --source=lsun_cat_lmdb/ --dest=cat256.zip --width=256 --height=256 --transform=center-crop
      python dataset_tool.py --source=~/lsun_car_lmdb/ --dest=car512.zip --width=512 --height=384 --transform=center-crop-wide
      python dataset_tool.py --source=~/photos --dest=photos128.zip --resolution=128x128 --skip-bad
      python dataset_tool.py --source=~/downloads/cifar-10-python.tar.gz --dest=cifar10.zip
      python dataset_tool.py --source=~/mnist/train-images-idx3-ubyte.gz --dest=mnist32.zip
      python dataset_tool.py --source=synthetic:rooms:64 --dest=rooms64.zip --max-images=2000
    """
    size = output_size(resolution, width, height, transform)
    resample = PIL.Image.Resampling.LANCZOS if resize_filter == "lanczos" else PIL.Image.Resampling.BOX
    source, dest = os.path.expanduser(source), os.path.expanduser(dest)
    check_dest(dest, source)
    src = open_source(source, size[0] if size else None, max_images)
    writer = _Writer(dest)
    try:
        with interrupt_on_sigterm():  # `kill`, a job's time limit: clean up like Ctrl-C
            result = convert(src, writer, size, transform, resample, max_images, skip_bad)
            writer.commit()
    except (click.ClickException, KeyboardInterrupt):
        writer.abort()
        raise
    except (OSError, ValueError) as exc:
        writer.abort()
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    for kind, n in result.skipped.items():
        click.echo(f"Skipped {_count(n, kind)}", err=True)
    if result.dropped:
        click.echo(f"Dropped {_count(result.dropped, 'image')} smaller than {size[0]}x{size[1]} after the "
                   "center-crop-wide crop", err=True)
    if result.to_rgb:
        click.echo(f"Converted {_count(result.to_rgb, 'greyscale image')} to RGB (the source also holds colour "
                   "images)", err=True)
    click.echo(f"Wrote {result.written} images to {dest}", err=True)


if __name__ == "__main__":
    main()
