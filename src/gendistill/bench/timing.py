"""Timing helpers: CUDA events on GPU, ``time.perf_counter`` on CPU; warm-up first, median of repeats."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call in milliseconds. On CUDA: events around the call, measured after a full sync so that
    queued work from before is not billed to ``fn``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


@dataclass
class Timing:
    median_ms: float
    all_ms: list[float] = field(default_factory=list)
    warmup_ms: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"median_ms": self.median_ms, "all_ms": self.all_ms, "warmup_ms": self.warmup_ms}


def measure(
    fn: Callable[[], object],
    device: torch.device,
    warmup: int = 1,
    repeats: int = 3,
    budget_s: float | None = None,
    setup: Callable[[], object] | None = None,
) -> Timing:
    """Run ``fn`` ``warmup`` times untimed (timed anyway for the record), then up to ``repeats`` timed runs;
    report the median. ``setup`` (untimed) runs before every call. If ``budget_s`` is given, the number of timed
    runs is cut so that they fit it (at least one). The cut is estimated from the first *timed* run, never from a
    warm-up: a warm-up may include one-off costs (Triton autotuning for a new shape took 11-17 s on an H200 against
    ~0.1 s per prefill), and estimating from it left the student one timed run where the teacher had three."""
    warm = []
    for _ in range(warmup):
        if setup:
            setup()
        warm.append(time_once_ms(fn, device))
    times: list[float] = []
    n = repeats
    while len(times) < n:
        if setup:
            setup()
        times.append(time_once_ms(fn, device))
        if budget_s is not None and len(times) == 1:
            n = runs_within_budget(times[0], repeats, budget_s)
    return Timing(statistics.median(times), times, warm)


def runs_within_budget(run_ms: float, repeats: int, budget_s: float) -> int:
    """How many timed runs of ``run_ms`` each fit ``budget_s`` seconds, between 1 and ``repeats``."""
    return max(1, min(repeats, int(budget_s // (max(run_ms, 1e-3) / 1e3))))
