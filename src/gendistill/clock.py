"""How long this process has been running: the wall seconds a user waits from typing a command to its first
optimizer step (Python's and torch's imports, loading, compiling and autotuning included), which the ``[distill]``
notes and the first step's progress line print. Linux reads the start from ``/proc``; elsewhere the time this module
was first imported stands in (later than the real start, by the imports before it)."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

_IMPORTED_AT = time.time()


@functools.cache
def process_started_at() -> float:
    """The epoch time this process started: ``/proc/self/stat``'s start time (clock ticks after boot) plus the boot
    time of ``/proc/stat`` (whole seconds, so within about a second); where those cannot be read, the first import of
    this module. Read once: it does not change."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat(5): after pid and (comm)
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED_AT


def seconds_since_start() -> float:
    """Wall seconds since :func:`process_started_at` (never negative)."""
    return max(0.0, time.time() - process_started_at())
