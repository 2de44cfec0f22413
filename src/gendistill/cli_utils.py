"""Helpers shared by every sub-command: one-line user errors, the console, dtype names."""

from __future__ import annotations

import functools

import torch
import typer
from rich.console import Console

from gendistill.errors import GendistillError

console = Console(stderr=False)
err_console = Console(stderr=True)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


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

    return wrapper


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise GendistillError(f"unknown dtype {name!r}; use one of {', '.join(sorted(DTYPES))}") from None


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"

