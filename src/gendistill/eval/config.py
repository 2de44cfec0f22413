"""What one ``gendistill eval`` is asked to do (:class:`EvalConfig`, the fields of the command's options) and the
checks that refuse a bad request before any data is read or model loaded."""

from __future__ import annotations

from dataclasses import dataclass, field

from gendistill.devices import check_memory_fraction
from gendistill.errors import ConfigError
from gendistill.eval.fidelity import check_chat_count
from gendistill.eval.generate import resolve_engine
from gendistill.eval.result_cache import check_cache_dir
from gendistill.limits import MAX_BATCH, MAX_CONTEXT, MAX_NEW_TOKENS, MAX_REPEATS, MAX_STEP_TOKENS, check_range

PROTOCOLS = ("loglik", "generate")
SMOKE_LIMIT = 4
SMOKE_MAX_NEW_TOKENS = 16


@dataclass
class EvalConfig:
    models: list[str]
    tasks: str = "arc_easy"
    protocols: list[str] = field(default_factory=lambda: list(PROTOCOLS))
    limit: int | None = None
    seed: int = 0
    smoke: bool = False
    out: str = "runs/eval"
    batch_size: int | None = None  # generation rows per batch; None: from free GPU memory (8 on the reference engine)
    engine: str = "auto"  # auto | fast | reference: both protocols' engines (eval.generate, eval.loglik)
    token_budget: int | None = None  # log-likelihood tokens per batch; None: from free GPU memory (2048 on CPU)
    # at most this share of the GPU's memory for this process (gendistill.devices.limit_cuda_memory), batches planned
    # within it; None: no limit. For evaluations sharing a card, e.g. beside a distillation (tools/e2e.py)
    gpu_memory_fraction: float | None = None
    loglik_chat_template: bool = False
    samples: int = 0  # 0 = greedy; N > 0 = N sampling seeds
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20
    max_new_tokens: int | None = None  # override every task's
    data_source: str = "local"
    dtype: str = "auto"  # see gendistill.devices: bfloat16 on CUDA, float32 on CPU
    device: str = "auto"
    fidelity_chat: int = 0  # number of held-out chat conversations for teacher-forced fidelity (0 = off)
    fidelity_data: str | None = None  # None: the head of shared/data/sft_mix (eval.fidelity.load_chat_heldout)
    # held-out rows files (``<run>/heldout/<stage>.safetensors``, written by the trainer) for teacher-forced fidelity
    fidelity_heldout: list[str] | None = None
    show_progress: bool = True
    command: str = ""
    # long-context (RULER-style) tasks: token lengths, needle depths (fractions 0..1), haystack source
    context_lengths: list[int] | None = None
    depths: list[float] | None = None
    haystack: str | None = None
    rope_scaling: str | None = None  # e.g. "yarn:4", applied to every model's attention layers after loading
    # Run model-written code (humaneval) even where the bubblewrap sandbox is missing, with weaker layers it can
    # escape (docs/eval.md, "Sandbox"). Off: such a run is refused before any model is loaded.
    unsafe_allow_unsandboxed_code: bool = False
    # The result cache (gendistill.eval.result_cache): off = neither read nor written; None = the default folder.
    cache: bool = True
    cache_dir: str | None = None


def check_numbers(cfg: EvalConfig) -> None:
    """Every size and count a user types within its range (:mod:`gendistill.limits`), before anything is read."""
    if cfg.batch_size is not None:
        check_range(cfg.batch_size, 1, MAX_BATCH, "--batch-size")
    if cfg.token_budget is not None:
        check_range(cfg.token_budget, 1, MAX_STEP_TOKENS, "--token-budget")
    if cfg.gpu_memory_fraction is not None:
        check_memory_fraction(cfg.gpu_memory_fraction)
    check_range(cfg.samples, 0, MAX_REPEATS, "--samples")
    check_range(cfg.top_k, 1, 1 << 24, "--top-k")
    check_range(cfg.fidelity_chat, 0, 1 << 20, "--fidelity-chat")
    check_chat_count(cfg.fidelity_chat, cfg.fidelity_data)
    if cfg.max_new_tokens is not None:
        check_range(cfg.max_new_tokens, 1, MAX_NEW_TOKENS, "--max-new-tokens")
    for n in cfg.context_lengths or ():
        check_range(n, 1, MAX_CONTEXT, "--context-lengths")
    if not (0 < cfg.temperature < float("inf")):
        raise ConfigError(f"--temperature: {cfg.temperature} must be a positive number")
    if not 0 < cfg.top_p <= 1:
        raise ConfigError(f"--top-p: {cfg.top_p} must be in (0, 1]")


def check_config(cfg: EvalConfig) -> None:
    """The settings themselves: at least one model, known protocols, sizes in range, a known data source."""
    if not cfg.models:
        raise ConfigError("give at least one --model (the first is the teacher)")
    bad = [p for p in cfg.protocols if p not in PROTOCOLS]
    if bad or not cfg.protocols:
        raise ConfigError(f"unknown protocol '{bad[0] if bad else ''}'; known: {', '.join(PROTOCOLS)}")
    if cfg.limit is not None and cfg.limit <= 0:
        raise ConfigError(f"--limit must be a positive integer, got {cfg.limit}")
    if cfg.batch_size is not None and cfg.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if len(cfg.models) < 2 and (cfg.fidelity_chat > 0 or cfg.fidelity_heldout):
        flag = "--fidelity-chat" if cfg.fidelity_chat > 0 else "--fidelity-heldout"
        raise ConfigError(f"{flag} compares students with the teacher: give the teacher and at least one student "
                          f"(two or more --model), got one")
    resolve_engine(cfg.engine, cfg.samples > 0)  # an unknown engine, or sampling on the greedy-only one, fails now
    check_numbers(cfg)
    if cfg.cache and cfg.cache_dir is not None:
        check_cache_dir(cfg.cache_dir)
    if cfg.data_source not in ("local", "hf"):
        raise ConfigError(f"--data-source must be 'local' or 'hf', got '{cfg.data_source}'")
