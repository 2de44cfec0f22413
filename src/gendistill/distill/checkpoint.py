"""Atomic, verified, pickle-free training checkpoints.

A checkpoint is a folder ``<run>/checkpoints/<stage>/step-00000120/`` holding

- ``model.safetensors``      the whole student;
- ``optimizer.safetensors``  every optimizer state tensor (``state.<param index>.<name>``), and
  ``optimizer.json``         the parameter groups and any non-tensor state;
- ``rng-<rank>.safetensors`` the Python, NumPy, torch CPU and CUDA generator states of each rank, as tensors (the
  few scalars in the file's metadata);
- ``state.json``             step, tokens seen, data-stream position, fingerprints;
- ``manifest.json``          written last: the size and SHA-256 of every other file.

Nothing is ever loaded with pickle. The folder is written into a temporary sibling and renamed into place, so a crash
mid-write never leaves a half checkpoint under a valid name. On resume every candidate is checked against its
manifest, newest first; a damaged or incomplete one is skipped with a one-line warning naming the damaged file, and
the newest intact one is loaded. A checkpoint whose parameters or optimizer state are not finite is never written.
The newest ``keep`` are kept.

Under ``run.distributed: fsdp`` the model and optimizer files are replaced by every rank's DCP shards (safetensors,
see :mod:`gendistill.distill.sharded_checkpoint`); everything else here is the same. The trainer picks the format on
load as on save. The RNG and optimizer files: :mod:`gendistill.distill.checkpoint_state`; a diverged stage's advice:
:mod:`gendistill.distill.divergence`; what a checkpoint may be resumed with: :mod:`gendistill.distill.fingerprints`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from gendistill.distill.checkpoint_state import (optimizer_files, optimizer_state_from_files, read_safetensors,
                                                 rng_state, set_rng_state)
from gendistill.errors import GendistillError
from gendistill.io import publish_dir, write_error_text, write_errors
from gendistill.ownership import OutputError, check_free_space, tensor_bytes

FORMAT = 2
MANIFEST = "manifest.json"
_STEP_RE = re.compile(r"^step-(\d{8})$")
_TMP_RE = re.compile(r"^\.tmp-step-\d{8}$")


class CheckpointError(GendistillError):
    """A checkpoint cannot be used for this run (changed settings, another teacher or student layout)."""


# ------------------------------------------------------------------------------------------------------ manifest
def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def write_manifest(folder: Path) -> Path:
    """Record size and SHA-256 of every file in ``folder``; written last, it marks the checkpoint complete."""
    files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    path = folder / MANIFEST
    with open(path, "w") as f:
        json.dump({"format": FORMAT, "files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    return path


def verify_checkpoint(folder: Path, hashes: bool = True) -> str | None:
    """None when every file in the manifest is present with its recorded size (and hash); else a short description
    of the first problem that names the damaged file."""
    mpath = folder / MANIFEST
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
    except FileNotFoundError:
        return f"{mpath} is missing (an interrupted write, or a checkpoint of an older gendistill)"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{mpath} is unreadable"
    if manifest.get("format") != FORMAT:
        return f"{mpath}: format {manifest.get('format')!r}, this gendistill reads {FORMAT}"
    for name, rec in files.items():
        p = folder / name
        if not p.is_file():
            return f"{p} is missing"
        size = p.stat().st_size
        if size != rec["bytes"]:
            return f"{p} has {size} bytes, the manifest says {rec['bytes']}"
        if hashes and _sha256(p) != rec["sha256"]:
            return f"{p} does not match its SHA-256 in the manifest"
    return None


# ---------------------------------------------------------------------------------------------------- listing
def list_checkpoints(stage_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with a manifest), oldest first."""
    return [(s, p) for s, p in step_dirs(stage_dir) if (p / MANIFEST).exists()]


def checkpoint_step(path: Path) -> int | None:
    """The step of a checkpoint folder (``step-00000120`` -> 120), None for another name."""
    m = _STEP_RE.match(path.name)
    return int(m.group(1)) if m else None


def step_dirs(stage_dir: Path) -> list[tuple[int, Path]]:
    """Every ``step-…`` folder of a stage, complete or not, oldest first."""
    if not stage_dir.is_dir():
        return []
    out = []
    for p in stage_dir.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(stage_dir: Path) -> Path | None:
    cks = list_checkpoints(stage_dir)
    return cks[-1][1] if cks else None


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def find_resume_checkpoint(stage_dir: Path, clean: bool = True, warn: Callable[[str], None] = _warn) -> Path | None:
    """The newest intact checkpoint of a stage. Damaged or incomplete newer ones are skipped with a one-line
    warning each; ``clean`` (rank 0) also removes the temporary folders of interrupted writes."""
    if clean:
        for p in stage_dir.iterdir() if stage_dir.is_dir() else ():
            if _TMP_RE.match(p.name):
                shutil.rmtree(p, ignore_errors=True)
    cands = step_dirs(stage_dir)
    for i in range(len(cands) - 1, -1, -1):
        problem = verify_checkpoint(cands[i][1])
        if problem is None:
            return cands[i][1]
        older = next((p for _, p in reversed(cands[:i])), None)
        then = f"falling back to {older.name}" if older is not None else "no older checkpoint; the stage starts over"
        warn(f"checkpoint {cands[i][1]} is damaged: {problem}; {then}")
    return None


# ----------------------------------------------------------------------------------------------------- writing
def tmp_dir_for(stage_dir: Path, step: int) -> Path:
    return stage_dir / f".tmp-step-{step:08d}"


def begin_checkpoint(tmp: Path) -> None:
    """Rank 0, before any rank writes: an empty temporary folder (debris of a killed earlier write is removed, so
    it can never be published inside this checkpoint)."""
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)


def write_rank_files(tmp: Path, rank: int) -> None:
    """Every rank writes its RNG state into the temporary folder (call before :func:`commit_checkpoint`)."""
    tensors, meta = rng_state()
    try:
        save_file(tensors, str(tmp / f"rng-{rank}.safetensors"), metadata=meta)
    except write_errors() as e:  # disk full, quota, read-only: safetensors raises its own type for these
        if rank == 0:  # nothing half-written stays behind (the other ranks' writes fail with it)
            shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"cannot write checkpoint {tmp.with_name(tmp.name.removeprefix('.tmp-'))}: "
                          f"{write_error_text(e)}; the older checkpoints are kept") from None


def commit_checkpoint(
    stage_dir: Path,
    step: int,
    model: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Rank 0: write model/optimizer/state and, last, the manifest into the temporary folder, rename it into place,
    prune old ones. A write error (disk full, read-only) removes the temporary folder and is one line. ``model``
    None: the ranks already wrote model and optimizer as DCP shards (a sharded checkpoint)."""
    tmp = tmp_dir_for(stage_dir, step)
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        if model is not None:
            tensors, rest = optimizer_files(optimizer)
            need = tensor_bytes(model.state_dict().values()) + tensor_bytes(tensors.values())
            check_free_space(stage_dir, need, f"checkpoint {stage_dir / f'step-{step:08d}'}")
            save_model(model, str(tmp / "model.safetensors"))
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            (tmp / "optimizer.json").write_text(json.dumps(rest, indent=1))
        with open(tmp / "state.json", "w") as f:
            json.dump({"format": FORMAT, **state}, f, indent=1)
        write_manifest(tmp)
        final = publish_dir(tmp, stage_dir / f"step-{step:08d}")
    except OutputError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except write_errors() as e:  # OSError, or safetensors' SafetensorError wrapping one (a disk that filled up)
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"cannot write checkpoint {stage_dir / f'step-{step:08d}'}: {write_error_text(e)}; "
                          "the older checkpoints are kept") from None
    for _, old in list_checkpoints(stage_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


# ----------------------------------------------------------------------------------------------------- loading
def read_state(path: Path) -> dict[str, Any]:
    return json.loads((path / "state.json").read_text())


def check_written_mode(path: Path, state: dict[str, Any], sharded: bool) -> None:
    """A checkpoint is resumed in the mode it was written in: a DDP (plain) one under ``run.distributed: ddp``, an
    FSDP2 (sharded) one under ``fsdp``; else one :class:`CheckpointError` line naming both."""
    if bool(state.get("sharded", False)) != sharded:
        was, now = ("fsdp", "ddp") if state.get("sharded") else ("ddp", "fsdp")
        raise CheckpointError(f"{path}: written by a run.distributed: {was} run; this run uses {now} (resume with "
                              f"run.distributed: {was}, or pass --overwrite)")


def written_state(path: Path, sharded: bool) -> dict[str, Any]:
    """The checkpoint's ``state.json`` (empty when it has none), after checking it was written in this run's mode."""
    state = read_state(path) if (path / "state.json").is_file() else {}
    check_written_mode(path, state, sharded)
    return state


def restore_rng(path: Path, rank: int) -> None:
    """Set every generator of this process to the state rank ``rank`` saved in the checkpoint (when it saved one)."""
    rng = path / f"rng-{rank}.safetensors"
    if rng.exists():
        set_rng_state(*read_safetensors(rng))


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, rank: int = 0,
                    load_weights: bool = True) -> dict[str, Any]:
    """Load a plain (DDP or one-process) checkpoint written by :func:`commit_checkpoint` (safetensors + JSON only):
    weights, optimizer state and this rank's generators; returns its state. The optimizer keeps the
    hyper-parameters it was built with (the recipe's; the schedule sets the learning rate every step), so a resume
    with deliberately changed optimisation settings uses the new ones. A sharded checkpoint is loaded by
    :func:`gendistill.distill.sharded_checkpoint.load_sharded` instead (the trainer picks)."""
    written_state(path, sharded=False)
    try:
        if load_weights:
            missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
            if unexpected:
                raise CheckpointError(f"{path}: checkpoint has parameters the student lacks: {unexpected[:5]}")
        if optimizer is not None:
            fresh = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
            sd = optimizer_state_from_files(load_file(str(path / "optimizer.safetensors")),
                                            json.loads((path / "optimizer.json").read_text()))
            optimizer.load_state_dict(sd)
            for group, hyper in zip(optimizer.param_groups, fresh):
                group.update(hyper)
        restore_rng(path, rank)
    except (SafetensorError, ValueError, KeyError, OSError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot load the checkpoint into this student/optimizer ({first})") from None
    return read_state(path)
