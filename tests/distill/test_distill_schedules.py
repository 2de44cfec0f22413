"""The learning-rate schedules (transformers' helpers behind a thin wrapper) give, at every step, the numbers of
gendistill's earlier hand-written formulas, written out again here from their definition."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from gendistill.distill.config import OptimConfig
from gendistill.distill.schedules import lr_factor, lr_schedule, set_lr


def formula(step: int, total: int, cfg: OptimConfig) -> float:
    """The previous implementation: linear warmup from 1/W; wsd decays over the last round(decay_ratio * total)
    steps, reaching min_lr_ratio at the last step; cosine decays over the steps after warmup."""
    W = cfg.warmup_steps if cfg.warmup_steps is not None else int(round(cfg.warmup_ratio * total))
    W = min(W, total)
    if step < W:
        return (step + 1) / W
    lo = cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine":
        x = min(1.0, (step - W) / max(1, total - W - 1))
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * x))
    D = int(round(cfg.decay_ratio * total))
    start = total - D
    if D <= 0 or step < start:
        return 1.0
    x = min(1.0, (step - start + 1) / D)
    f = {"linear": 1 - x, "cosine": 0.5 * (1 + math.cos(math.pi * x)), "sqrt": 1 - math.sqrt(x)}[cfg.decay_shape]
    return lo + (1 - lo) * f


CASES = [
    dict(schedule=s, warmup_ratio=w, decay_ratio=d, decay_shape=shape, min_lr_ratio=lo)
    for s, w, d, shape, lo in itertools.product(
        ["wsd", "cosine", "constant"], [0.0, 0.1, 0.5], [0.0, 0.1, 0.3, 1.0], ["linear", "cosine", "sqrt"], [0.0, 0.02]
    )
] + [dict(schedule=s, warmup_steps=ws) for s in ("wsd", "cosine") for ws in (0, 1, 5, 49, 50, 80)]


@pytest.mark.parametrize("total", [1, 2, 3, 7, 50, 101])
def test_every_step_equals_the_formula(total):
    for kw in CASES:
        cfg = OptimConfig(lr=1.0, **kw)
        sched = lr_schedule(cfg, total)
        got = [sched(s) for s in range(total)]
        want = [formula(s, total, cfg) for s in range(total)]
        # the helpers compute the same expressions in float64, in another order: a few ulps apart at most
        assert got == pytest.approx(want, rel=1e-12, abs=1e-15), (kw, total)
        assert lr_factor(total - 1, total, cfg) == pytest.approx(want[-1], rel=1e-12, abs=1e-15)


def test_first_update_moves_and_last_reaches_the_floor():
    cfg = OptimConfig(lr=3e-4, schedule="wsd", warmup_steps=4, decay_ratio=0.2, min_lr_ratio=0.1, decay_shape="sqrt")
    f = [lr_factor(s, 20, cfg) for s in range(20)]
    assert f[0] == pytest.approx(0.25)  # not 0 (a LambdaLR stepped after the update) nor min_lr_ratio
    assert f[-1] == pytest.approx(0.1)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    assert set_lr(opt, cfg.lr * f[3]) == pytest.approx(3e-4) and opt.param_groups[0]["lr"] == pytest.approx(3e-4)
