"""Learning-rate schedules as pure functions of the step (so the state to checkpoint is the step alone)."""

from __future__ import annotations

import math

from gendistill.distill.config import OptimConfig


def warmup_steps(cfg: OptimConfig, total: int) -> int:
    if cfg.warmup_steps is not None:
        return min(cfg.warmup_steps, total)
    return min(total, int(round(cfg.warmup_ratio * total)))


def lr_factor(step: int, total: int, cfg: OptimConfig) -> float:
    """Multiplier of the peak LR for optimizer step ``step`` (0-based) of ``total``.

    * warmup: linear from 1/W to 1 over the first W steps;
    * ``wsd``: constant, then over the last ``decay_ratio`` of the steps down to ``min_lr_ratio`` (linear, cosine or
      sqrt shape), reaching it at the last step;
    * ``cosine``: cosine from 1 to ``min_lr_ratio`` over the steps after warmup;
    * ``constant``: 1 after warmup.
    """
    W = warmup_steps(cfg, total)
    if step < W:
        return (step + 1) / W
    lo = cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine":
        span = max(1, total - W - 1)
        x = min(1.0, (step - W) / span)
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * x))
    # wsd
    D = int(round(cfg.decay_ratio * total))
    start = total - D
    if D <= 0 or step < start:
        return 1.0
    x = min(1.0, (step - start + 1) / D)
    if cfg.decay_shape == "linear":
        f = 1 - x
    elif cfg.decay_shape == "cosine":
        f = 0.5 * (1 + math.cos(math.pi * x))
    else:
        f = 1 - math.sqrt(x)
    return lo + (1 - lo) * f


def set_lr(optimizer, step: int, total: int, cfg: OptimConfig) -> float:
    lr = cfg.lr * lr_factor(step, total, cfg)
    for g in optimizer.param_groups:
        g["lr"] = lr
    return lr
