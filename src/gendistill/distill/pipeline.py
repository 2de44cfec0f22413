"""Run a whole recipe: load the teacher, check every stage's data, build (or load) the student, run the stages in
order, save the student after each one, and pick up where a stopped run left off.

Run folder layout::

    <output_dir>/.gendistill.json       marks the folder as a gendistill run (only such a folder is --overwrite'd)
    <output_dir>/.gendistill.lock       locked (flock) by the run writing the folder; a second run is refused
    <output_dir>/recipe.yaml            the resolved recipe (every default filled in)
    <output_dir>/progress.json          completed stages, teacher fingerprint and student layout (checked on resume)
    <output_dir>/metrics.jsonl          one JSON object per logged step / evaluation
    <output_dir>/tensorboard/           run.tensorboard (default; the tensorboard extra)
    <output_dir>/checkpoints/<stage>/step-XXXXXXXX/   resumable checkpoints (the newest N)
    <output_dir>/<stage>/               the student after that stage (save_pretrained + tokenizer), loadable with
                                        AutoModelForCausalLM.from_pretrained
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gendistill.clock import seconds_since_start
from gendistill.convert.convert import convert_teacher, student_config_from_teacher
from gendistill.devices import resolve_dtype
from gendistill.distill.config import Recipe, StageConfig, check_teacher_positions, dump_recipe
from gendistill.distill.data import PackedStream
from gendistill.distill.distributed import World, barrier, broadcast_object, init_world
from gendistill.distill.fingerprints import (check_resume_compatible, stage_fingerprint, student_layout,
                                             weights_fingerprint)
from gendistill.distill.freezing import apply_trainable
from gendistill.distill.fsdp import check_support, init_single_process_group, shard_student, shard_teacher
from gendistill.distill.metrics import MetricsLogger, check_wandb
from gendistill.distill.result import DistillResult
from gendistill.distill.stage_facts import STAGES
from gendistill.distill.stage_files import save_student_folder
from gendistill.distill.stages import pick_layers
from gendistill.distill.trainer import StageResult, run_stage
from gendistill.errors import ConfigError, GendistillError
from gendistill.io import DATA_HINT, atomic_write_json, atomic_write_text, data_dir
from gendistill.layers.registry import training_refusal
from gendistill.models.card import StageRecord, model_card, public_model_name
from gendistill.models.loading import is_student_folder, load_model
from gendistill.ops.backend import fla_available
from gendistill.ops.fla_configs import CACHE_MODE, describe_active, keep_autotuned
from gendistill.ownership import (MARKER, check_replaceable, check_writable, clear_owned, is_empty, marker_kind,
                                  write_marker)
from gendistill.runlock import FolderLock, acquire, check_not_busy


def _progress(run_dir: Path) -> dict[str, Any]:
    p = run_dir / "progress.json"
    return json.loads(p.read_text()) if p.exists() else {"completed": []}


def _write_progress(run_dir: Path, prog: dict[str, Any]) -> None:
    atomic_write_json(run_dir / "progress.json", prog)


def teacher_dtype(recipe: Recipe, world: World) -> torch.dtype:
    """``teacher.dtype`` resolved on the run's device (``auto``: bfloat16 on CUDA, float32 on CPU)."""
    return resolve_dtype(recipe.teacher.dtype, world.device, "teacher.dtype")


def load_student(path: str | Path, device: torch.device) -> nn.Module:
    """A saved student, in float32 for training, through the one model loader."""
    if not is_student_folder(path):
        raise ConfigError(f"student.path: {path} is not a gendistill student folder (no hybrid config.json)")
    return load_model(path, dtype=torch.float32, device=device)[0]


def build_student(recipe: Recipe, teacher: nn.Module, device: torch.device) -> nn.Module:
    sc = recipe.student
    if sc.path is not None:
        return load_student(sc.path, device)
    torch.manual_seed(recipe.run.seed)
    student = convert_teacher(teacher, sc.attention_layers, **sc.kda_options)  # type: ignore[arg-type]
    student.config.teacher = public_model_name(recipe.teacher.spec)
    student = student.to(device=device, dtype=torch.float32)
    if hasattr(student, "upcast_recurrence_parameters"):
        student.upcast_recurrence_parameters()
    return student


def student_card(recipe: Recipe, student: nn.Module, completed: list[str],
                 fidelity: dict[str, dict[str, Any]] | None = None) -> str:
    """The model card of the student after the ``completed`` stages of ``recipe``; ``fidelity``: the last held-out
    figures (:func:`gendistill.eval.heldout.heldout_fidelity`) of the logit stages that ran in this invocation."""
    fidelity = fidelity or {}
    records = []
    for st in recipe.stages:
        if st.name in completed:
            steps = st.total_steps()
            records.append(StageRecord(
                name=st.name, steps=steps, tokens=steps * st.batch_size * st.seq_len, seq_len=st.seq_len,
                batch_size=st.batch_size, loss=st.loss.kind if st.loss else None, masking=st.masking,
                trainable=list(st.trainable.groups) if st.trainable else [],
                heldout_kl=fidelity.get(st.name, {}).get("kl_teacher_student"),
                heldout_top1=fidelity.get(st.name, {}).get("top1_agreement")))
    return model_card(student.config, recipe=recipe.source, stages=records)


def check_data_found(recipe: Recipe) -> None:
    """A local data file the recipe names relatively but that is neither beside the recipe nor in the data folder
    (``$GENDISTILL_DATA_DIR``, else ``../shared/data``) is one line naming it and both places."""
    for where, d in [("data", recipe.data)] + [(f"stages[{i}].data", s.data) for i, s in enumerate(recipe.stages)]:
        for j, src in enumerate(d.sources if d is not None else []):
            if src.hub or src.path.startswith("hf://") or Path(src.path).is_absolute() or Path(src.path).exists():
                continue
            root = data_dir()
            folder = f"the data folder {root}" if root else f"a data folder ({DATA_HINT})"
            raise ConfigError(f"{where}.sources[{j}].path: {src.path} is neither beside the recipe nor in {folder}")


def _note(recipe: Recipe, world: World, text: str) -> None:
    """One ``[distill]`` line on stderr for the work before the first step (loading, data checks: tens of seconds with
    nothing else to show), from the main rank, unless the recipe turns progress off; it ends with the seconds since
    the process started (:mod:`gendistill.clock`), so a log says where the wait before the first step went."""
    if world.is_main and recipe.run.progress != "none":
        print(f"[distill] {text}  ({seconds_since_start():.1f} s)", file=sys.stderr, flush=True)


def validate_data(recipe: Recipe, tokenizer: Any) -> dict[str, dict[str, int]]:
    """Every stage's sources opened and every record checked, before any model is built or trained."""
    out = {}
    for stage in recipe.stages:
        ps = PackedStream(recipe.stage_data(stage), tokenizer, stage.seq_len, stage.masking)
        out[stage.name] = ps.validate()
        for path, n in ps.skipped.items():
            if n:
                out[stage.name][f"{path} (skipped, nothing to distill)"] = n
    return out


def describe_plan(recipe: Recipe, student: nn.Module, world_size: int) -> list[dict[str, Any]]:
    """Per stage: steps, tokens, batch shape, loss, masking and what trains, checked the way the trainer will
    (the trainable selection, stages 1-2's ``layers``, the batch rule for this world size)."""
    plan = []
    for i, st in enumerate(recipe.stages):
        sel = apply_trainable(student, st.trainable, f"stages[{i}].trainable")  # type: ignore[arg-type]
        if STAGES[st.name].hidden_state:
            pick_layers(student, st)  # the stage module's own check of stages 1-2 `layers`
        names = dict(student.named_parameters())
        n_train = sum(names[n].numel() for n in sel.trainable if n in names)
        plan.append(
            {
                "stage": st.name,
                "steps": st.total_steps(),
                "tokens": st.total_steps() * st.batch_size * st.seq_len,
                "seq_len": st.seq_len,
                "batch_size": st.batch_size,
                "micro_batch_size": st.micro_batch_size,
                "grad_accumulation": st.grad_accum_for(world_size),
                "loss": st.loss.kind if st.loss else None,
                "masking": st.masking,
                "trainable_params": n_train,
                "trainable_tensors": len(sel.trainable),
                "frozen_tensors": len(sel.frozen),
            }
        )
    return plan


def _has_resumable_work(run_dir: Path) -> bool:
    """A completed stage or a checkpoint: something a rerun without --resume or --overwrite would lose."""
    if _progress(run_dir).get("completed"):
        return True
    ck = run_dir / "checkpoints"
    return ck.is_dir() and any(s.name.startswith("step-") for d in ck.iterdir() if d.is_dir() for s in d.iterdir())


def check_output_dir(run_dir: Path, *, resume: bool, overwrite: bool, dry_run: bool) -> None:
    """Everything about ``run.output_dir`` that can be refused is refused here, before anything is loaded or written
    (one line each): a folder that is not ours, a run that would be lost, --overwrite of something we did not write,
    a location that cannot be written."""
    what = "run.output_dir"
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: --resume continues the run, --overwrite "
                          "deletes it")
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{what}: {run_dir} is a file, not a folder")
    ours = marker_kind(run_dir) == "run"
    used = not is_empty(run_dir)  # a folder holding only a lock file is empty
    if overwrite:
        check_replaceable(run_dir, "run", what)
    elif used and not ours:
        hint = "nothing to resume there; " if resume else ""
        raise ConfigError(f"{what}: {run_dir} is not empty and is not a gendistill run folder (no {MARKER}); {hint}"
                          "choose a new folder")
    elif used and not resume and not dry_run and _has_resumable_work(run_dir):
        raise ConfigError(f"{what}: {run_dir} already holds a run; pass --resume to continue or --overwrite")
    if not dry_run:
        check_writable(run_dir, what)


def _fingerprints(recipe: Recipe, teacher: nn.Module, student: nn.Module | None) -> dict[str, Any]:
    """Teacher identity and the student layout the recipe asks for, recorded in progress.json and checked on
    --resume (a different teacher, or another layout whose weights would not fit the checkpoint, is refused)."""
    if student is not None:
        layout = student_layout(student.config)
    elif recipe.student.path is not None:
        cfg = Path(recipe.student.path) / "config.json"
        if not cfg.is_file():
            raise ConfigError(f"student.path: {recipe.student.path} is not a model folder (no config.json)")
        layout = student_layout(json.loads(cfg.read_text()))
    else:
        sc = recipe.student
        layout = student_layout(student_config_from_teacher(teacher.config, sc.attention_layers, **sc.kda_options))
    return {"teacher": {"spec": recipe.teacher.spec, "weights": weights_fingerprint(teacher)}, "student_layout": layout}


def _check_same_run(prog: dict[str, Any], fp: dict[str, Any], run_dir: Path) -> None:
    old_t, old_l = prog.get("teacher"), prog.get("student_layout")
    if old_t is not None and old_t.get("weights") != fp["teacher"]["weights"]:
        raise ConfigError(
            f"teacher: {fp['teacher']['spec']} is not the teacher the run in {run_dir} started with "
            f"({old_t.get('spec')}; weights differ); resume with that teacher or pass --overwrite"
        )
    if old_l is not None and old_l != fp["student_layout"]:
        diff = ", ".join(f"{k}: {old_l.get(k)!r} -> {fp['student_layout'].get(k)!r}"
                         for k in sorted(set(old_l) | set(fp["student_layout"]))
                         if old_l.get(k) != fp["student_layout"].get(k))
        raise ConfigError(f"student: the layout differs from the run in {run_dir} ({diff}); resume with the "
                          "recipe the run started with or pass --overwrite")


def check_resume_checkpoints(recipe: Recipe, run_dir: Path, completed: list[str], allow_optim_change: bool,
                             sharded: bool) -> None:
    """Every stage still to run that has a checkpoint must be able to continue from it (same stage and data
    settings, optimisation settings unchanged or allowed, same DDP/FSDP mode): checked before anything is written,
    so a refused resume leaves the run folder as it was."""
    for i, stage in enumerate(recipe.stages):
        if stage.name in completed:
            continue
        fingerprint = stage_fingerprint(stage, recipe.stage_data(stage))
        check_resume_compatible(run_dir / "checkpoints" / stage.name, fingerprint, f"stages[{i}] ({stage.name})",
                                allow_optim_change, sharded)


def lock_run_folder(recipe: Recipe, run_dir: Path, world: World, *, resume: bool, overwrite: bool,
                    progress: dict[str, Any], allow_optim_change: bool) -> FolderLock | None:
    """Rank 0 takes the run folder's lock (:mod:`gendistill.runlock`), held until the run ends, and checks again
    under it what another process may have changed while this one was loading: the folder (:func:`check_output_dir`),
    the progress a resume continues from, the checkpoints it will load. Every rank learns the outcome, so under a
    launcher all ranks stop with the same one line. Nothing is written when a check fails."""
    lock, error = None, None
    if world.is_main:
        try:
            lock = acquire(run_dir, "run.output_dir")
            check_output_dir(run_dir, resume=resume, overwrite=overwrite, dry_run=False)
            if resume and _progress(run_dir) != progress:
                raise ConfigError(f"run.output_dir: {run_dir} changed while this run was starting (another process "
                                  "wrote it); run the command again")
            if resume:
                check_resume_checkpoints(recipe, run_dir, list(progress.get("completed", [])), allow_optim_change,
                                         world.sharded)
        except GendistillError as e:
            if lock is not None:
                lock.release(remove_created=True)
                lock = None
            error = e
    if world.distributed:
        message = broadcast_object(None if error is None else str(error), world)
        if error is None and message is not None:
            error = ConfigError(message)
    if error is not None:
        raise error
    return lock


def run_recipe(
    recipe: Recipe,
    *,
    resume: bool = False,
    overwrite: bool = False,
    dry_run: bool = False,
    teacher: nn.Module | None = None,
    tokenizer: Any = None,
    student: nn.Module | None = None,
    stop_after: int | None = None,
    world: World | None = None,
    allow_optim_change: bool = False,
) -> DistillResult:
    """Run the recipe and return a :class:`DistillResult` (the same shape for a dry run). ``teacher``/``tokenizer``/
    ``student`` may be passed in (tests, notebooks) instead of being loaded from the recipe. ``stop_after`` stops
    after that many optimizer steps (to test ``resume``). ``allow_optim_change`` lets a resumed stage continue under
    changed optimisation settings (the documented recovery from a diverged run: lower the learning rate, resume from
    the last good checkpoint).

    Everything is checked before anything is written: the output folder, the teacher, every data source, the
    student and every stage's plan; a run folder is created only once all of them passed. The steps:
    :func:`check_before_loading`, :func:`prepare_teacher`, :func:`validate_data`, the resume checks,
    :func:`prepare_student`, :func:`describe_plan`; then, holding the run folder's lock, :func:`start_run_folder`
    and :func:`train_stages`.

    Under ``run.distributed: fsdp`` teacher and student (also when passed in) are sharded in place, and the returned
    ``student`` is the sharded one: read the unsharded student from the folder saved after each stage."""
    world = _world_for(recipe, world)
    run_dir = Path(recipe.run.output_dir)
    prog = check_before_loading(recipe, run_dir, resume=resume, overwrite=overwrite, dry_run=dry_run)
    if teacher is None or tokenizer is None:
        _note(recipe, world, f"loading the teacher {recipe.teacher.spec}")
    teacher, tokenizer = prepare_teacher(recipe, world, teacher, tokenizer)
    _note(recipe, world, f"reading and checking the data of {len(recipe.stages)} stage(s)")
    data_counts = validate_data(recipe, tokenizer)  # bad data fails here, before any training
    fingerprints = _fingerprints(recipe, teacher, student)
    if resume:
        _check_same_run(prog, fingerprints, run_dir)
        # a checkpoint this resume could not continue from: refused now, with nothing written (again under the lock)
        check_resume_checkpoints(recipe, run_dir, list(prog.get("completed", [])), allow_optim_change, world.sharded)
    completed: list[str] = list(prog.get("completed", []))
    if student is None:
        _note(recipe, world, f"building the student (after {completed[-1]})" if completed else "building the student")
    student = prepare_student(recipe, run_dir, completed, teacher, student, world)
    plan = describe_plan(recipe, student, world.world_size)  # bad trainable patterns / batch shapes fail here
    refusal = training_refusal(student, world.device)  # a mixer fla cannot train on this card: before any step
    if refusal is not None:
        raise ConfigError(refusal)

    if dry_run:
        return DistillResult(run_dir=run_dir, completed=completed, plan=plan, data=data_counts, dry_run=True)

    root = None
    if world.sharded:  # FSDP2, in place: one unit per decoder block (fingerprints above saw the whole teacher)
        shard_teacher(teacher, world.device)
        root = shard_student(student, world.device)

    if world.device.type == "cuda" and fla_available():  # before the lock: a bad GENDISTILL_FLA_CONFIGS is one line
        _note(recipe, world, describe_active(torch.cuda.get_device_name(world.device)))
    lock = lock_run_folder(recipe, run_dir, world, resume=resume, overwrite=overwrite, progress=prog,
                           allow_optim_change=allow_optim_change)
    _note(recipe, world, f"training {', '.join(s.name for s in recipe.stages if s.name not in completed)} into "
                         f"{run_dir}")
    try:
        start_run_folder(recipe, run_dir, world, resume=resume, overwrite=overwrite, completed=completed,
                         fingerprints=fingerprints, data_counts=data_counts)
        results = train_stages(recipe, run_dir, world, resume=resume, teacher=teacher, tokenizer=tokenizer,
                               student=student, completed=completed, fingerprints=fingerprints, root=root,
                               stop_after=stop_after, allow_optim_change=allow_optim_change)
        return DistillResult(run_dir=run_dir, completed=completed, results=results, plan=plan, data=data_counts,
                             student=student)
    finally:
        if lock is not None:
            lock.release()


def _world_for(recipe: Recipe, world: World | None) -> World:
    """The process group of the run (the recipe's ``run.distributed`` decides sharding, also of a world passed in)."""
    world = world or init_world(recipe.run.device, recipe.run.distributed)
    if world.sharded != (recipe.run.distributed == "fsdp"):  # a world passed in: the recipe decides
        world = dataclasses.replace(world, sharded=recipe.run.distributed == "fsdp")
        if world.sharded:
            check_support()
            init_single_process_group(world.device)
    return world


def check_before_loading(recipe: Recipe, run_dir: Path, *, resume: bool, overwrite: bool,
                         dry_run: bool) -> dict[str, Any]:
    """What can be refused before any model is loaded: a run folder another run is writing, one that may not be
    written or replaced, a missing wandb, a data file in no known place. Returns the progress a resume continues."""
    if not dry_run:
        check_not_busy(run_dir, "run.output_dir")  # another run writing it: one line, before anything is loaded
    check_output_dir(run_dir, resume=resume, overwrite=overwrite, dry_run=dry_run)
    check_wandb(recipe.run.wandb)
    check_data_found(recipe)  # a data file in no known place fails before the teacher is loaded
    return _progress(run_dir) if resume else {"completed": []}


def prepare_teacher(recipe: Recipe, world: World, teacher: nn.Module | None, tokenizer: Any) -> tuple[nn.Module, Any]:
    """The teacher (loaded unless passed in with its tokenizer) on the run's device, frozen, in eval mode, with the
    recipe's attention kernel, and every stage's ``seq_len`` checked against its context."""
    if teacher is None or tokenizer is None:
        teacher, tokenizer = load_model(recipe.teacher.spec, dtype=teacher_dtype(recipe, world), device=world.device)
    if recipe.teacher.attn_implementation:
        try:
            teacher.set_attn_implementation(recipe.teacher.attn_implementation)
        except (ValueError, ImportError, AttributeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"teacher.attn_implementation: {first}") from None
    teacher = teacher.to(world.device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    check_teacher_positions(recipe, teacher.config)  # before any data is read or packed at that length
    return teacher, tokenizer


def prepare_student(recipe: Recipe, run_dir: Path, completed: list[str], teacher: nn.Module,
                    student: nn.Module | None, world: World) -> nn.Module:
    """The student to train on: the one passed in, else the one saved after the last completed stage, else
    :func:`build_student` (converted from the teacher or loaded from ``student.path``)."""
    if student is None:
        if completed:
            student = load_student(run_dir / completed[-1], world.device)
        else:
            student = build_student(recipe, teacher, world.device)
    return student.to(world.device)


def start_run_folder(recipe: Recipe, run_dir: Path, world: World, *, resume: bool, overwrite: bool,
                     completed: list[str], fingerprints: dict[str, Any], data_counts: dict[str, Any]) -> None:
    """Rank 0, under the run folder's lock: clear what a fresh run replaces, mark the folder, write the resolved
    recipe (an earlier, different one kept beside it), the data counts and the progress."""
    if world.is_main:
        replace = overwrite or (not resume and not _has_resumable_work(run_dir))
        if replace and not is_empty(run_dir):
            clear_owned(run_dir, "run", "run.output_dir")  # ours (checked under the lock), nothing left to resume
        write_marker(run_dir, "run")
        text = dump_recipe(recipe)
        old = run_dir / "recipe.yaml"
        if old.exists() and old.read_text() != text:
            old.replace(run_dir / f"recipe.{int(time.time())}.yaml")
        atomic_write_text(run_dir / "recipe.yaml", text)
        atomic_write_json(run_dir / "data.json", data_counts)  # documents per source and stage
        _write_progress(run_dir, {"completed": completed, **fingerprints})
    barrier(world)


def keep_tuned_kernels(recipe: Recipe, run_dir: Path, world: World) -> None:
    """After a stage, on the main rank: keep what fla's autotuning chose under ``<run>/fla_configs/<GPU>/`` on a GPU
    gendistill ships no configurations for (:func:`gendistill.ops.fla_configs.keep_autotuned`); the first time, one
    line says how to reuse them."""
    kept = keep_autotuned(run_dir / "fla_configs", world.device) if world.is_main else None
    if kept is not None and kept[1]:
        out = kept[0]
        _note(recipe, world, f"fla tuned its kernels on this GPU (no shipped configurations for it): saved to {out}. "
                             f"FLA_CONFIG_DIR={out} FLA_CACHE_MODE={CACHE_MODE} skips the tuning in the next run "
                             f"here; a copy in gendistill/ops/fla_config_files/{out.name}/ ships it")


def train_stages(recipe: Recipe, run_dir: Path, world: World, *, resume: bool, teacher: nn.Module, tokenizer: Any,
                 student: nn.Module, completed: list[str], fingerprints: dict[str, Any], root: nn.Module | None,
                 stop_after: int | None, allow_optim_change: bool) -> dict[str, StageResult]:
    """Run every stage not yet completed, in order; after each one save the student (with its model card), record
    it in ``completed`` and progress.json, and drop its checkpoints (unless kept)."""
    logger = MetricsLogger(run_dir, world.is_main, recipe.run.tensorboard, recipe.run.wandb,
                           wandb_init={"project": os.environ.get("WANDB_PROJECT", "gendistill"), "name": run_dir.name,
                                       "config": recipe.model_dump(mode="json"), "resume": "allow"})
    results: dict[str, StageResult] = {}
    torch.manual_seed(recipe.run.seed + world.rank)
    try:
        for i, stage in enumerate(recipe.stages):
            if stage.name in completed:
                continue
            res = run_stage(
                stage=stage,
                stage_index=i,
                data=recipe.stage_data(stage),
                student=student,
                teacher=teacher,
                tokenizer=tokenizer,
                run=recipe.run,
                run_dir=run_dir,
                world=world,
                resume=resume,
                logger=logger,
                stop_after=stop_after,
                validated=True,
                allow_optim_change=allow_optim_change,
                sharded_root=root,
            )
            results[stage.name] = res
            if world.distributed:  # drop this stage's DDP wrapper (and its gradient hooks) before the next one
                gc.collect()
            if res.steps < stage.total_steps():  # stopped early (stop_after)
                break
            save_student_folder(student, tokenizer, run_dir / stage.name, world,
                                card=student_card(recipe, student, [*completed, stage.name],
                                                  {n: r.eval_fidelity[-1][1] for n, r in results.items()
                                                   if r.eval_fidelity}))
            completed.append(stage.name)
            if world.is_main:
                _write_progress(run_dir, {"completed": completed, **fingerprints})
                keep_tuned_kernels(recipe, run_dir, world)
                if not recipe.run.keep_finished_checkpoints:  # the saved student folder supersedes them
                    shutil.rmtree(run_dir / "checkpoints" / stage.name, ignore_errors=True)
            barrier(world)
    finally:
        logger.close()
    return results


__all__ = ["run_recipe", "build_student", "load_student", "teacher_dtype", "validate_data", "describe_plan", "StageConfig"]
