"""Atomic, resumable training checkpoints.

A checkpoint is a folder ``<run>/checkpoints/<stage>/step-00000120/`` holding ``model.safetensors`` (the whole
student), ``optimizer.pt``, ``rng-<rank>.pt`` (Python, NumPy, torch CPU/CUDA generators of every rank) and
``state.json`` (step, tokens seen, data-stream position, ...). It is written into a temporary sibling folder and
renamed into place with ``os.replace``, so a crash mid-write never leaves a half checkpoint under a valid name;
only complete ``step-*`` folders are ever loaded. The newest ``keep`` are kept.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch import nn

from gendistill.io import publish_dir

_STEP_RE = re.compile(r"^step-(\d{8})$")


def rng_state() -> dict[str, Any]:
    st: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def list_checkpoints(stage_dir: Path) -> list[tuple[int, Path]]:
    if not stage_dir.is_dir():
        return []
    out = []
    for p in stage_dir.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and (p / "state.json").exists():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(stage_dir: Path) -> Path | None:
    cks = list_checkpoints(stage_dir)
    return cks[-1][1] if cks else None


def tmp_dir_for(stage_dir: Path, step: int) -> Path:
    return stage_dir / f".tmp-step-{step:08d}"


def write_rank_files(tmp: Path, rank: int) -> None:
    """Every rank writes its RNG state into the temporary folder (call before :func:`commit_checkpoint`)."""
    tmp.mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), tmp / f"rng-{rank}.pt")


def commit_checkpoint(
    stage_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Rank 0: write model/optimizer/state into the temporary folder, rename it into place, prune old ones."""
    tmp = tmp_dir_for(stage_dir, step)
    tmp.mkdir(parents=True, exist_ok=True)
    save_model(model, str(tmp / "model.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    with open(tmp / "state.json", "w") as f:
        json.dump(state, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    final = publish_dir(tmp, stage_dir / f"step-{step:08d}")
    for _, old in list_checkpoints(stage_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, rank: int = 0, load_weights: bool = True
) -> dict[str, Any]:
    if load_weights:
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
        if unexpected:
            raise RuntimeError(f"{path}: checkpoint has parameters the student lacks: {unexpected[:5]}")
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False))
    rng = path / f"rng-{rank}.pt"
    if rng.exists():
        set_rng_state(torch.load(rng, weights_only=False))
    return json.loads((path / "state.json").read_text())
