"""Reading the files of a dataset folder or zip: which files count as images, a recursive walk that
follows symlinked folders, decoding with readable errors, and dataset.json's label table. Shared by
training (training.dataset) and dataset_tool.py, so both see the same dataset; no torch here (the tool
starts without it).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator

import PIL.Image
import PIL.ImageFile
import PIL.ImageOps

# Formats PIL identifies but that are not still images, or that it cannot decode without extra tools:
# a stray video, PostScript document or metadata file in a folder is not an image of the dataset.
_NOT_STILL_IMAGES = {"MPEG", "EPS", "IPTC"}


def image_extensions() -> set[str]:
    """Lower-case extensions (with the dot) of the still-image formats PIL can decode."""
    PIL.Image.init()
    out = set()
    for ext, fmt in PIL.Image.registered_extensions().items():
        opener = PIL.Image.OPEN.get(fmt, (None,))[0]
        if opener is None or fmt in _NOT_STILL_IMAGES:
            continue
        if isinstance(opener, type) and issubclass(opener, PIL.ImageFile.StubImageFile):
            continue  # HDF5, GRIB, BUFR, WMF: PIL reads their header but needs a handler for the pixels
        out.add(ext.lower())
    return out


def is_image_name(name: str, exts: set[str] | None = None) -> bool:
    return os.path.splitext(name)[1].lower() in (exts if exts is not None else image_extensions())


def walk_files(root: str) -> Iterator[str]:
    """Relative '/'-separated paths of the files below `root`, following symlinked folders (a dataset
    assembled from links to other folders) but entering each real folder once (no loops)."""
    seen = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        rel = os.path.relpath(folder, root)
        for f in files:
            yield f if rel == "." else f"{rel}/{f}".replace(os.sep, "/")


def duplicate_names(names: list[str]) -> list[str]:
    """Names that occur more than once (a zip appended to can hold two members of one name; only the
    last could ever be read)."""
    seen, dups = set(), []
    for n in names:
        if n in seen and n not in dups:
            dups.append(n)
        seen.add(n)
    return dups


def decode_error(exc: Exception) -> str:
    """A decoder failure as one readable phrase (PIL's 'cannot identify' names an in-memory buffer)."""
    if isinstance(exc, PIL.UnidentifiedImageError):
        return "not a recognised image format (or a damaged header)"
    return f"{type(exc).__name__}: {exc}"


def open_image(data: bytes) -> PIL.Image.Image:
    """Encoded bytes -> a fully decoded image, turned upright by its EXIF orientation (as viewers show
    it). Raises PIL's / the decoder's exceptions: callers name the file."""
    img = PIL.Image.open(io.BytesIO(data))
    img.load()  # decode now, so that truncated files fail here
    if img.getexif().get(0x0112, 1) != 1:  # 0x0112: Orientation; 1 is upright
        img = PIL.ImageOps.exif_transpose(img)
    return img


class LabelConflict(ValueError):
    """dataset.json lists one image twice, with different labels."""


def label_table(pairs) -> dict:
    """dataset.json's `[[relpath, label], ...]` as {relpath: label} ('\\' read as '/'). LabelConflict
    for a path listed twice with different labels (which one is meant cannot be known); TypeError /
    ValueError for entries that are not pairs."""
    table: dict = {}
    for name, label in pairs:
        key = str(name).replace("\\", "/")
        if key in table and table[key] != label:
            raise LabelConflict(f"{key!r} is listed twice, with labels {table[key]!r} and {label!r}")
        table[key] = label
    return table
