"""Batched generation: prompts sorted by length (longest first), grouped into batches, **left-padded** with an attention
mask and decoded by ``model.generate`` (greedy by default, or seeded sampling). The hybrid student's cache handles the
left padding in its recurrent and convolution states, so batched and one-at-a-time greedy results must be identical —
``tests/eval/test_generate.py`` checks exactly that for every model factory it is given.

Returns the texts in input order plus throughput numbers (new tokens per second, prompt tokens per second).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from gendistill.eval.progress import progress


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
        }


def _eos_ids(model, tokenizer) -> list[int]:
    ids: list[int] = []
    for src in (getattr(model, "generation_config", None), tokenizer):
        v = getattr(src, "eos_token_id", None)
        if v is None:
            continue
        ids.extend([v] if isinstance(v, int) else list(v))
    # Chat models end a turn with a special token that is not always the tokenizer's EOS.
    for t in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<end_of_turn>"):
        tid = tokenizer.convert_tokens_to_ids(t) if t in tokenizer.get_vocab() else None
        if isinstance(tid, int) and tid >= 0:
            ids.append(tid)
    return sorted(set(ids))


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    do_sample: bool = False,
    temperature: float = 0.7,
    top_p: float = 0.8,
    top_k: int = 20,
    seed: int = 0,
    stop: list[str] | None = None,
    add_special_tokens: bool = False,
    desc: str = "generate",
    show_progress: bool = True,
) -> tuple[list[GenOutput], GenStats]:
    """Generate a reply for each (already chat-templated) prompt; outputs in input order."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    device = next(model.parameters()).device
    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    enc = [list(tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (-len(enc[i]), i))
    outs: list[GenOutput | None] = [None] * len(prompts)
    stats = GenStats(n_prompts=len(prompts), batch_size=batch_size)
    gen_kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos or None, use_cache=True)
    if do_sample:
        gen_kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k)
    else:
        gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    if stop:  # stop decoding early at a stop string (the text is also cut there below)
        gen_kwargs.update(stop_strings=list(stop), tokenizer=tokenizer)
    if do_sample:
        torch.manual_seed(seed)
    bar = progress(total=len(prompts), desc=desc, enabled=show_progress)
    t0 = time.perf_counter()
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(enc[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for b, i in enumerate(idx):
            ids[b, width - len(enc[i]) :] = torch.tensor(enc[i], dtype=torch.long)
            mask[b, width - len(enc[i]) :] = 1
        seqs = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **gen_kwargs)
        new = seqs[:, width:].tolist()
        for b, i in enumerate(idx):
            toks = new[b]
            cut = next((k for k, t in enumerate(toks) if t in eos), None)
            hit_limit = cut is None
            toks = toks if cut is None else toks[:cut]
            text = tokenizer.decode(toks, skip_special_tokens=True)
            if stop:
                for s in stop:
                    j = text.find(s)
                    if j >= 0:
                        text, hit_limit = text[:j], False
            outs[i] = GenOutput(text=text, token_ids=toks, prompt_tokens=len(enc[i]), new_tokens=len(toks),
                                hit_limit=hit_limit)
            stats.prompt_tokens += len(enc[i])
            stats.new_tokens += len(toks)
        stats.batches += 1
        bar.update(len(idx))
    stats.seconds = time.perf_counter() - t0
    bar.close()
    return outs, stats  # type: ignore[return-value]
