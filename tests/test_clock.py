"""gendistill.clock: the seconds a user has waited since the command started, imports included."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the process start is read from /proc")
def test_seconds_count_from_the_process_start_not_from_the_import():
    """A process that sleeps 1.5 s before importing the clock reads at least that much; and no more than it has run
    (the boot time in /proc is whole seconds: one second of slack)."""
    code = ("import time; time.sleep(1.5)\n"
            "from gendistill.clock import seconds_since_start\n"
            "print(seconds_since_start())")
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    wall = time.time() - t0
    seconds = float(out.stdout.strip())
    assert 1.0 <= seconds <= wall + 1.0, (seconds, wall)  # the import-time fallback would read about 0
