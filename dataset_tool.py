"""Convert image folders, zips, LSUN LMDB databases or built-in synthetic data into a training dataset.

The output (an uncompressed .zip or a folder) uses the StyleGAN2-ADA layout: PNGs named
`NNNNN/imgNNNNNNNN.png` and a root `dataset.json` with {"labels": [[relpath, label], ...]} or
{"labels": null}. Labels in a source `dataset.json` are carried over after checking that training can use
them: all class indices (integers 0 .. MAX_CLASSES - 1, one-hot in training) or all number lists of one
length. Images are written as 8-bit greyscale or RGB PNGs, the modes `training.dataset` reads:
16-bit greyscale sources (PIL modes I;16*) are scaled to 8 bits (v / 257, rounded), alpha and palette
images are flattened to RGB, and 32-bit integer / float images (modes I, F; no known value range) are
refused with the file's name.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import PIL.Image
from tqdm import tqdm

from training import synthetic  # numpy/scipy only: the tool starts without importing torch

DEFAULT_SYNTHETIC_IMAGES = 10_000
DEFAULT_SYNTHETIC_RESOLUTION = 64
FLOAT32_MAX = float(np.finfo(np.float32).max)
# Integer labels become one-hot vectors of max + 1 entries; the same limit as training.dataset.MAX_CLASSES
# (not imported from there: that module needs torch, which this tool does not load).
MAX_CLASSES = 100_000


@dataclass
class SourceItem:
    """One source image: `name` for messages, `load()` -> PIL image (may raise), `label` (JSON value)."""

    name: str
    load: Callable[[], PIL.Image.Image]
    label: object = None


@dataclass
class Source:
    """A sized stream of items and whether the source carries labels."""

    count: int
    items: Iterator[SourceItem]
    has_labels: bool


# ---------------------------------------------------------------------------------------------------
# Sources.


def _image_extensions() -> set[str]:
    """Every extension PIL can read (same rule as training.dataset)."""
    PIL.Image.init()
    return {ext.lower() for ext in PIL.Image.registered_extensions()}


def _decode(data: bytes) -> PIL.Image.Image:
    img = PIL.Image.open(io.BytesIO(data))
    img.load()  # force full decoding now, so truncated files fail here
    return img


def _labels_from_json(data: bytes | None, where: str) -> dict | None:
    if data is None:
        return None
    try:
        table = json.loads(data.decode("utf-8")).get("labels")
        return None if table is None else {str(k).replace("\\", "/"): v for k, v in table}
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
    exts = _image_extensions()
    names = []
    for root, _dirs, files in os.walk(path):
        rel = os.path.relpath(root, path)
        names += [f if rel == "." else os.path.join(rel, f).replace(os.sep, "/") for f in files
                  if os.path.splitext(f)[1].lower() in exts]
    names.sort()
    json_path = os.path.join(path, "dataset.json")
    table = _labels_from_json(Path(json_path).read_bytes() if os.path.isfile(json_path) else None, json_path)
    labels = _labels_for(table, names, json_path)

    def load_file(name: str) -> Callable[[], PIL.Image.Image]:
        def load() -> PIL.Image.Image:
            with open(os.path.join(path, name), "rb") as f:
                return _decode(f.read())
        return load

    items = (SourceItem(os.path.join(path, n), load_file(n), lab)
             for n, lab in zip(names, labels or [None] * len(names)))
    return Source(len(names), items, labels is not None)


def _open_zip(path: str) -> Source:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise click.ClickException(f"cannot open zip {path}: {exc}") from None
    exts = _image_extensions()
    members = set(zf.namelist())
    names = sorted(n for n in members if not n.endswith("/") and os.path.splitext(n)[1].lower() in exts)
    where = f"{path}:dataset.json"
    labels = _labels_for(_labels_from_json(zf.read("dataset.json") if "dataset.json" in members else None, where),
                         names, where)

    def load_member(name: str) -> Callable[[], PIL.Image.Image]:
        return lambda: _decode(zf.read(name))

    items = (SourceItem(f"{path}:{n}", load_member(n), lab) for n, lab in zip(names, labels or [None] * len(names)))
    return Source(len(names), items, labels is not None)


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
                yield SourceItem(f"{path}:{key.decode('utf-8', 'replace')}", lambda d=data: _decode(d))

    return Source(count, items(), False)


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
    if os.path.isfile(source) and source.lower().endswith(".zip"):
        src = _open_zip(source)
        if src.count == 0:
            raise click.ClickException(f"no images found in zip {source}")
        return src
    if not os.path.exists(source):
        raise click.ClickException(f"source not found: {source}")
    raise click.ClickException(f"unsupported source {source}: expected a folder, a .zip, an LMDB directory "
                               "or synthetic:<kind>[:<res>]")


# ---------------------------------------------------------------------------------------------------
# Image transforms.


def _check_side(side: int) -> None:
    if side < 4 or side & (side - 1):
        raise ValueError(f"{side} is not a power of two >= 4")


def parse_resolution(text: str | None) -> int | None:
    """'256x256' or '256' -> 256; ClickException for non-square or non-power-of-two sizes."""
    if text is None:
        return None
    parts = text.lower().split("x")
    try:
        w, h = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (None, None)
    except ValueError:
        w = h = None
    if w is None or h is None:
        raise click.ClickException(f"--resolution={text!r}: expected WxH, e.g. 256x256")
    if w != h:
        raise click.ClickException(f"--resolution={text}: training needs square images (W = H)")
    if w < 4 or w & (w - 1):
        raise click.ClickException(f"--resolution={text}: the side must be a power of two >= 4")
    return w


def _center_crop(img: PIL.Image.Image) -> PIL.Image.Image:
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    return img.crop((left, top, left + side, top + side))


def _center_crop_wide(img: PIL.Image.Image, res: int, resample: int) -> PIL.Image.Image:
    """Letterbox: scale the width to `res`, crop the height to at most `res`, paste on a black square."""
    height = max(1, round(img.height * res / img.width))
    img = img.resize((res, height), resample)
    if height > res:
        top = (height - res) // 2
        img = img.crop((0, top, res, top + res))
    canvas = PIL.Image.new(img.mode, (res, res))
    canvas.paste(img, (0, (res - img.height) // 2))
    return canvas


def to_8bit(img: PIL.Image.Image) -> PIL.Image.Image:
    """Mode L or RGB. 16-bit greyscale (I;16, I;16L, I;16B, I;16N) is scaled by 255/65535 (v / 257, rounded,
    so 65535 -> 255); 1-bit -> L; alpha / palette / other colour modes -> RGB. ValueError for 32-bit
    integer or float greyscale (modes I, F): their value range is unknown, so any scaling would be a guess."""
    if img.mode in ("L", "RGB"):
        return img
    if img.mode.startswith("I;16"):
        wide = np.asarray(img).astype(np.uint32)
        return PIL.Image.fromarray(((wide + 128) // 257).astype(np.uint8))  # 2-D uint8: mode L
    if img.mode in ("I", "F"):
        kind = "integer" if img.mode == "I" else "floating-point"
        raise ValueError(f"32-bit {kind} image (PIL mode {img.mode}) has no known value range; convert it to "
                         "8- or 16-bit greyscale or RGB first")
    return img.convert("L" if img.mode == "1" else "RGB")


def transform_image(img: PIL.Image.Image, res: int | None, transform: str | None, resample: int) -> np.ndarray:
    """PIL image -> uint8 [H, W] (greyscale) or [H, W, 3], converted by `to_8bit` (ValueError from it)."""
    img = to_8bit(img)
    if transform == "center-crop":
        img = _center_crop(img)
    elif transform == "center-crop-wide":
        img = _center_crop_wide(img, res, resample)
    if res is not None and img.size != (res, res):
        img = img.resize((res, res), resample)
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
            if self.is_zip:
                fd, self.tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".zip", dir=parent)
                os.close(fd)
                self.zip = zipfile.ZipFile(self.tmp, "w", compression=zipfile.ZIP_STORED)
            else:
                self.tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
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


def _check_output_shape(arr: np.ndarray, expected: tuple | None, name: str) -> tuple:
    """The first image fixes the shape; it must be square power-of-two; later ones must match it."""
    if expected is None:
        h, w = arr.shape[:2]
        if h != w or h < 4 or h & (h - 1):
            raise click.ClickException(f"{name}: image is {w}x{h}; training needs square power-of-two images "
                                       "(use --resolution and --transform)")
        return arr.shape
    if arr.shape != expected:
        raise click.ClickException(f"{name}: image shape {list(arr.shape)} differs from the first image's "
                                   f"{list(expected)} (use --resolution to resize all images)")
    return expected


# ---------------------------------------------------------------------------------------------------
# Conversion.


def convert(source: Source, writer: _Writer, res: int | None, transform: str | None, resample: int,
            max_images: int | None, skip_bad: bool) -> tuple[int, int]:
    """Copy images from `source` to `writer`; returns (written, skipped)."""
    total = source.count if max_images is None else min(source.count, max_images)
    labels: list | None = [] if source.has_labels else None
    written = skipped = 0
    shape = None
    with tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True) as bar:
        for item in source.items:
            if max_images is not None and written >= max_images:
                break
            try:
                img = item.load()
            except Exception as exc:  # any decoder failure means "unreadable image"
                if not skip_bad:
                    raise click.ClickException(f"cannot read image {item.name}: {type(exc).__name__}: {exc} "
                                               "(use --skip-bad to skip unreadable images)") from None
                skipped += 1
                continue
            try:
                arr = transform_image(img, res, transform, resample)
            except ValueError as exc:
                raise click.ClickException(f"{item.name}: {exc}") from None
            shape = _check_output_shape(arr, shape, item.name)
            relpath = f"{written // 1000:05d}/img{written:08d}.png"
            writer.add(relpath, _png_bytes(arr))
            if labels is not None:
                labels.append([relpath, item.label])
            written += 1
            bar.update(1)
    if written == 0:
        raise click.ClickException("no images were written: the source holds no readable images")
    writer.add("dataset.json", json.dumps({"labels": labels}).encode("utf-8"))
    return written, skipped


@click.command(context_settings=dict(help_option_names=["-h", "--help"]))
@click.option("--source", required=True, metavar="PATH",
              help="Input: an image folder (searched recursively), a .zip of images, an LSUN LMDB directory "
                   "(recognised by its data.mdb, e.g. bedroom_train_lmdb/), or synthetic:<kind>[:<res>] with "
                   f"kind in {', '.join(synthetic.KINDS)}. A dataset.json in a folder/zip supplies labels "
                   f"(class indices 0..{MAX_CLASSES - 1} or number lists). 16-bit greyscale is scaled to "
                   "8 bits; 32-bit integer/float images are refused.")
@click.option("--dest", required=True, metavar="PATH",
              help="Output: a new .zip (uncompressed) or a new/empty folder; neither the source nor a folder "
                   "inside it. "
                   "Written atomically; an existing zip is never replaced.")
@click.option("--max-images", type=click.IntRange(min=1), default=None,
              help=f"Stop after this many images [default: all; {DEFAULT_SYNTHETIC_IMAGES} for synthetic].")
@click.option("--resolution", metavar="WxH", default=None,
              help="Output size, e.g. 256x256; must be square with a power-of-two side [default: keep the "
                   f"source size; {DEFAULT_SYNTHETIC_RESOLUTION} for synthetic without <res>].")
@click.option("--resize-filter", type=click.Choice(["box", "lanczos"]), default="lanczos", show_default=True,
              help="Resampling filter used when resizing.")
@click.option("--transform", type=click.Choice(["center-crop", "center-crop-wide"]), default=None,
              help="center-crop: crop the largest centred square, then resize. center-crop-wide: scale the "
                   "width to the target, crop the height if needed and pad to a square with black "
                   "(needs --resolution). Default: resize without cropping.")
@click.option("--skip-bad", is_flag=True,
              help="Skip unreadable images and report how many; without it the first one stops the run.")
def main(source: str, dest: str, max_images: int | None, resolution: str | None, resize_filter: str,
         transform: str | None, skip_bad: bool) -> None:
    """Convert images into a SpatialGAN / StyleGAN2-ADA training dataset.

    \b
    Examples:
      python dataset_tool.py --source=lsun_cat_lmdb/ --dest=cat256.zip --resolution=256x256 --transform=center-crop
      python dataset_tool.py --source=~/photos --dest=photos128.zip --resolution=128x128 --skip-bad
      python dataset_tool.py --source=synthetic:rooms:64 --dest=rooms64.zip --max-images=2000
    """
    res = parse_resolution(resolution)
    if transform == "center-crop-wide" and res is None:
        raise click.ClickException("--transform=center-crop-wide needs --resolution")
    resample = PIL.Image.Resampling.LANCZOS if resize_filter == "lanczos" else PIL.Image.Resampling.BOX
    source, dest = os.path.expanduser(source), os.path.expanduser(dest)
    check_dest(dest, source)
    src = open_source(source, res, max_images)
    writer = _Writer(dest)
    try:
        written, skipped = convert(src, writer, res, transform, resample, max_images, skip_bad)
        writer.commit()
    except (click.ClickException, KeyboardInterrupt):
        writer.abort()
        raise
    except (OSError, ValueError) as exc:
        writer.abort()
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    if skipped:
        click.echo(f"Skipped {skipped} unreadable image{'s' if skipped != 1 else ''}", err=True)
    click.echo(f"Wrote {written} images to {dest}", err=True)


if __name__ == "__main__":
    main()
