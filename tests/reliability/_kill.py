"""Run ``gendistill`` and SIGKILL it (in a forked child of the test, or as a script) at a chosen point, as a crash or an out-of-memory kill would:

    python -m tests.reliability._kill step N distill RECIPE      # inside the N-th optimizer step (of any stage)
    python -m tests.reliability._kill checkpoint N distill ...   # in the N-th checkpoint write, weights written,
                                                                 # manifest not yet
"""

from __future__ import annotations

import os
import signal
import sys


def main() -> None:
    run_and_kill(sys.argv[1], int(sys.argv[2]), sys.argv[3:])


def run_and_kill(mode: str, n: int, args: list[str]) -> None:
    """Patch the kill point in, then run the CLI with ``args`` in this process (which dies at the kill point)."""
    count = 0

    def maybe_die() -> None:
        nonlocal count
        count += 1
        if count == n:
            os.kill(os.getpid(), signal.SIGKILL)

    if mode == "step":
        import torch

        orig = torch.optim.AdamW.step

        def step(self, *a, **k):
            maybe_die()
            return orig(self, *a, **k)

        torch.optim.AdamW.step = step
    elif mode == "checkpoint":
        import gendistill.distill.checkpoint as ck

        orig_manifest = ck.write_manifest

        def write_manifest(folder):
            maybe_die()
            return orig_manifest(folder)

        ck.write_manifest = write_manifest
    else:
        raise SystemExit(f"unknown mode {mode}")
    from gendistill.cli import app

    app(args, prog_name="gendistill")


if __name__ == "__main__":
    main()
