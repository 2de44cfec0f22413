"""A progress bar for long loops (tqdm on stderr, silent when disabled or when stderr is not wanted)."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


class _Null:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass


def progress(total: int, desc: str, enabled: bool = True, unit: str = "ex"):
    """A bar over ``total`` items counted in ``unit`` (its rate reads e.g. ``412 ex/s``)."""
    if not enabled or os.environ.get("GENDISTILL_NO_PROGRESS"):
        return _Null()
    return tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True, mininterval=2.0, unit=unit)
