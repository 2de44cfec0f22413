"""Benchmark settings (one dataclass, filled by :func:`gendistill.bench` and the ``bench`` command) and their checks."""

from __future__ import annotations

import difflib
import shlex
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Sequence

from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from gendistill.bench.models import qwen3_config
from gendistill.bench.report import load_baseline
from gendistill.convert.layer_spec import parse_attention_layers
from gendistill.devices import resolve_device, resolve_dtype
from gendistill.errors import ConfigError, GendistillError
from gendistill.limits import MAX_BATCH, MAX_CONTEXT, MAX_NEW_TOKENS, MAX_REPEATS, check_range
from gendistill.models.hybrid.configuration_hybrid import check_kda_options
from gendistill.models.loading import resolve_model
from gendistill.ownership import check_writable
from gendistill.runlock import check_not_busy
from gendistill.teachers import load_teacher_config

# The paper's / issue's grid.
DEFAULT_CONTEXTS = (1024, 4096, 8192, 16384, 32768, 65536, 131072)  # 8K: the decode target starts there
DEFAULT_THROUGHPUT_CONTEXTS = (4096, 16384, 32768, 65536)
PAPER_ATTENTION_LAYERS = (0, 2, 6, 11, 13, 18, 21)

# --tiny: a shape that runs end to end on CPU in seconds (used by tests so the benchmark does not rot).
TINY_CONTEXTS = (32, 128)
TINY_THROUGHPUT_CONTEXTS = (32, 128)
TINY_ATTENTION_LAYERS = (0, 4)

MEASUREMENTS = ("cache", "ttft", "decode", "throughput")


@dataclass
class BenchSettings:
    config: str | None = "qwen3-0.6b"  # named shape with random weights ("qwen3-0.6b" | "tiny"), or None with paths
    teacher: str | None = None  # folder of an HF causal LM
    student: str | None = None  # folder of a saved HybridForCausalLM
    # the converted student's attention layers: indices, or any form `gendistill convert --attention-layers` takes
    # ("every:4", "ratio:0.25", ...), resolved to indices by check_settings once the teacher's layer count is known
    attention_layers: tuple[int, ...] | str = PAPER_ATTENTION_LAYERS
    # the converted student's KDA decay gate: None = the paper's, a number in [-5, 0) = fla's bounded (safe_gate) gate
    kda_gate_lower_bound: float | None = None
    contexts: tuple[int, ...] = DEFAULT_CONTEXTS
    throughput_contexts: tuple[int, ...] = DEFAULT_THROUGHPUT_CONTEXTS
    device: str = "auto"  # auto | cuda | cpu
    dtype: str = "auto"  # auto (bf16 on cuda, fp32 on cpu) | bf16 | fp16 | fp32
    attn_implementation: str = "sdpa"  # same backend for teacher and student's attention layers
    skip: tuple[str, ...] = ()
    roles: tuple[str, ...] = ("teacher", "student")  # measure only one of them while iterating (ratios need both)
    compare: str | None = None  # a previous bench JSON: print this run's numbers against it
    # timing
    warmup: int = 1  # warm-up runs at each shape (Triton autotuning, cuBLAS heuristics) before timing
    repeats: int = 3  # timed repeats (median reported); reduced when one run exceeds `measure_budget_s`
    measure_budget_s: float = 6.0  # soft wall-clock budget for the timed repeats of one measurement
    decode_tokens: int = 32  # tokens per timed decode repeat (batch 1)
    decode_warmup_tokens: int = 8
    decode_cache: str = "static"  # static (preallocated KV, graph-capturable) | dynamic (HF default, torch.cat growth)
    cuda_graph: bool = True  # capture the batch-1 decode step in a CUDA graph (CUDA only; eager on CPU)
    validate_graph: bool = True  # check graph decode == eager decode once per model before trusting it
    prefill_graph: bool = True  # also time each prefill captured in a CUDA graph (CUDA only; validated first)
    # ... up to this context: beyond it launch overhead is a rounding error of the prefill (and a capture costs
    # several prefills of time and a graph pool of activations)
    prefill_graph_max_context: int = 32768
    # throughput sweep
    max_batch: int = 1024
    throughput_tokens: int = 16  # decode steps timed (x2 repeats) at the batch found
    sweep_rel_tol: float = 0.125  # stop bisecting when the bracket is within this fraction of the batch
    # profiling (torch.profiler, time split by attention / KDA / MLP / lm_head) at these contexts; () = off
    profile_contexts: tuple[int, ...] = ()
    profile_decode_steps: int = 8
    # bookkeeping
    out: str = "runs/bench"
    time_limit_s: float = 0.0  # 0 = none; else measurements that would start after this are skipped (outputs kept)
    seed: int = 0
    command: str = ""
    model_name: str | None = None  # label used in file names; derived when None
    extra: dict = field(default_factory=dict)

    def wants(self, what: str) -> bool:
        return what not in self.skip

    def to_dict(self) -> dict:
        d = asdict(self)
        d["contexts"] = list(self.contexts)
        d["throughput_contexts"] = list(self.throughput_contexts)
        d["attention_layers"] = (self.attention_layers if isinstance(self.attention_layers, str)
                                 else list(self.attention_layers))
        d["skip"] = list(self.skip)
        d["roles"] = list(self.roles)
        d["profile_contexts"] = list(self.profile_contexts)
        return d

    @classmethod
    def tiny(cls, **overrides) -> "BenchSettings":
        base = dict(
            config="tiny",
            attention_layers=TINY_ATTENTION_LAYERS,
            contexts=TINY_CONTEXTS,
            throughput_contexts=TINY_THROUGHPUT_CONTEXTS,
            device="cpu",
            dtype="fp32",
            warmup=1,
            repeats=2,
            decode_tokens=3,
            decode_warmup_tokens=1,
            max_batch=4,
            throughput_tokens=2,
            sweep_rel_tol=0.0,
            measure_budget_s=2.0,
        )
        base.update(overrides)
        return cls(**base)


def _ints(text: str | Sequence[int] | None, what: str) -> tuple[int, ...] | None:
    """``"1k,4k"`` (the command's form) or a sequence of ints (the settings field's) as a tuple of ints."""
    if text is None:
        return None
    if not isinstance(text, str):
        try:
            return tuple(int(v) for v in text)
        except (TypeError, ValueError):
            raise ConfigError(f"{what}: expected integers or a string like '1k,4k', got {text!r}") from None
    try:
        vals = []
        for part in text.split(","):
            part = part.strip().lower()
            if not part:
                continue
            mult = 1024 if part.endswith("k") else 1
            vals.append(int(part.rstrip("k")) * mult)
        return tuple(vals)
    except ValueError:
        raise ConfigError(f"{what}: expected comma-separated integers (1024 or 1k), got {text!r}") from None


def attention_implementations() -> tuple[str, ...]:
    """The attention backends transformers knows (``attn_implementation``): ``eager`` and its registered ones."""
    return ("eager", *(k for k in ALL_ATTENTION_FUNCTIONS.valid_keys() if k.isidentifier()))


def check_numbers(s: BenchSettings) -> None:
    """Every size and count within its range (:mod:`gendistill.limits`): a context of -5 or 1e9, a batch bound of
    0, a negative repeat count is one line, not a traceback or an allocation that never ends."""
    for flag, values in (("--contexts", s.contexts), ("--throughput-contexts", s.throughput_contexts),
                         ("--profile-contexts", s.profile_contexts)):
        for v in values:
            check_range(v, 1, MAX_CONTEXT, flag)
    if not s.contexts and any(s.wants(m) for m in ("cache", "ttft", "decode")):
        raise ConfigError("--contexts: no context length given")
    check_range(s.max_batch, 1, MAX_BATCH, "--max-batch")
    check_range(s.repeats, 1, MAX_REPEATS, "--repeats")
    check_range(s.warmup, 0, MAX_REPEATS, "--warmup")
    check_range(s.decode_tokens, 1, MAX_NEW_TOKENS, "--decode-tokens")
    check_range(s.throughput_tokens, 1, MAX_NEW_TOKENS, "--throughput-tokens")
    check_range(s.decode_warmup_tokens, 0, MAX_NEW_TOKENS, "decode_warmup_tokens")
    check_range(s.prefill_graph_max_context, 0, MAX_CONTEXT, "prefill_graph_max_context")
    check_range(s.profile_decode_steps, 1, MAX_NEW_TOKENS, "profile_decode_steps")
    check_range(s.sweep_rel_tol, 0.0, 1.0, "sweep_rel_tol")
    if not 0 < s.measure_budget_s < float("inf"):
        raise ConfigError(f"measure_budget_s: {s.measure_budget_s} is not a number of seconds > 0")
    if s.attn_implementation not in attention_implementations():
        raise ConfigError(f"attn_implementation: unknown {s.attn_implementation!r}; known: "
                          f"{', '.join(attention_implementations())}")
    if not s.time_limit_s >= 0 or s.time_limit_s == float("inf"):
        raise ConfigError(f"--time-limit: {s.time_limit_s} is not a number of seconds >= 0 (0: no limit)")


def check_settings(s: BenchSettings) -> None:
    """Every user mistake the benchmark can meet, as one line before anything is built: an unknown shape, a model
    reference that does not resolve or is of an unsupported family, an attention layer out of range, CUDA asked for
    but absent, an unknown dtype, a --compare file that is not a bench JSON, an unwritable --out or one another
    gendistill process is writing (:mod:`gendistill.runlock`). The student's ``attention_layers`` are resolved to
    indices here (the grammar of :func:`gendistill.convert.layer_spec.parse_attention_layers`) when the teacher's
    layer count is known without loading it (a hub teacher's are resolved by the conversion)."""
    check_numbers(s)
    device = resolve_device(s.device)
    resolve_dtype(s.dtype, device)
    layers = None
    for flag, spec in (("--teacher", s.teacher), ("--student", s.student)):
        if spec is None:
            continue
        try:
            ref = resolve_model(spec)
            if flag == "--student" and ref.kind not in ("student", "hub"):
                raise ConfigError(f"{spec} is not a gendistill student (a folder saved by convert or distill)")
            if flag == "--teacher" and ref.kind == "student":
                raise ConfigError(f"{spec} is a gendistill student; pass it as --student with its --teacher")
            if flag == "--teacher" and ref.kind != "hub":
                layers = load_teacher_config(spec).num_hidden_layers
        except GendistillError as e:
            raise ConfigError(f"{flag}: {e}") from None
    if not s.teacher:
        layers = qwen3_config(s.config or "?").num_hidden_layers
    if not s.student and layers is not None:
        spec = s.attention_layers if isinstance(s.attention_layers, str) else list(s.attention_layers)
        try:
            s.attention_layers = tuple(parse_attention_layers(spec, layers))
        except GendistillError as e:
            raise ConfigError(f"--attention-layers: {e}") from None
    if s.kda_gate_lower_bound is not None:
        if s.student:
            raise ConfigError("--kda-gate-lower-bound: applies to the student the benchmark converts; a saved --student "
                              "has its own (config.json's kda_gate_lower_bound)")
        try:
            check_kda_options({"kda_gate_lower_bound": s.kda_gate_lower_bound})
        except ValueError as e:
            raise ConfigError(str(e).replace("kda_gate_lower_bound", "--kda-gate-lower-bound", 1)) from None
    if s.compare:
        load_baseline(s.compare, "--compare")  # a missing file or not a bench JSON: before any measurement
    check_writable(s.out, "--out")
    check_not_busy(s.out, "--out")  # another gendistill process writing the folder


# BenchSettings fields the run fills in itself, not options
_BOOKKEEPING = ("command", "extra")
# option names that are not BenchSettings fields: the command's spellings
_COMMAND_ONLY = ("tiny", "time_limit")


def option_names() -> tuple[str, ...]:
    """Every keyword :func:`settings_from_options` (and so ``gendistill.bench``) takes: each settings field but the
    bookkeeping ones, plus ``tiny`` and ``time_limit`` (the command's name of ``time_limit_s``)."""
    return tuple(sorted({f.name for f in fields(BenchSettings)} - set(_BOOKKEEPING) | set(_COMMAND_ONLY)))


def check_option_names(options: dict) -> None:
    """One :class:`ConfigError` naming every unknown keyword (with the nearest valid one) and listing the valid ones:
    a typo such as ``decode_token=99`` must not run the benchmark with the default."""
    valid = option_names()
    unknown = sorted(k for k in options if k not in valid)
    if not unknown:
        return
    named = []
    for k in unknown:
        near = difflib.get_close_matches(k, valid, n=1)
        named.append(f"{k} (did you mean {near[0]}?)" if near else k)
    raise ConfigError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(named)}; valid: {', '.join(valid)}")


def _names(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"a,b"`` (the command's form) or a sequence of names."""
    parts = (value or "").split(",") if isinstance(value, str) or value is None else [str(v) for v in value]
    return tuple(x.strip() for x in parts if x.strip())


def _flag(value: bool | None) -> bool:
    """An on/off option that is on by default (None: the default)."""
    return True if value is None else bool(value)


# options that become the settings field of the same name as they are given (None: the field's default); the
# settings without a command option (attn_implementation ... seed) are open to Python callers
_AS_GIVEN = ("teacher", "student", "attention_layers", "kda_gate_lower_bound", "max_batch", "repeats", "warmup",
             "decode_tokens", "throughput_tokens", "model_name", "attn_implementation", "measure_budget_s",
             "decode_warmup_tokens", "prefill_graph_max_context", "sweep_rel_tol", "profile_decode_steps", "seed")
# options given as "1k,4k" or a sequence of ints, and the command flag their errors name
_CONTEXT_LISTS = {"contexts": "--contexts", "throughput_contexts": "--throughput-contexts",
                  "profile_contexts": "--profile-contexts"}


def settings_from_options(**o) -> BenchSettings:
    """:class:`BenchSettings` from the command's options or ``gendistill.bench``'s keywords (None: the default).
    Unknown keywords are refused (:func:`check_option_names`)."""
    check_option_names(o)
    if o.get("time_limit") is not None and o.get("time_limit_s") is not None and o["time_limit"] != o["time_limit_s"]:
        raise ConfigError(f"time_limit={o['time_limit']} and time_limit_s={o['time_limit_s']}: give one of them")
    skip = _names(o.get("skip"))
    bad = [x for x in skip if x not in MEASUREMENTS]
    if bad:
        raise ConfigError(f"--skip: unknown {', '.join(bad)}; known: {', '.join(MEASUREMENTS)}")
    overrides = {k: o[k] for k in _AS_GIVEN if o.get(k) is not None}  # attention_layers: resolved by check_settings
    for k, flag in _CONTEXT_LISTS.items():
        if o.get(k) is not None:
            overrides[k] = _ints(o[k], flag)
    roles = _names(o.get("roles") or "teacher,student")
    if not roles or any(r not in ("teacher", "student") for r in roles):
        raise ConfigError(f"--roles: expected teacher and/or student, got {o.get('roles')!r}")
    overrides["roles"] = roles
    decode_cache = o.get("decode_cache") or "static"
    if decode_cache not in ("static", "dynamic"):
        raise ConfigError(f"--decode-cache: static or dynamic, got {decode_cache!r}")
    overrides["decode_cache"] = decode_cache
    if o.get("compare"):
        overrides["compare"] = o["compare"]
    if o.get("dtype") not in (None, "auto"):
        overrides["dtype"] = o["dtype"]
    if o.get("device") not in (None, "auto"):
        overrides["device"] = o["device"]
    time_limit = o.get("time_limit_s") if o.get("time_limit_s") is not None else o.get("time_limit")
    common = dict(
        out=o.get("out") or "runs/bench",
        skip=skip,
        cuda_graph=_flag(o.get("cuda_graph")),
        validate_graph=_flag(o.get("validate_graph")),
        prefill_graph=_flag(o.get("prefill_graph")),
        time_limit_s=time_limit or 0.0,
        command=_command_line(),
    )
    if o.get("tiny") or o.get("config") == "tiny":
        return BenchSettings.tiny(**{**common, **overrides})
    if o.get("teacher"):
        overrides["config"] = None
    else:
        overrides["config"] = o.get("config") or "qwen3-0.6b"
    return BenchSettings(**{**common, **overrides})


def _command_line(argv: list[str] | None = None) -> str:
    """The command that ran, as the JSON records it: ``gendistill ...`` for the console script and for ``python -m
    gendistill`` (whose ``argv[0]`` is the package's ``__main__.py``), else ``python SCRIPT ...``; arguments as
    given (``tools/portable_results.py`` cuts machine paths when a result is committed)."""
    argv = sys.argv if argv is None else argv
    if not argv:
        return ""
    prog = argv[0]
    as_package = Path(prog).name == "__main__.py" and Path(prog).parent.name == "gendistill"
    head = ["gendistill"] if as_package or prog.endswith("gendistill") or prog.endswith("cli.py") else ["python", prog]
    return " ".join([*head, *map(shlex.quote, argv[1:])])


