#!/usr/bin/env python
"""Evaluation speed: the same examples through gendistill's fast path, its reference path and lm-evaluation-harness's
HF backend, on the same loaded model, in one run on one card; then the whole ``gendistill eval`` command timed.

For every model (the teacher first; ``--student convert`` adds a hybrid converted from it into a temporary folder) ×
task × protocol the prompts and requests are built exactly as ``gendistill eval`` builds them
(``gendistill.eval.runner``: few-shot from the task, the chat-templated generation prompt, the task's stop strings and
``max_new_tokens``, ``add_special_tokens`` only without a chat template; log-likelihood requests per option), then

  fast        ``generate(..., engine="fast")`` / ``score_requests(..., engine="fast")`` on all ``--limit`` examples
              (after ``--warmup`` examples untimed: compilation and autotuning are not throughput), and again on each
              smaller comparison subset so examples/s are compared on the same examples. Generation decodes in one
              pool of decode slots per model, as ``gendistill eval`` does (``gendistill.models.decode_slots``: each
              slot shape's CUDA graph captured once); with ``--warmup`` each timed generation call is made twice,
              its first call (capturing the slot shapes the pool did not hold yet) timed as ``first_call_seconds``
              and compared too (``speedup_vs_*_first_call``), its second as the steady rate;
  reference   the same functions with ``engine="reference"`` on the first ``--reference-limit`` examples;
  lm-eval     ``HFLM.generate_until`` / ``HFLM.loglikelihood`` (``gendistill.eval.harness.make_lm``, batch size
              ``--lm-eval-batch-size``) on the first ``--lm-eval-limit`` examples (one number, or one per protocol:
              ``--lm-eval-limit 50,loglik=500`` compares log-likelihood on 500, where lm-eval is fast and 50 examples
              measure mostly a call's fixed cost, and generation on 50).

Identical answers: per example, the fast path's extracted answer (``task.score_generations(...).pred``) and generated
text against the reference path's; under log-likelihood the predicted option (``acc_norm``'s for the tasks reported
by it) and the largest |log p| difference. The same counts against lm-eval are reported for information.

  python benchmarks/eval_speed.py --student convert --out docs/results/eval_speed_smollm2-135m_h200.json
Prints a table last; the JSON holds the card, versions, the command and no machine paths (``portable_paths``: a
comma-separated list of task files keeps every file's name, which ``portable_command`` would cut to the last).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

import gendistill  # noqa: E402,F401  (registers the hybrid student with the Auto classes, as lm-eval needs)
from gendistill.errors import GendistillError  # noqa: E402
from gendistill.devices import dtype_name, resolve_device, resolve_dtype  # noqa: E402
from gendistill.eval.generate import generate  # noqa: E402
from gendistill.eval.loglik import mc_metrics, score_requests  # noqa: E402
from gendistill.eval.runner import LOGLIK_METRIC  # noqa: E402
from gendistill.eval.task import MULTIPLE_CHOICE, Example, Task, select  # noqa: E402
from gendistill.eval.tasks import parse_tasks  # noqa: E402
from gendistill.io import atomic_write_json, portable_paths  # noqa: E402
from gendistill.models.decode_slots import DecodeSlots  # noqa: E402
from gendistill.models.loading import load_model, model_label  # noqa: E402

DEFAULT_TASKS = "arc_easy,arc_challenge,mmlu,hellaswag,piqa,winogrande,boolq,gsm8k,triviaqa"
PATHS = ("fast", "reference", "lm-eval")
PROTOCOLS = ("loglik", "generate")
MAX_MISMATCHES = 10  # per row, the first differing examples are listed in the JSON


def log(msg: str) -> None:
    print(f"[eval_speed] {msg}", flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_generate(path: str, model, tok, task: Task, prompts: list[str], max_new: int, batch_size: int | None,
                 overhead_scale: float = 1.0, slots: DecodeSlots | None = None) -> tuple[list[str], dict]:
    """Greedy generation of ``prompts`` through one path (the fast one in ``slots``); the texts (input order) and
    what the path reports."""
    stop = list(task.stop) or None
    if path == "lm-eval":
        from lm_eval.api.instance import Instance  # noqa: PLC0415  (optional extra)

        lm = _lm_eval_model(model, tok, batch_size)
        gen_kwargs = {"until": list(task.stop), "max_gen_toks": max_new, "do_sample": False}
        reqs = [Instance(request_type="generate_until", doc={}, arguments=(p, dict(gen_kwargs)), idx=i)
                for i, p in enumerate(prompts)]
        return [str(t) for t in lm.generate_until(reqs, disable_tqdm=True)], {"batch_size": batch_size}
    outs, stats = generate(model, tok, prompts, max_new_tokens=max_new, stop=stop, batch_size=batch_size, engine=path,
                           add_special_tokens=not getattr(tok, "chat_template", None), desc=f"{task.name} {path}",
                           show_progress=False, overhead_scale=overhead_scale,
                           slots=slots if path == "fast" else None)
    st = stats.as_dict()
    info = {"batch_size": st.get("batch_size"), "new_tokens": st.get("new_tokens"), "batches": st.get("batches")}
    info.update({k: stats.extra[k] for k in ("graph_captures", "graph_reuses", "decode_steps", "checks")
                 if k in stats.extra})
    return [o.text for o in outs], info


def run_loglik(path: str, model, tok, requests: list[tuple[str, str]], token_budget: int | None,
               batch_size: int | None, overhead_scale: float = 1.0) -> tuple[list[tuple[float, bool]], dict]:
    """``(log p, is_greedy)`` of every ``(context, continuation)`` request through one path."""
    if path == "lm-eval":
        from lm_eval.api.instance import Instance  # noqa: PLC0415  (optional extra)

        lm = _lm_eval_model(model, tok, batch_size)
        inst = [Instance(request_type="loglikelihood", doc={}, arguments=r, idx=i) for i, r in enumerate(requests)]
        return [(float(lp), bool(g)) for lp, g in lm.loglikelihood(inst, disable_tqdm=True)], {"batch_size": batch_size}
    res = score_requests(model, tok, requests, token_budget=token_budget, engine=path, desc=path, show_progress=False,
                         overhead_scale=overhead_scale)
    return [(r.logprob, r.is_greedy) for r in res], {"token_budget": token_budget or "auto"}


_LM_CACHE: dict[tuple[int, Any], Any] = {}


def _lm_eval_model(model, tok, batch_size):
    """One HFLM per (model, batch size): wrapping is not what is timed, the requests are."""
    key = (id(model), batch_size)
    if key not in _LM_CACHE:
        from gendistill.eval.harness import make_lm  # noqa: PLC0415  (needs lm-eval)

        _LM_CACHE.clear()
        _LM_CACHE[key] = make_lm(model, tok, batch_size=batch_size)
    return _LM_CACHE[key]


def timed(device: torch.device, fn, *a, **kw):
    _sync(device)
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    _sync(device)
    return out, time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------ requests


def loglik_requests(task: Task, tok, examples: list[Example], all_ex: list[Example]
                    ) -> list[list[tuple[str, str]]] | None:
    """Per example its ``(context, continuation)`` requests, as ``gendistill.eval.runner.run_loglik`` builds them (no
    chat template: the command's default); ``None`` for a task without a log-likelihood form (GSM8K)."""
    per_ex = []
    for ex in examples:
        shots = task.fewshot_for(ex, all_ex)
        if task.loglik_on_generation_prompt:
            per_ex.append([(task.generation_prompt(tok, ex, shots), " " + str(ex.answer))])
            continue
        reqs = task.loglik_requests(ex, shots)
        if reqs is None:
            return None
        per_ex.append(reqs)
    return per_ex


def loglik_answers(task: Task, examples: list[Example], per_ex: list[list[tuple[str, str]]],
                   scores: list[tuple[float, bool]]) -> list[tuple[Any, list[float]]]:
    """Per example the answer the evaluator reports (the option ranked first by the task's metric, or whether the
    gold continuation is greedy) and the log-probabilities behind it."""
    out, k = [], 0
    norm = LOGLIK_METRIC.get(task.name, "acc") == "acc_norm"
    for ex, reqs in zip(examples, per_ex):
        res = scores[k : k + len(reqs)]
        k += len(reqs)
        lps = [lp for lp, _ in res]
        if task.kind == MULTIPLE_CHOICE:
            m = mc_metrics(lps, [c for _, c in reqs], ex.answer_idx)
            out.append((m["pred_norm" if norm else "pred"], lps))
        else:
            out.append((res[0][1], lps))
    return out


# ------------------------------------------------------------------------------------------------ comparison


def compare(ids: list[str], a: list, b: list, texts_a: list[str] | None = None, texts_b: list[str] | None = None,
            lps_a: list[list[float]] | None = None, lps_b: list[list[float]] | None = None) -> dict:
    """Identical answers (and texts, or the largest log-probability difference) of two paths on the same examples,
    the first ``len(b)`` of ``a``'s; the first few differing examples (answer or text) with both sides."""
    n = len(b)
    same = [a[i] == b[i] for i in range(n)]
    same_text = [texts_a[i] == texts_b[i] for i in range(n)] if texts_a is not None and texts_b is not None else None
    out: dict[str, Any] = {"n": n, "answers_identical": sum(same)}
    if same_text is not None:
        out["texts_identical"] = sum(same_text)
    if lps_a is not None and lps_b is not None:
        out["max_abs_logprob_diff"] = max((abs(x - y) for i in range(n) for x, y in zip(lps_a[i], lps_b[i])),
                                          default=0.0)
    mism = []
    for i in range(n):
        if same[i] and (same_text is None or same_text[i]):
            continue
        m: dict[str, Any] = {"id": ids[i], "answer_a": a[i], "answer_b": b[i]}
        if same_text is not None and not same_text[i]:
            m.update(text_a=texts_a[i][:200], text_b=texts_b[i][:200])
        mism.append(m)
    out["mismatches"] = mism[:MAX_MISMATCHES]
    return out


def _eps(n: int, secs: float) -> float:
    return round(n / secs, 3) if secs > 0 else 0.0


def fast_on(row: dict, n: int) -> dict:
    """The fast path's timing on the first ``n`` examples of a row (all of them, or the subset run)."""
    return row["paths"]["fast"] if row["paths"]["fast"]["examples"] == n else row["paths"][f"fast@{n}"]


def _path_entry(n: int, secs: float, **extra) -> dict:
    return {"examples": n, "seconds": round(secs, 3), "examples_per_s": _eps(n, secs), **extra}


# ------------------------------------------------------------------------------------------------ one task


def bench_task(model, tok, label: str, task: Task, examples: list[Example], all_ex: list[Example], protocol: str,
               args, device: torch.device, slots: DecodeSlots | None = None) -> dict | None:
    """One model × task × protocol through every path asked for (generation's fast path in ``slots``, the model's
    pool); the row of the table and the JSON."""
    paths = args.paths
    ids = [e.id for e in examples]
    n_ref = min(args.reference_limit or len(examples), len(examples))
    n_lm = min(args.lm_eval_limit[protocol], len(examples))
    row: dict[str, Any] = {"model": label, "task": task.name, "protocol": protocol, "paths": {}}

    if protocol == "generate":
        prompts = [task.generation_prompt(tok, ex, task.fewshot_for(ex, all_ex)) for ex in examples]
        max_new = task.max_new_tokens
        row["max_new_tokens"] = max_new
        batch = {"fast": args.batch_size, "reference": args.reference_batch_size, "lm-eval": args.lm_eval_batch_size}

        def through(path: str, n: int):
            (texts, info), secs = timed(device, run_generate, path, model, tok, task, prompts[:n], max_new, batch[path],
                                        slots=slots)
            preds = [sc.pred for sc in task.score_generations(examples[:n], texts)]
            return texts, preds, info, secs
    else:
        per_ex = loglik_requests(task, tok, examples, all_ex)
        if per_ex is None:
            return None
        batch = {"fast": args.batch_size, "reference": None, "lm-eval": args.lm_eval_batch_size}

        def through(path: str, n: int):
            flat = [r for reqs in per_ex[:n] for r in reqs]
            (scores, info), secs = timed(device, run_loglik, path, model, tok, flat, args.token_budget, batch[path])
            ans = loglik_answers(task, examples[:n], per_ex[:n], scores)
            return [lps for _, lps in ans], [p for p, _ in ans], {**info, "requests": len(flat)}, secs

    def fast_entry(n: int) -> tuple[tuple, dict]:
        """The fast path on the first ``n`` examples: its output and entry (generation: the call made twice, the
        first call's seconds kept beside the second's)."""
        first = through("fast", n) if protocol == "generate" and args.warmup > 0 else None
        out = through("fast", n)
        extra = {} if first is None else {"first_call_seconds": round(first[3], 3),
                                          "first_call_graph_captures": first[2].get("graph_captures")}
        return out, _path_entry(n, out[3], **out[2], **extra)

    results: dict[str, tuple] = {}
    if "fast" in paths:
        if args.warmup > 0:  # compilation, autotuning: not throughput
            through("fast", min(args.warmup, len(examples)))
        results["fast"], row["paths"]["fast"] = fast_entry(len(examples))
        for n in sorted({n_ref if "reference" in paths else 0, n_lm if "lm-eval" in paths else 0} - {0}):
            if n < len(examples):  # examples/s on the same examples as the slower paths
                row["paths"][f"fast@{n}"] = fast_entry(n)[1]
    for path, n in (("reference", n_ref), ("lm-eval", n_lm)):
        if path not in paths:
            continue
        out = through(path, n)
        results[path] = out
        row["paths"][path] = _path_entry(n, out[3], **out[2])
        if "fast" in paths:
            fast, other = fast_on(row, n), row["paths"][path]
            key = f"speedup_vs_{path.replace('-', '_')}"
            row[key] = round(other["seconds"] / fast["seconds"], 2) if fast["seconds"] > 0 else None
            if "first_call_seconds" in fast:
                row[f"{key}_first_call"] = round(other["seconds"] / fast["first_call_seconds"], 2) \
                    if fast["first_call_seconds"] > 0 else None
    if "fast" in results:  # answers of the fast run against each other path's, on that path's examples
        f_data, f_pred = results["fast"][0], results["fast"][1]
        for path, key in (("reference", "identical_to_reference"), ("lm-eval", "agreement_with_lm_eval")):
            if path not in results:
                continue
            o_data, o_pred = results[path][0], results[path][1]
            if protocol == "generate":
                row[key] = compare(ids, f_pred, o_pred, texts_a=f_data, texts_b=o_data)
            else:
                row[key] = compare(ids, f_pred, o_pred, lps_a=f_data, lps_b=o_data)
    return row


# ------------------------------------------------------------------------------------------------ batching


def fast_run(model, tok, task: Task, proto: str, examples: list[Example], all_ex: list[Example], args,
             device: torch.device, scale: float = 1.0, slots: DecodeSlots | None = None) -> tuple[dict, float] | None:
    """One timed run of the fast path on ``examples`` (what it reports, seconds); None for a task without that
    protocol."""
    if proto == "generate":
        prompts = [task.generation_prompt(tok, ex, task.fewshot_for(ex, all_ex)) for ex in examples]
        (_, info), secs = timed(device, run_generate, "fast", model, tok, task, prompts, task.max_new_tokens, None,
                                scale, slots)
        return info, secs
    per_ex = loglik_requests(task, tok, examples, all_ex)
    if per_ex is None:
        return None
    flat = [r for reqs in per_ex for r in reqs]
    (_, info), secs = timed(device, run_loglik, "fast", model, tok, flat, args.token_budget, None, scale)
    return info, secs


def overhead_sweep(model, tok, label: str, tasks: list[Task], data: dict, args, device: torch.device):
    """The fast path on all ``--limit`` examples of each sweep task, once per ``--overhead-sweep`` scale of the batch
    planner's fixed-cost estimate (gendistill.eval.batching: 0 pads nothing, a large scale fills every batch); yields
    one row per (task, protocol, scale) as soon as it is timed (the caller saves each: a run stopped at its time limit
    keeps what it measured)."""
    for task in tasks:
        sel, all_ex = data[task.name]
        for proto in args.protocols:
            if fast_run(model, tok, task, proto, sel[: max(1, args.warmup)], all_ex, args, device) is None:
                continue  # (that was the warm-up: compilation and autotuning are not throughput)
            for scale in args.overhead_sweep:
                info, secs = fast_run(model, tok, task, proto, sel, all_ex, args, device, scale)
                log(f"sweep {task.name} {proto} scale {scale:g}: {secs:.2f} s {info}")
                yield {"model": label, "task": task.name, "protocol": proto, "overhead_scale": scale,
                       **_path_entry(len(sel), secs, **info)}


def profile_fast(model, tok, tasks: list[Task], data: dict, args, device: torch.device, out_dir: Path) -> list[str]:
    """torch.profiler over the fast path on the first ``--profile-examples`` examples of each sweep task and protocol:
    per run a text file with the engines' own ranges (``generate/*``, ``graph/*``, ``loglik/*``) and the top operators
    by host and by device time. Each profiled run follows the same run unprofiled, in one pool of decode slots (the
    steady state: the slots it needs captured). Returns the files written."""
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort_dev = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    slots = DecodeSlots(model)
    for task in tasks:
        sel, all_ex = data[task.name]
        sel = sel[: args.profile_examples]
        for proto in args.protocols:
            if fast_run(model, tok, task, proto, sel, all_ex, args, device, slots=slots) is None:  # warm, or none
                continue
            _sync(device)
            t0 = time.perf_counter()
            with profile(activities=acts) as prof:
                info, _ = fast_run(model, tok, task, proto, sel, all_ex, args, device, slots=slots)
            wall = time.perf_counter() - t0
            ka = prof.key_averages()
            # what the engine reports (batches, graph captures: a capture that failed under the profiler shows here)
            text = [f"{task.name} {proto}: {len(sel)} examples, {wall:.3f} s wall under the profiler",
                    f"engine: {json.dumps(info)}", "",
                    "engine ranges (host time; device time of the kernels launched inside):"]
            for e in sorted((e for e in ka if e.key.startswith(("generate/", "graph/", "loglik/"))),
                            key=lambda e: -e.cpu_time_total):
                dev_us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
                text.append(f"  {e.key:<28} calls {e.count:>6}  host {e.cpu_time_total / 1e3:>9.1f} ms  "
                            f"device {dev_us / 1e3:>9.1f} ms")
            text += ["", "top operators by host time:", ka.table(sort_by="cpu_time_total", row_limit=25),
                     "", "top operators by device time:", ka.table(sort_by=sort_dev, row_limit=25)]
            path = out_dir / f"profile_{task.name}_{proto}.txt"
            path.write_text("\n".join(text) + "\n", encoding="utf-8")
            written.append(path.name)
            log(f"profile {task.name} {proto}: {wall:.3f} s -> {path.name}")
    slots.close()
    return written


# ------------------------------------------------------------------------------------------------ the command


def time_cli(specs: list[str], task_specs: list[str], args, out_dir: Path, when: str) -> dict:
    """Wall time of ``gendistill eval -m TEACHER -m STUDENT --tasks ... --limit N`` in a fresh process."""
    argv = ["eval", *[x for s in specs for x in ("-m", s)], "--tasks", ",".join(task_specs), "--limit", str(args.limit),
            "--out", str(out_dir), "--no-progress", "--no-cache", "--device", args.device, "--dtype", args.dtype]
    # --no-cache: the timed command scores every example (a second run would otherwise read the first one's results)
    env = dict(os.environ)  # this checkout's gendistill, as the script imports it
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), *[p for p in [env.get("PYTHONPATH")] if p]])
    t0 = time.perf_counter()
    command = portable_paths(shlex.join(["gendistill", *argv]))
    try:
        proc = subprocess.run([sys.executable, "-m", "gendistill", *argv], capture_output=True, text=True,
                              timeout=args.cli_timeout, env=env)
    except subprocess.TimeoutExpired:
        log(f"gendistill eval ({when}): stopped after --cli-timeout {args.cli_timeout} s")
        return {"when": when, "seconds": None, "rc": None, "timed_out_after_s": args.cli_timeout, "command": command}
    secs = time.perf_counter() - t0
    rec: dict[str, Any] = {"when": when, "seconds": round(secs, 2), "rc": proc.returncode, "command": command}
    res = out_dir / "results.json"
    if proc.returncode == 0 and res.is_file():
        meta = json.loads(res.read_text())["meta"]
        rec["eval_wall_seconds"] = meta.get("wall_seconds")  # the command's own figure (after imports)
        rec["eval_seconds"] = meta.get("seconds")  # where its time went: data, each model's load / loglik / generate
        rows = json.loads(res.read_text())["rows"]
        rec["rows"] = len(rows)
        rec["examples"] = sum(r.get("n", 0) for r in rows)
    else:
        rec["error_tail"] = (proc.stderr or proc.stdout)[-2000:]
    log(f"gendistill eval ({when}): {secs:.1f} s, rc {proc.returncode}")
    return rec


# ------------------------------------------------------------------------------------------------ table, main


def table(rows: list[dict], paths: list[str]) -> str:
    head = f"{'model':<22} {'task':<14} {'protocol':<8} {'n':>4} {'fast s':>8} {'fast ex/s':>10}"
    if "reference" in paths:
        head += f" {'ref n':>5} {'ref ex/s':>9} {'x ref':>6} {'same as ref':>11}"
    if "lm-eval" in paths:
        head += f" {'lm n':>5} {'lm ex/s':>9} {'x lm-eval':>9} {'1st call':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        p = r["paths"]
        f = p.get("fast", {})
        line = (f"{r['model'][:22]:<22} {r['task'][:14]:<14} {r['protocol']:<8} {f.get('examples', 0):>4} "
                f"{f.get('seconds', 0):>8.2f} {f.get('examples_per_s', 0):>10.2f}")
        if "reference" in paths:
            ref = p.get("reference", {})
            ident = r.get("identical_to_reference")
            same = f"{ident['answers_identical']}/{ident['n']}" if ident else "-"
            line += (f" {ref.get('examples', 0):>5} {ref.get('examples_per_s', 0):>9.2f} "
                     f"{r.get('speedup_vs_reference') or 0:>6.2f} {same:>11}")
        if "lm-eval" in paths:
            lm = p.get("lm-eval", {})
            first = r.get("speedup_vs_lm_eval_first_call")
            line += (f" {lm.get('examples', 0):>5} {lm.get('examples_per_s', 0):>9.2f} "
                     f"{r.get('speedup_vs_lm_eval') or 0:>9.2f} {'-' if first is None else f'{first:.2f}':>8}")
        lines.append(line)
    return "\n".join(lines)


def totals(rows: list[dict]) -> dict:
    """Per protocol: fast-path examples and seconds, and the identical-answer counts summed over rows."""
    out: dict[str, Any] = {}
    for proto in PROTOCOLS:
        rs = [r for r in rows if r["protocol"] == proto]
        if not rs:
            continue
        ex = sum(r["paths"].get("fast", {}).get("examples", 0) for r in rs)
        secs = sum(r["paths"].get("fast", {}).get("seconds", 0.0) for r in rs)
        t: dict[str, Any] = {"fast_examples": ex, "fast_seconds": round(secs, 2), "fast_examples_per_s": _eps(ex, secs)}
        idn = [r["identical_to_reference"] for r in rs if "identical_to_reference" in r]
        if idn:
            t["answers_identical_to_reference"] = [sum(i["answers_identical"] for i in idn), sum(i["n"] for i in idn)]
            if proto == "generate":
                t["texts_identical_to_reference"] = [sum(i["texts_identical"] for i in idn), sum(i["n"] for i in idn)]
            else:
                t["max_abs_logprob_diff_vs_reference"] = max(i["max_abs_logprob_diff"] for i in idn)
        lm_rows = [r for r in rs if r.get("speedup_vs_lm_eval")]
        if lm_rows:
            t["speedup_vs_lm_eval_min"] = min(r["speedup_vs_lm_eval"] for r in lm_rows)
            lm_s = sum(r["paths"]["lm-eval"]["seconds"] for r in lm_rows)
            f_s = sum(fast_on(r, r["paths"]["lm-eval"]["examples"])["seconds"] for r in lm_rows)
            t["speedup_vs_lm_eval_overall"] = round(lm_s / f_s, 2) if f_s > 0 else None  # same examples, summed
            firsts = [fast_on(r, r["paths"]["lm-eval"]["examples"]).get("first_call_seconds") for r in lm_rows]
            if all(f is not None for f in firsts) and sum(firsts) > 0:
                t["speedup_vs_lm_eval_overall_first_call"] = round(lm_s / sum(firsts), 2)
            t["lm_eval_examples"] = sum(r["paths"]["lm-eval"]["examples"] for r in lm_rows)
        out[proto] = t
    return out


def versions() -> dict:
    out = {"gendistill": gendistill.__version__, "torch": torch.__version__, "python": platform.python_version()}
    for mod in ("transformers", "lm_eval", "triton", "fla"):
        with contextlib.suppress(Exception):
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", None) or _dist_version(mod)
    return out


def _dist_version(mod: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version(mod)
    except PackageNotFoundError:
        return None


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", default=None,
                    help="a model reference (repeat; the first is the teacher); default smollm2-135m-instruct")
    ap.add_argument("--student", choices=("convert", "none"), default="convert",
                    help="convert: add a hybrid converted from the first model (--attention-layers), in a temp folder")
    ap.add_argument("--attention-layers", default="every:4", help="the converted student's attention layers")
    ap.add_argument("--tasks", default=DEFAULT_TASKS, help="as gendistill eval --tasks (names, .jsonl, .yaml)")
    ap.add_argument("--limit", type=int, default=500, help="examples per task (the fast path and the command)")
    ap.add_argument("--reference-limit", type=int, default=100, help="the first N of them through the reference path")
    ap.add_argument("--lm-eval-limit", default="100",
                    help="the first N of them through lm-eval's HF backend: N, or per protocol, e.g. 50,loglik=500")
    ap.add_argument("--paths", default="fast,reference,lm-eval")
    ap.add_argument("--protocols", default="loglik,generate")
    ap.add_argument("--batch-size", type=int, default=None, help="fast path's generation batch (default: its own)")
    ap.add_argument("--reference-batch-size", type=int, default=8, help="reference generation batch (eval's default)")
    ap.add_argument("--lm-eval-batch-size", type=int, default=64, help="lm-eval HFLM batch size (fixed)")
    ap.add_argument("--token-budget", type=int, default=None,
                    help="log-likelihood batch in tokens (default: as gendistill eval: sized from free GPU memory "
                         "for the fast path, 2048 for the reference)")
    ap.add_argument("--warmup", type=int, default=8, help="examples through the fast path, untimed, before each task")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cli", choices=("off", "after", "both"), default="after",
                    help="time `gendistill eval` on the same models/tasks/limit: after the in-process runs (disk "
                         "caches warm), or also before them (cold)")
    ap.add_argument("--cli-timeout", type=int, default=1800)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--overhead-sweep", default="",
                    help="comma-separated scales of the batch planner's fixed-cost estimate (e.g. 1,3,10,1e6; 0, no "
                         "fixed cost, plans a batch per input length and is slow): the first model's fast path on "
                         "--sweep-tasks once per scale, before the other runs")
    ap.add_argument("--sweep-tasks", default="mmlu,boolq,hellaswag,arc_easy",
                    help="the tasks of --overhead-sweep and --profile (a subset of --tasks)")
    ap.add_argument("--profile", default=None, metavar="DIR",
                    help="also write torch.profiler tables of the first model's fast path on --sweep-tasks to DIR")
    ap.add_argument("--profile-examples", type=int, default=50, help="examples per profiled task")
    ap.add_argument("--out", default=None, help="JSON file to write")
    args = ap.parse_args(argv)
    try:
        args.overhead_sweep = [float(x) for x in args.overhead_sweep.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--overhead-sweep: not a list of numbers: {args.overhead_sweep!r}")
    if not all(x >= 0 for x in args.overhead_sweep):  # (also refuses nan)
        ap.error("--overhead-sweep: scales must be numbers >= 0")
    args.sweep_tasks = [t.strip() for t in args.sweep_tasks.split(",") if t.strip()]
    args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    args.protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    bad = [p for p in args.paths if p not in PATHS] + [p for p in args.protocols if p not in PROTOCOLS]
    if bad or not args.paths or not args.protocols:
        ap.error(f"unknown path or protocol '{bad[0] if bad else ''}' (paths: {', '.join(PATHS)}; protocols: "
                 f"{', '.join(PROTOCOLS)})")
    for name in ("limit", "reference_limit"):
        if getattr(args, name) <= 0:
            ap.error(f"--{name.replace('_', '-')} must be a positive integer")
    try:
        args.lm_eval_limit = per_protocol_limit(args.lm_eval_limit)
    except ValueError as exc:
        ap.error(f"--lm-eval-limit: {exc}")
    return args


def per_protocol_limit(text: str) -> dict[str, int]:
    """``"N"`` or ``"N,PROTOCOL=M,..."`` (or only ``PROTOCOL=M`` entries, the others defaulting to 100): the
    number of examples for each protocol; each a positive integer."""
    out: dict[str, int] = {}
    default = 100
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, eq, value = part.rpartition("=")
        if eq and name not in PROTOCOLS:
            raise ValueError(f"unknown protocol '{name}' (protocols: {', '.join(PROTOCOLS)})")
        if not value.isdigit() or int(value) <= 0:
            raise ValueError(f"'{part}': expected a positive integer")
        if eq:
            out[name] = int(value)
        else:
            default = int(value)
    return {p: out.get(p, default) for p in PROTOCOLS}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        return _run(args, argv)
    except GendistillError as exc:  # bad input (a task file, a model reference, a layer spec): one line
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args, argv: list[str]) -> int:
    if "lm-eval" in args.paths:
        try:
            import lm_eval.models.huggingface  # noqa: F401,PLC0415
        except ImportError as exc:
            print(f"error: --paths lm-eval: lm-evaluation-harness is not importable ({exc})", file=sys.stderr)
            return 2
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    tasks = parse_tasks(args.tasks)
    sweep_tasks = [t for t in tasks if t.name in args.sweep_tasks]
    missing = sorted(set(args.sweep_tasks) - {t.name for t in tasks})
    if (args.overhead_sweep or args.profile) and missing:
        raise GendistillError(f"--sweep-tasks: {', '.join(missing)} not among --tasks")
    task_specs = [t.strip() for t in args.tasks.split(",") if t.strip()]
    data = {}
    for t in tasks:  # every task read before a model is loaded
        all_ex = t.load()
        t.fewshot_pool()
        data[t.name] = (select(all_ex, args.limit, args.seed), all_ex)
    specs = list(args.model or ["smollm2-135m-instruct"])
    tmp = Path(tempfile.mkdtemp(prefix="eval_speed_"))
    try:
        if args.student == "convert":
            from gendistill.convert.api import convert  # noqa: PLC0415

            folder = tmp / f"student-{args.attention_layers.replace(':', '')}"
            log(f"converting {specs[0]} -> {folder.name} ({args.attention_layers})")
            convert(specs[0], args.attention_layers, out=folder, dtype=args.dtype, device=args.device)
            specs.append(str(folder))
        labels = [model_label(s) for s in specs]
        res: dict[str, Any] = {
            "card": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "device": device.type, "dtype": dtype_name(dtype), "versions": versions(),
            "commit": os.environ.get("COMMIT"),  # the caller's: a device copy's git metadata may be stale
            "command": portable_paths(shlex.join(["benchmarks/eval_speed.py", *argv])),
            "settings": {"models": labels, "tasks": [t.name for t in tasks], "limit": args.limit,
                         "reference_limit": args.reference_limit, "lm_eval_limit": args.lm_eval_limit,
                         "paths": args.paths, "protocols": args.protocols, "fast_batch_size": args.batch_size,
                         "reference_batch_size": args.reference_batch_size,
                         "lm_eval_batch_size": args.lm_eval_batch_size, "token_budget": args.token_budget,
                         "warmup": args.warmup, "seed": args.seed, "greedy": True,
                         # the tokenizers' threads (unset: their default, parallel; the lease scripts set false)
                         "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM", "unset")},
            "rows": [], "skipped": [], "cli": [], "overhead_sweep": [], "profiles": [],
        }
        t_all = time.perf_counter()
        if args.cli == "both":
            res["cli"].append(time_cli(specs, task_specs, args, tmp / "cli_cold", "before (cold)"))
        for k, (spec, label) in enumerate(zip(specs, labels)):
            model, tok = load_model(spec, dtype=dtype, device=device)
            if k == 0 and args.profile:
                res["profiles"] = profile_fast(model, tok, sweep_tasks, data, args, device, Path(args.profile))
            if k == 0 and args.overhead_sweep:
                res["settings"]["overhead_sweep"] = args.overhead_sweep
                for row in overhead_sweep(model, tok, label, sweep_tasks, data, args, device):
                    res["overhead_sweep"].append(row)
                    if args.out:
                        atomic_write_json(Path(args.out), portable_paths({**res, "complete": False}))
            slots = DecodeSlots(model)  # the model's pool, as `gendistill eval` keeps it
            for t in tasks:
                sel, all_ex = data[t.name]
                for proto in args.protocols:
                    row = bench_task(model, tok, label, t, sel, all_ex, proto, args, device, slots)
                    if row is None:
                        res["skipped"].append({"model": label, "task": t.name, "protocol": proto,
                                               "reason": "no log-likelihood form; scored by generation only"})
                        continue
                    res["rows"].append(row)
                    log(json.dumps({k: row[k] for k in ("model", "task", "protocol", "paths")})[:600])
                    if args.out:  # what is done survives a run stopped at its time limit
                        atomic_write_json(Path(args.out), portable_paths({**res, "complete": False}))
            _LM_CACHE.clear()
            slots.close()
            del model, slots
        res["in_process_seconds"] = round(time.perf_counter() - t_all, 1)
        if args.cli in ("after", "both"):
            res["cli"].append(time_cli(specs, task_specs, args, tmp / "cli_warm", "after (warm caches)"))
        res["totals"] = totals(res["rows"])
        res["complete"] = True
        res = portable_paths(res)
        if args.out:
            atomic_write_json(Path(args.out), res)
        print(table(res["rows"], args.paths))
        for proto, t in res["totals"].items():
            print(f"{proto}: {json.dumps(t)}")
        for c in res["cli"]:
            print(f"gendistill eval ({c['when']}): {c['seconds']} s, rc {c['rc']}"
                  + (f" (stopped after {c['timed_out_after_s']} s)" if c.get("timed_out_after_s") else ""))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the converted student and the command's output: ours
    return 0


if __name__ == "__main__":
    sys.exit(main())
