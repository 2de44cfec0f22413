"""What a checkpoint or a run folder may be continued with: the stage and data settings a checkpoint's data position
depends on, the optimisation settings ``--allow-optim-change`` may change, the teacher's weights and the student's
layout (recorded in ``progress.json``)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gendistill.distill.checkpoint import CheckpointError, check_written_mode, read_state, step_dirs, verify_checkpoint

# Stage keys that change neither the step count nor the data stream nor the model: free to change on resume.
_BOOKKEEPING = ("log_every", "eval_every", "checkpoint_every", "snapshots")


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def stage_fingerprint(stage: Any, data: Any) -> dict[str, Any]:
    """What a checkpoint's stream position and training depend on. ``data``: everything but the optimisation
    settings (stage settings and data sources; a change makes the stored data position meaningless). ``optim``: the
    optimisation settings (learning rate, schedule, clipping, ...), which ``--allow-optim-change`` may change."""
    st = stage.model_dump(mode="json")
    optim = st.pop("optim")
    for k in _BOOKKEEPING:
        st.pop(k, None)
    return {"data": _hash([st, data.model_dump(mode="json")]), "optim": _hash(optim), "optim_settings": optim}


def check_resume_fingerprint(saved: Any, current: dict[str, Any], where: str, ck: Path,
                             allow_optim_change: bool, say: Callable[[str], None]) -> None:
    """Refuse (one line) to resume from ``ck`` when the stage or data settings changed, or when the optimisation
    settings changed without ``--allow-optim-change``; with it, say (and so log) which settings changed."""
    if not isinstance(saved, dict) or saved.get("data") != current["data"]:
        raise CheckpointError(
            f"{where}: the recipe's stage or data settings changed since checkpoint {ck}; its data position would no "
            "longer match. Resume with the recipe the run started with, or pass --overwrite."
        )
    if saved.get("optim") == current["optim"]:
        return
    old, new = saved.get("optim_settings") or {}, current["optim_settings"]
    diff = ", ".join(f"optim.{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                     if old.get(k) != new.get(k)) or "optim settings"
    if not allow_optim_change:
        raise CheckpointError(
            f"{where}: optimisation settings changed since checkpoint {ck} ({diff}); pass --allow-optim-change to "
            "continue with the new ones, or resume with the recipe the run started with"
        )
    say(f"{where}: resuming from {ck} with changed optimisation settings ({diff}) (--allow-optim-change)")


def check_resume_compatible(stage_dir: Path, fingerprint: dict[str, Any], where: str, allow_optim_change: bool,
                            sharded: bool) -> None:
    """Refuse (one line), before anything of the run is written, a resume whose newest checkpoint of this stage
    cannot be continued: stage or data settings changed, optimisation settings changed without
    ``--allow-optim-change``, a DDP checkpoint under FSDP or the reverse. Reads only the state.json of the newest
    checkpoint whose files have the sizes its manifest records; the trainer verifies (hashes) and loads it later."""
    for _, path in reversed(step_dirs(stage_dir)):
        if verify_checkpoint(path, hashes=False) is not None:
            continue  # damaged: the trainer falls back past it with a warning
        try:
            state = read_state(path)
        except (OSError, ValueError):
            continue
        check_written_mode(path, state, sharded)
        check_resume_fingerprint(state.get("fingerprint"), fingerprint, where, path, allow_optim_change,
                                 lambda _: None)
        return


@torch.no_grad()
def weights_fingerprint(model: nn.Module, samples: int = 256) -> str:
    """Identity of a model's weights, cheap enough for a 100B teacher: names, shapes and ``samples`` evenly spaced
    values of every tensor (rounded to bfloat16, so the same weights loaded in fp32 or bf16 agree)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(f"{name}:{tuple(t.shape)};".encode())
        flat = t.detach().reshape(-1)
        if flat.numel() and flat.is_floating_point():
            # float32 positions, as every recorded fingerprint used; past 2**24 elements the last one can round up
            # to numel (SmolLM2's 28,311,552-element embedding did): clamp it back onto the last element
            idx = torch.linspace(0, flat.numel() - 1, min(flat.numel(), samples), device=flat.device).long()
            idx.clamp_(max=flat.numel() - 1)
            h.update(flat[idx].to(torch.bfloat16).float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


_LAYOUT_KEYS = ("num_hidden_layers", "hidden_size", "layer_types", "linear_attention_type")


def student_layout(config: Any) -> dict[str, Any]:
    """The architecture fields of a student config (``HybridConfig`` or its ``config.json`` dict) that a
    checkpoint's weights depend on: layer count and width, which layers are attention, every KDA option."""
    d = config if isinstance(config, dict) else config.to_dict()
    return {k: d.get(k) for k in sorted(d) if k in _LAYOUT_KEYS or k.startswith("kda_")}
