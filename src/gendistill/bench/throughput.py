"""Peak decode throughput of one model at one context: the largest batch whose static cache fits (an OOM-tolerant
search, :mod:`gendistill.bench.sweep`), then decode tokens/s timed at that batch."""

from __future__ import annotations

from typing import Any, Callable

import torch

from gendistill.bench import cache as cachemod
from gendistill.bench import engine
from gendistill.bench.settings import BenchSettings
from gendistill.bench.sweep import (available_ram_bytes, find_max_batch, free_memory, is_oom, peak_allocated,
                                    ram_batch_cap)
from gendistill.bench.timing import measure, sync


def measure_throughput(m: Any, L: int, e: dict, s: BenchSettings, device: torch.device, dtype: torch.dtype,
                       log: Callable[[str], None], graphed: bool = False) -> None:
    """Fill ``e`` (one model's entry at context ``L``) with the sweep's result: ``throughput_tok_s`` (batch x
    ``s.throughput_tokens`` decode steps / time), ``throughput_batch``, the trials and what bounded them. A static
    cache of ``L`` tokens per row is allocated for each batch tried (attention KV zero-filled, KDA states replicated
    from a 16-token template prefill); both models' weights stay resident. On CPU the batch is capped by the
    available RAM (there the OOM killer, not an exception, meets a batch that does not fit).

    ``graphed`` (the run's decode graphs validated): each batch's step is captured in a CUDA graph
    (``engine.GraphStep``), as the batch-1 decode is timed, so the figure is the card's and not the host's (an eager
    step of the Qwen3-0.6B-shaped student costs about 40 ms of Python on an H100 machine's host, more than a batch of 80
    rows at 32K needs on the card); the capture's memory counts in the batch search. ``throughput_mode`` records
    which."""
    G = s.throughput_tokens
    max_len = L + 2 + 2 + 2 * G + 8
    with torch.inference_mode():
        tmpl_ids = engine.random_prompt(m.config.vocab_size, 16, 1, device, s.seed)
        template, first = engine.prefill(m, tmpl_ids)

    def stepping(b: int):
        """A batch of ``b`` rows on a static cache of ``L`` tokens and its decode step, run twice (allocations and
        any graph capture done). Call under inference mode."""
        cache = engine.to_static_cache(template, m.config, max_len, batch=b, context=L, copy_kv=False)
        state = engine.make_state(cache, first.expand(b, 1), L, max_len)
        step = engine.make_step(m, state)
        if graphed:
            step = engine.GraphStep(step)  # (its warm-up: two real steps on a side stream)
        step()
        step()
        return state, step

    def attempt(b: int) -> dict:
        with torch.inference_mode():
            state, step = stepping(b)
            if device.type == "cuda":
                sync(device)
            peak = peak_allocated(device)
            del state, step
        return {"peak_mem_bytes": peak}

    def timed(b: int) -> dict:
        with torch.inference_mode():
            state, step = stepping(b)

            def run() -> None:
                for _ in range(G):
                    step()

            t = measure(run, device, warmup=0, repeats=2 if device.type == "cuda" else 1)
            peak = peak_allocated(device)
            del state, step
        return {"ms": t.median_ms, "peak_mem_bytes": peak}

    free_memory()
    max_batch = s.max_batch if device.type != "cpu" else cpu_batch_bound(m, L, max_len, s.max_batch, dtype, e, log)
    if max_batch < 1:
        return
    res = find_max_batch(attempt, max_batch, rel_tol=s.sweep_rel_tol, log=log)
    e["throughput_trials"] = res.trials
    e["throughput_oom_batch"] = res.first_failure
    e["throughput_capped"] = res.capped
    b = res.best_batch
    tries = 0
    while b >= 1 and tries < 4:
        free_memory()
        try:
            r = timed(b)
            break
        except BaseException as exc:  # noqa: BLE001
            if not is_oom(exc):
                raise
        b, tries = int(b * 0.85), tries + 1
    else:
        e["throughput_batch"] = 0
        e["throughput_tok_s"] = None
        return
    e["throughput_batch"] = b
    e["throughput_mode"] = "cuda_graph" if graphed else "eager"
    e["throughput_tokens"] = G
    e["throughput_ms"] = r["ms"]
    e["throughput_tok_s"] = b * G / (r["ms"] / 1e3)
    e["throughput_peak_mem_bytes"] = r["peak_mem_bytes"] or None
    note = "no OOM up to the RAM cap" if res.capped and max_batch < s.max_batch else res.bound_note()
    log(f"  peak throughput {e['throughput_tok_s']:.1f} tok/s at batch {b} ({note})")
    del template, first
    free_memory()


def cpu_batch_bound(m: Any, L: int, max_len: int, max_batch: int, dtype: torch.dtype, e: dict,
                    log: Callable[[str], None]) -> int:
    """The CPU sweep's upper bound: ``max_batch``, lowered to the rows whose caches (``max_len`` tokens) and logits
    fit half the available RAM (recorded as ``throughput_ram_batch_cap``; None: RAM unknown). 0 when not one row
    fits: the context is then skipped, the reason under ``errors``. There is no OOM exception to catch on CPU: Linux
    overcommits, and the cache is zero-filled page by page until the OOM killer ends the process."""
    row = cachemod.theoretical_cache_bytes(m.config, max_len, 1, dtype)["total"] + 4 * m.config.vocab_size
    avail = available_ram_bytes()
    cap = None if avail is None else ram_batch_cap(avail, row)
    e["throughput_ram_batch_cap"] = cap
    if cap is None or cap >= max_batch:
        return max_batch
    if cap < 1:
        e.setdefault("errors", {})["throughput"] = (
            f"skipped: one sequence's cache ({row / 2**30:.2f} GiB at {L} tokens) is more than half the available "
            f"RAM ({avail / 2**30:.2f} GiB)")
        log(f"  throughput: {e['errors']['throughput']}")
        return 0
    log(f"  batch capped at {cap} by the available RAM ({avail / 2**30:.1f} GiB, {row / 2**20:.1f} MiB per sequence)")
    return cap
