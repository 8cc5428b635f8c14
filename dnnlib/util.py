"""EasyDict, cache directories, URL/file opening with a download cache, time formatting."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO, Any


class EasyDict(dict):
    """A dict whose keys are also attributes: `d.lr` is `d['lr']`."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        del self[name]


def cache_dir(*subdirs: str) -> Path:
    """Root of SpatialGAN's caches: `$SPATIALGAN_CACHE` or `~/.cache/spatialgan`, plus subdirs (created)."""
    root = os.environ.get("SPATIALGAN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "spatialgan")
    path = Path(root, *subdirs)
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_url(s: str) -> bool:
    return urllib.parse.urlparse(s).scheme in ("http", "https", "file")


def open_url(url: str, cache: bool = True, num_attempts: int = 3, timeout: float = 30.0) -> IO[bytes]:
    """Open a local path or a http(s)/file URL as a binary file object.

    Remote files are downloaded once into `cache_dir('downloads')` (name = md5 of the URL + basename)
    and written atomically, so an interrupted download never leaves a truncated file in the cache.
    Raises `OSError` naming the URL and the cache path where the file can be placed by hand.
    """
    if not is_url(url):
        if not os.path.isfile(url):
            raise FileNotFoundError(f"No such file: {url}")
        return open(url, "rb")
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        path = urllib.request.url2pathname(parsed.path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No such file: {url}")
        return open(path, "rb")

    name = hashlib.md5(url.encode("utf-8")).hexdigest() + "_" + (os.path.basename(parsed.path) or "file")
    target = cache_dir("downloads") / name
    if cache and target.is_file():
        return open(target, "rb")
    last_error: Exception | None = None
    for _ in range(max(num_attempts, 1)):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                data = response.read()
            break
        except Exception as err:  # network errors come in many types; all are reported below
            last_error = err
    else:
        raise OSError(
            f"Could not download {url} ({last_error}). Download it by hand and place it at {target}, "
            f"or pass a local path instead of the URL."
        )
    if not cache:
        return io.BytesIO(data)
    with atomic_write(target) as f:
        f.write(data)
    return open(target, "rb")


def format_time(seconds: float) -> str:
    """Human-readable duration: '42s', '3m 05s', '2h 01m 00s', '1d 02h 03m'."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {(s // 60) % 60:02d}m {s % 60:02d}s"
    return f"{s // 86400}d {(s // 3600) % 24:02d}h {(s // 60) % 60:02d}m"


class Logger:
    """Tee stdout/stderr into a file (append mode, flushed every write) while still printing them."""

    def __init__(self, file_name: str | None = None, file_mode: str = "a"):
        import sys

        self.file = open(file_name, file_mode) if file_name else None
        self.stdout, self.stderr = sys.stdout, sys.stderr
        sys.stdout = _Tee(self.stdout, self.file)
        sys.stderr = _Tee(self.stderr, self.file)

    def write_file_only(self, text: str) -> None:
        """Append `text` to the log file without printing it (for what the caller prints itself)."""
        if self.file is not None:
            self.file.write(text)
            self.file.flush()

    def close(self) -> None:
        import sys

        sys.stdout, sys.stderr = self.stdout, self.stderr
        if self.file is not None:
            self.file.close()
            self.file = None


class _Tee:
    def __init__(self, stream, file):
        self.stream, self.file = stream, file

    def write(self, text: str) -> int:
        if self.file is not None and text:
            self.file.write(text)
            self.file.flush()
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()


MAX_LIST_ITEMS = 1_000_000  # a seed list longer than this is a typo, not a plan (and would fill the memory)


def parse_int_list(text: str, name: str = "value", max_items: int = MAX_LIST_ITEMS) -> list[int]:
    """'1,2,5-9' -> [1, 2, 5, 6, 7, 8, 9] (non-negative, at most `max_items`); ValueError naming `name`
    and the bad part."""
    out: list[int] = []
    for part in str(text).split(","):
        bounds = part.strip().split("-")
        # isdecimal, not isdigit: '²' is a digit that int() refuses.
        if len(bounds) not in (1, 2) or not all(b.strip().isdecimal() for b in bounds):
            raise ValueError(f"{name}: {part.strip()!r} in {text!r} is not a non-negative integer or a range like 5-9")
        lo, hi = int(bounds[0]), int(bounds[-1])
        if hi < lo:
            raise ValueError(f"{name}: range {part.strip()!r} in {text!r} is empty")
        if len(out) + hi - lo + 1 > max_items:
            raise ValueError(f"{name}: {text!r} names {len(out) + hi - lo + 1:,} or more values; at most "
                             f"{max_items:,} are allowed in one run")
        out.extend(range(lo, hi + 1))
    return out


def umask() -> int:
    """The process's umask (reading it means setting it: it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **open_kwargs):
    """Open a temporary file beside `path` for writing; on success it is fsync'ed and renamed onto `path`.

    A crash (even kill -9) at any moment leaves either the old file or the complete new one, never half
    a file; on an exception the temporary file is removed. The file gets the usual umask permissions
    (mkstemp alone would create it 0600).
    """
    path = Path(path)
    tmp = None
    try:  # from the temporary file's creation on: an interrupt right after it still removes it
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise
