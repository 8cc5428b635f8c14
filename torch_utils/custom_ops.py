"""Build CUDA extensions on first use (ninja + nvcc via `torch.utils.cpp_extension.load`) with a cache.

`get_plugin(name, sources)` compiles into
`cache_dir('torch_extensions', '<name>-<md5 of sources, headers, flags, torch/CUDA versions, Python
environment>')`, so a build is reused across processes and redone only when something that affects the
binary changes.
A file lock lets one of several ranks build while the others wait and then load the result. Each
plugin is built at most once per process; a failed build is remembered and never retried.

`python -m torch_utils.custom_ops --build [--verbose]` compiles every kernel of `torch_utils/ops`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import sys
import types
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from dnnlib.util import cache_dir

__all__ = ["BuildError", "get_plugin", "load_op", "ops_sources", "ops_headers", "build_all"]

DEFAULT_CUDA_FLAGS = ("--use_fast_math",)
DEFAULT_ARCH_LIST = "8.0;9.0"  # used only when no GPU is visible (CI, build machines)
OPS_DIR = Path(__file__).resolve().parent / "ops"

_plugins: dict[str, types.ModuleType] = {}
_failures: dict[str, BaseException] = {}


class BuildError(RuntimeError):
    """A custom op failed to compile or load; the message carries a short summary of why."""


def ops_sources(op: str) -> list[Path]:
    """The `.cpp` binding and `.cu` launch of one op in `torch_utils/ops` (e.g. 'bias_act')."""
    return [OPS_DIR / f"{op}_kernel.cpp", OPS_DIR / f"{op}_kernel.cu"]


def ops_headers(op: str) -> list[Path]:
    """The `.cuh` files the op's build includes: its kernels and launch logic, and the pieces all kernels
    share (both are shared with the tests' CPU emulator)."""
    return [OPS_DIR / "kernel_common.cuh", OPS_DIR / f"{op}_kernel.cuh"]


def _is_rank_zero() -> bool:
    return os.environ.get("RANK", "0") in ("", "0")


def _setup_cuda_env() -> None:
    """Point torch at the CUDA toolkit and pick target architectures when nothing else does.

    torch infers CUDA_HOME from nvcc's location; with nvcc symlinked into /usr/local/bin that gives
    /usr/local and the link fails (`cannot find -lcudart`). cpp_extension reads CUDA_HOME once at
    import, so its module attribute is corrected as well.
    """
    import torch.utils.cpp_extension as cpp_ext

    if not os.environ.get("CUDA_HOME") and not os.environ.get("CUDA_PATH") and os.path.isdir("/usr/local/cuda"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
        cpp_ext.CUDA_HOME = "/usr/local/cuda"
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST


def _digest(files: Sequence[Path], flags: Sequence[str]) -> str:
    """MD5 over everything that changes the binary: file contents, flags, torch/CUDA versions, archs, and
    the Python and torch installations whose headers and libraries the build uses."""
    md5 = hashlib.md5()
    for path in files:
        md5.update(path.name.encode())
        md5.update(path.read_bytes())
    # Two environments (e.g. two virtualenvs with the same torch) sharing one cache would otherwise share
    # one build directory: ninja sees the other's include paths in its command lines and rebuilds each time.
    install = (sys.prefix, os.path.dirname(torch.__file__))
    for item in (*flags, torch.__version__, str(torch.version.cuda), os.environ.get("TORCH_CUDA_ARCH_LIST", ""),
                 *install):
        md5.update(b"\0" + str(item).encode())
    return md5.hexdigest()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[bool]:
    """Exclusive advisory lock; released by the OS even if the holder dies (unlike a baton file).

    Yields whether the lock is really held (False on systems without fcntl, e.g. Windows, where
    cpp_extension's own baton file still serialises the build).
    """
    try:
        import fcntl
    except ImportError:
        yield False
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def summarize_error(err: BaseException, max_lines: int = 4, max_chars: int = 600) -> str:
    """The compiler's `error` lines of a failed build (or the exception text), shortened."""
    # cpp_extension puts "Error building extension 'x': " plus ninja's whole output (command lines
    # included) into one message; the compiler's and linker's diagnostics are what a user needs.
    text = re.sub(r"Error building extension '[^']*':?", "", str(err))
    pattern = r"\berror\b\s*:|cannot find -l|undefined reference|No such file"
    lines = [ln.strip() for ln in text.splitlines() if re.search(pattern, ln, re.IGNORECASE)]
    if not lines:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()][:1]
    summary = " | ".join(lines[:max_lines]) or type(err).__name__
    return summary if len(summary) <= max_chars else summary[: max_chars - 3] + "..."


def get_plugin(name: str, sources: Sequence[str | os.PathLike], headers: Sequence[str | os.PathLike] = (),
               extra_cuda_cflags: Sequence[str] = DEFAULT_CUDA_FLAGS, verbose: bool = False) -> types.ModuleType:
    """Compile (or load from the cache) the extension `name` and return it as a Python module.

    Raises `BuildError` with a short reason when compiling or loading fails; the failure is
    remembered, so later calls in this process raise again at once instead of rebuilding.
    """
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"name must be a Python identifier, got {name!r}")
    if name in _plugins:
        return _plugins[name]
    if name in _failures:
        raise BuildError(f"{name}: {summarize_error(_failures[name])} (earlier failure, not retried)")
    try:
        module = _build(name, [Path(s) for s in sources], [Path(h) for h in headers], list(extra_cuda_cflags),
                        verbose)
    except Exception as err:  # compiler, linker, loader and missing-toolchain errors all end up here
        _failures[name] = err
        raise BuildError(f"{name}: {summarize_error(err)}") from err
    _plugins[name] = module
    return module


def _build(name: str, sources: list[Path], headers: list[Path], cuda_flags: list[str],
           verbose: bool) -> types.ModuleType:
    import torch.utils.cpp_extension as cpp_ext

    for path in (*sources, *headers):
        if not path.is_file():
            raise FileNotFoundError(f"source file not found: {path}")
    _setup_cuda_env()
    build_dir = cache_dir("torch_extensions", f"{name}-{_digest([*sources, *headers], cuda_flags)}")
    loud = verbose and _is_rank_zero()
    if _is_rank_zero() and not any(build_dir.glob(f"{name}.*")):
        print(f"Compiling extension {name!r} into {build_dir} (first use: a minute or two) ...",
              file=sys.stderr, flush=True)
    with _file_lock(build_dir.with_name(build_dir.name + ".lock")) as locked:
        if locked:
            # Older torch versions guard the build with a baton file whose mere existence blocks; one
            # left by a killed build would hang every later load. Holding our lock, nobody else is
            # building here, so any such file is stale (newer torch uses an OS lock: removal is harmless).
            (build_dir / "lock").unlink(missing_ok=True)
        quiet = contextlib.nullcontext() if loud else _silence_stdout()
        with quiet:
            return cpp_ext.load(name=name, sources=[str(s) for s in sources], extra_cuda_cflags=cuda_flags,
                                extra_include_paths=sorted({str(h.parent) for h in headers}),
                                build_directory=str(build_dir), verbose=loud)


@contextlib.contextmanager
def _silence_stdout() -> Iterator[None]:
    """Keep ninja's progress lines off the console (errors still reach the raised exception)."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def load_op(op: str, verbose: bool = False) -> types.ModuleType:
    """Build/load the extension of one op in `torch_utils/ops` ('bias_act' or 'upfirdn2d')."""
    return get_plugin(f"spatialgan_{op}", ops_sources(op), ops_headers(op), verbose=verbose)


def build_all(ops: Sequence[str] = ("bias_act", "upfirdn2d"), verbose: bool = False) -> dict[str, str | None]:
    """Compile every op; returns op -> None on success or the reason it failed."""
    results: dict[str, str | None] = {}
    for op in ops:
        try:
            load_op(op, verbose=verbose)
            results[op] = None
        except BuildError as err:
            results[op] = summarize_error(err.__cause__ or err)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compile SpatialGAN's CUDA ops (nvcc + ninja).")
    parser.add_argument("--build", action="store_true", help="compile bias_act and upfirdn2d")
    parser.add_argument("--verbose", action="store_true", help="show the compiler output")
    args = parser.parse_args(argv)
    if not args.build:
        parser.print_help()
        return 2
    results = build_all(verbose=args.verbose)
    for op, reason in results.items():
        print(f"{op}: ok" if reason is None else f"{op}: failed ({reason})", flush=True)
    return 0 if all(reason is None for reason in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
