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
