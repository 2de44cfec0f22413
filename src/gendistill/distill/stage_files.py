"""What a stage writes and reads back: its checkpoints (every rank takes part; the plain format, or the sharded one of
an FSDP2 run, chosen the same way on save and on load), the student folders saved after it and part-way through it,
and the one check that no checkpoint of a diverged model is written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gendistill.convert.convert import save_student
from gendistill.distill.checkpoint import (begin_checkpoint, commit_checkpoint, load_checkpoint, tmp_dir_for,
                                           write_rank_files)
from gendistill.distill.config import RunConfig
from gendistill.distill.data import StreamState
from gendistill.distill.distributed import World, barrier
from gendistill.distill.divergence import first_non_finite
from gendistill.distill.fsdp import unsharded_copy
from gendistill.distill.sharded_checkpoint import load_sharded_checkpoint, save_sharded


def snapshot_name(stage_name: str, fraction: float) -> str:
    """Folder name of a stage's student saved part-way: ``stage3a-25pct``."""
    return f"{stage_name}-{round(100 * fraction)}pct"


def agreed_non_finite(student: nn.Module, optimizer: torch.optim.Optimizer, world: World) -> str | None:
    """:func:`first_non_finite` over this rank's shards, agreed by all ranks under FSDP2 (a NaN in one rank's shard
    stops every rank, naming the lowest rank's first bad tensor)."""
    bad = first_non_finite(student, optimizer)
    if not world.sharded or not world.distributed:
        return bad
    found: list[str | None] = [None] * world.world_size
    dist.all_gather_object(found, bad)
    return next((b for b in found if b is not None), None)


def save_student_folder(student: nn.Module, tokenizer: Any, out: Path, world: World, card: str | None = None) -> None:
    """Save the student (eval mode, atomically, replacing an earlier save of the same folder) on the main rank, with
    its model card (``card``: README.md text; by default the card of a converted student). A sharded student is
    gathered first (every rank takes part) and saved as a normal, unsharded model folder."""
    if world.sharded:
        student = unsharded_copy(student)
    if world.is_main:
        was = student.training
        student.eval()
        try:
            save_student(student, tokenizer, out, overwrite=True, what=f"run.output_dir ({out.name})", card=card)
        finally:
            student.train(was)
    barrier(world)


def save_checkpoint(
    stage_dir: Path,
    step: int,
    tokens: int,
    stream: StreamState,
    student: nn.Module,
    optimizer: torch.optim.Optimizer,
    run: RunConfig,
    world: World,
    stage_name: str,
    total_steps: int,
    fingerprint: dict[str, Any] | None = None,
) -> Path:
    """Every rank: write the checkpoint of ``step`` (rank 0 publishes it once every rank wrote its files)."""
    tmp = tmp_dir_for(stage_dir, step)
    if world.is_main:
        begin_checkpoint(tmp)
    barrier(world)
    write_rank_files(tmp, world.rank)
    if world.sharded:
        save_sharded(tmp, student, optimizer, world.is_main)
    barrier(world)
    final = stage_dir / f"step-{step:08d}"
    if world.is_main:
        state = {
            "stage": stage_name,
            "step": step,
            "tokens": tokens,
            "total_steps": total_steps,
            "stream": stream.to_dict(),
            "world_size": world.world_size,
            "sharded": world.sharded,
            "fingerprint": fingerprint,
        }
        final = commit_checkpoint(stage_dir, step, None if world.sharded else student, optimizer, state,
                                  run.keep_checkpoints)
    barrier(world)
    return final


def load_resume_checkpoint(path: Path, student: nn.Module, optimizer: torch.optim.Optimizer,
                           world: World) -> dict[str, Any]:
    """Every rank: load the checkpoint a resumed stage continues from, in the format this run writes (sharded under
    FSDP2, else plain); returns its state (step, tokens, data position, fingerprint)."""
    load = load_sharded_checkpoint if world.sharded else load_checkpoint
    return load(path, student, optimizer, rank=world.rank)


__all__ = ["agreed_non_finite", "load_resume_checkpoint", "save_checkpoint", "save_student_folder", "snapshot_name"]
