"""``gendistill eval``: every model × task × protocol, per-example records, the report.

Order of work, so that bad input fails before anything expensive or anything is written:

1. parse tasks (unknown name → the list of known ones), protocols, and check every model spec resolves (a missing
   folder fails here);
2. read and validate every task's data, subsample deterministically by ``(limit, seed)``;
3. for each model (the first is the teacher): load, run log-likelihood and/or generation on every task (or take the
   result from the result cache, :mod:`gendistill.eval.result_cache`), write the per-example JSONL of each
   (task, protocol) atomically;
4. fidelity (when there are students): greedy agreement from the generations already made; teacher-forced top-1
   agreement and KL on held-out chat data if requested;
5. the report: ``results.json``, ``results.md``, ``results.png`` — each written atomically.
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import re
import shlex
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from gendistill.devices import dtype_name, limit_cuda_memory, resolve_device, resolve_dtype
from gendistill.eval import report as R
from gendistill.eval.config import PROTOCOLS, SMOKE_LIMIT, SMOKE_MAX_NEW_TOKENS, EvalConfig, check_config
from gendistill.eval.fidelity import answer_agreement, greedy_agreement, load_chat_heldout, teacher_forced
from gendistill.eval.heldout import heldout_fidelity, load_heldout_rows
from gendistill.eval.generate import generate, resolve_engine
from gendistill.eval.humaneval import HumanEvalTask
from gendistill.eval.loglik import mc_metrics, score_requests
from gendistill.eval.prompts import chat_loglik_pair
from gendistill.eval.result_cache import ResultCache, model_fingerprint, result_settings
from gendistill.eval.rope import apply_rope_scaling, parse_rope_scaling
from gendistill.eval.ruler import DEFAULT_DEPTHS, DEFAULT_LENGTHS, LongContextSpec
from gendistill.eval.task import MULTIPLE_CHOICE, Example, Task, select
from gendistill.eval.tasks import parse_tasks
from gendistill.io import atomic_write_json, atomic_write_jsonl
from gendistill.models.decode_slots import DecodeSlots
from gendistill.models.loading import load_model, model_label, resolve_model

# The metric that represents a task under log-likelihood (the one usually reported for it).
LOGLIK_METRIC = {"arc_easy": "acc_norm", "arc_challenge": "acc_norm", "hellaswag": "acc_norm", "piqa": "acc_norm"}


def loglik_choice_key(task: str) -> str:
    """The field of a multiple-choice log-likelihood record holding the option the model chose, as the task's
    reported accuracy counts it: ``pred_norm`` where the metric is ``acc_norm``, else ``pred``."""
    return "pred_norm" if LOGLIK_METRIC.get(task, "acc") == "acc_norm" else "pred"


# ------------------------------------------------------------------------------------------------ one task, one model


def _chance(examples: list[Example]) -> float:
    ns = [len(e.choices) for e in examples if e.choices]
    return sum(1 / n for n in ns) / len(ns) if ns else 0.0


def run_loglik(model, tok, task: Task, examples: list[Example], all_examples: list[Example], cfg: EvalConfig,
               label: str) -> tuple[dict | None, list[dict]]:
    per_ex_reqs = []
    for ex in examples:
        shots = task.fewshot_for(ex, all_examples)
        if task.loglik_on_generation_prompt:  # the gold answer continues the exact prompt the model generates from
            per_ex_reqs.append([(task.generation_prompt(tok, ex, shots), " " + str(ex.answer))])
            continue
        reqs = task.loglik_requests(ex, shots)
        if reqs is None:
            return None, []
        if cfg.loglik_chat_template:
            reqs = [chat_loglik_pair(tok, c, k, task.system) for c, k in reqs]
        per_ex_reqs.append(reqs)
    flat = [r for reqs in per_ex_reqs for r in reqs]
    t0 = time.perf_counter()
    res = score_requests(model, tok, flat, token_budget=cfg.token_budget,
                         engine="reference" if cfg.engine == "reference" else "fast", desc=f"{label} {task.name} loglik",
                         show_progress=cfg.show_progress)
    secs = time.perf_counter() - t0
    records, k = [], 0
    for ex, reqs in zip(examples, per_ex_reqs):
        out = res[k : k + len(reqs)]
        k += len(reqs)
        rec: dict[str, Any] = {"id": ex.id, "task": task.name, "model": label, "protocol": "loglik",
                               **_breakdown_fields(task, ex)}
        if task.kind == MULTIPLE_CHOICE:
            m = mc_metrics([o.logprob for o in out], [c for _, c in reqs], ex.answer_idx)
            rec.update(gold=ex.answer_idx, **m)
        else:
            rec.update(gold=ex.answer, logprob=out[0].logprob, n_tokens=out[0].n_tokens, acc=float(out[0].is_greedy),
                       logprob_per_token=out[0].logprob / max(1, out[0].n_tokens))
        records.append(rec)
    metric = LOGLIK_METRIC.get(task.name, "acc") if task.kind == MULTIPLE_CHOICE else "greedy_match"
    key = "acc_norm" if metric == "acc_norm" else "acc"
    acc, se = R.mean_stderr([r[key] for r in records])
    row = {"task": task.name, "model": label, "protocol": "loglik", "metric": metric, "acc": acc, "stderr": se,
           "n": len(records), "chance": _chance(examples), "seconds": round(secs, 2),
           "chat_template": cfg.loglik_chat_template}
    if task.kind == MULTIPLE_CHOICE:
        row["acc_raw"], row["acc_raw_stderr"] = R.mean_stderr([r["acc"] for r in records])
        row["acc_norm"], row["acc_norm_stderr"] = R.mean_stderr([r["acc_norm"] for r in records])
        row["positions"] = R.position_distribution([r[loglik_choice_key(task.name)] for r in records],
                                                   [len(e.choices) for e in examples])
    else:
        row["mean_logprob"] = sum(r["logprob"] for r in records) / len(records)
        row["mean_logprob_per_token"] = sum(r["logprob_per_token"] for r in records) / len(records)
    if task.breakdown:
        row.update(R.breakdown([r[key] for r in records], records, task.breakdown))
        if task.kind != MULTIPLE_CHOICE:
            row.update(R.breakdown([r["logprob_per_token"] for r in records], records, task.breakdown[:1],
                                   prefix="logprob_per_token_"))
    return row, records


def run_generate(model, tok, task: Task, examples: list[Example], all_examples: list[Example], cfg: EvalConfig,
                 label: str, slots: DecodeSlots | None = None) -> tuple[dict, list[dict], list[list[int]]]:
    prompts = [task.generation_prompt(tok, ex, task.fewshot_for(ex, all_examples)) for ex in examples]
    max_new = cfg.max_new_tokens or task.max_new_tokens
    if cfg.smoke:
        max_new = min(max_new, SMOKE_MAX_NEW_TOKENS)
    seeds = list(range(cfg.seed, cfg.seed + cfg.samples)) if cfg.samples > 0 else [None]
    records, per_ex_scores, greedy_ids = [], [[] for _ in examples], []
    stats_all = []
    for s in seeds:
        outs, stats = generate(
            model, tok, prompts, max_new_tokens=max_new, batch_size=cfg.batch_size, engine=cfg.engine,
            do_sample=s is not None,
            temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, seed=s or 0,
            add_special_tokens=not getattr(tok, "chat_template", None), desc=f"{label} {task.name} generate",
            show_progress=cfg.show_progress, stop=list(task.stop) or None, slots=slots,
        )
        stats_all.append(stats.as_dict())
        seed_scores = task.score_generations(examples, [o.text for o in outs])
        for i, (ex, o, sc) in enumerate(zip(examples, outs, seed_scores)):
            per_ex_scores[i].append(sc)
            rec = {"id": ex.id, "task": task.name, "model": label, "protocol": "generate", "seed": s,
                   "gold": ex.answer_idx if task.kind == MULTIPLE_CHOICE else ex.answer, "pred": sc.pred,
                   "correct": sc.correct, "score": sc.value, "valid": sc.valid, "method": sc.method,
                   "generation": o.text, "new_tokens": o.new_tokens, "hit_limit": o.hit_limit,
                   "prompt_tokens": o.prompt_tokens, **_breakdown_fields(task, ex), **sc.extra}
            if i < 3 and s in (None, cfg.seed):
                rec["prompt"] = prompts[i]
            records.append(rec)
            if s is None:
                greedy_ids.append(o.token_ids)
    scores = [sum(sc.value for sc in scs) / len(scs) for scs in per_ex_scores]
    acc, se = R.mean_stderr(scores)
    flat = [sc for scs in per_ex_scores for sc in scs]
    row: dict[str, Any] = {
        "task": task.name, "model": label, "protocol": "generate",
        "metric": "exact_match" if task.kind != MULTIPLE_CHOICE else "acc", "acc": acc, "stderr": se,
        "n": len(examples), "chance": _chance(examples), "invalid_rate": sum(not sc.valid for sc in flat) / len(flat),
        "hit_limit_rate": sum(r["hit_limit"] for r in records) / len(records), "max_new_tokens": max_new,
        "decoding": "greedy" if cfg.samples <= 0 else
        f"sampling T={cfg.temperature} top_p={cfg.top_p} top_k={cfg.top_k} seeds={seeds}",
        "throughput": _merge_stats(stats_all),
        "extraction_methods": dict(sorted(_count(sc.method for sc in flat).items())),
    }
    if task.kind == MULTIPLE_CHOICE:
        row["positions"] = R.position_distribution([sc.pred for sc in flat], [len(e.choices) for e in examples])
        row["gold_positions"] = R.position_distribution([e.answer_idx for e in examples],
                                                        [len(e.choices) for e in examples])
    if any("contains" in sc.extra for sc in flat):
        row["contains_rate"] = sum(bool(sc.extra.get("contains")) for sc in flat) / len(flat)
    if any(sc.score is not None for sc in flat):  # graded scores: also the share answered completely
        row["all_correct_rate"] = sum(sc.correct for sc in flat) / len(flat)
    for key in task.extra_rates:
        row[f"{key}_rate"] = sum(float(sc.extra.get(key, 0.0)) for sc in flat) / len(flat)
    if task.breakdown:
        row.update(R.breakdown(scores, [_breakdown_fields(task, ex) for ex in examples], task.breakdown))
    row.update(task.row_metrics(examples, per_ex_scores))
    return row, records, greedy_ids


def _breakdown_fields(task: Task, ex: Example) -> dict[str, Any]:
    return {k: ex.fields.get(k) for k in task.breakdown}


def _count(it) -> dict:
    out: dict = {}
    for x in it:
        out[x] = out.get(x, 0) + 1
    return out


def _merge_stats(stats: list[dict]) -> dict:
    if len(stats) == 1:
        return stats[0]
    secs = sum(s["seconds"] for s in stats)
    new = sum(s["new_tokens"] for s in stats)
    return {"runs": len(stats), "seconds": round(secs, 3), "new_tokens": new,
            "new_tokens_per_s": round(new / secs, 2) if secs > 0 else 0.0, "batch_size": stats[0]["batch_size"]}


# ------------------------------------------------------------------------------------------------ the whole run


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_") or "model"


def prepare_tasks(cfg: EvalConfig) -> list[Task]:
    """The tasks asked for; a task that executes model-written code is refused now where it cannot be confined."""
    tasks = parse_tasks(cfg.tasks)
    for t in tasks:
        if isinstance(t, HumanEvalTask):  # it executes model-written code: refused now where it cannot be confined
            t.unsafe_allow_unsandboxed = cfg.unsafe_allow_unsandboxed_code
            t.require_sandbox()
    return tasks


def model_labels(specs: list[str]) -> list[str]:
    """A distinct label per model (a repeated one gets ``'``), after checking every reference can exist (a missing
    folder fails here, before any data is read)."""
    for spec in specs:
        resolve_model(spec)
    labels, seen = [], set()
    for spec in specs:
        lab = model_label(spec)
        while lab in seen:
            lab += "'"
        seen.add(lab)
        labels.append(lab)
    return labels


def read_task_data(tasks: list[Task], cfg: EvalConfig, long_spec: LongContextSpec,
                   limit: int | None) -> dict[str, tuple[list[Example], list[Example]]]:
    """Every task's (selected, all) examples, read and validated before a model is loaded; a generated task is
    built later with the first model's tokenizer (only its options are checked here)."""
    data: dict[str, tuple[list[Example], list[Example]]] = {}
    for t in tasks:
        if t.generated:  # built with the first model's tokenizer, below; its options are checked now
            t.check(long_spec)
            continue
        all_ex = t.load(cfg.data_source)
        t.fewshot_pool()
        data[t.name] = (select(all_ex, limit, cfg.seed), all_ex)
    return data


@dataclass
class EvalRun:
    """What one ``gendistill eval`` collects while it runs."""

    cfg: EvalConfig
    labels: list[str]
    tasks: list[Task]
    out: Path
    t_start: float = field(default_factory=time.time)
    rows: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    greedy: dict[tuple[str, str], list[list[int]]] = field(default_factory=dict)
    answers: dict[tuple[str, str], list[Any]] = field(default_factory=dict)  # greedy extracted answers, (model, task)
    example_files: list[str] = field(default_factory=list)
    rope_applied: dict[str, dict] = field(default_factory=dict)
    cache: ResultCache | None = None  # None: --no-cache
    seconds: dict[str, float] = field(default_factory=dict)  # where the time went: "<label> load", "data", ...

    def spend(self, what: str, since: float) -> float:
        """Add the seconds since ``since`` (a ``time.perf_counter()`` reading) to ``what``; returns the reading now."""
        now = time.perf_counter()
        self.seconds[what] = self.seconds.get(what, 0.0) + now - since
        return now

    def write_examples(self, label: str, task: Task, protocol: str, records: list[dict]) -> None:
        p = self.out / "examples" / f"{_safe(label)}__{task.name}__{protocol}.jsonl"
        atomic_write_jsonl(p, records)
        self.example_files.append(str(p))


def evaluate_model(run: EvalRun, spec: str, label: str, data: dict[str, tuple[list[Example], list[Example]]],
                   device: torch.device, dtype: torch.dtype, rope: dict | None, long_spec: LongContextSpec,
                   limit: int | None) -> None:
    """One model on every task under every protocol: rows and per-example files, a partial report after each task."""
    cfg = run.cfg
    t0 = time.perf_counter()
    model, tok = load_model(spec, dtype=dtype, device=device)
    model_key = model_fingerprint(model, tok) if run.cache is not None else ""  # before rope scaling (keyed apart)
    t0 = run.spend(f"{label} load", t0)
    if rope is not None:
        run.rope_applied[label] = apply_rope_scaling(model, rope)
    # greedy generation on the fast engine: one pool of decode slots for all tasks (each slot shape's CUDA graph
    # captured once for the model, not once a batch)
    with warnings.catch_warnings():  # (generate warns of a fallback to the reference engine itself)
        warnings.simplefilter("ignore")
        fast = cfg.samples == 0 and resolve_engine(cfg.engine, False, model.config) == "fast"
    with DecodeSlots(model) if fast else contextlib.nullcontext() as slots:
        _evaluate_tasks(run, model, tok, model_key, label, data, rope, long_spec, limit, slots)
    del model
    gc.collect()


def _evaluate_tasks(run: EvalRun, model, tok, model_key: str, label: str, data: dict, rope: dict | None,
                    long_spec: LongContextSpec, limit: int | None, slots: DecodeSlots | None) -> None:
    """:func:`evaluate_model`'s tasks, each under every protocol; greedy generation decodes in ``slots``."""
    cfg = run.cfg
    for t in run.tasks:
        if t.name not in data:  # a generated task: the same examples for every model
            max_new = cfg.max_new_tokens or t.max_new_tokens
            if cfg.smoke:
                max_new = min(max_new, SMOKE_MAX_NEW_TOKENS)
            built = t.build(tok, long_spec, limit, cfg.seed, max_new)
            data[t.name] = (built, built)
    for t in run.tasks:
        sel, all_ex = data[t.name]

        def scored(protocol: str, compute):  # the cached result of this model, task and protocol, else compute()
            if run.cache is None:
                return compute()
            parts = run.cache.parts(model_key, t, sel, all_ex, result_settings(cfg, protocol, limit, rope))
            return run.cache.through(parts, label, compute)

        t0 = time.perf_counter()
        if "loglik" in cfg.protocols:
            row, recs, _ = scored("loglik", lambda: (*run_loglik(model, tok, t, sel, all_ex, cfg, label), []))
            if row is None:
                if label == run.labels[0]:
                    run.skipped.append({"task": t.name, "protocol": "loglik",
                                        "reason": "no options to rank; scored by generation only"})
            else:
                run.rows.append(row)
                run.write_examples(label, t, "loglik", recs)
            t0 = run.spend(f"{label} loglik", t0)
        if "generate" in cfg.protocols:
            row, recs, ids = scored("generate", lambda: run_generate(model, tok, t, sel, all_ex, cfg, label, slots))
            run.rows.append(row)
            if ids:
                run.greedy[(label, t.name)] = ids
                run.answers[(label, t.name)] = [r["pred"] for r in recs if r["seed"] is None]
            run.write_examples(label, t, "generate", recs)
            t0 = run.spend(f"{label} generate", t0)
        # A partial report after every task, so a long run that dies keeps what it finished.
        _write_partial(run.out, cfg, run.labels, run.tasks, run.rows, run.skipped, run.example_files, run.t_start)


def read_fidelity_data(cfg: EvalConfig) -> dict[str, Any]:
    """The held-out data of teacher-forced fidelity, read and checked before any model is loaded: ``chat`` (the
    ``--fidelity-chat`` conversations) and ``rows`` (``[(name, rows)]`` of each ``--fidelity-heldout`` file).
    :func:`gendistill.eval.config.check_config` has refused either with a single model."""
    chat = load_chat_heldout(cfg.fidelity_data, cfg.fidelity_chat) if cfg.fidelity_chat > 0 else None
    rows = []
    for path in cfg.fidelity_heldout or []:
        r, meta = load_heldout_rows(path)
        rows.append((f"held-out {meta.get('stage') or Path(path).stem}", r))
    return {"chat": chat, "rows": rows}


def fidelity_rows(run: EvalRun, device: torch.device, dtype: torch.dtype, held: dict[str, Any]) -> list[dict]:
    """Each student's agreement with the teacher: greedy agreement from the generations already made and, on the
    held-out data of :func:`read_fidelity_data`, teacher-forced top-1 agreement and KL
    (:func:`gendistill.eval.heldout.heldout_fidelity`, the function the trainer's held-out evaluation calls)."""
    cfg, labels = run.cfg, run.labels
    fidelity: list[dict] = []
    teacher = labels[0]
    for label in labels[1:]:
        for t in run.tasks:
            if (teacher, t.name) in run.greedy and (label, t.name) in run.greedy:
                fidelity.append({"student": label, "task": t.name,
                                 **greedy_agreement(run.greedy[(teacher, t.name)], run.greedy[(label, t.name)]),
                                 **answer_agreement(run.answers[(teacher, t.name)], run.answers[(label, t.name)])})
    if held["chat"] is not None or held["rows"]:
        tmodel, ttok = load_model(cfg.models[0], dtype=dtype, device=device)
        for spec, label in zip(cfg.models[1:], labels[1:]):
            smodel, _ = load_model(spec, dtype=dtype, device=device)
            for name, rows in held["rows"]:
                fidelity.append({"student": label, "task": name,
                                 **heldout_fidelity(tmodel, smodel, rows, show_progress=cfg.show_progress)})
            if held["chat"] is not None:
                fidelity.append({"student": label, "task": "chat held-out", **teacher_forced(
                    tmodel, smodel, ttok, held["chat"], show_progress=cfg.show_progress)})
            del smodel
            gc.collect()
        del tmodel
    return fidelity


def results_of(run: EvalRun, fidelity: list[dict], limit: int | None, long_spec: LongContextSpec,
               device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """The results mapping (``results.json``): settings and versions, rows, comparisons, fidelity."""
    cfg, labels, tasks = run.cfg, run.labels, run.tasks
    teacher = labels[0]
    return {
        "meta": {
            "created": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "models": labels, "model_specs": cfg.models, "teacher": teacher,
            "tasks": [t.name for t in tasks], "task_docs": {t.name: t.doc for t in tasks},
            "protocols": cfg.protocols, "limit": limit, "seed": cfg.seed, "smoke": cfg.smoke,
            "data_source": cfg.data_source, "dtype": dtype_name(dtype), "device": _device_name(device),
            "torch": torch.__version__, "python": platform.python_version(),
            "rope_scaling": run.rope_applied or None,
            **({"long_context": {"lengths": list(long_spec.lengths), "depths": list(long_spec.depths),
                                 "haystack": long_spec.haystack}} if any(t.generated for t in tasks) else {}),
            "wall_seconds": round(time.time() - run.t_start, 1),
            "command": cfg.command or " ".join(shlex.quote(a) for a in sys.argv),
            "config": {k: v for k, v in asdict(cfg).items() if k not in ("command",)},
        },
        "rows": run.rows,
        "comparisons": R.comparisons(run.rows, teacher) if len(labels) > 1 else [],
        "fidelity": fidelity,
        "skipped": run.skipped,
        "example_files": run.example_files,
    }


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate every model on every task (see the module docstring for the order of work) and write the report;
    returns the results mapping with the report's ``paths``."""
    check_config(cfg)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if cfg.gpu_memory_fraction is not None and device.type == "cuda":
        limit_cuda_memory(cfg.gpu_memory_fraction, device)  # before any model or batch takes memory
    tasks = prepare_tasks(cfg)
    rope = parse_rope_scaling(cfg.rope_scaling)
    long_spec = LongContextSpec(lengths=tuple(cfg.context_lengths or DEFAULT_LENGTHS),
                                depths=tuple(cfg.depths or DEFAULT_DEPTHS), haystack=cfg.haystack)
    labels = model_labels(cfg.models)
    limit = cfg.limit
    if cfg.smoke:
        limit = min(limit or SMOKE_LIMIT, SMOKE_LIMIT)
    t0 = time.perf_counter()
    data = read_task_data(tasks, cfg, long_spec, limit)  # every file read and validated before a model is loaded
    held = read_fidelity_data(cfg)

    cache = ResultCache(cfg.cache_dir, device, dtype) if cfg.cache else None
    run = EvalRun(cfg, labels, tasks, Path(cfg.out), cache=cache)
    t0 = run.spend("data", t0)
    for spec, label in zip(cfg.models, labels):
        evaluate_model(run, spec, label, data, device, dtype, rope, long_spec, limit)
    t0 = time.perf_counter()
    fidelity = fidelity_rows(run, device, dtype, held)
    run.spend("fidelity", t0)
    results = results_of(run, fidelity, limit, long_spec, device, dtype)
    results["meta"]["complete"] = True
    results["meta"]["seconds"] = {k: round(v, 2) for k, v in run.seconds.items()}
    results["paths"] = R.write_report(results, run.out)
    partial = run.out / "results.partial.json"
    if partial.exists():
        partial.unlink()
    return results


def time_summary(meta: dict[str, Any]) -> str:
    """One line saying where a run's time went, from ``meta["seconds"]`` and ``meta["wall_seconds"]``:
    ``time: 123 s — data 2 s · teacher: load 4 s, loglik 17 s, generate 18 s · student: … · fidelity 0 s``."""
    secs = meta.get("seconds") or {}
    models: dict[str, list[str]] = {}
    for key, v in secs.items():
        label, _, what = key.rpartition(" ")
        if label:  # "<model label> load|loglik|generate"
            models.setdefault(label, []).append(f"{what} {v:.0f} s")
    body = [f"data {secs['data']:.0f} s"] if "data" in secs else []
    body += [f"{label}: {', '.join(items)}" for label, items in models.items()]
    body += [f"fidelity {secs['fidelity']:.0f} s"] if "fidelity" in secs else []
    return f"time: {meta.get('wall_seconds', 0):.0f} s — " + " · ".join(body)


def _write_partial(out: Path, cfg: EvalConfig, labels: list[str], tasks: list[Task], rows: list[dict],
                   skipped: list[dict], example_files: list[str], t_start: float) -> None:
    atomic_write_json(out / "results.partial.json", {
        "meta": {"models": labels, "teacher": labels[0], "tasks": [t.name for t in tasks], "limit": cfg.limit,
                 "seed": cfg.seed, "complete": False, "wall_seconds": round(time.time() - t_start, 1),
                 "command": cfg.command},
        "rows": rows, "skipped": skipped, "example_files": example_files,
    })


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    proc = platform.processor() or platform.machine()
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = None
    return f"CPU {proc} ({n} cores, {torch.get_num_threads()} torch threads)"
