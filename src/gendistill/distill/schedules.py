"""Learning-rate schedules: transformers' schedule helpers, read as pure functions of the step (so the state to
checkpoint is the step alone; nothing of a ``LambdaLR`` is saved).

Optimizer step ``s`` (0-based) of ``total`` trains with ``lr * lr_factor(s, total, cfg)``:

* warmup (the first ``W`` steps): ``(s + 1) / W`` -- transformers' ``get_constant_schedule_with_warmup`` at ``s + 1``,
  so the first update already moves the weights (a ``LambdaLR`` stepped after each update gives the first one lr 0);
* ``constant``: 1 after warmup;
* ``cosine``: transformers' ``get_wsd_schedule`` decay (cosine from 1 to ``min_lr_ratio``) over the
  ``total - W - 1`` steps after the first post-warmup step, reaching ``min_lr_ratio`` at the last step;
* ``wsd``: 1, then over the last ``D = round(decay_ratio * total)`` steps down to ``min_lr_ratio`` (``linear``,
  ``cosine`` or ``sqrt`` = transformers' ``"1-sqrt"``), again transformers' ``get_wsd_schedule`` decay, reaching
  ``min_lr_ratio`` at the last step.

Why a thin wrapper stays instead of handing the optimizer to ``get_wsd_schedule(num_warmup_steps=W, ...)``: that
helper's warmup rises from ``min_lr_ratio`` (not from ``1/W``) and is 0 at its step 0, and a recipe's warmup must not
depend on the floor it decays to. The wrapper therefore takes the warmup from ``get_constant_schedule_with_warmup``
and the rest from ``get_wsd_schedule`` with no warmup of its own; the numbers are those of gendistill's earlier
hand-written formulas (``tests/distill/test_distill_schedules.py`` checks every step against them).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import get_constant_schedule_with_warmup, get_wsd_schedule

from gendistill.distill.config import OptimConfig

_DECAY_TYPES = {"linear": "linear", "cosine": "cosine", "sqrt": "1-sqrt"}


def warmup_steps(cfg: OptimConfig, total: int) -> int:
    if cfg.warmup_steps is not None:
        return min(cfg.warmup_steps, total)
    return min(total, int(round(cfg.warmup_ratio * total)))


def _lambda(make: Callable[..., torch.optim.lr_scheduler.LambdaLR], **kw) -> Callable[[int], float]:
    """The multiplier function of a transformers schedule helper (built on a throwaway optimizer)."""
    dummy = torch.optim.SGD([torch.nn.Parameter(torch.zeros(()))], lr=1.0)
    return make(dummy, **kw).lr_lambdas[0]


def lr_schedule(cfg: OptimConfig, total: int) -> Callable[[int], float]:
    """``step -> multiplier of the peak lr`` for a stage of ``total`` optimizer steps (see the module docstring)."""
    W = warmup_steps(cfg, total)
    warm = _lambda(get_constant_schedule_with_warmup, num_warmup_steps=W)
    lo = cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return lambda step: warm(step + 1)
    if cfg.schedule == "cosine":
        # decay over the steps after the first post-warmup one; at least one step so a one-step tail stays at 1
        decay = _lambda(get_wsd_schedule, num_warmup_steps=0, num_stable_steps=0,
                        num_decay_steps=max(1, total - W - 1), decay_type="cosine", min_lr_ratio=lo)
    else:
        D = int(round(cfg.decay_ratio * total))
        if D <= 0:
            return lambda step: warm(step + 1)
        # the stable phase ends one step before the old formula's first decayed step (transformers' decay starts
        # at 1.0); it may be negative when the decay overlaps the warmup, which the helper's arithmetic handles
        decay = _lambda(get_wsd_schedule, num_warmup_steps=0, num_stable_steps=total - D - W - 1,
                        num_decay_steps=D, decay_type=_DECAY_TYPES[cfg.decay_shape], min_lr_ratio=lo)
    return lambda step: warm(step + 1) if step < W else decay(step - W)


def lr_factor(step: int, total: int, cfg: OptimConfig) -> float:
    """Multiplier of the peak LR for optimizer step ``step`` (0-based) of ``total``."""
    return lr_schedule(cfg, total)(step)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> float:
    """Set every parameter group's learning rate to ``lr``; returns it."""
    for g in optimizer.param_groups:
        g["lr"] = lr
    return lr
