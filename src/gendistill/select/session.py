"""One selection run's shared machinery: the teacher, the held-out data and recall task, the all-KDA student aligned
by stages 1-2, candidate students (a set of layers restored to the teacher's attention) distilled briefly through the
GenDistill trainer (``distill.trainer.run_stage``), their scores, the cache, the cost and the progress display.

Run folder::

    <out>/select.json       the resolved settings (and their fingerprint)
    <out>/scores.json       every score computed so far (the cache; resumable)
    <out>/layers.json       the result: {"attention_layers": [...], "ranked": [...], ...} (written last)
    <out>/aligned/          the all-KDA student after stages 1-2 (loadable student folder)
    <out>/runs/<phase>/     metrics.jsonl of each training phase; checkpoints only while it runs
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from gendistill.convert.convert import convert_teacher, save_student
from gendistill.distill.config import LossConfig, OptimConfig, RunConfig, StageConfig, TrainableConfig
from gendistill.distill.data import PackedStream
from gendistill.distill.distributed import World, init_world
from gendistill.distill.metrics import MetricsLogger
from gendistill.distill.pipeline import load_student
from gendistill.distill.stage_facts import STAGES
from gendistill.distill.stages import Stage3Module, cast_mixer_inputs
from gendistill.distill.trainer import evaluate, run_stage
from gendistill.errors import ConfigError, GendistillError
from gendistill.io import atomic_write_json
from gendistill.models.loading import load_model
from gendistill.ownership import check_replaceable, clear_owned, is_empty, marker_kind, write_marker
from gendistill.select.cache import Cost, ScoreCache, set_key, total_cost
from gendistill.select.config import ALIGNMENT_SETTINGS, SelectConfig, alignment_fingerprint, fingerprint
from gendistill.select.recall import RecallSet, answer_logprobs, make_recall, recall_scores
from gendistill.teachers import load_teacher_config

MARKER = "select.json"


def _selection_record(out: Path) -> dict[str, Any] | None:
    """``<out>/select.json`` when it is a select-layers settings record (``fingerprint`` and ``settings``)."""
    try:
        data = json.loads((out / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and isinstance(data.get("fingerprint"), str) and isinstance(data.get("settings"), dict):
        return data
    return None


def check_output(cfg: SelectConfig, resume: bool, overwrite: bool) -> None:
    """Everything about ``--out`` that can be refused, without writing: a folder that is not a select-layers run, an
    existing run without ``--resume``/``--overwrite``, a resume with other settings, ``--overwrite`` of a folder
    gendistill did not mark as a select-layers run (:func:`gendistill.ownership.check_replaceable`: never the
    working folder, home, ``/``, a git repository or a symlink, whatever it holds)."""
    out = Path(cfg.output_dir)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: --resume continues the run, --overwrite "
                          "deletes it")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file, not a folder")
    if overwrite:
        check_replaceable(out, "select", "--out")
        return
    if is_empty(out):
        return
    record = _selection_record(out)
    if record is None or marker_kind(out) not in (None, "select"):
        raise ConfigError(f"--out {out}: exists and is not a select-layers folder; choose an empty or new folder")
    if not resume:
        raise ConfigError(f"--out {out}: already holds a selection run; pass --resume to continue or --overwrite")
    if record["fingerprint"] != fingerprint(cfg):
        raise ConfigError(
            f"--out {out}: --resume with different settings than the run there (see {out / MARKER}); "
            "use the same options or pass --overwrite"
        )


def aligned_source(cfg: SelectConfig) -> tuple[Path, dict[str, Any]] | None:
    """The aligned student folder ``--aligned-from`` names and its score-cache record (``None`` without it, or for
    ``uniform``), checked before anything is written: a select-layers run folder other than ``--out``, whose settings
    agree with this run's on every :data:`~gendistill.select.config.ALIGNMENT_SETTINGS` (so it aligned the same
    student) and whose alignment finished (its score cache holds ``aligned`` and ``aligned/`` holds a student).
    Anything else: one line."""
    if cfg.aligned_from is None or cfg.method == "uniform":
        return None
    src = Path(cfg.aligned_from)
    if src.resolve() == Path(cfg.output_dir).resolve():
        raise ConfigError(f"--aligned-from {src}: is --out itself; name another select-layers run")
    record = _selection_record(src)
    if record is None:
        raise ConfigError(f"--aligned-from {src}: not a select-layers run folder (no {MARKER} with its settings)")
    try:
        other = SelectConfig.model_validate(record["settings"])
    except ValidationError:
        raise ConfigError(f"--aligned-from {src}: its {MARKER} does not hold valid settings") from None
    if alignment_fingerprint(other) != alignment_fingerprint(cfg):
        mine, theirs = cfg.model_dump(mode="json"), other.model_dump(mode="json")
        differ = [k for k in ALIGNMENT_SETTINGS if mine[k] != theirs[k]]
        raise ConfigError(f"--aligned-from {src}: its student was aligned under other settings "
                          f"({', '.join(differ)}); give the same ones or leave --aligned-from out")
    try:
        aligned = json.loads((src / "scores.json").read_text(encoding="utf-8"))["scores"]["aligned"]
    except (OSError, ValueError, KeyError, TypeError):
        aligned = None
    if not isinstance(aligned, dict) or not (src / "aligned" / "config.json").is_file():
        raise ConfigError(f"--aligned-from {src}: its alignment has not finished (no aligned student there yet)")
    return src / "aligned", aligned


def converted_student(teacher: nn.Module, attention_layers: list[int], device: torch.device, seed: int) -> nn.Module:
    """The teacher converted with ``attention_layers`` kept as attention, float32 on ``device``, its KDA mixers
    initialised from ``seed`` (on the default device: set it with ``torch.device(...)`` around the call)."""
    torch.manual_seed(seed)
    student = convert_teacher(teacher, sorted(attention_layers)).to(device=device, dtype=torch.float32)
    student.upcast_recurrence_parameters()
    return student


def candidate_from(teacher: nn.Module, attention_layers: list[int], aligned: dict[str, torch.Tensor],
                   device: torch.device, seed: int, build_on: torch.device | str | None = None) -> nn.Module:
    """A candidate student: ``attention_layers`` restored to the teacher's attention and every other weight (each
    KDA mixer and anything else stages 1-2 trained) the aligned all-KDA student's ``aligned`` state. Every weight is
    overwritten, so the conversion's random initialisation is thrown away: it runs on ``build_on`` (default
    ``device``), where on a 2-core CPU host it took 1.5-1.6 s a set for SmolLM2-135M (beam-add scores hundreds of sets;
    ``benchmarks/select_candidate.py`` times both)."""
    with torch.device(build_on or device):
        student = converted_student(teacher, attention_layers, device, seed)
    own = student.state_dict()
    student.load_state_dict({k: v for k, v in aligned.items() if k in own}, strict=False)
    return student


def prepare_output(cfg: SelectConfig, resume: bool, overwrite: bool) -> Path:
    """Create (or reopen) the run folder and mark it as a select-layers run (:data:`gendistill.ownership.MARKER`,
    kind ``"select"``). An existing run is refused without ``resume``/``overwrite``; ``overwrite`` only ever empties
    a folder that a previous ``select-layers`` marked as its own (:func:`gendistill.ownership.clear_owned`), and keeps
    its lock file (:func:`gendistill.select.runner.select_layers` holds the lock while this runs)."""
    out = Path(cfg.output_dir)
    check_output(cfg, resume, overwrite)
    if overwrite and not is_empty(out):
        clear_owned(out, "select", "--out")
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, "select")
    atomic_write_json(out / MARKER, {"fingerprint": fingerprint(cfg), "settings": cfg.model_dump(mode="json")})
    return out


class Session:
    def __init__(self, cfg: SelectConfig, out: Path, teacher: nn.Module | None = None, tokenizer: Any = None,
                 world: World | None = None, progress: str = "auto"):
        self.cfg, self.out = cfg, out
        self.world = world or init_world(cfg.device)
        self.progress_mode = progress
        self.t0 = time.perf_counter()
        self.used: dict[str, dict[str, Any]] = {}  # records this selection relies on (for the cost report)
        self._teacher, self._tokenizer = teacher, tokenizer
        self._aligned: dict[str, torch.Tensor] | None = None
        self._eval_seqs: list | None = None
        self._recall: tuple[RecallSet, torch.Tensor] | None = None
        self.run = RunConfig(output_dir=str(out), seed=cfg.seed, device=cfg.device, precision=cfg.precision,
                             keep_checkpoints=1, tensorboard=False, progress="none")

    @functools.cached_property
    def cache(self) -> ScoreCache:
        """``<out>/scores.json``, read on first use: after :func:`prepare_output` (which ``--overwrite`` empties)."""
        return ScoreCache(self.out / "scores.json", fingerprint(self.cfg))

    # ------------------------------------------------------------------------------------------------ teacher, data
    def check_inputs(self) -> None:
        """Load the teacher and read the data and its held-out split (every method but ``uniform``, which reads
        neither), so a missing teacher, missing data or too few documents stop the run before ``--out`` is written."""
        if self.cfg.method != "uniform":
            self.teacher()

    @property
    def num_layers(self) -> int:
        if self._teacher is not None:
            return int(self._teacher.config.num_hidden_layers)
        return int(load_teacher_config(self.cfg.teacher).num_hidden_layers)

    def teacher(self) -> tuple[nn.Module, Any]:
        if self._teacher is None or self._tokenizer is None:
            self._teacher, self._tokenizer = load_model(self.cfg.teacher, dtype=self.cfg.teacher_dtype,
                                                        device=self.world.device)
        self._teacher = self._teacher.to(self.world.device).eval()
        for p in self._teacher.parameters():
            p.requires_grad_(False)
        if self._eval_seqs is None:
            assert self.cfg.data is not None  # SelectConfig requires data for every method that loads the teacher
            packed = PackedStream(self.cfg.data, self._tokenizer, self.cfg.seq_len, "all_tokens")
            packed.validate()  # bad data fails here, before anything trains
            self._eval_seqs = packed.heldout_sequences(self.cfg.eval_sequences)
            if not self._eval_seqs:
                raise ConfigError("data: no held-out sequences (raise data.heldout_documents)")
        return self._teacher, self._tokenizer

    @property
    def bf16(self) -> bool:
        return self.cfg.precision == "bf16" or (self.cfg.precision == "auto" and self.world.device.type == "cuda")

    def autocast(self):
        if self.bf16:
            return torch.autocast(device_type=self.world.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def recall_task(self) -> tuple[RecallSet, torch.Tensor]:
        """The generated recall set and the teacher's log-probabilities at its answer positions (computed once)."""
        if self._recall is None:
            teacher, tok = self.teacher()
            hay = None
            if self.cfg.recall.kind == "needle":  # the held-out text, padding left out
                hay = [t for seq in self._eval_seqs or [] for t, v in zip(seq.input_ids, seq.valid) if v]
            rs = make_recall(tok, self.cfg.recall, self.cfg.seed, hay)
            t_lp = answer_logprobs(teacher, rs, self.cfg.recall.batch_size, self.world.device, self.autocast)
            self._recall = (rs, t_lp)
        return self._recall

    # ------------------------------------------------------------------------------------------------- stages, runs
    def stage(self, name: str, steps: int, lr: float, trainable: TrainableConfig | None = None,
              weight_decay: float = 0.0) -> StageConfig:
        cfg = self.cfg
        return StageConfig(
            name=name, steps=max(steps, 1), seq_len=cfg.seq_len, batch_size=cfg.batch_size,
            micro_batch_size=cfg.micro_batch_size, loss=LossConfig(kind=STAGES[name].loss),
            optim=OptimConfig(lr=lr, weight_decay=weight_decay, schedule="cosine", warmup_ratio=0.1, min_lr_ratio=0.1),
            trainable=trainable, eval_every=None, eval_sequences=cfg.eval_sequences,
        )

    def train(self, student: nn.Module, stage: StageConfig, phase: str, progress: str = "none",
              checkpoints: bool = True) -> int:
        """Train ``student`` in place for ``stage`` with the GenDistill trainer, resumable from its own checkpoints
        under ``<out>/runs/<phase>/``; the checkpoints are deleted once it completes. ``checkpoints=False`` (a
        candidate set's brief distillation, cached as a whole once scored): none are written. Returns the tokens
        trained."""
        teacher, tok = self.teacher()
        run_dir = self.out / "runs" / phase
        run = self.run.model_copy(update={"output_dir": str(run_dir), "progress": progress})
        logger = MetricsLogger(run_dir, self.world.is_main, tensorboard=False)
        try:
            res = run_stage(stage=stage, stage_index=0, data=self.cfg.data, student=student, teacher=teacher,  # type: ignore[arg-type]
                            tokenizer=tok, run=run, run_dir=run_dir, world=self.world, resume=True, logger=logger,
                            validated=True, checkpoints=checkpoints)
        finally:
            logger.close()
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        return res.tokens

    def _fresh_student(self, attention_layers: list[int]) -> nn.Module:
        return converted_student(self.teacher()[0], attention_layers, self.world.device, self.cfg.seed)

    def aligned_state(self) -> dict[str, torch.Tensor]:
        """State dict of the all-KDA student after ``align_steps`` of stage 1 and of stage 2 (saved once in
        ``<out>/aligned``, reloaded on resume), or of the one another run aligned (``--aligned-from``: the record names
        that run's folder, ``reused_path``, and a resume reloads it from there, with or without the option). Once the
        cache holds an ``aligned`` record this run's scores rest on that student: it is never aligned again."""
        if self._aligned is not None:
            return self._aligned
        folder = self.out / "aligned"
        rec = self.cache.get("aligned")
        if rec is not None and (folder / "config.json").exists():
            student = load_student(folder, self.world.device)
        elif rec is not None:
            path, rec = self._reused_again(rec)
            self.message(f"the aligned all-KDA student: reused from {path}")
            student = load_student(path, self.world.device)
        elif (source := aligned_source(self.cfg)) is not None:  # another run aligned this student: its cost is there
            path, theirs = source
            self.message(f"the aligned all-KDA student: reused from {path}")
            student = load_student(path, self.world.device)
            rec = {"cost": Cost().as_dict(), "reused_from": path.parent.name, "reused_path": str(path.parent.resolve()),
                   "reused_cost": theirs.get("cost")}
            self.cache.put("aligned", rec)
        else:
            cost = Cost()
            with cost.timed():
                student = self._fresh_student([])
                if self.cfg.align_steps > 0:
                    for name, lr in (("stage1", self.cfg.align_lr), ("stage2", self.cfg.align_lr / 3)):
                        self.message(f"aligning the all-KDA student: {name}, {self.cfg.align_steps} steps")
                        cost.train_tokens += self.train(student, self.stage(name, self.cfg.align_steps, lr),
                                                        f"align-{name}", progress=self.progress_mode)
                _, tok = self.teacher()
                student.eval()
                save_student(student, tok, folder, overwrite=True)
            rec = {"cost": cost.as_dict()}
            self.cache.put("aligned", rec)
        self.used["aligned"] = rec
        self._aligned = {k: v.detach().clone() for k, v in student.state_dict().items()}
        return self._aligned

    def _reused_again(self, rec: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
        """On resume, the aligned student folder of the run this one's cached ``aligned`` record reused (and the
        record, its ``reused_path`` updated when ``--aligned-from`` names where that run is now). Its scores were
        computed with that student, so anything else is one line: aligning again would mix two students' scores."""
        name, stored = rec.get("reused_from"), rec.get("reused_path")
        if name is None:
            raise ConfigError(f"{self.out / 'aligned'}: missing, but {self.cache.path} holds scores of the student "
                              "aligned there; restore it or pass --overwrite to start the run again")
        if self.cfg.aligned_from is not None:
            source = aligned_source(self.cfg)
            assert source is not None  # a method that scores students
            given = source[0].parent.resolve()
            if stored is not None and Path(stored).is_dir() and given != Path(stored):
                raise ConfigError(f"--aligned-from {self.cfg.aligned_from}: this run reused {stored}'s alignment; "
                                  f"resume with --aligned-from {stored} or without it")
            if str(given) != stored:
                rec = {**rec, "reused_path": str(given)}
                self.cache.put("aligned", rec)
            return source[0], rec
        if stored is None:  # a record written before the path was kept
            raise ConfigError(f"this run reused the alignment of the select-layers run {name!r}; resume with "
                              f"--aligned-from {name} (that run's folder)")
        if not Path(stored).is_dir():
            raise ConfigError(f"this run reused {stored}'s alignment, which is no longer there; resume with "
                              "--aligned-from RUN (that run's folder where it is now)")
        try:
            source = aligned_source(self.cfg.model_copy(update={"aligned_from": stored}))
        except ConfigError as e:
            raise ConfigError(f"this run reused {stored}'s alignment, which no longer holds it ({e}); resume with "
                              "--aligned-from RUN naming that run") from None
        assert source is not None
        return source[0], rec

    def candidate_student(self, attention_layers: list[int]) -> nn.Module:
        """A student with ``attention_layers`` restored to the teacher's attention and every other layer's KDA mixer
        (and anything else stages 1-2 trained) taken from the aligned all-KDA student."""
        aligned = self.aligned_state()
        return candidate_from(self.teacher()[0], attention_layers, aligned, self.world.device, self.cfg.seed)

    # ------------------------------------------------------------------------------------------------------ scores
    def score_model(self, student: nn.Module, cost: Cost) -> dict[str, float]:
        """Held-out KL(teacher || student) per token (the trainer's own evaluation) and the recall scores."""
        teacher, _ = self.teacher()
        stage = self.stage("stage3a", 1, 1e-4)
        rs, t_lp = self.recall_task()
        hooks = cast_mixer_inputs(student, torch.bfloat16) if self.bf16 else []  # as the trainer does under bf16
        try:
            kl = evaluate(Stage3Module(student, teacher, stage), self._eval_seqs or [], stage, self.world, self.run)
            s_lp = answer_logprobs(student, rs, self.cfg.recall.batch_size, self.world.device, self.autocast)
        finally:
            for h in hooks:
                h.remove()
        cost.eval_tokens += len(self._eval_seqs or []) * self.cfg.seq_len + rs.tokens
        return {"heldout_kl": float(kl), **recall_scores(s_lp, t_lp, rs.answers)}

    def score_set(self, attention_layers: list[int] | tuple[int, ...]) -> dict[str, Any]:
        """Score of one attention-layer set: the candidate student distilled for ``candidate_steps`` (stage 3a),
        then scored; cached under ``attn:<layers>``."""
        key = set_key(attention_layers)
        rec = self.cache.get(key)
        if rec is None:
            self.aligned_state()  # timed as its own record, not as this set's
            cost = Cost()
            with cost.timed():
                student = self.candidate_student(list(attention_layers))
                if self.cfg.candidate_steps > 0:
                    tr = TrainableConfig(groups=list(self.cfg.candidate_groups))  # type: ignore[arg-type]
                    if not any(hasattr(layer, "linear_attn") for layer in student.model.layers):
                        tr = TrainableConfig(groups=[g for g in self.cfg.candidate_groups if g in ("mlp", "norms")]
                                             or ["mlp"])  # type: ignore[arg-type]
                    stage = self.stage("stage3a", self.cfg.candidate_steps, self.cfg.candidate_lr, tr)
                    phase = "candidate-" + key.replace(":", "-").replace(",", "_")
                    # no checkpoints: a set stopped half-way is trained and scored again
                    cost.train_tokens += self.train(student, stage, phase, checkpoints=False)
                scores = self.score_model(student, cost)
                del student
            rec = {"attention_layers": sorted(attention_layers), **scores, "cost": cost.as_dict()}
            self.cache.put(key, rec)
        self.used[key] = rec
        return rec

    # ------------------------------------------------------------------------------------------------ reporting
    def message(self, text: str) -> None:
        if self.progress_mode != "none":
            print(text, file=sys.stderr, flush=True)

    def bar(self, description: str, total: int) -> "CandidateProgress":
        return CandidateProgress(description, total, self.progress_mode)

    def cost_report(self) -> dict[str, Any]:
        device = self.world.device.type
        scored = sum(1 for k in self.used if k.startswith("attn:"))
        return total_cost(list(self.used.values()), device, self.world.world_size, time.perf_counter() - self.t0,
                          scored, self.cache.hits)


class CandidateProgress:
    """A rich progress bar over candidates (``auto``: on a terminal; plain lines on stderr otherwise)."""

    def __init__(self, description: str, total: int, mode: str):
        self.description, self.total, self.done, self.mode = description, total, 0, mode
        self.bar = None
        if mode == "bar" or (mode == "auto" and sys.stderr.isatty()):
            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                TimeRemainingColumn(), console=Console(stderr=True))
            self.task = self.bar.add_task(description, total=total, info="")
            self.bar.start()

    def set_total(self, total: int) -> None:
        self.total = total
        if self.bar is not None:
            self.bar.update(self.task, total=total)

    def advance(self, info: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(self.task, advance=1, info=info)
        elif self.mode != "none":
            print(f"[{self.description}] {self.done}/{self.total} {info}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()

    def __enter__(self) -> "CandidateProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = ["Session", "check_output", "prepare_output", "GendistillError"]
