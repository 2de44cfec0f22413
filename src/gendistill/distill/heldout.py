"""The trainer's held-out fidelity of the logit stages (3a, 3b): at every held-out evaluation, teacher-forced top-1
agreement and KL(teacher ‖ student) on the stage's held-out rows, computed by
:func:`gendistill.eval.heldout.heldout_fidelity` — the function ``gendistill eval --fidelity-heldout``, the demo and
``tools/e2e.py`` call — and the rows written to ``<output_dir>/heldout/<stage>.safetensors`` so the evaluator scores
exactly these rows."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable

import torch

from gendistill.distill.config import StageConfig
from gendistill.distill.data import PackedSequence, collate
from gendistill.distill.stage_facts import STAGES
from gendistill.eval.heldout import heldout_fidelity, save_heldout_rows


def heldout_file(run_dir: Path, stage_name: str) -> Path:
    """Where a run keeps the held-out rows of ``stage_name``."""
    return Path(run_dir) / "heldout" / f"{stage_name}.safetensors"


def stage_heldout_rows(stage: StageConfig, eval_seqs: list[PackedSequence]) -> dict[str, torch.Tensor] | None:
    """The held-out rows (``[N, T]``, :func:`collate`) a logit stage's fidelity is computed on; None for the
    hidden-state stages (1, 2) and a stage without held-out sequences."""
    if STAGES[stage.name].hidden_state or not eval_seqs:
        return None
    return collate(eval_seqs)


def save_stage_rows(run_dir: Path, stage: StageConfig, rows: dict[str, torch.Tensor]) -> Path:
    """Write ``rows`` to :func:`heldout_file` (the main rank calls it), with what they are in the header."""
    meta = {"stage": stage.name, "seq_len": stage.seq_len, "training_masking": stage.masking,
            "scored": "responses of chat / prompt-response documents, every token of text",
            "eval_sequences": stage.eval_sequences}
    keep = {k: rows[k] for k in ("input_ids", "position_ids", "loss_mask", "labels")}
    return save_heldout_rows(heldout_file(run_dir, stage.name), keep, meta)


def stage_fidelity(student: torch.nn.Module, teacher: torch.nn.Module, rows: dict[str, torch.Tensor],
                   batch_rows: int, autocast: contextlib.AbstractContextManager,
                   root: Callable[..., Any] | None = None,
                   loss_fn: Callable[..., torch.Tensor] | None = None) -> dict[str, Any]:
    """:func:`heldout_fidelity` of ``student`` against ``teacher`` on ``rows`` in eval mode under ``autocast``; under
    FSDP2 inside the sharded root's forward (``root``: it gathers the root-owned parameters, see
    :class:`gendistill.distill.fsdp.ShardedRoot`). ``loss_fn``: the stage's loss from hidden states
    (:meth:`gendistill.distill.stages.Stage3Module.hidden_loss`), whose held-out mean comes back as ``loss``."""
    was = student.training
    student.eval()
    try:
        with autocast:
            fn = lambda: heldout_fidelity(teacher, student, rows, batch_rows=batch_rows, loss_fn=loss_fn)  # noqa: E731
            return root(fn) if root is not None else fn()
    finally:
        student.train(was)
