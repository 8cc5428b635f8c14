"""Shared behaviour of the command-line scripts."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import tempfile

import click


def error_text(err: BaseException) -> str:
    """The first line of an exception's message, for a one-line `Error: ...`. A KeyError's str() is the
    repr of its key (quoted), so its key is used as is; other messages keep their quotes."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0].strip() if lines else type(err).__name__


class FiniteFloatRange(click.FloatRange):
    """click.FloatRange that also refuses nan and +-inf (comparisons with nan are all false, so a plain
    FloatRange lets it through)."""

    name = "float range"

    def convert(self, value, param, ctx):
        out = super().convert(value, param, ctx)
        if not math.isfinite(out):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return out

    def _describe_range(self) -> str:
        # click would print "x<=None" for an unbounded range.
        if self.min is None and self.max is None:
            return "finite"
        return super()._describe_range()


@contextlib.contextmanager
def interrupt_on_sigterm():
    """Inside: SIGTERM (`kill`, a cluster's time limit) raises KeyboardInterrupt('SIGTERM') like Ctrl-C
    does, so that cleanup code (temporary files, logs) runs instead of the process just vanishing."""
    def interrupted(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    try:
        previous = signal.signal(signal.SIGTERM, interrupted)
    except ValueError:  # not the main thread: signals cannot be caught here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def expand_paths(args: dict, *keys: str) -> None:
    """`~` in the path options `keys` (the shell expands it only at the start of a word, not after
    `--outdir=`); built-in `synthetic:` datasets and URLs are left alone."""
    for key in keys:
        value = args.get(key)
        if isinstance(value, str) and value.startswith("~"):
            args[key] = os.path.expanduser(value)


def user_errors(*errors: type[BaseException]):
    """Decorator for a click command's body: the given exceptions (default ValueError, OSError — what bad
    input raises at our boundaries) become one `Error: ...` line with exit status 1 instead of a
    traceback. `SPATIALGAN_DEBUG=1` re-raises them with the traceback."""
    errors = errors or (ValueError, OSError)

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except click.ClickException:
                raise
            except errors as err:
                if os.environ.get("SPATIALGAN_DEBUG"):
                    raise
                raise click.ClickException(error_text(err)) from None

        return inner

    return wrap


def pick_device(name: str, local_rank: int = 0):
    """`--device=auto|cpu|cuda` -> torch.device (auto: CUDA when available). On CUDA the process is bound
    to GPU `local_rank` (torchrun's LOCAL_RANK)."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise click.ClickException("--device=cuda but no CUDA device is available")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(name)


def check_seeds(seeds: list[int], option: str, heatmap: bool = False) -> list[int]:
    """Latent seeds must fit NumPy's RandomState, [0, 2^32); heatmap seeds torch.Generator, [0, 2^64)."""
    limit, what = (64, "torch.Generator") if heatmap else (32, "NumPy RandomState")
    bad = [s for s in seeds if s >= 2**limit]
    if bad:
        raise click.ClickException(f"{option}: seed {bad[0]} out of range [0, 2^{limit}) ({what} seeds)")
    return seeds


def prepare_outdir(outdir: str) -> None:
    """Create --outdir and prove it is writable (create and remove a temporary file there), so that a bad
    directory fails before anything is generated, with the option named."""
    try:
        os.makedirs(outdir, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=outdir, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        reason = e.strerror or str(e)
        raise click.ClickException(f"--outdir={outdir}: cannot create or write to this directory ({reason})") from None
