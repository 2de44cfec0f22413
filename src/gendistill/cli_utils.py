"""Helpers shared by every sub-command: the one user-error handler and the consoles. (Device and dtype names:
:mod:`gendistill.devices`.)"""

from __future__ import annotations

import functools
import os
import time

import typer
from rich.console import Console
from rich.markup import escape

from gendistill.errors import GendistillError
from gendistill.io import storage_error_line

console = Console(stderr=False)
err_console = Console(stderr=True)

RANK_ERROR_GRACE_S = 5.0


def error_prefix(grace_s: float = RANK_ERROR_GRACE_S) -> str:
    """Called by a rank about to print a user error and exit. Rank 0 (or a single process) prints at once. Every
    check of the run is made on every rank with the same inputs (recipe, data, all-reduced loss, DCP's gathered
    write errors), so the same error usually stops all ranks: another rank first waits ``grace_s`` seconds, in which
    the launcher (torchrun / accelerate launch, which stop every worker ~0.1 s after the first one exits) ends it
    after rank 0 has reported. An error only that rank saw (rank 0 is then blocked in a collective) is printed after
    the wait, prefixed ``[rank N]``; the launcher then stops the others. One message either way. (The rank comes from
    the launcher's environment, ``RANK`` and ``WORLD_SIZE``.)"""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or rank == 0:
        return ""
    time.sleep(grace_s)
    return f"[rank {rank}] "


def user_errors(fn):
    """Decorate a command: a :class:`GendistillError` prints ``error: <one line>`` on stderr and exits with status 2
    (no traceback), and so does a write the storage refused (full, over quota, read-only); any other exception is a
    bug and keeps its traceback. Under a launcher with several ranks the error is printed once (see
    :func:`error_prefix`)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GendistillError as e:
            # escaped: a message quotes what the user typed, e.g. stages[stage3a].tokens, which is not markup
            err_console.print(f"[bold red]error:[/] {escape(error_prefix() + str(e))}", highlight=False,
                              soft_wrap=True)
            raise typer.Exit(2) from None
        except Exception as e:  # a write the storage refused (disk full, quota, read-only) anywhere: one line too
            line = storage_error_line(e)
            if line is None:
                raise
            err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    wrapper.__gendistill_errors__ = True  # type: ignore[attr-defined]
    return wrapper
