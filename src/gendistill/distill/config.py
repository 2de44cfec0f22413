"""The typed distillation recipe.

A recipe is one YAML file validated by the pydantic models below (``extra="forbid"`` everywhere), so an unknown key
or a bad value is rejected before anything is loaded, with the key's dotted path in the message
(``stages[1].optim.lr: Input should be greater than 0``). :func:`gendistill.distill.recipe_files.load_recipe` (a file
or a shipped recipe's name, with overrides) is the single entry point; the resolved recipe (every default filled in)
is written to the run folder by the trainer. Every field's description is what ``gendistill distill --help-recipe``
prints (:mod:`gendistill.distill.recipe_help`).
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from gendistill.devices import DEVICE_HELP, DTYPE_HELP, device_name, dtype_choice
from gendistill.distill.losses import HIDDEN_LOSSES, LOGIT_LOSSES
from gendistill.distill.stage_facts import (PARAM_GROUPS, STAGE_ORDER, STAGES, Masking, ParamGroup, StageName,
                                            micro_batches_per_step)
from gendistill.errors import ConfigError, GendistillError
from gendistill.limits import MAX_SEQ_LEN, MAX_SHUFFLE_BUFFER, MAX_STEP_TOKENS
from gendistill.models.hybrid.configuration_hybrid import check_kda_options

#: every loss a stage can use: the registered logit losses (stages 3a/3b), then the hidden-state ones (stages 1-2)
LossKind = Literal[tuple(LOGIT_LOSSES) + tuple(HIDDEN_LOSSES)]  # type: ignore[valid-type]


class _Strict(BaseModel):
    # allow_inf_nan=False: ``lr: .inf`` or ``.nan`` is refused here, not discovered as a diverged run
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


_SIZE_SUFFIX = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}


def parse_count(value: Any) -> Any:
    """A token or step count as a user writes it: ``100000000``, ``1e8`` (YAML reads it as a string), ``1.5e9``,
    ``100M``, ``2.5B``, ``10k``, ``1_000``. Anything else is passed on for pydantic to reject."""
    if isinstance(value, bool):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if not isinstance(value, str):
        return value
    text = value.strip().replace("_", "").replace(",", "")
    mult = 1
    if text and text[-1].lower() in _SIZE_SUFFIX:
        mult, text = _SIZE_SUFFIX[text[-1].lower()], text[:-1]
    try:
        number = float(text)
    except ValueError:
        return value
    total = number * mult
    if not math.isfinite(total) or not total.is_integer():
        raise ValueError(f"{value!r} is not a whole number")
    return int(total)


def canonical(spelling, value: Any) -> Any:
    """A device or dtype name in the canonical spelling ``spelling`` gives it (:func:`gendistill.devices.device_name`
    / :func:`gendistill.devices.dtype_choice`: the rules of every ``--device`` / ``--dtype``); a ValueError (which
    pydantic reports at the key) for a name those rules refuse. Anything not a string is left for pydantic."""
    if not isinstance(value, str):
        return value
    try:
        return spelling(value, None)
    except GendistillError as e:
        raise ValueError(str(e)) from None


# ----------------------------------------------------------------------------------------------------------- models
# Every field has a description: ``gendistill distill --help-recipe`` and docs/recipe.md are written from them.
class TeacherConfig(_Strict):
    """The teacher: a spec understood by ``gendistill.teachers.load_teacher`` (``smollm2-135m-instruct``, a GGUF
    file, a local folder or a hub id)."""

    spec: str = Field(description="the teacher: an embedded short name (smollm2-135m-instruct), a .gguf file, a "
                                  "Hugging Face folder or a hub id (org/name)")
    dtype: str = Field(default="auto", description=f"dtype the teacher runs in: {DTYPE_HELP}; kept as the long name")
    attn_implementation: str | None = Field(
        default=None, description="transformers attention kernel for the teacher and the converted student (sdpa, eager, ...)"
    )

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype(cls, v: Any) -> Any:
        return canonical(dtype_choice, v)


class StudentConfig(_Strict):
    """The student: either converted from the teacher (``attention_layers`` + KDA options) or loaded from an existing
    student folder (``path``)."""

    path: str | None = Field(default=None, description="an existing student folder to continue from (instead of "
                                                       "attention_layers)")
    attention_layers: list[int] | str | None = Field(
        default=None, description="convert the teacher, keeping softmax attention in these layers: a list of "
                                  "indices or what `gendistill convert --attention-layers` takes (every:4, "
                                  "ratio:0.25, none, a layers.json from select-layers)")
    kda_options: dict[str, Any] = Field(
        default_factory=dict, description="options of the replaced layers, e.g. kda_kv_mode: repeat|expand, "
                                          "kda_gate_activation: silu|sigmoid, kda_conv_activation: null|silu "
                                          "(docs/mixers.md)")

    @field_validator("kda_options")
    @classmethod
    def _kda_options(cls, v: dict[str, Any]) -> dict[str, Any]:
        check_kda_options(v)
        return v

    @model_validator(mode="after")
    def _one_source(self) -> "StudentConfig":
        if (self.path is None) == (self.attention_layers is None):
            raise ValueError("give exactly one of 'path' (an existing student folder) or 'attention_layers'")
        return self


class SourceConfig(_Strict):
    """One training-text source. ``path`` is a local file (``.jsonl``, ``.jsonl.gz``, ``.json``, ``.parquet``,
    ``.txt``, ``.txt.gz``), a local folder saved with ``datasets`` or holding such files, or a hub id (``hub: true``
    or ``hf://org/name``)."""

    path: str = Field(description="a local file (.jsonl, .jsonl.gz, .json, .parquet, .txt, .txt.gz), a folder of "
                                  "them or saved with datasets, or a hub dataset (hf://org/name, or hub: true)")
    format: Literal["text", "chat", "prompt_response"] = Field(
        description="text: plain documents; chat: a list of messages (role, content) per record; prompt_response: "
                    "a prompt and its response per record")
    weight: float = Field(default=1.0, gt=0, description="relative share of this source's documents in the mix")
    hub: bool = Field(default=False, description="path is a hub dataset id")
    split: str = Field(default="train", description="hub dataset split")
    subset: str | None = Field(default=None, description="hub dataset configuration name")
    text_field: str = Field(default="text", description="text: the record field holding the document")
    messages_field: str = Field(default="messages", description="chat: the record field holding the messages")
    prompt_field: str = Field(default="prompt", description="prompt_response: the record field holding the prompt")
    response_field: str = Field(default="response",
                                description="prompt_response: the record field holding the response")
    limit: int | None = Field(default=None, gt=0, description="read at most this many documents")
    streaming: bool = Field(default=False, description="read lazily (corpora larger than RAM) with a shuffle buffer")
    chat_template: bool = Field(
        default=True, description="prompt_response only: render through the tokenizer's chat template"
    )


class DataConfig(_Strict):
    """The training text of a stage (or of every stage, at the recipe's top level)."""

    sources: list[SourceConfig] = Field(min_length=1, description="the sources, mixed by weight")
    seed: int = Field(default=0, description="seed of the mix and of the shuffle")
    shuffle: bool = Field(default=True, description="shuffle the documents (a buffer for streaming sources)")
    shuffle_buffer: int = Field(default=10_000, gt=0, le=MAX_SHUFFLE_BUFFER, description="streaming sources only")
    split_documents: bool = Field(
        default=True,
        description="fill each packed sequence to the brim, continuing a long document in the next sequence; "
        "false starts a document that does not fit in a fresh sequence (the rest is padding)",
    )
    min_document_tokens: int = Field(default=2, ge=1, description="documents shorter than this many tokens are "
                                                                  "skipped")
    heldout_documents: int = Field(default=64, ge=0, description="first N documents of each source, kept for eval")
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extra keyword arguments of the tokenizer's apply_chat_template (e.g. "
                                          "enable_thinking: false)")
    add_eos: bool = Field(default=True, description="text/prompt_response without template: append EOS")
    skip_empty: bool = Field(
        default=False,
        description="skip (and count) records with nothing to distill (no assistant turn, empty response or text) "
        "instead of stopping; malformed records are errors either way",
    )


class LossConfig(_Strict):
    """A stage's loss (default: the stage's own, see :mod:`gendistill.distill.stage_facts`)."""

    kind: LossKind = Field(default="forward_kl",
                           description="logit losses (stages 3a/3b): " + ", ".join(LOGIT_LOSSES)
                           + "; hidden-state losses (stages 1-2): " + ", ".join(HIDDEN_LOSSES))
    temperature: float = Field(default=1.0, gt=0, description="logit losses: softmax temperature (the loss is "
                                                              "scaled by its square)")
    ce_weight: float = Field(default=0.0, ge=0, description="logit losses: weight of an added next-token "
                                                           "cross-entropy on the data")
    top_k: int = Field(default=64, gt=0, description="topk_kl: the teacher's top k tokens the KL is restricted to")
    jsd_beta: float = Field(default=0.5, gt=0, lt=1, description="jsd: weight of the teacher in the mixture")
    chunk_size: int = Field(default=1024, gt=0, description="tokens per chunk of the vocabulary projection")
    implementation: Literal["auto", "fused", "chunked"] = Field(
        default="auto",
        description="logit losses: 'fused' = fla's fused Triton kernel for the vocabulary projections and the forward "
        "KL (CUDA; forward_kl, with its ce_weight through fla's fused linear cross-entropy; 5x faster, a third of the "
        "memory), 'chunked' = gendistill's "
        "reference (every loss, every device), 'auto' = fused where it applies, else chunked; a trained lm_head's "
        "gradient is bf16-rounded by both under bf16 (fused: the fp32 sum once; chunked: each chunk's, summed in fp32)",
    )


class OptimConfig(_Strict):
    """AdamW and its learning-rate schedule."""

    lr: float = Field(gt=0, description="peak learning rate")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay (never on A_log, dt_bias, norms, "
                                                               "biases)")
    betas: tuple[float, float] = Field(default=(0.9, 0.95), description="AdamW betas")
    eps: float = Field(default=1e-8, gt=0, description="AdamW epsilon")
    schedule: Literal["wsd", "cosine", "constant"] = Field(
        default="wsd", description="wsd: warmup, stable, decay; cosine: warmup then cosine decay; constant: warmup "
                                   "then constant")
    warmup_ratio: float = Field(default=0.0, ge=0, le=1, description="fraction of steps spent warming up")
    warmup_steps: int | None = Field(default=None, ge=0, description="warm-up steps (instead of warmup_ratio)")
    decay_ratio: float = Field(default=0.1, ge=0, le=1, description="wsd: fraction of steps spent decaying")
    decay_shape: Literal["linear", "cosine", "sqrt"] = Field(default="linear", description="wsd: shape of the decay")
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1, description="learning rate at the end, as a fraction of lr")
    clip_grad_norm: float | None = Field(default=1.0, gt=0, description="clip the gradient norm to this (null: no "
                                                                        "clipping)")
    fused: bool | None = Field(default=None, description="fused AdamW (default: on CUDA)")


class TrainableConfig(_Strict):
    """Which parameters train: the named groups plus ``include``, minus ``exclude`` (regexes over parameter names)."""

    groups: list[ParamGroup] = Field(default_factory=list, description="parameter groups: " + ", ".join(PARAM_GROUPS)
                                     + " (see gendistill.distill.freezing)")
    include: list[str] = Field(default_factory=list, description="regexes over parameter names, added")
    exclude: list[str] = Field(default_factory=list, description="regexes over parameter names, removed last")

    @field_validator("include", "exclude")
    @classmethod
    def _compiles(cls, v: list[str]) -> list[str]:
        for i, pat in enumerate(v):
            try:
                re.compile(pat)
            except re.error as e:
                raise ValueError(f"[{i}] {pat!r} is not a valid regex: {e}") from None
        return v


class StageConfig(_Strict):
    """One stage of the pipeline; what it trains, its loss and masking default to the stage's own
    (:mod:`gendistill.distill.stage_facts`)."""

    name: StageName = Field(description="stage1 (mixer alignment), stage2 (block alignment), stage3a (KD on text) "
                                        "or stage3b (chat KD)")
    data: DataConfig | None = Field(default=None, description="overrides the recipe-level data for this stage")
    tokens: int | None = Field(default=None, gt=0, description="length of the stage in tokens (1e8, 100M, 2.5B; or "
                                                               "steps)")
    steps: int | None = Field(default=None, gt=0, description="length of the stage in optimizer steps (or tokens)")
    seq_len: int = Field(gt=1, le=MAX_SEQ_LEN, description="tokens per packed sequence")
    batch_size: int = Field(gt=0, description="global sequences per optimizer step")
    micro_batch_size: int = Field(default=1, gt=0, description="sequences per device per forward")
    grad_accumulation: int | Literal["auto"] = Field(
        default="auto", description="micro-batches per rank and step; auto: batch_size / (micro_batch_size x "
                                    "ranks), a number must equal it")
    optim: OptimConfig = Field(description="optimizer and learning-rate schedule")
    loss: LossConfig | None = Field(default=None, description="default: mse for stages 1-2, forward_kl for 3a/3b")
    masking: Masking | None = Field(
        default=None, description="default: completion_only for stage3b (instruction KD), all_tokens otherwise")
    trainable: TrainableConfig | None = Field(default=None, description="default: kda for stages 1-2; kda, mlp, "
                                                                        "norms for 3a/3b")
    gradient_checkpointing: bool = Field(default=False, description="recompute activations in the backward (less "
                                                                    "memory, about a third more compute)")
    eval_every: int | None = Field(default=None, gt=0, description="steps between held-out evaluations")
    eval_sequences: int = Field(default=16, ge=0, description="held-out sequences of each evaluation")
    checkpoint_every: int | None = Field(default=None, gt=0, description="steps between checkpoints (default: "
                                                                         "run.checkpoint_every)")
    log_every: int = Field(default=1, gt=0, description="steps between logged metrics")
    layers: list[int] | None = Field(default=None, description="stages 1-2: restrict to these KDA layers")
    snapshots: list[float] = Field(
        default_factory=list,
        description="fractions of the stage (0 < f < 1) at which the student is also saved, as <stage>-<pct>pct/ "
                    "(budget curves: evaluate the same run after 25 %, 50 %, ... of its tokens)")

    @field_validator("snapshots")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        bad = [f for f in v if not 0 < f < 1]
        if bad:
            raise ValueError(f"each snapshot is a fraction strictly between 0 and 1, got {bad[0]}")
        return sorted(set(v))

    @field_validator("tokens", "steps", mode="before")
    @classmethod
    def _count(cls, v: Any) -> Any:
        return parse_count(v)

    @model_validator(mode="after")
    def _fill(self) -> "StageConfig":
        if (self.tokens is None) == (self.steps is None):
            raise ValueError("give exactly one of 'tokens' or 'steps'")
        facts = STAGES[self.name]
        if self.loss is None:
            self.loss = LossConfig(kind=facts.loss)
        hidden = self.loss.kind in HIDDEN_LOSSES
        if facts.hidden_state and not hidden:
            raise ValueError(f"loss.kind {self.loss.kind!r} is a logit loss; {self.name} needs "
                             f"{_one_of(HIDDEN_LOSSES)}")
        if not facts.hidden_state and hidden:
            raise ValueError(f"loss.kind {self.loss.kind!r} is a hidden-state loss; {self.name} needs a logit loss")
        if self.trainable is None:
            self.trainable = TrainableConfig(groups=list(facts.trainable))
        if self.masking is None:
            self.masking = facts.masking
        micro_batches_per_step(self.batch_size, self.micro_batch_size)  # ValueError: the batch rule
        for key, n in (("batch_size", self.batch_size), ("eval_sequences", self.eval_sequences)):
            if n * self.seq_len > MAX_STEP_TOKENS:
                raise ValueError(f"{key} x seq_len = {n:,} x {self.seq_len:,} = {n * self.seq_len:,} tokens; at most "
                                 f"{MAX_STEP_TOKENS:,} fit in one step's host memory")
        return self

    def grad_accum_for(self, world_size: int) -> int:
        """Micro-batches per rank and optimizer step under ``world_size`` ranks (the batch rule of
        :func:`gendistill.distill.stage_facts.micro_batches_per_step`; ``grad_accumulation`` must agree)."""
        try:
            accum = micro_batches_per_step(self.batch_size, self.micro_batch_size, world_size)
        except ValueError as e:
            raise ConfigError(f"stage {self.name}: {e}") from None
        if self.grad_accumulation != "auto" and self.grad_accumulation != accum:
            raise ConfigError(
                f"stage {self.name}: grad_accumulation {self.grad_accumulation} disagrees with batch_size "
                f"{self.batch_size} / (micro_batch_size {self.micro_batch_size} x world size {world_size}) = {accum}"
            )
        return accum

    def total_steps(self) -> int:
        if self.steps is not None:
            return self.steps
        assert self.tokens is not None
        return max(1, math.ceil(self.tokens / (self.seq_len * self.batch_size)))


def _one_of(names) -> str:
    """``mse, l2 or cosine``."""
    names = list(names)
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


class RunConfig(_Strict):
    """Where the run goes and how it runs."""

    output_dir: str = Field(description="the run folder: checkpoints, metrics, the student after each stage")
    seed: int = Field(default=0, description="seed of the student's initialisation and of training")
    device: str = Field(default="auto", description=f"{DEVICE_HELP}; under torchrun, cuda or auto (each rank "
                                                    "takes its LOCAL_RANK's GPU)")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        default="auto", description="bf16: autocast with fp32 master weights; auto: bf16 on CUDA, fp32 on CPU")
    keep_checkpoints: int = Field(default=2, ge=1, description="checkpoints kept per stage (the newest)")
    keep_finished_checkpoints: bool = Field(
        default=False, description="keep a stage's checkpoints after it completes (its student folder is saved anyway)"
    )
    checkpoint_every: int = Field(default=500, gt=0, description="steps between checkpoints (a stage may override)")
    profile_step: int | None = Field(
        default=None, ge=1,
        description="profile this optimizer step of every stage with torch.profiler (the step's phases, ops by device "
        "time, ops by input shapes): <output_dir>/profile/<stage>_step<N>.txt, and the phases and largest ops in "
        "metrics.jsonl; the first steps include "
        "compilation, so pick a later one (e.g. 20)")
    distributed: Literal["ddp", "fsdp"] = Field(
        default="ddp",
        description="ddp: the student replicated and wrapped in DDP, the teacher replicated on every rank; fsdp: "
        "student and teacher sharded with FSDP2 per decoder block, sharded (DCP) checkpoints (docs/distill.md)",
    )
    tensorboard: bool = Field(default=True, description="log to <output_dir>/tensorboard (pip install "
                                                            "'gendistill[tensorboard]')")
    wandb: bool = Field(default=False, description="log to Weights & Biases (pip install 'gendistill[wandb]'; "
                                                   "project: $WANDB_PROJECT, else gendistill)")
    progress: Literal["auto", "bar", "lines", "none"] = Field(
        default="auto", description="progress display: a bar (a terminal), lines (logs), none; auto picks")
    compile: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="torch.compile the norms, MLPs and attention modules of every decoder block while training "
        "(auto: on a GPU, without FSDP2; a few seconds of compilation at the first step)",
    )

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, v: Any) -> Any:
        return canonical(device_name, v)


class Recipe(_Strict):
    """A distillation recipe: the teacher, the student, the data, the stages in order, the run."""

    teacher: TeacherConfig = Field(description="the model distilled from")
    student: StudentConfig = Field(description="the hybrid model trained")
    data: DataConfig | None = Field(default=None, description="training text of every stage without its own")
    stages: list[StageConfig] = Field(min_length=1, description="the stages to run, in the order stage1, stage2, "
                                                                "stage3a, stage3b (any subset)")
    run: RunConfig = Field(description="output folder, devices, checkpoints, logging")
    #: where the recipe came from, as a user would name it (a shipped recipe's name or the file's name); model cards
    _source: str | None = PrivateAttr(default=None)

    @property
    def source(self) -> str | None:
        return self._source

    @model_validator(mode="after")
    def _check(self) -> "Recipe":
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stages: a stage is listed twice ({names})")
        order = [STAGE_ORDER.index(n) for n in names]
        if order != sorted(order):
            raise ValueError(f"stages: must run in the order {', '.join(STAGE_ORDER)} (got {names})")
        for i, s in enumerate(self.stages):
            if s.data is None and self.data is None:
                raise ValueError(f"stages[{i}] ({s.name}) has no data and the recipe has no top-level data")
        return self

    def stage_data(self, stage: StageConfig) -> DataConfig:
        d = stage.data or self.data
        assert d is not None
        return d


def check_teacher_positions(recipe: "Recipe", teacher_config: Any) -> None:
    """Every stage's ``seq_len`` within the teacher's ``max_position_embeddings``: beyond it the teacher's targets
    are not what it was trained to produce (and some position encodings fail outright). One line naming the stage."""
    limit = getattr(teacher_config, "max_position_embeddings", None)
    if not isinstance(limit, int) or limit <= 0:
        return
    for i, st in enumerate(recipe.stages):
        if st.seq_len > limit:
            raise ConfigError(f"stages[{i}].seq_len: {st.seq_len:,} tokens is longer than the teacher's context "
                              f"({limit:,} positions, max_position_embeddings); use at most {limit:,}")


# ----------------------------------------------------------------------------------------------------------- loading
def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            # pydantic adds the union branch / validator name; keep only real keys
            if part in ("function-after", "function-before") or str(part).startswith("function-"):
                continue
            out += ("." if out else "") + str(part)
    return out or "<recipe>"


def _keys_at(model: type[BaseModel], loc: tuple[Any, ...]) -> set[str]:
    """The keys a mapping at ``loc`` (a pydantic error location below ``model``) may hold; empty where unknown."""
    models = [model]
    for part in loc:
        if isinstance(part, int) or not models:
            continue
        nested: list[type[BaseModel]] = []
        for m in models:
            field = m.model_fields.get(str(part))
            pending = [field.annotation] if field is not None else []
            while pending:
                t = pending.pop()
                if isinstance(t, type) and issubclass(t, BaseModel):
                    nested.append(t)
                else:
                    pending.extend(getattr(t, "__args__", ()))
        models = nested
    return {name for m in models for name in m.model_fields}


def format_validation_error(err: ValidationError, source: str, model: type[BaseModel] | None = None) -> str:
    """One line for every problem pydantic found. An unknown key gets the nearest known one (from ``model``'s fields
    at that place) as a suggestion; a required key that a near-miss unknown key stands in for is not listed twice."""
    errors = err.errors()
    missing = {tuple(e["loc"]) for e in errors if e["type"] == "missing"}
    merged: set[tuple[Any, ...]] = set()
    parts = []
    for e in errors:
        loc = tuple(e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
            parent, key = loc[:-1], str(loc[-1])
            required = [str(m[-1]) for m in missing if m[:-1] == parent]
            known = _keys_at(model, parent) if model is not None else set()
            near = difflib.get_close_matches(key, required or sorted(known), n=1, cutoff=0.75)
            if near:
                msg += f" (did you mean {near[0]}?)"
                merged.add((*parent, near[0]))
        parts.append((loc, f"{_loc(loc)}: {msg}"))
    return f"{source}: " + "; ".join(text for loc, text in parts if loc not in merged)


def parse_recipe(data: dict[str, Any], source: str = "<recipe>") -> Recipe:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a recipe is a YAML mapping, got {type(data).__name__}")
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, Recipe)) from None


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
