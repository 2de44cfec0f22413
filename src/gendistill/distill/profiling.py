"""One training step under ``torch.profiler``: where its time goes, op by op. The trainer profiles a chosen step of
every stage (``run.profile_step``), ``benchmarks/train_throughput.py --profile`` a step of each of its rows; both
write the same table through :func:`profile_call`.

The table (``<name>.txt``) lists ops by their own device time on CUDA (CPU time elsewhere), with calls and averages:
``torch.profiler``'s ``key_averages().table``. The returned summary (the 15 largest, each with its share) is what the
benchmark's JSON and the trainer's metrics record.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch.profiler import ProfilerActivity, profile

T = TypeVar("T")

#: rows of the written table
TABLE_ROWS = 60
#: ops in the returned summary
TOP_OPS = 15


def profile_call(fn: Callable[[], T], folder: Path, name: str, device: torch.device) -> tuple[T, dict[str, Any]]:
    """Run ``fn()`` under ``torch.profiler`` (CPU, and CUDA on a CUDA ``device``, synchronised before the profile
    ends) and write ``folder/<name>.txt``. Returns ``(fn's result, summary)``, the summary being ``{"table": file
    name, "total_ms": the ops' total own time, "top": [{"op", "ms", "share"}, ...]}``."""
    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        out = fn()
        if cuda:
            torch.cuda.synchronize(device)
    avgs = prof.key_averages()
    folder.mkdir(parents=True, exist_ok=True)
    table = folder / f"{name}.txt"
    table.write_text(avgs.table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total",
                                row_limit=TABLE_ROWS) + "\n", encoding="utf-8")
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    total = sum(getattr(e, attr, 0) for e in avgs) or 1
    rows = sorted(avgs, key=lambda e: getattr(e, attr, 0), reverse=True)[:TOP_OPS]
    return out, {"table": table.name, "total_ms": total / 1e3,
                 "top": [{"op": e.key, "ms": getattr(e, attr, 0) / 1e3, "share": getattr(e, attr, 0) / total}
                         for e in rows]}


__all__ = ["profile_call"]
