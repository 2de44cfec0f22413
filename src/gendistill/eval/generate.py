"""Batched generation: prompts sorted by length (longest first), grouped into batches (the fast engine cuts them where
padding and per-batch costs cost least, :mod:`gendistill.eval.batching`), **left-padded** with an attention mask. Two
engines:

* ``fast`` (greedy): one prefill per batch into a dynamic cache, copied into a decode slot's static buffers
  (:mod:`gendistill.models.decode_slots`: attention KV preallocated, KDA states as they are), then one decode step a
  token over them — on CUDA a replayed CUDA graph: the slot's, captured by an earlier batch of its shape, from the
  first step; else eager at first and captured (kept in the slot) once the slot has run 7 eager steps, in this batch
  or in earlier ones of its shape (a capture costs about that many eager steps). Rows
  stop on their own: at 2, 4 and 8 tokens, then every ``check_every`` steps, the new tokens come to the host once
  (short answers end at the first reads), a row that produced an end-of-turn token or a stop string is finished,
  the batch ends when all rows have, and when half the rows have finished the others are copied into a slot of
  fewer rows, so a finished row stops costing decode work. Batch size from free GPU memory. A caller that generates
  many times with one model passes one :class:`~gendistill.models.decode_slots.DecodeSlots` to every call (the
  evaluator does, per model), so each slot shape is captured once.
* ``reference``: ``model.generate`` (transformers' loop, dynamic cache), which also serves seeded sampling. It is the
  check: ``tests/eval/test_fast_generate.py`` requires identical tokens from both on tiny models (teacher and
  hybrid, left padding, stop strings, compaction), and the GPU test does the same on the card.

``auto`` picks ``fast`` for greedy decoding, except for a model with sliding-window attention, which the static cache
cannot hold: there it picks ``reference`` and warns once (:func:`resolve_engine`).

The hybrid student's cache handles the left padding in its recurrent and convolution states, so batched and
one-at-a-time greedy results must be identical — ``tests/eval/test_generate.py`` checks exactly that.

Returns the texts in input order plus throughput numbers (new tokens per second, prompt tokens per second).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.profiler import record_function
from transformers import GenerationConfig

from gendistill.devices import available_cuda_bytes
from gendistill.errors import ConfigError
from gendistill.eval.batching import cut_sorted, generation_cost
from gendistill.eval.progress import progress
from gendistill.models.decode_slots import DecodeSlot, DecodeSlots
from gendistill.models.decoding import (
    GraphStep,
    decode_memory,
    forward,
    new_dynamic_cache,
    prefill_rows,
    prefills_by_row,
    sliding_window_setting,
)

ENGINES = ("auto", "fast", "reference")
CPU_BATCH = 16  # the automatic batch size off the GPU
MAX_AUTO_BATCH = 512  # the automatic batch size's ceiling on a GPU
MEMORY_SHARE = 0.5  # of the free GPU memory, for one batch's caches and prefill activations
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<end_of_turn>")  # stop a row beside the EOS


@dataclass
class GenOutput:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    new_tokens: int
    hit_limit: bool  # stopped by max_new_tokens rather than EOS / a stop string


@dataclass
class GenStats:
    n_prompts: int = 0
    prompt_tokens: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    batches: int = 0
    batch_size: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "n_prompts": self.n_prompts, "prompt_tokens": self.prompt_tokens, "new_tokens": self.new_tokens,
            "seconds": round(self.seconds, 3), "batches": self.batches, "batch_size": self.batch_size,
            "new_tokens_per_s": round(self.tokens_per_s, 2),
            "sequences_per_s": round(self.n_prompts / self.seconds, 3) if self.seconds > 0 else 0.0,
            "engine": self.extra.get("engine"),  # the one that ran (auto resolved)
        }


def _eos_ids(model, tokenizer) -> list[int]:
    ids: list[int] = []
    for src in (getattr(model, "generation_config", None), tokenizer):
        v = getattr(src, "eos_token_id", None)
        if v is None:
            continue
        ids.extend([v] if isinstance(v, int) else list(v))
    # Chat models end a turn with a special token that is not always the tokenizer's EOS. Looked up one by one (a
    # missing token converts to the unknown token's id, hence the round trip): get_vocab() builds the whole vocabulary
    # anew on every call (24 ms for SmolLM2's 49K on the development CPU, a 50-example task's generation ~200 ms).
    for t in END_OF_TURN_TOKENS:
        tid = tokenizer.convert_tokens_to_ids(t)
        if isinstance(tid, int) and tid >= 0 and tokenizer.convert_ids_to_tokens(tid) == t:
            ids.append(tid)
    return sorted(set(ids))


def _finish(toks: list[int], eos: list[int], stop: list[str] | None, tokenizer, prompt_tokens: int) -> GenOutput:
    """A row's output from its generated tokens: cut at the first end-of-turn token, decoded, cut at the first stop
    string (the reference and fast engines share this)."""
    cut = next((k for k, t in enumerate(toks) if t in eos), None)
    hit_limit = cut is None
    toks = toks if cut is None else toks[:cut]
    text = tokenizer.decode(toks, skip_special_tokens=True)
    if stop:
        for s in stop:
            j = text.find(s)
            if j >= 0:
                text, hit_limit = text[:j], False
    return GenOutput(text=text, token_ids=toks, prompt_tokens=prompt_tokens, new_tokens=len(toks), hit_limit=hit_limit)


def left_padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``ids``, ``mask`` ``[B, W]``: the rows right-aligned (left padding), mask 1 on real tokens."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[b, width - len(r) :] = 1
    return ids, mask


def resolve_engine(engine: str, do_sample: bool, config=None) -> str:
    """``auto`` is ``fast`` for greedy decoding and ``reference`` for sampling (the fast engine is greedy only).

    With the model's ``config``: a model with sliding-window attention (its static cache cannot hold a window:
    :func:`gendistill.models.decoding.sliding_window_setting`) makes ``auto`` choose ``reference``, with one warning,
    and an explicit ``fast`` a :class:`~gendistill.errors.ConfigError` (it would run another engine than asked)."""
    if engine not in ENGINES:
        raise ConfigError(f"unknown generation engine '{engine}'; known: {', '.join(ENGINES)}")
    if engine == "fast" and do_sample:
        raise ConfigError("the fast generation engine decodes greedily; sampling runs on --engine reference (or auto)")
    window = sliding_window_setting(config) if config is not None and engine != "reference" and not do_sample else None
    if engine == "auto":
        if window is not None:
            warnings.warn(f"this model uses sliding-window attention ({window}), which the fast generation engine "
                          "does not support; generating with the reference engine (model.generate)", stacklevel=2)
        return "reference" if do_sample or window is not None else "fast"
    if window is not None:
        raise ConfigError(f"the fast generation engine does not support sliding-window attention ({window}); "
                          "use --engine reference (or auto)")
    return engine


def auto_batch_rows(model, max_new_tokens: int, device: torch.device, reclaimable: int = 0) -> Callable[[int], int]:
    """Rows per batch as a function of the batch's (longest) prompt length: on CUDA as many as :data:`MEMORY_SHARE`
    of the free memory (:func:`gendistill.devices.available_cuda_bytes`, read once, plus ``reclaimable`` bytes: decode
    slots dropped before a batch of another shape allocates) holds (the caches, dynamic and static, the prefill
    activations and mask, per row or once: :func:`gendistill.models.decoding.decode_memory`), at most
    :data:`MAX_AUTO_BATCH`; :data:`CPU_BATCH` elsewhere. It never grows with the prompt length."""
    if device.type != "cuda":
        return lambda prompt_len: CPU_BATCH
    free = available_cuda_bytes(device) + reclaimable

    def rows(prompt_len: int) -> int:
        fixed, per_row = decode_memory(model, prompt_len, max_new_tokens)
        return max(1, min(MAX_AUTO_BATCH, int((MEMORY_SHARE * free - fixed) // max(1, per_row))))

    return rows


def plan_batches(model, widths: list[int], max_new_tokens: int, device: torch.device,
                 overhead_scale: float = 1.0, reclaimable: int = 0) -> list[tuple[int, int]]:
    """The fast engine's batches over prompts of ``widths`` tokens (sorted longest first): each within the rows
    memory allows for its longest prompt, cut where padded prefill and per-batch costs (a prefill's and every decode
    step's fixed cost) cost least (:func:`gendistill.eval.batching.generation_cost`)."""
    return cut_sorted(widths, generation_cost(model, device, max_new_tokens, overhead_scale),
                      max_rows=auto_batch_rows(model, max_new_tokens, device, reclaimable))


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int | None = None,
    engine: str = "auto",
    do_sample: bool = False,
    temperature: float = 0.7,
    top_p: float = 0.8,
    top_k: int = 20,
    seed: int = 0,
    stop: list[str] | None = None,
    add_special_tokens: bool = False,
    desc: str = "generate",
    show_progress: bool = True,
    cuda_graphs: bool | None = None,
    check_every: int | None = None,
    overhead_scale: float = 1.0,
    slots: DecodeSlots | None = None,
) -> tuple[list[GenOutput], GenStats]:
    """Generate a reply for each (already chat-templated) prompt; outputs in input order.

    ``batch_size``: rows per batch (None: the fast engine plans its batches, :func:`plan_batches`, with
    ``overhead_scale`` scaling its estimate of a batch's fixed cost; the reference engine runs 8).
    ``engine``: ``auto`` | ``fast`` | ``reference`` (:func:`resolve_engine`). ``cuda_graphs``: replay the fast decode
    step as a CUDA graph (default: on CUDA). ``check_every``: fast-engine decode steps between reads of the new tokens
    (stopping and compaction are decided there; default 8 on CUDA, 4 elsewhere). ``slots``: the fast engine's decode
    slots, kept by the caller across calls (their ``graphs`` setting then replaces ``cuda_graphs``); None: the call
    makes its own. Refused with the reference engine, which runs the model as transformers does."""
    if batch_size is not None and batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    engine = resolve_engine(engine, do_sample, model.config)
    if slots is not None and engine != "fast":
        raise ConfigError("decode slots serve the fast generation engine only; this call resolved to the reference one")
    if slots is not None and slots.model is not model:
        raise ConfigError("these decode slots belong to another model (a pool serves the model it was made for)")
    if slots is not None and cuda_graphs is not None and cuda_graphs != slots.graphs:
        raise ConfigError(f"cuda_graphs={cuda_graphs} with decode slots made with graphs={slots.graphs}: the slots "
                          "decide (leave cuda_graphs out)")
    device = next(model.parameters()).device
    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    # one batched call (a fast tokenizer encodes a list on its threads), the same ids as one prompt at a time
    enc = ([list(ids) for ids in tokenizer(prompts, add_special_tokens=add_special_tokens)["input_ids"]]
           if prompts else [])
    order = sorted(range(len(prompts)), key=lambda i: (-len(enc[i]), i))
    outs: list[GenOutput | None] = [None] * len(prompts)
    own = engine == "fast" and slots is None  # the call's own slots, dropped when it returns
    if own:
        slots = DecodeSlots(model, graphs=cuda_graphs)
    if batch_size is None and engine == "fast":
        cuts = plan_batches(model, [len(enc[i]) for i in order], max_new_tokens, device, overhead_scale,
                            reclaimable=slots.nbytes)
    else:
        step = batch_size or 8
        cuts = [(i, min(i + step, len(order))) for i in range(0, len(order), step)]
    stats = GenStats(n_prompts=len(prompts), batch_size=max((j - i for i, j in cuts), default=0),
                     extra={"engine": engine})
    bar = progress(total=len(prompts), desc=desc, enabled=show_progress)
    t0 = time.perf_counter()
    if engine == "fast":
        decoder = _FastDecoder(model, tokenizer, eos, stop, pad, device, slots,
                               check_every or (8 if device.type == "cuda" else 4))
    else:
        decoder = _ReferenceDecoder(model, tokenizer, eos, stop, pad, device, dict(
            do_sample=do_sample, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed))
    # the fast engine's linear mixers run on weights joined once for its slots (no weight copies per step; a captured
    # graph reads the joins); the reference engine stays as transformers runs the model
    with slots.active() if engine == "fast" else contextlib.nullcontext():
        for start, end in cuts:
            idx = order[start:end]
            new = decoder([enc[i] for i in idx], max_new_tokens)
            for b, i in enumerate(idx):
                outs[i] = _finish(new[b], eos, stop, tokenizer, len(enc[i]))
                stats.prompt_tokens += len(enc[i])
                stats.new_tokens += outs[i].new_tokens
            stats.batches += 1
            bar.update(len(idx))
    if engine == "fast":
        stats.extra.update(compactions=decoder.compactions, graph_captures=decoder.captures,
                           graph_reuses=decoder.reuses, decode_steps=decoder.steps, checks=decoder.checks,
                           cuda_graphs=decoder.graphs, row_prefill_batches=decoder.row_prefills)
    if own:
        slots.close()
    stats.seconds = time.perf_counter() - t0
    bar.close()
    return outs, stats  # type: ignore[return-value]


class _ReferenceDecoder:
    """One batch through ``model.generate``: the new tokens of each row (padding after its end included)."""

    def __init__(self, model, tokenizer, eos, stop, pad, device, sampling: dict):
        self.model, self.device = model, device
        kw = dict(pad_token_id=pad, eos_token_id=eos or None, use_cache=True)
        if sampling["do_sample"]:
            kw.update(do_sample=True, temperature=sampling["temperature"], top_p=sampling["top_p"],
                      top_k=sampling["top_k"])
            torch.manual_seed(sampling["seed"])
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if stop:  # stop decoding early at a stop string (the text is also cut there)
            kw.update(stop_strings=list(stop), tokenizer=tokenizer)
        self.kwargs = kw

    def __call__(self, rows: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        ids, mask = left_padded(rows, self.kwargs["pad_token_id"])
        # transformers merges the checkpoint's generation_config.json into every call (a repetition penalty,
        # no_repeat_ngram_size, ...): the reference must decode as the fast engine does, by the settings above alone
        saved, self.model.generation_config = self.model.generation_config, GenerationConfig()
        try:
            seqs = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                       max_new_tokens=max_new_tokens, **self.kwargs)
        finally:
            self.model.generation_config = saved
        return seqs[:, ids.shape[1] :].tolist()


class _FastDecoder:
    """One batch, greedy, in a decode slot (:class:`~gendistill.models.decode_slots.DecodeSlots`): prefill, then decode
    steps until every row has finished or ``max_new_tokens`` tokens; finished rows move out when half the batch has
    finished and a slot of fewer rows takes the rest.

    A slot whose graph an earlier batch captured replays it from the first step. Otherwise short answers are the
    common case (a letter and an end-of-turn token): a batch starts eagerly and reads its tokens back at 2, 4 and 8
    tokens (then every ``check_every``). A capture (two warm-up steps, the recording, the instantiation) costs about
    :attr:`EAGER_STEPS` eager steps of host time, so a slot captures its graph once it has spent that much on eager
    steps, summed over its batches (the rent-or-buy rule: never more than about twice the cheaper choice's cost): a
    long answer captures after 7 steps as before, a single batch of short answers never does, and a task of many
    short-answer batches of one shape captures by its third batch and replays from then on."""

    MIN_COMPACT_ROWS = 4  # smaller batches are not worth a copy
    MIN_GRAPH_STEPS = 8  # fewer remaining steps than this run eagerly (a capture costs about one step's launches)
    EAGER_STEPS = 7  # eager decode steps a slot runs, over all its batches, before it captures its graph

    def __init__(self, model, tokenizer, eos, stop, pad, device, slots: DecodeSlots, check_every: int):
        self.model, self.tokenizer, self.stop, self.pad, self.device = model, tokenizer, stop, pad, device
        self.eos = set(eos)
        self.slots, self.check_every = slots, max(1, check_every)
        self.graphs = slots.graphs  # off for the rest of the call once a capture failed
        self.compactions = self.captures = self.reuses = self.steps = self.checks = self.row_prefills = 0

    def finished(self, toks: list[int]) -> bool:
        if any(t in self.eos for t in toks):
            return True
        if self.stop:
            text = self.tokenizer.decode(toks, skip_special_tokens=True)
            return any(s in text for s in self.stop)
        return False

    def next_check(self, made: int) -> int:
        """The token count at which the new tokens are next read back: doubling from 2 (short answers finish at
        the first reads), at most ``check_every`` tokens apart."""
        return made + max(1, min(made, self.check_every))

    def prefill(self, rows: list[list[int]], max_len: int) -> tuple[Any, torch.Tensor]:
        """The batch's prefilled cache (left-padded layout, keys of the longest row's width) and each row's first new
        token ``[B, 1]``: one left-padded forward with its mask, or, for long prompts in a model of attention layers
        only, one unpadded forward a row (:func:`gendistill.models.decoding.prefills_by_row`)."""
        if prefills_by_row(self.model, max(map(len, rows))):
            self.row_prefills += 1
            with record_function("generate/prefill_rows"):
                return prefill_rows(self.model, rows, max_len, self.device)
        ids, mask = left_padded(rows, self.pad)
        ids, mask = ids.to(self.device), mask.to(self.device)
        cache = new_dynamic_cache(self.model)
        with record_function("generate/prefill"):
            out = forward(self.model, ids, cache, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                          attention_mask=mask)
            first = out.logits[:, -1].argmax(-1, keepdim=True)  # [B, 1]
        return getattr(out, "cache", None) or cache, first

    def capture(self, slot: DecodeSlot, left: int, pending: list[torch.Tensor]) -> int:
        """Capture ``slot``'s step (its warm-up steps are real: their tokens go to ``pending``); the steps made."""
        warm = min(2, left - 1)
        before = len(pending)
        keep = lambda s=slot.state: pending.append(s.ids.clone())  # noqa: E731
        try:
            with record_function("generate/capture"):
                slot.graph = GraphStep(slot.step, warmup=warm, after_warmup_step=keep)
            self.captures += 1
        except RuntimeError as exc:  # a model whose step cannot be captured decodes eagerly
            if len(pending) - before != warm:
                raise  # the warm-up itself failed: not a capture problem
            self.graphs = False
            warnings.warn(f"CUDA graph capture failed ({str(exc).splitlines()[0]}); decoding eagerly", stacklevel=3)
        return warm

    def __call__(self, rows: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        width = max(map(len, rows))
        max_len = width + max_new_tokens
        by_row = prefills_by_row(self.model, width)
        if not by_row:
            self.slots.make_room(len(rows), max_len)  # before the prefill allocates
        cache, first = self.prefill(rows, max_len)
        gen: list[list[int]] = [[] for _ in rows]
        if max_new_tokens <= 1:
            for b, t in enumerate(first[:, 0].tolist()):
                gen[b].append(t)
            return gen
        real = torch.tensor([len(r) for r in rows], device=self.device)  # [B] prompt tokens per row
        with record_function("generate/load_slot"):  # (long prompts prefilled a row at a time: their own cache)
            slot = (self.slots.adopt(cache, first, real, width, max_len) if by_row
                    else self.slots.load(cache, first, real, width, max_len, self.pad))
        del cache
        self.reuses += slot.graph is not None
        live = list(range(len(rows)))  # batch row of each slot row
        done = [False] * len(rows)
        pending = [first]  # [B', 1] tokens not yet read back
        made, check_at = 1, self.next_check(1)
        while True:
            if made >= max_new_tokens or made >= check_at:
                with record_function("generate/check"):
                    toks = torch.cat([t[: len(live)] for t in pending], 1).tolist()
                    pending = []
                    self.checks += 1
                    for r, b in enumerate(live):
                        if not done[b]:
                            gen[b].extend(toks[r])
                            done[b] = self.finished(gen[b])
                    active = [r for r, b in enumerate(live) if not done[b]]
                if made >= max_new_tokens or not active:
                    return gen
                check_at = self.next_check(made)
                if len(active) <= len(live) // 2 and len(live) >= self.MIN_COMPACT_ROWS:  # (the slots decide where)
                    with record_function("generate/compact"):
                        moved = self.slots.move(slot, torch.tensor(active, device=self.device), self.pad)
                    if moved is not slot:
                        slot, live = moved, [live[r] for r in active]
                        self.compactions += 1
            left = max_new_tokens - made
            if (slot.graph is None and self.graphs and slot.eager_steps >= self.EAGER_STEPS
                    and left >= self.MIN_GRAPH_STEPS):
                warm = self.capture(slot, left, pending)
                made += warm
                self.steps += warm
                continue
            with record_function("generate/decode_step"):
                slot.eager_steps += slot.graph is None
                (slot.graph or slot.step)()
                pending.append(slot.state.ids.clone())
            made += 1
            self.steps += 1
