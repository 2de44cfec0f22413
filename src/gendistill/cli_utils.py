"""Helpers shared by every sub-command: the one user-error handler and the consoles. (Device and dtype names:
:mod:`gendistill.devices`.)"""

from __future__ import annotations

import functools

import typer
from rich.console import Console

from gendistill.errors import GendistillError

console = Console(stderr=False)
err_console = Console(stderr=True)


def user_errors(fn):
    """Decorate a command: a :class:`GendistillError` prints ``error: <one line>`` on stderr and exits with status 2
    (no traceback), and so does a write the storage refused (full, over quota, read-only); any other exception is a
    bug and keeps its traceback. Under a launcher with several ranks the error is printed once (see
    :func:`gendistill.distill.distributed.error_prefix`)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GendistillError as e:
            from gendistill.distill.distributed import error_prefix

            err_console.print(f"[bold red]error:[/] {error_prefix()}{e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except Exception as e:  # a write the storage refused (disk full, quota, read-only) anywhere: one line too
            from gendistill.io import storage_error_line

            line = storage_error_line(e)
            if line is None:
                raise
            err_console.print(f"[bold red]error:[/] {line}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    wrapper.__gendistill_errors__ = True  # type: ignore[attr-defined]
    return wrapper
