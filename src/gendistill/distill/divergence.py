"""A diverged stage: which tensor is not finite, and which checkpoint to continue from (the loss its weights gave
says whether it is usable; newer ones are set aside so that ``--resume`` skips them)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from torch import nn

from gendistill.distill.checkpoint import checkpoint_step, list_checkpoints
from gendistill.errors import GendistillError


class TrainingDivergedError(GendistillError):
    """The loss became NaN or infinite; the run stopped without writing a checkpoint of the bad step."""


def first_non_finite(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> str | None:
    """The name of the first parameter or optimizer-state tensor holding a NaN or an infinity, or None."""
    named = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
    if optimizer is not None:
        names = {id(p): n for n, p in model.named_parameters()}
        for group in optimizer.param_groups:
            for p in group["params"]:
                for k, v in optimizer.state.get(p, {}).items():
                    if isinstance(v, torch.Tensor) and v.is_floating_point():
                        named.append((f"optimizer state {k} of {names.get(id(p), '?')}", v))
    named = [(n, t.to_local() if hasattr(t, "to_local") else t) for n, t in named]  # FSDP2: this rank's shard
    by_device: dict[torch.device, list[int]] = {}
    for i, (_, t) in enumerate(named):
        by_device.setdefault(t.device, []).append(i)
    for idx in by_device.values():  # one host sync per device
        ok = torch.stack([torch.isfinite(named[i][1].detach()).all() for i in idx]).cpu()
        if not bool(ok.all()):
            return named[idx[int((~ok).nonzero()[0])]][0]
    return None


#: a checkpoint counts as usable when the loss its weights gave is finite and at most this multiple of the loss the
#: stage started at (per-batch losses are noisy; a diverging model's loss grows by orders of magnitude, or to inf/nan)
HEALTHY_LOSS_FACTOR = 4.0
DIVERGED_PREFIX = "diverged-"


def _stage_losses(run_dir: Path, stage: str) -> tuple[dict[int, float], dict[int, float]]:
    """``(training loss by step, held-out loss by step)`` of ``stage`` from the run's ``metrics.jsonl``."""
    train: dict[int, float] = {}
    held: dict[int, float] = {}
    try:
        lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return train, held
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:  # a line cut off by a kill
            continue
        if not isinstance(rec, dict) or rec.get("stage") != stage or not isinstance(rec.get("step"), int):
            continue
        for key, into in (("loss", train), ("eval_loss", held)):
            if isinstance(rec.get(key), (int, float)):
                into[rec["step"]] = float(rec[key])
    return train, held


def _start_level(losses: dict[int, float]) -> float | None:
    """The loss a stage started at: its first finite logged value (the untrained weights' loss; a held-out loss
    logged at step 0)."""
    return next((losses[k] for k in sorted(losses) if math.isfinite(losses[k])), None)


def _evidence(step: int, train: dict[int, float], held: dict[int, float],
              diverged_at: int | None) -> tuple[bool | None, str]:
    """Whether the weights of the checkpoint at ``step`` are usable, judged by the loss they gave: the held-out loss
    logged at ``step`` (computed with exactly these weights), else the training loss logged at step ``step + 1`` (its
    forward pass used these weights). ``(None, "")`` when neither was logged (``log_every`` > 1: a loss logged later
    came from weights trained further, and says nothing about these)."""
    if diverged_at is not None and diverged_at == step + 1:
        return False, f"its weights gave a non-finite loss or gradient at step {diverged_at}"
    if step in held:
        value, start, what = held[step], _start_level(held), f"held-out loss {held[step]:.4g} at step {step}"
    else:
        later = sorted(k for k in train if k > step and (diverged_at is None or k < diverged_at))
        if not later or later[0] != step + 1:  # a later step's loss came from weights trained further
            return None, ""
        value, start, what = train[later[0]], _start_level(train), f"loss {train[later[0]]:.4g} at step {later[0]}"
    if not math.isfinite(value):
        return False, f"its weights gave {what}"
    if start is not None and start > 0 and value > HEALTHY_LOSS_FACTOR * start:
        return False, (f"its weights gave {what}, over {HEALTHY_LOSS_FACTOR:g}x the {start:.4g} the stage started "
                       "at")
    return True, f"its weights gave {what}"


def recovery_hint(last_good: Path | None, diverged_at: int | None = None) -> str:
    """The end of a divergence message: the checkpoint to continue from, and how.

    Finite weights are not enough: weights of 1e30 are finite, and resuming from them repeats the divergence. The
    loss a checkpoint's weights gave says whether they are usable (:func:`_evidence`: finite, and at most
    :data:`HEALTHY_LOSS_FACTOR` times the loss the stage started at). ``diverged_at``: the step whose loss or
    gradient was not finite (None when the loss was finite and the optimizer step overflowed). Checkpoints newer
    than the newest usable one are renamed ``diverged-step-…`` (kept, but skipped by ``--resume``), so that the
    advice -- a lower learning rate and ``--resume`` -- continues from the usable one. Only rank 0 renames."""
    if last_good is None:
        return ("no checkpoint of this stage was written yet; lower the learning rate and rerun with --resume (the "
                "stage starts over; completed stages are kept)")
    stage_dir = last_good.parent
    train, held = _stage_losses(stage_dir.parent.parent, stage_dir.name)
    bad: list[tuple[Path, str]] = []
    good: tuple[Path, str] | None = None
    newest = checkpoint_step(last_good)
    for step, path in reversed(list_checkpoints(stage_dir)):
        if newest is not None and step > newest:
            continue
        ok, why = _evidence(step, train, held, diverged_at)
        if ok is False:
            bad.append((path, why))
            continue
        good = (path, why)
        break
    if bad and int(os.environ.get("RANK", "0")) == 0:
        for path, _ in bad:  # resume skips them from now on; nothing is deleted
            target, n = path.with_name(DIVERGED_PREFIX + path.name), 1
            while target.exists():  # the same step diverged before (an earlier attempt)
                n += 1
                target = path.with_name(f"{DIVERGED_PREFIX}{path.name}-{n}")
            try:
                path.rename(target)
            except OSError:
                pass
    moved = "; ".join(f"{p.name} ({why})" for p, why in bad)
    moved = (f"checkpoint{'s' if len(bad) > 1 else ''} already diverging, renamed {DIVERGED_PREFIX}step-... so that "
             f"--resume skips {'them' if len(bad) > 1 else 'it'}: {moved}; ") if bad else ""
    if good is None:
        return (f"{moved}no kept checkpoint of {stage_dir.name} comes before the divergence; lower the learning rate "
                "and rerun with --resume (the stage starts over; completed stages are kept; keep more with "
                "run.keep_checkpoints)")
    why = f" ({good[1]})" if good[1] else ""
    return (f"{moved}last good checkpoint: {good[0]}{why}; lower the learning rate and rerun with --resume "
            "--allow-optim-change")


def diverged_step_error(stage: str, step: int, loss_val: float, gnorm: float,
                        last_ckpt: Path | None) -> TrainingDivergedError:
    """The error of a step whose loss or gradient norm is not finite (the optimizer did not run)."""
    what = f"loss is {loss_val}" if not math.isfinite(loss_val) else f"gradient norm is {gnorm} (loss {loss_val})"
    return TrainingDivergedError(f"{stage} step {step}: {what}; stopped before the optimizer step "
                                 f"({recovery_hint(last_ckpt, diverged_at=step)})")
