"""The timer's repeat count: cut to the budget by what a timed run costs, not by a warm-up's one-off costs."""

from __future__ import annotations

import time

import torch

from gendistill.bench.timing import measure, runs_within_budget

CPU = torch.device("cpu")


class SlowFirstCall:
    """Sleeps ``first_s`` on its first call (a warm-up that autotunes kernels for a new length), ``later_s`` after."""

    def __init__(self, first_s: float, later_s: float):
        self.first_s, self.later_s, self.calls = first_s, later_s, 0

    def __call__(self) -> None:
        time.sleep(self.first_s if self.calls == 0 else self.later_s)
        self.calls += 1


def test_repeats_follow_the_timed_runs_not_a_slow_warmup():
    """A 0.4 s warm-up against a 0.15 s budget used to leave one timed run; the runs themselves take ~5 ms, so all
    three fit, as they do for a model with no autotuning (the teacher)."""
    fn = SlowFirstCall(first_s=0.4, later_s=0.005)
    t = measure(fn, CPU, warmup=1, repeats=3, budget_s=0.15)
    assert len(t.warmup_ms) == 1 and t.warmup_ms[0] >= 400
    assert len(t.all_ms) == 3, t.all_ms
    assert fn.calls == 4
    assert t.median_ms < 100  # the median of the fast runs, never the warm-up


def test_budget_still_cuts_runs_that_are_long_themselves():
    fn = SlowFirstCall(first_s=0.12, later_s=0.12)  # every run longer than half the budget
    t = measure(fn, CPU, warmup=1, repeats=3, budget_s=0.2)
    assert len(t.all_ms) == 1 and fn.calls == 2


def test_no_budget_runs_every_repeat():
    fn = SlowFirstCall(first_s=0.05, later_s=0.05)
    t = measure(fn, CPU, warmup=0, repeats=3, budget_s=None)
    assert len(t.all_ms) == 3 and t.warmup_ms == []


def test_runs_within_budget():
    assert runs_within_budget(79.4, 3, 6.0) == 3  # the student's 8K prefill on an H200 (docs/results)
    assert runs_within_budget(2500.0, 3, 6.0) == 2
    assert runs_within_budget(4088.8, 3, 6.0) == 1  # the teacher's 128K prefill: one run is all the budget holds
    assert runs_within_budget(0.0, 3, 6.0) == 3
