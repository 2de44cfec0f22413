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
    (no traceback); any other exception is a bug and keeps its traceback. Under a launcher with several ranks the
    error is printed once (see :func:`gendistill.distill.distributed.error_prefix`)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GendistillError as e:
            from gendistill.distill.distributed import error_prefix

            err_console.print(f"[bold red]error:[/] {error_prefix()}{e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    wrapper.__gendistill_errors__ = True  # type: ignore[attr-defined]
    return wrapper
