"""Shared behaviour of the command-line scripts."""

from __future__ import annotations

import functools
import math
import os

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
