"""``select_layers``: run one method and write ``<out>/layers.json``, which ``gendistill convert --attention-layers
<out>/layers.json`` and a recipe's ``student.attention_layers`` read directly (the ``attention_layers`` key)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from gendistill.errors import ConfigError, GendistillError
from gendistill.io import atomic_write_json
from gendistill.runlock import acquire, check_not_busy
from gendistill.select.config import SelectConfig, fingerprint
from gendistill.select.methods import METHODS
from gendistill.select.session import Session, aligned_source, check_output, prepare_output
from gendistill.teachers import load_teacher_config


def check_against_teacher(cfg: SelectConfig, teacher_config: Any) -> int:
    """The teacher's layer count, after checking that ``--budget`` fits it and ``--seq-len`` / ``--recall-context``
    fit its positions (one line each, before anything is written)."""
    L = int(teacher_config.num_hidden_layers)
    if cfg.budget > L:
        raise ConfigError(f"--budget {cfg.budget}: the teacher has only {L} layers")
    limit = getattr(teacher_config, "max_position_embeddings", None)
    if isinstance(limit, int) and limit > 0:
        lengths = [("--seq-len", cfg.seq_len)]
        if cfg.recall.kind == "needle":
            lengths.append(("--recall-context", cfg.recall.context))
        for flag, n in lengths:
            if n > limit:
                raise ConfigError(f"{flag} {n:,}: longer than the teacher's context ({limit:,} positions, "
                                  "max_position_embeddings)")
    return L


def select_layers(cfg: SelectConfig, *, resume: bool = False, overwrite: bool = False, teacher: nn.Module | None = None,
                  tokenizer: Any = None, progress: str = "auto") -> dict[str, Any]:
    """Run ``cfg.method`` and return (and write to ``<out>/layers.json``) ``{"attention_layers": chosen (sorted),
    "ranked": every layer, most worth keeping first, "method", "budget", "num_layers", "teacher", "scores", "cost"}``.
    ``teacher``/``tokenizer`` may be passed in (tests, notebooks) instead of being loaded from ``cfg.teacher``.

    Everything that can be refused is refused before ``--out`` is written: the options against the teacher's
    config, the folder, ``--aligned-from``, the teacher and the data (readable, enough documents for the held-out
    split). The folder is locked for the run's life (:mod:`gendistill.runlock`): a second
    ``select-layers`` into it stops with one line."""
    if teacher is not None:
        teacher_config = teacher.config
    else:
        teacher_config = load_teacher_config(cfg.teacher)
    L = check_against_teacher(cfg, teacher_config)
    check_output(cfg, resume, overwrite)
    aligned_source(cfg)  # a bad --aligned-from fails now, before --out is written
    check_not_busy(cfg.output_dir, "--out")
    lock = acquire(cfg.output_dir, "--out")
    try:
        try:
            session = Session(cfg, Path(cfg.output_dir), teacher=teacher, tokenizer=tokenizer, progress=progress)
            session.check_inputs()  # the teacher and the data: a bad --data leaves no half-written run behind
            out = prepare_output(cfg, resume, overwrite)  # the checks again, under the lock, then select.json
        except GendistillError:
            lock.release(remove_created=True)
            raise
        sel = METHODS[cfg.method](session)
        result = {
            "attention_layers": sorted(sel.chosen),
            "ranked": sel.ranked,
            "method": cfg.method,
            "budget": cfg.budget,
            "num_layers": L,
            "teacher": cfg.teacher,
            "scores": sel.scores,
            "cost": session.cost_report(),
            "settings_fingerprint": fingerprint(cfg),
        }
        atomic_write_json(Path(out) / "layers.json", result)
        return result
    finally:
        lock.release()
