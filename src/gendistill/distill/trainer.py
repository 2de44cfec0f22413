"""The training loop of one stage: AdamW (no weight decay on A_log/dt_bias/norms/biases), warmup-stable-decay or
cosine LR, gradient accumulation, clipping, bf16 autocast on CUDA, gradient checkpointing, DDP or FSDP2 across ranks
(``run.distributed``), atomic checkpoints (sharded DCP ones under FSDP2), exact resume, NaN/inf stop, held-out
evaluation, metrics."""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from gendistill.clock import seconds_since_start
from gendistill.distill.checkpoint import find_resume_checkpoint
from gendistill.distill.compile import compiled_blocks
from gendistill.distill.config import DataConfig, RunConfig, StageConfig
from gendistill.distill.data import BatchStream, PackedSequence, PackedStream, StreamState, collate
from gendistill.distill.distributed import World, all_reduce_sum, broadcast_object
from gendistill.distill.divergence import TrainingDivergedError, diverged_step_error, recovery_hint
from gendistill.distill.fingerprints import check_resume_fingerprint, stage_fingerprint
from gendistill.distill.freezing import Selection, apply_trainable, param_groups
from gendistill.distill.fsdp import full
from gendistill.distill.heldout import save_stage_rows, stage_fidelity, stage_heldout_rows
from gendistill.distill.metrics import MetricsLogger, Progress
from gendistill.distill.profiling import phase, profile_call
from gendistill.distill.schedules import lr_schedule, set_lr
from gendistill.distill.stage_facts import STAGES
from gendistill.distill.stage_files import (agreed_non_finite, load_resume_checkpoint, save_checkpoint,
                                            save_student_folder, snapshot_name)
from gendistill.distill.stages import StageModule, build_stage_module, cast_mixer_inputs
from gendistill.errors import GendistillError
from gendistill.models.packed_attention import available as packed_attention_available
from gendistill.models.packed_attention import packed_flash_attention


@dataclass
class StageResult:
    name: str
    steps: int
    tokens: int
    losses: list[float] = field(default_factory=list)
    eval_losses: list[tuple[int, float]] = field(default_factory=list)
    eval_fidelity: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # logit stages: (step, figures)
    selection: Selection | None = None
    resumed_from: int | None = None


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch's tensors on ``device``; other values (a prepared batch's longest document length) as they are."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def prefetch_step(batches: BatchStream, module: StageModule, device: torch.device):
    """The next optimizer step's micro-batches, read, packed and prepared on the CPU (loss positions computed there,
    so the step needs no host sync for them), in pinned memory on CUDA so the copies to the GPU are asynchronous.
    Runs on the data thread."""
    micro, state = batches.next_step()
    micro = [module.prepare(mb) for mb in micro]
    if device.type == "cuda":
        micro = [{k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in mb.items()} for mb in micro]
    return micro, state


def train_step(
    wrapped: nn.Module,
    module: StageModule,
    micro: list[dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    trainable: list[nn.Parameter],
    world: World,
    run: RunConfig,
    clip_grad_norm: float | None,
    marks: Callable[[str], None] | None = None,
) -> tuple[float, float, float, bool]:
    """One optimizer step over its micro-batches (CPU dicts from :func:`prefetch_step`): forward and backward of each
    (gradients accumulate; each micro-batch's loss is already divided by the global masked-in token count, so the sum
    is the mean over the global batch), all-reduced loss, gradient clipping, and the optimizer step if the loss and
    the gradient norm are finite. The trainer reads the device once per step (loss and gradient norm together); fla's
    kernels add a few reads per micro-batch of packed documents (their chunk indices, computed from the boundaries
    by the first KDA layer and cached by tensor identity for the others): a fixed few, which
    ``tests/gpu/test_distill_gpu.py`` checks do not grow with the number of layers (not yet run on a GPU). Returns
    ``(loss, grad_norm, loss_tokens, stepped)``; when ``stepped`` is False the optimizer did not run and the
    gradients are left for the caller to report.

    ``marks(name)``, when given, is called at the end of each phase (``input``, ``forward``, ``backward`` per
    micro-batch; ``clip_grad``, ``optimizer``): ``benchmarks/train_throughput.py --phases`` records a CUDA event there
    to split the step's device time.

    This is the trainer's step; ``benchmarks/train_throughput.py`` times exactly this function."""
    mark = marks or _no_mark
    local = float(sum(module.count(b) for b in micro))
    if world.distributed:
        denom = float(all_reduce_sum(torch.tensor([local], device=world.device), world).item())
    else:
        denom = local
    loss_sum = torch.zeros((), device=world.device, dtype=torch.float64)  # summed exactly, reported as a float
    if denom > 0:
        for j, mb in enumerate(micro):
            with phase("input"):
                mb = _to(mb, world.device)
            mark("input")
            sync = contextlib.nullcontext()
            if world.distributed and hasattr(wrapped, "no_sync") and j < len(micro) - 1:
                sync = wrapped.no_sync()
            with sync:
                with _autocast(world, run), phase("forward"):
                    loss = wrapped(mb, denom)
                mark("forward")
                # DDP averages gradients over ranks; each rank's loss is its share of the global sum
                with phase("backward"):
                    (loss * world.world_size if world.distributed else loss).backward()
                mark("backward")
            loss_sum += loss.detach()
    loss_t = all_reduce_sum(loss_sum, world)
    max_norm = clip_grad_norm if clip_grad_norm is not None else float("inf")
    with phase("clip_grad"):
        gnorm_t = full(torch.nn.utils.clip_grad_norm_(trainable, max_norm)) if trainable else torch.zeros(
            (), device=world.device)
    mark("clip_grad")
    loss_val, gnorm = torch.stack([loss_t.reshape(()), gnorm_t.to(loss_t)]).tolist()
    if not (math.isfinite(loss_val) and math.isfinite(gnorm)):
        return loss_val, gnorm, denom, False
    with phase("optimizer"):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    mark("optimizer")
    return loss_val, gnorm, denom, True


def _no_mark(name: str) -> None:
    return None


def _use_bf16(world: World, run: RunConfig) -> bool:
    return run.precision == "bf16" or (run.precision == "auto" and world.device.type == "cuda")


def use_packed_flash_attention(world: World, run: RunConfig) -> bool:
    """Attention layers of teacher and student run FlashAttention over the packed documents (instead of SDPA with
    a block-diagonal mask) when training in bf16 on a GPU whose PyTorch has ``varlen_attn``."""
    return _use_bf16(world, run) and packed_attention_available(world.device)


def use_compiled_blocks(world: World, run: RunConfig) -> bool:
    """``run.compile``: auto compiles the blocks' norms, MLPs and attention modules on a GPU, except under FSDP2."""
    if run.compile == "auto":
        return world.device.type == "cuda" and not world.sharded
    return run.compile == "on"


def _autocast(world: World, run: RunConfig):
    if _use_bf16(world, run):
        return torch.autocast(device_type=world.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _enable_gradient_checkpointing(student: nn.Module, name: str) -> None:
    kwargs = {"use_reentrant": False}
    if hasattr(student, "activation_checkpointing_enable"):  # transformers >= 5.2x
        student.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif hasattr(student, "gradient_checkpointing_enable"):
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        raise GendistillError(f"{name}: gradient_checkpointing is on but {type(student).__name__} does not support it")


def _disable_gradient_checkpointing(student: nn.Module) -> None:
    for name in ("activation_checkpointing_disable", "gradient_checkpointing_disable"):
        if hasattr(student, name):
            getattr(student, name)()
            return


class ShardedStage:
    """``call(batch, denom)`` runs the stage module's loss inside the FSDP2 root's forward (see
    :mod:`gendistill.distill.fsdp`): what DDP's wrapper is to the DDP path."""

    def __init__(self, root: nn.Module, module: StageModule):
        self.root, self.module = root, module

    def __call__(self, batch: dict[str, torch.Tensor], denom: float) -> torch.Tensor:
        return self.root(self.module, batch, denom)


def _wrap(module: StageModule, world: World, run: RunConfig, stage: StageConfig, root: nn.Module | None = None):
    if world.sharded:
        if root is None:
            raise ValueError("run.distributed: fsdp needs the sharded root (gendistill.distill.fsdp.shard_student)")
        return ShardedStage(root, module)
    if not world.distributed:
        return module
    with warnings.catch_warnings():  # torch >= 2.13 renames broadcast_buffers; keep the spelling older torch knows
        warnings.simplefilter("ignore", FutureWarning)
        return DDP(
            module,
            device_ids=[world.device.index] if world.device.type == "cuda" else None,
            broadcast_buffers=False,
            # stages 1-2 may leave trainable parameters of unselected layers without gradients
            find_unused_parameters=STAGES[stage.name].hidden_state,
        )


def evaluate(module: StageModule, seqs: list, stage: StageConfig, world: World, run: RunConfig,
             call=None) -> float | None:
    """Mean loss over the held-out sequences (every rank computes it; no collectives beyond FSDP2's all-gathers,
    ``call`` being the :class:`ShardedStage` of a sharded run)."""
    call = call or module
    if not seqs:
        return None
    was = module.training
    module.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(seqs), stage.micro_batch_size):
            b = module.prepare(collate(seqs[i : i + stage.micro_batch_size]))
            n = module.count(b)
            b = _to(b, world.device)
            if n == 0:
                continue
            with _autocast(world, run):
                total += float(call(b, 1.0))
            count += n
    module.train(was)
    return total / count if count else None


@dataclass
class StageSetup:
    """What :func:`prepare_stage` builds for one stage: the loss module and what runs it, the optimizer, the data."""

    stage: StageConfig
    where: str  # "stages[2]": names the stage in messages
    total_steps: int
    accum: int  # micro-batches per rank and step
    selection: Selection
    module: StageModule
    wrapped: Any  # what a training step calls: the module, its DDP wrapper or the FSDP2 root's ShardedStage
    call: Any  # what computes a held-out loss
    optimizer: torch.optim.Optimizer
    packed: PackedStream
    eval_seqs: list[PackedSequence]
    heldout_rows: dict[str, torch.Tensor] | None  # logit stages: the rows of the held-out fidelity
    stage_dir: Path
    fingerprint: dict[str, Any]


@dataclass
class ResumePoint:
    """Where a stage starts: step 0, or the checkpoint a resumed run continues from."""

    step: int = 0
    tokens: int = 0
    stream: StreamState = field(default_factory=StreamState)
    checkpoint: Path | None = None


def prepare_stage(stage: StageConfig, stage_index: int, data: DataConfig, student: nn.Module, teacher: nn.Module,
                  tokenizer: Any, run: RunConfig, run_dir: Path, world: World, validated: bool,
                  sharded_root: nn.Module | None) -> StageSetup:
    """Freeze the teacher, select what trains, build the stage's loss module, its data (checked here unless the
    pipeline did already) and its optimizer."""
    where = f"stages[{stage_index}]"
    total_steps = stage.total_steps()
    accum = stage.grad_accum_for(world.world_size)
    student.train()
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    selection = apply_trainable(student, stage.trainable, f"{where}.trainable")  # type: ignore[arg-type]
    if stage.gradient_checkpointing:
        _enable_gradient_checkpointing(student, where)
    module = build_stage_module(student, teacher, stage)

    # data: validated before anything trains
    packed = PackedStream(data, tokenizer, stage.seq_len, stage.masking)
    if not validated:
        packed.validate()
    eval_seqs = packed.heldout_sequences(stage.eval_sequences)
    heldout_rows = stage_heldout_rows(stage, eval_seqs)
    if heldout_rows is not None and world.is_main:
        save_stage_rows(run_dir, stage, heldout_rows)

    opt_cfg = stage.optim
    fused = opt_cfg.fused if opt_cfg.fused is not None else world.device.type == "cuda"
    wrapped = _wrap(module, world, run, stage, sharded_root)
    optimizer = torch.optim.AdamW(
        param_groups(student, opt_cfg.weight_decay), lr=opt_cfg.lr, betas=opt_cfg.betas, eps=opt_cfg.eps, fused=fused
    )
    return StageSetup(stage=stage, where=where, total_steps=total_steps, accum=accum, selection=selection,
                      module=module, wrapped=wrapped, call=wrapped if world.sharded else module, optimizer=optimizer,
                      packed=packed, eval_seqs=eval_seqs, heldout_rows=heldout_rows,
                      stage_dir=run_dir / "checkpoints" / stage.name, fingerprint=stage_fingerprint(stage, data))


def resume_stage(setup: StageSetup, student: nn.Module, world: World, resume: bool, logger: MetricsLogger,
                 allow_optim_change: bool) -> ResumePoint:
    """With ``resume``: load the newest intact checkpoint of the stage (every rank the same one), refusing one whose
    settings changed; the steps logged after it are logged again."""
    stage = setup.stage
    if world.sharded:  # every rank must load the same checkpoint: rank 0 picks it (verifying every rank's shards)
        ck = broadcast_object(find_resume_checkpoint(setup.stage_dir) if resume and world.is_main else None, world)
    else:
        ck = find_resume_checkpoint(setup.stage_dir, clean=world.is_main) if resume else None
    point = ResumePoint()
    if ck is not None:
        st = load_resume_checkpoint(ck, student, setup.optimizer, world)
        check_resume_fingerprint(st.get("fingerprint"), setup.fingerprint, f"{setup.where} ({stage.name})", ck,
                                 allow_optim_change, logger.event if world.is_main else lambda _: None)
        point = ResumePoint(int(st["step"]), int(st["tokens"]), StreamState.from_dict(st["stream"]), ck)
    if resume:
        logger.rewind(stage.name, point.step)  # the steps after the checkpoint are trained (and logged) again
    return point


def run_stage(
    *,
    stage: StageConfig,
    stage_index: int,
    data: DataConfig,
    student: nn.Module,
    teacher: nn.Module,
    tokenizer: Any,
    run: RunConfig,
    run_dir: Path,
    world: World,
    resume: bool,
    logger: MetricsLogger,
    stop_after: int | None = None,
    validated: bool = False,
    allow_optim_change: bool = False,
    sharded_root: nn.Module | None = None,
    checkpoints: bool = True,
) -> StageResult:
    """Train ``student`` in place for one stage: :func:`prepare_stage`, :func:`resume_stage`, then :func:`train_loop`.
    ``stop_after`` ends the loop after that many optimizer steps of this invocation (testing resume: a run cut off).
    Under ``run.distributed: fsdp`` the student and teacher are already sharded and ``sharded_root`` is
    :func:`gendistill.distill.fsdp.shard_student`'s root. ``checkpoints=False``: none at all (a brief run its caller
    caches whole: select-layers' candidate sets), so it resumes from its start."""
    setup = prepare_stage(stage, stage_index, data, student, teacher, tokenizer, run, run_dir, world, validated,
                          sharded_root)
    start = resume_stage(setup, student, world, resume, logger, allow_optim_change)
    result = StageResult(stage.name, start.step, start.tokens, selection=setup.selection,
                         resumed_from=start.step if start.checkpoint is not None else None)
    if start.step >= setup.total_steps:
        if stage.gradient_checkpointing:  # nothing to train: leave the student as the next stage expects it
            _disable_gradient_checkpointing(student)
        return result
    return train_loop(setup, start, result, student, teacher, tokenizer, run, run_dir, world, logger, stop_after,
                      checkpoints)


class _StepLog:
    """The bookkeeping after each optimizer step: progress, metrics, held-out evaluations."""

    def __init__(self, setup: StageSetup, result: StageResult, run: RunConfig, world: World, logger: MetricsLogger,
                 progress: Progress):
        self.setup, self.result, self.run, self.world = setup, result, run, world
        self.logger, self.progress = logger, progress
        self.t_last = time.perf_counter()

    def evaluate(self, step: int, tokens: int) -> None:
        """The held-out loss at ``step`` (recorded, logged, shown); for the logit stages with the held-out fidelity,
        both from one pass of teacher and student over the held-out rows (:func:`stage_fidelity` with the stage's
        loss)."""
        s = self.setup
        fid: dict[str, Any] = {}
        if s.heldout_rows is not None:
            fid = stage_fidelity(s.module.student, s.module.teacher, s.heldout_rows, s.stage.micro_batch_size,
                                 _autocast(self.world, self.run), s.call.root if self.world.sharded else None,
                                 loss_fn=s.module.hidden_loss)
            ev = fid.get("loss")
        else:
            ev = evaluate(s.module, s.eval_seqs, s.stage, self.world, self.run, s.call)
        if ev is None:
            return
        self.result.eval_losses.append((step, ev))
        rec: dict[str, Any] = {"stage": s.stage.name, "step": step, "tokens": tokens, "eval_loss": ev}
        text = f"held-out loss {ev:.4f}"
        if fid.get("n_tokens"):
            self.result.eval_fidelity.append((step, fid))
            rec.update(eval_kl=fid["kl_teacher_student"], eval_top1=fid["top1_agreement"], eval_tokens=fid["n_tokens"])
            text += f", KL {fid['kl_teacher_student']:.4f}, top-1 {100 * fid['top1_agreement']:.1f} %"
        self.logger.log(rec)
        self.progress.message(f"[{s.stage.name}] {text} before training" if step == 0 else
                              f"[{s.stage.name}] step {step}: {text}")

    def step(self, step: int, tokens: int, step_tokens: int, loss_val: float, gnorm: float, lr: float,
             denom: float) -> None:
        stage = self.setup.stage
        now = time.perf_counter()
        tok_s = step_tokens / max(now - self.t_last, 1e-9)
        self.t_last = now
        first = not self.result.losses  # this process's first step of the stage: logged with the process's age
        self.result.losses.append(loss_val)
        self.progress.update(step, loss_val, tok_s)
        last = step == self.setup.total_steps
        if step % stage.log_every == 0 or last or first:
            self.logger.log({"stage": stage.name, "step": step, "tokens": tokens, "loss": loss_val, "lr": lr,
                             "tokens_per_s": tok_s, "loss_tokens": int(denom), "grad_norm": gnorm,
                             **({"process_seconds": round(seconds_since_start(), 1)} if first else {})})
        if stage.eval_every and (step % stage.eval_every == 0 or last):
            self.evaluate(step, tokens)


def train_loop(setup: StageSetup, start: ResumePoint, result: StageResult, student: nn.Module, teacher: nn.Module,
               tokenizer: Any, run: RunConfig, run_dir: Path, world: World, logger: MetricsLogger,
               stop_after: int | None, checkpoints: bool = True) -> StageResult:
    """The optimizer steps from ``start`` to the end of the stage (or ``stop_after`` of them): the next step's
    batches read on a background thread, held-out evaluations, checkpoints (never of a diverged model) and the
    part-way student snapshots."""
    stage, total_steps, optimizer = setup.stage, setup.total_steps, setup.optimizer
    step, tokens, last_ckpt = start.step, start.tokens, start.checkpoint
    batches = BatchStream(setup.packed, stage.batch_size, stage.micro_batch_size, world.rank, world.world_size,
                          start.stream)
    progress = Progress(stage.name, total_steps, step, world.is_main, run.progress, stage.log_every)
    if start.checkpoint is not None:
        progress.message(f"[{stage.name}] resumed from {start.checkpoint} at step {step}")
    ckpt_every = stage.checkpoint_every or run.checkpoint_every
    snapshots = {max(1, round(f * total_steps)): f for f in stage.snapshots}
    trainable = [p for p in student.parameters() if p.requires_grad]
    log = _StepLog(setup, result, run, world, logger, progress)
    n_this = 0
    # the next step's batches are read, tokenized and packed on a background thread while this step computes
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gendistill-data")
    pending: Future = pool.submit(prefetch_step, batches, setup.module, world.device)
    hooks = cast_mixer_inputs(student, torch.bfloat16) if _use_bf16(world, run) else []
    context = contextlib.ExitStack()
    context.enter_context(packed_flash_attention(student, teacher, enabled=use_packed_flash_attention(world, run)))
    context.enter_context(compiled_blocks(student, teacher, enabled=use_compiled_blocks(world, run)))
    try:
        if stage.eval_every and step == 0:
            log.evaluate(0, 0)
        schedule = lr_schedule(stage.optim, total_steps)
        log.t_last = time.perf_counter()
        while step < total_steps:
            lr = set_lr(optimizer, stage.optim.lr * schedule(step))
            micro, new_state = pending.result()
            if step + 1 < total_steps:
                pending = pool.submit(prefetch_step, batches, setup.module, world.device)
            assert len(micro) == setup.accum, (len(micro), setup.accum)
            def one_step(micro=micro):
                return train_step(setup.wrapped, setup.module, micro, optimizer, trainable, world, run,
                                  stage.optim.clip_grad_norm)

            if run.profile_step == step + 1 and world.is_main:  # the other ranks run the same step unprofiled
                (loss_val, gnorm, denom, stepped), prof = profile_call(
                    one_step, run_dir / "profile", f"{stage.name}_step{step + 1}", world.device)
                logger.log({"stage": stage.name, "step": step + 1, "profile": prof})
                progress.message(f"[{stage.name}] step {step + 1} profiled: {run_dir / 'profile' / prof['table']}")
            else:
                loss_val, gnorm, denom, stepped = one_step()
            if not stepped:
                raise diverged_step_error(stage.name, step + 1, loss_val, gnorm, last_ckpt)
            step += 1
            n_this += 1
            step_tokens = stage.batch_size * stage.seq_len
            tokens += step_tokens
            log.step(step, tokens, step_tokens, loss_val, gnorm, lr, denom)
            stop_now = stop_after is not None and n_this >= stop_after
            if checkpoints and (step % ckpt_every == 0 or step == total_steps or stop_now):
                bad = agreed_non_finite(student, optimizer, world)  # never checkpoint a diverged model
                if bad is not None:
                    raise TrainingDivergedError(
                        f"{stage.name} step {step}: {bad} is not finite after the optimizer step; no checkpoint "
                        f"written ({recovery_hint(last_ckpt)})"
                    )
                last_ckpt = save_checkpoint(setup.stage_dir, step, tokens, new_state, student, optimizer, run, world,
                                            stage.name, total_steps, setup.fingerprint)
            if step in snapshots:
                save_student_folder(student, tokenizer, run_dir / snapshot_name(stage.name, snapshots[step]), world)
            if stop_now:
                break
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        progress.close()
        for h in hooks:
            h.remove()
        context.close()
        if stage.gradient_checkpointing:  # the next stage decides for itself
            _disable_gradient_checkpointing(student)
    result.steps, result.tokens = step, tokens
    return result


__all__ = ["ResumePoint", "StageResult", "StageSetup", "TrainingDivergedError", "evaluate", "prepare_stage",
           "resume_stage", "run_stage", "train_loop", "train_step"]
