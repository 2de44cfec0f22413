"""What the reports of ``gendistill eval`` and ``gendistill ablate`` share: numbers as table cells (shares as
percentage points, ``–`` for a missing value), matplotlib figures as PNG bytes (plots are optional: without
matplotlib a report has none), and the report files written atomically (``<stem>.json``, ``<stem>.md`` and the
plots)."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gendistill.io import atomic_write_bytes, atomic_write_json, atomic_write_text

MISSING = "–"


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def pct(x: float | None, digits: int = 1) -> str:
    """A share in [0, 1] as percentage points (``0.4567`` -> ``45.7``); ``–`` for None or NaN."""
    return MISSING if _missing(x) else f"{100 * x:.{digits}f}"


def num(x: float | None, digits: int = 3) -> str:
    """A plain number with ``digits`` decimals; ``–`` for None or NaN."""
    return MISSING if _missing(x) else f"{x:.{digits}f}"


def pyplot() -> Any | None:
    """``matplotlib.pyplot`` on the Agg backend (files, no display), or None where matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: PLC0415  (heavy, and plots are optional: imported only to draw one)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415  (the same)
    except Exception:  # noqa: BLE001 - the plot is optional
        return None
    return plt


def spread_labels(values: list[float], gap: float) -> list[float]:
    """Heights for labels placed beside points at ``values`` (same order), moved apart so that no two are closer than
    ``gap``: each label as near its point as the labels below it allow, the whole stack then shifted down by half its
    overshoot so that it stays centred on the points it names."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    last = -math.inf
    for i in order:
        out[i] = last = max(values[i], last + gap)
    if values:
        shift = (max(out) - max(values)) / 2
        out = [y - shift for y in out]
    return out


def figure_png(fig: Any, dpi: int) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    pyplot().close(fig)
    return buf.getvalue()


def write_report_files(out_dir: str | Path, stem: str, data: dict[str, Any], markdown: Callable[[], str],
                       plots: dict[str, tuple[str, Callable[[], bytes | None]]]) -> dict[str, str]:
    """Write ``<stem>.json`` (``data``), ``<stem>.md`` (``markdown()``) and each plot ``{key: (file name, draw())}``
    that draws (``draw()`` not None), each atomically, in that order; returns ``{"json": path, "markdown": path,
    key: path, ...}``."""
    out = Path(out_dir)
    paths = {"json": str(out / f"{stem}.json"), "markdown": str(out / f"{stem}.md")}
    atomic_write_json(paths["json"], data)
    atomic_write_text(paths["markdown"], markdown())
    for key, (name, draw) in plots.items():
        png = draw()
        if png is not None:
            paths[key] = str(out / name)
            atomic_write_bytes(paths[key], png)
    return paths


__all__ = ["MISSING", "figure_png", "num", "pct", "pyplot", "write_report_files"]
