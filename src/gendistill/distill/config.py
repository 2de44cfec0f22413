"""The typed distillation recipe.

A recipe is one YAML file validated by the pydantic models below (``extra="forbid"`` everywhere), so an unknown key
or a bad value is rejected before anything is loaded, with the key's dotted path in the message
(``stages[1].optim.lr: Input should be greater than 0``). :func:`load_recipe` is the single entry point; the resolved
recipe (every default filled in) is written to the run folder by the trainer.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from gendistill.errors import ConfigError
from gendistill.limits import MAX_SEQ_LEN, MAX_SHUFFLE_BUFFER, MAX_STEP_TOKENS

StageName = Literal["stage1", "stage2", "stage3a", "stage3b"]

STAGE_ORDER: tuple[str, ...] = ("stage1", "stage2", "stage3a", "stage3b")
PARAM_GROUPS: tuple[str, ...] = ("kda", "kda_new", "attention", "mlp", "norms", "embeddings", "lm_head")


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


# ----------------------------------------------------------------------------------------------------------- models
class TeacherConfig(_Strict):
    """The teacher: a spec understood by ``gendistill.teachers.load_teacher`` (``smollm2-135m-instruct``, a GGUF
    file, a local folder or a hub id)."""

    spec: str
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    attn_implementation: str | None = Field(
        default=None, description="transformers attention kernel for the teacher and the converted student (sdpa, eager, ...)"
    )


class StudentConfig(_Strict):
    """The student: either converted from the teacher (``attention_layers`` + KDA options) or loaded from an existing
    student folder (``path``)."""

    path: str | None = None
    attention_layers: list[int] | str | None = None
    kda_options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("kda_options")
    @classmethod
    def _kda_options(cls, v: dict[str, Any]) -> dict[str, Any]:
        from gendistill.models.hybrid.configuration_hybrid import check_kda_options

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

    path: str
    format: Literal["text", "chat", "prompt_response"]
    weight: float = Field(default=1.0, gt=0)
    hub: bool = False
    split: str = "train"
    subset: str | None = Field(default=None, description="hub dataset configuration name")
    text_field: str = "text"
    messages_field: str = "messages"
    prompt_field: str = "prompt"
    response_field: str = "response"
    limit: int | None = Field(default=None, gt=0, description="read at most this many documents")
    streaming: bool = Field(default=False, description="read lazily (corpora larger than RAM) with a shuffle buffer")
    chat_template: bool = Field(
        default=True, description="prompt_response only: render through the tokenizer's chat template"
    )


class DataConfig(_Strict):
    sources: list[SourceConfig] = Field(min_length=1)
    seed: int = 0
    shuffle: bool = True
    shuffle_buffer: int = Field(default=10_000, gt=0, le=MAX_SHUFFLE_BUFFER, description="streaming sources only")
    split_documents: bool = Field(
        default=True,
        description="fill each packed sequence to the brim, continuing a long document in the next sequence; "
        "false starts a document that does not fit in a fresh sequence (the rest is padding)",
    )
    min_document_tokens: int = Field(default=2, ge=1)
    heldout_documents: int = Field(default=64, ge=0, description="first N documents of each source, kept for eval")
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)
    add_eos: bool = Field(default=True, description="text/prompt_response without template: append EOS")
    skip_empty: bool = Field(
        default=False,
        description="skip (and count) records with nothing to distill (no assistant turn, empty response or text) "
        "instead of stopping; malformed records are errors either way",
    )


class LossConfig(_Strict):
    kind: Literal["forward_kl", "reverse_kl", "jsd", "topk_kl", "mse", "l2", "cosine"] = "forward_kl"
    temperature: float = Field(default=1.0, gt=0)
    ce_weight: float = Field(default=0.0, ge=0)
    top_k: int = Field(default=64, gt=0)
    jsd_beta: float = Field(default=0.5, gt=0, lt=1)
    chunk_size: int = Field(default=1024, gt=0, description="tokens per chunk of the vocabulary projection")
    implementation: Literal["auto", "fused", "chunked"] = Field(
        default="auto",
        description="logit losses: 'fused' = fla's fused Triton kernel for the vocabulary projections and the forward "
        "KL (CUDA; forward_kl without ce_weight; 5x faster, a third of the memory), 'chunked' = gendistill's "
        "reference (every loss, every device), 'auto' = fused where it applies, else chunked",
    )


class OptimConfig(_Strict):
    lr: float = Field(gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(default=1e-8, gt=0)
    schedule: Literal["wsd", "cosine", "constant"] = "wsd"
    warmup_ratio: float = Field(default=0.0, ge=0, le=1)
    warmup_steps: int | None = Field(default=None, ge=0)
    decay_ratio: float = Field(default=0.1, ge=0, le=1, description="wsd: fraction of steps spent decaying")
    decay_shape: Literal["linear", "cosine", "sqrt"] = "linear"
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1)
    clip_grad_norm: float | None = Field(default=1.0, gt=0)
    fused: bool | None = Field(default=None, description="fused AdamW (default: on CUDA)")


class TrainableConfig(_Strict):
    groups: list[Literal["kda", "kda_new", "attention", "mlp", "norms", "embeddings", "lm_head"]] = Field(
        default_factory=list
    )
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


_DEFAULT_TRAINABLE: dict[str, list[str]] = {
    "stage1": ["kda"],
    "stage2": ["kda"],  # paper Fig. 1: MLPs and norms train only from Stage 3 on
    "stage3a": ["kda", "mlp", "norms"],
    "stage3b": ["kda", "mlp", "norms"],
}
_DEFAULT_LOSS: dict[str, str] = {"stage1": "mse", "stage2": "mse", "stage3a": "forward_kl", "stage3b": "forward_kl"}


class StageConfig(_Strict):
    name: StageName
    data: DataConfig | None = Field(default=None, description="overrides the recipe-level data for this stage")
    tokens: int | None = Field(default=None, gt=0)
    steps: int | None = Field(default=None, gt=0)
    seq_len: int = Field(gt=1, le=MAX_SEQ_LEN)
    batch_size: int = Field(gt=0, description="global sequences per optimizer step")
    micro_batch_size: int = Field(default=1, gt=0, description="sequences per device per forward")
    grad_accumulation: int | Literal["auto"] = "auto"
    optim: OptimConfig
    loss: LossConfig | None = None
    masking: Literal["completion_only", "all_tokens"] | None = Field(
        default=None, description="default: completion_only for stage3b (instruction KD), all_tokens otherwise")
    trainable: TrainableConfig | None = None
    gradient_checkpointing: bool = False
    eval_every: int | None = Field(default=None, gt=0, description="steps between held-out evaluations")
    eval_sequences: int = Field(default=16, ge=0)
    checkpoint_every: int | None = Field(default=None, gt=0)
    log_every: int = Field(default=1, gt=0)
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
        if self.loss is None:
            self.loss = LossConfig(kind=_DEFAULT_LOSS[self.name])  # type: ignore[arg-type]
        local = self.name in ("stage1", "stage2")
        if local and self.loss.kind not in ("mse", "l2", "cosine"):
            raise ValueError(f"loss.kind {self.loss.kind!r} is a logit loss; {self.name} needs mse, l2 or cosine")
        if not local and self.loss.kind in ("mse", "l2", "cosine"):
            raise ValueError(f"loss.kind {self.loss.kind!r} is a hidden-state loss; {self.name} needs a logit loss")
        if self.trainable is None:
            self.trainable = TrainableConfig(groups=list(_DEFAULT_TRAINABLE[self.name]))  # type: ignore[arg-type]
        if self.masking is None:
            self.masking = "completion_only" if self.name == "stage3b" else "all_tokens"
        if self.micro_batch_size > self.batch_size:
            raise ValueError("micro_batch_size is larger than batch_size")
        for key, n in (("batch_size", self.batch_size), ("eval_sequences", self.eval_sequences)):
            if n * self.seq_len > MAX_STEP_TOKENS:
                raise ValueError(f"{key} x seq_len = {n:,} x {self.seq_len:,} = {n * self.seq_len:,} tokens; at most "
                                 f"{MAX_STEP_TOKENS:,} fit in one step's host memory")
        return self

    def grad_accum_for(self, world_size: int) -> int:
        per_step = self.micro_batch_size * world_size
        if self.batch_size % per_step:
            raise ConfigError(
                f"stage {self.name}: batch_size {self.batch_size} is not a multiple of micro_batch_size "
                f"{self.micro_batch_size} x world size {world_size}"
            )
        accum = self.batch_size // per_step
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


class RunConfig(_Strict):
    output_dir: str
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    keep_checkpoints: int = Field(default=2, ge=1)
    keep_finished_checkpoints: bool = Field(
        default=False, description="keep a stage's checkpoints after it completes (its student folder is saved anyway)"
    )
    checkpoint_every: int = Field(default=500, gt=0)
    distributed: Literal["ddp", "fsdp"] = Field(
        default="ddp",
        description="ddp: the student replicated and wrapped in DDP, the teacher replicated on every rank; fsdp: "
        "student and teacher sharded with FSDP2 per decoder block, sharded (DCP) checkpoints (docs/distill.md)",
    )
    tensorboard: bool = Field(default=True, description="log to <output_dir>/tensorboard (pip install "
                                                            "'gendistill[tensorboard]')")
    wandb: bool = Field(default=False, description="log to Weights & Biases (pip install 'gendistill[wandb]'; "
                                                   "project: $WANDB_PROJECT, else gendistill)")
    progress: Literal["auto", "bar", "lines", "none"] = "auto"
    compile: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="torch.compile the norms and MLPs of every decoder block while training (auto: on a GPU, "
        "without FSDP2; a few seconds of compilation at the first step)",
    )


class Recipe(_Strict):
    teacher: TeacherConfig
    student: StudentConfig
    data: DataConfig | None = None
    stages: list[StageConfig] = Field(min_length=1)
    run: RunConfig
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
            raise ValueError(f"stages: must run in the order stage1, stage2, stage3a, stage3b (got {names})")
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


def format_validation_error(err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        parts.append(f"{_loc(e['loc'])}: {msg}")
    return f"{source}: " + "; ".join(parts)


def parse_recipe(data: dict[str, Any], source: str = "<recipe>") -> Recipe:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a recipe is a YAML mapping, got {type(data).__name__}")
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    cur: Any = data
    keys = re.findall(r"[^.\[\]]+|\[\d+\]", dotted)
    for i, k in enumerate(keys):
        last = i == len(keys) - 1
        if k.startswith("["):
            idx = int(k[1:-1])
            if not isinstance(cur, list) or idx >= len(cur):
                raise ConfigError(f"override {dotted}: no list element {idx}")
            if last:
                cur[idx] = value
            else:
                cur = cur[idx]
        else:
            if not isinstance(cur, dict):
                raise ConfigError(f"override {dotted}: {k!r} is not inside a mapping")
            if last:
                cur[k] = value
            else:
                cur = cur.setdefault(k, {})


def read_yaml(path: Path, what: str) -> Any:
    """The YAML document in ``path``; a missing, malformed or empty file is one ``ConfigError`` line naming it."""
    if not path.is_file():
        raise ConfigError(f"{path}: {what} file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); save the "
                          f"{what} as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}".replace("\n", " ")) from None
    if data is None:
        raise ConfigError(f"{path}: the {what} is empty")
    return data


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe: a file, or the name of a recipe shipped with the package (``tiny-cpu``; see
    :mod:`gendistill.distill.shipped`). ``overrides`` are ``dotted.key=value`` strings (value parsed as YAML), e.g.
    ``run.output_dir=runs/x`` or ``stages[0].steps=10``. Relative paths are resolved by :func:`resolve_paths`."""
    from gendistill.distill.shipped import recipe_file  # noqa: PLC0415

    given = str(path)
    path = recipe_file(path)
    data = read_yaml(path, "recipe")
    for ov in overrides or []:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r}: expected key=value")
        k, v = ov.split("=", 1)
        _set_dotted(data, k.strip(), yaml.safe_load(v))
    recipe = parse_recipe(data, str(path))
    recipe._source = Path(given).name
    return resolve_paths(recipe, path.parent)


def _resolve(p: str, base: Path) -> str:
    if p.startswith("hf://") or Path(p).is_absolute():
        return p
    cand = (base / p).resolve()
    return str(cand) if cand.exists() or p.startswith(".") else p


def _resolve_data(p: str, base: Path) -> str:
    """A relative data file: beside the recipe if it is there, else in the data folder (``$GENDISTILL_DATA_DIR``,
    else ``../shared/data`` beside the working folder: :func:`gendistill.io.data_dir`), else left as written."""
    if p.startswith("hf://") or Path(p).is_absolute() or (base / p).exists():
        return _resolve(p, base)
    from gendistill.io import data_dir  # noqa: PLC0415

    root = data_dir()
    if root is not None and (root / p).exists():
        return str((root / p).resolve())
    return _resolve(p, base)


def resolve_paths(recipe: Recipe, base: Path) -> Recipe:
    """Make local paths in the recipe absolute: data files beside the recipe (``base``) or in the data folder
    (:func:`_resolve_data`), ``student.path`` and a teacher file or folder relative to ``base``."""
    datas = [recipe.data] + [s.data for s in recipe.stages]
    for d in datas:
        if d is None:
            continue
        for s in d.sources:
            if not s.hub:
                s.path = _resolve_data(s.path, base)
    if recipe.student.path is not None:
        recipe.student.path = _resolve(recipe.student.path, base)
    t = recipe.teacher.spec
    if ("/" in t or t.endswith(".gguf")) and (base / t).exists():
        recipe.teacher.spec = str((base / t).resolve())
    return recipe


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
