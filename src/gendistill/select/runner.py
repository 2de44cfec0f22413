"""``select_layers``: run one method and write ``<out>/layers.json``, which ``gendistill convert --attention-layers
<out>/layers.json`` and a recipe's ``student.attention_layers`` read directly (the ``attention_layers`` key)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from gendistill.errors import ConfigError
from gendistill.io import atomic_write_json
from gendistill.select.config import SelectConfig, fingerprint
from gendistill.select.methods import METHODS
from gendistill.select.session import Session, prepare_output


def select_layers(cfg: SelectConfig, *, resume: bool = False, overwrite: bool = False, teacher: nn.Module | None = None,
                  tokenizer: Any = None, progress: str = "auto") -> dict[str, Any]:
    """Run ``cfg.method`` and return (and write to ``<out>/layers.json``) ``{"attention_layers": chosen (sorted),
    "ranked": every layer, most worth keeping first, "method", "budget", "num_layers", "teacher", "scores", "cost"}``.
    ``teacher``/``tokenizer`` may be passed in (tests, notebooks) instead of being loaded from ``cfg.teacher``."""
    out = prepare_output(cfg, resume, overwrite)
    session = Session(cfg, out, teacher=teacher, tokenizer=tokenizer, progress=progress)
    L = session.num_layers
    if cfg.budget > L:
        raise ConfigError(f"--budget {cfg.budget}: the teacher has only {L} layers")
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
