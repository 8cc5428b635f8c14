"""Shared behaviour of the command-line scripts."""

from __future__ import annotations

import functools
import os

import click


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
                text = str(err).strip().strip("'\"")
                raise click.ClickException(text.splitlines()[0] if text else type(err).__name__) from None

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
