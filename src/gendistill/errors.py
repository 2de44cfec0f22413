"""User-facing errors. Anything a user can cause (a missing file, a malformed line, an unknown config key, an
unsupported architecture, a bad layer index) raises a subclass of :class:`GendistillError` with one line that names
what is wrong and where. The CLI prints that line and exits with status 2; tracebacks are kept for real bugs."""

from __future__ import annotations


class GendistillError(Exception):
    """Base class: the message is one line that says what is wrong and where."""


class UnsupportedModelError(GendistillError):
    """The teacher's architecture is not one we can convert."""


class LayerSpecError(GendistillError):
    """A layer specification (``--attention-layers``) is malformed or out of range."""


class DataError(GendistillError):
    """A data or task file is missing, empty or malformed."""


class ConfigError(GendistillError):
    """A recipe or task definition has an unknown key or a bad value."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (or its type name), shortened to ``limit`` characters: what
    a one-line error says about a library's multi-line one."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text
