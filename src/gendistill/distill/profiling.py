"""One training step under ``torch.profiler``: where its time goes, op by op. The trainer profiles a chosen step of
every stage (``run.profile_step``), ``benchmarks/train_throughput.py --profile`` a step of each of its rows; both
write the same table through :func:`profile_call`.

The table (``<name>.txt``) has three parts: the step's **phases** (:func:`phase` ranges the trainer and the stage
modules open: input copy, forward — the teacher's and the student's forward and the logit loss inside it — backward,
gradient clipping, optimizer), each with the device time (CUDA; CPU time elsewhere) of every op that *started* inside
it on any thread (the backward runs on autograd's thread), counted once; then the ops by their own device time, with
calls and averages (``torch.profiler``'s ``key_averages().table``); then the same ops split by input shapes (which
tensors a copy or an add moves). The returned summary (the phases, and the 15 largest ops, each with its share) is
what the benchmark's JSON and the trainer's metrics record.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

T = TypeVar("T")

#: rows of the written table
TABLE_ROWS = 60
#: rows of the table split by input shapes
SHAPE_ROWS = 40
#: ops in the returned summary
TOP_OPS = 15
#: prefix of the trainer's phase ranges
PHASE_PREFIX = "gendistill::"


def phase(name: str) -> record_function:
    """A profiler range for one phase of a training step (``with phase("backward"): ...``); a few microseconds when
    no profiler runs."""
    return record_function(PHASE_PREFIX + name)


def _on_host(e: Any) -> bool:
    """A host-side event (an op or a range opened on a CPU thread), not a kernel, a copy or a range's copy on the
    device timeline."""
    return e.device_type == DeviceType.CPU


def device_total_us(events: list[Any]) -> float:
    """All kernels' own device time (microseconds), each kernel once: torch's own "Self CUDA time total" (the device
    timeline's events, without the ranges' copies on it)."""
    return sum(e.self_device_time_total for e in events
               if not _on_host(e) and not getattr(e, "is_user_annotation", False))


def phase_times(events: list[Any], cuda: bool) -> dict[str, float]:
    """Milliseconds per phase: the own device time (CUDA: each host op's ``self_device_time_total`` is the kernels it
    launched) or CPU time of every host op that started inside one of the phase's ranges, on any thread (nested ops
    each count their own time once). Only host events count, as ranges and as ops: on CUDA the profiler also lists
    the kernels and each range's copy on the device timeline, which would count every kernel twice. ``events``:
    ``prof.events()``."""
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    host = [e for e in events if _on_host(e)]
    ranges = [(e.name[len(PHASE_PREFIX):], e.time_range.start, e.time_range.end) for e in host
              if e.name.startswith(PHASE_PREFIX)]
    ops = sorted(((e.time_range.start, getattr(e, attr, 0)) for e in host
                  if not e.name.startswith(PHASE_PREFIX)), key=lambda t: t[0])
    starts = [t for t, _ in ops]
    out: dict[str, float] = {}
    for name, lo, hi in ranges:
        i, j = bisect_left(starts, lo), bisect_right(starts, hi)
        out[name] = out.get(name, 0.0) + sum(v for _, v in ops[i:j]) / 1e3
    return out


_TABLE_TOTAL = re.compile(r"^Self CUDA time total:\s*([0-9.]+)\s*(us|ms|s)\s*$", re.M)


def table_device_total_ms(text: str) -> float | None:
    """The device total a written table states (torch's footer ``Self CUDA time total: 491.304ms``, every kernel
    once), in milliseconds; None for a CPU table. The same number as ``total_ms`` of :func:`profile_call` since the
    phases were added; summaries written before counted each kernel twice (its host op and the kernel itself), and
    ``tools/e2e.py`` reads the total from the table instead."""
    m = _TABLE_TOTAL.search(text)
    return None if m is None else float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]


def profile_call(fn: Callable[[], T], folder: Path, name: str, device: torch.device) -> tuple[T, dict[str, Any]]:
    """Run ``fn()`` under ``torch.profiler`` (CPU, and CUDA on a CUDA ``device``, synchronised before the profile
    ends) and write ``folder/<name>.txt``. Returns ``(fn's result, summary)``, the summary being ``{"table": file
    name, "total_ms": the step's own time — on CUDA every kernel once (the table's "Self CUDA time total"), on CPU
    every op —, "phases_ms": :func:`phase_times`, "top": [{"op", "ms", "share"}, ...]}`` (a share is the table's own
    percentage of that total)."""
    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts, record_shapes=True) as prof:
        out = fn()
        if cuda:
            torch.cuda.synchronize(device)
    avgs = prof.key_averages()
    events = list(prof.events())
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    # the device: every kernel once (the table's "Self CUDA time total"); the host: every op, the phase ranges aside
    total = (device_total_us(events) if cuda else
             sum(e.self_cpu_time_total for e in events if not e.name.startswith(PHASE_PREFIX))) or 1
    phases = phase_times(events, cuda)
    sort_by = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    unit = "device" if cuda else "CPU"
    lines = [f"Phases of the step: {unit} time of the ops started inside each (ms; nested phases overlap)", ""]
    lines += [f"  {k:<20} {v:10.3f} ms  {v * 1e3 / total:6.1%}" for k, v in phases.items()]
    lines += ["", f"  {'all ops':<20} {total / 1e3:10.3f} ms", "", "Ops by own time", "",
              avgs.table(sort_by=sort_by, row_limit=TABLE_ROWS), "", "Ops by own time and input shapes", "",
              prof.key_averages(group_by_input_shape=True).table(sort_by=sort_by, row_limit=SHAPE_ROWS), ""]
    folder.mkdir(parents=True, exist_ok=True)
    table = folder / f"{name}.txt"
    table.write_text("\n".join(lines), encoding="utf-8")
    rows = sorted((e for e in avgs if not e.key.startswith(PHASE_PREFIX)), key=lambda e: getattr(e, attr, 0),
                  reverse=True)[:TOP_OPS]
    return out, {"table": table.name, "total_ms": total / 1e3, "phases_ms": phases,
                 "top": [{"op": e.key, "ms": getattr(e, attr, 0) / 1e3, "share": getattr(e, attr, 0) / total}
                         for e in rows]}


__all__ = ["device_total_us", "phase", "phase_times", "profile_call", "table_device_total_ms"]
