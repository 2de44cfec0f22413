"""The demo pipeline: convert -> distill briefly -> evaluate teacher / undistilled / distilled -> one labelled table.

Layout of ``out`` (default ``runs/demo``)::

    undistilled/     the student straight from conversion (saved like ``gendistill convert`` saves it)
    run/             the distillation run folder (``gendistill distill``'s layout; run/<last stage>/ is the student)
    eval/            ``gendistill eval``'s results.json / results.md / examples/ for the three models
    demo.json        every figure below, with what it is
    demo.md          the printed table
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from gendistill.convert.convert import save_student
from gendistill.devices import dtype_choice, dtype_name, resolve_device
from gendistill.distill.config import Recipe
from gendistill.distill.data import PackedStream, collate
from gendistill.distill.distributed import World, init_world
from gendistill.distill.pipeline import build_student, check_before_loading, run_recipe, teacher_dtype, validate_data
from gendistill.distill.recipe_files import load_recipe
from gendistill.distill.shipped import shipped_recipe
from gendistill.eval.report import REPORT_FILES, signed_points
from gendistill.eval.config import EvalConfig
from gendistill.eval.heldout import heldout_fidelity
from gendistill.eval.runner import run_eval
from gendistill.io import atomic_write_json, atomic_write_text
from gendistill.models.loading import load_model, model_label
from gendistill.ownership import (OutputError, check_replaceable, check_report_folder, check_writable,
                                   claim_report_folder, is_empty, marker_kind)
from gendistill.reporting import pct as _pct
from gendistill.runlock import acquire

DEMO_DIR = Path(str(resources.files("gendistill") / "demo"))
CPU_RECIPE = Path(str(resources.files("gendistill") / "recipes" / "demo-cpu.yaml"))
CPU_MAX_NEW_TOKENS = 24  # the CPU demo's generation cap: enough for a letter or a short answer
# multiple choice: scored by log-likelihood AND by generation on the same questions (a short-answer task's exact match
# marks the teacher's full-sentence answers wrong, which hides the point instead of showing it)
TASKS = f"mc:{DEMO_DIR / 'tasks' / 'demo_quiz.jsonl'}"


def full_recipe() -> Path:
    """The real SmolLM2 recipe, shipped with the package (``gendistill recipes smollm2-135m``)."""
    return shipped_recipe("smollm2-135m").path


@dataclass
class DemoResult:
    """What the demo measured. ``perplexity`` and ``accuracy`` are keyed by model role (teacher / undistilled /
    distilled); ``accuracy[role][task][protocol]`` is a fraction; ``tokens`` are the tokens distilled per stage;
    ``protocol_gap["student/task"]`` is the evaluation's (:func:`gendistill.eval.report.protocol_gap`, a fraction;
    None where the teacher is at or below chance)."""

    out: Path
    recipe: str
    device: str
    label: str
    tokens: dict[str, int]
    seconds: dict[str, float]
    perplexity: dict[str, float]
    accuracy: dict[str, dict[str, dict[str, float]]]
    protocol_gap: dict[str, float | None]
    table: str
    eval_results: dict[str, Any] = field(repr=False, default_factory=dict)
    fidelity: dict[str, dict[str, Any]] = field(default_factory=dict)  # held-out top-1 / KL / NLL per student role


def perplexity(nll: float | None) -> float:
    """exp of a mean next-token NLL (nats per token) from :func:`heldout_fidelity`; NaN where there is none."""
    return math.exp(nll) if nll is not None else float("nan")


def _fmt_ppl(x: float) -> str:
    return "–" if not math.isfinite(x) else (f"{x:.1f}" if x < 1e4 else f"{x:.2e}")


#: what the demo writes at the top of its folder (the runs it makes are sub-folders, each checked by its own step)
DEMO_FILES = ("demo.json", "demo.md")


def claim_demo_folder(out: Path) -> None:
    """Refuse an ``--out`` the demo may not write into: a protected location (the working folder, home, a git
    repository: :func:`gendistill.ownership.check_report_folder`), or a non-empty folder gendistill did not write. A
    demo folder written before folders were marked (it holds the demo's ``demo.json``) counts as gendistill's. Its
    sub-folders are checked as the commands that write them check theirs: ``undistilled/`` a student ``--overwrite``
    may replace, ``eval/`` a report folder ``eval`` may write (``run/`` is checked with the recipe)."""
    check_writable(out, "--out")
    check_report_folder(out, DEMO_FILES, "--out", earlier=_earlier_demo)
    if out.is_dir() and marker_kind(out) is None and not _earlier_demo(out) and not is_empty(out):
        raise OutputError(f"--out: {out} exists and was not written by gendistill; choose a new folder")
    check_replaceable(out / "undistilled", "student", "--out")
    check_report_folder(out / "eval", REPORT_FILES, "--out", earlier=_earlier_eval(out))


def _earlier_eval(out: Path):
    """``out/eval`` of a demo folder written before folders were marked (judged now, before this demo writes its
    ``demo.json``) is the demo's own."""
    earlier = _earlier_demo(out)
    return lambda folder: earlier


def _earlier_demo(out: Path) -> bool:
    """A demo folder written before folders were marked: it holds the demo's ``demo.json``."""
    try:
        return "recipe" in json.loads((out / "demo.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def run_demo(
    out: str | Path = "runs/demo",
    *,
    full: bool | None = None,
    recipe: str | Path | None = None,
    overrides: list[str] | None = None,
    device: str = "auto",
    dtype: str = "auto",
    limit: int | None = None,
    max_new_tokens: int | None = None,
    heldout_sequences: int = 8,
    show_progress: bool = True,
) -> DemoResult:
    """Run the demo into ``out`` and return its figures (also printed by the command, and written to
    ``out/demo.json`` / ``out/demo.md``). ``full`` (default: when CUDA is present) runs the real SmolLM2 recipe
    instead of the CPU demo recipe; ``recipe`` names any other; ``overrides`` are ``gendistill distill --set``
    strings; ``device`` is any ``--device`` (a ``cuda:N`` is kept: the demo runs on that GPU); ``dtype`` (any
    ``--dtype``) is the teacher's and the evaluation's, ``auto`` leaving the recipe's ``teacher.dtype``; ``limit``
    caps examples per task; ``max_new_tokens`` caps generation (CPU demo default: 24). The steps:
    :func:`convert_step`, :func:`distill_step`, :func:`eval_step`, then the table."""
    dev = resolve_device(device)
    dtype = dtype_choice(dtype)
    device = str(dev)  # "cpu", "cuda" or "cuda:N": the index is kept
    full = (dev.type == "cuda") if full is None else full
    if max_new_tokens is None and not full:
        max_new_tokens = CPU_MAX_NEW_TOKENS
    recipe_path = Path(recipe) if recipe is not None else (full_recipe() if full else CPU_RECIPE)
    out = Path(out)
    claim_demo_folder(out)
    earlier_eval = _earlier_eval(out)
    r = demo_recipe(recipe_path, out, dev, dtype, overrides or [])
    if not show_progress:
        r.run.progress = "none"
    world = init_world(r.run.device)
    seconds: dict[str, float] = {}
    # everything a distillation refuses (its run folder, the data) is refused before the demo writes anything
    check_before_loading(r, Path(r.run.output_dir), resume=False, overwrite=True, dry_run=False)
    t0 = time.perf_counter()
    teacher, tok = load_model(r.teacher.spec, dtype=teacher_dtype(r, world), device=world.device)
    validate_data(r, tok)
    seconds["convert"] = time.perf_counter() - t0
    claim_report_folder(out, DEMO_FILES, "--out", earlier=_earlier_demo)  # marks the folder as gendistill's
    atomic_write_json(out / "demo.json", {"complete": False, "recipe": str(recipe_path)})

    undistilled, rows, fid = convert_step(r, world, out, heldout_sequences, seconds, teacher, tok)
    distilled, tokens = distill_step(r, teacher, tok, rows, fid, seconds)
    ppl = {"teacher": perplexity(fid["undistilled"].get("teacher_nll")),
           **{role: perplexity(f.get("student_nll")) for role, f in fid.items()}}
    del teacher
    specs = {"teacher": r.teacher.spec, "undistilled": str(undistilled), "distilled": str(distilled)}
    results = eval_step(specs, out, device, dtype_name(teacher_dtype(r, world)), limit, max_new_tokens,
                        show_progress, seconds, earlier=earlier_eval)

    labels = {role: model_label(spec) for role, spec in specs.items()}
    accuracy: dict[str, dict[str, dict[str, float]]] = {role: {} for role in specs}
    for row in results["rows"]:
        for role, lab in labels.items():
            if row["model"] == lab:
                accuracy[role].setdefault(row["task"], {})[row["protocol"]] = row["acc"]
    gaps = {f"{c['student']}/{c['task']}": c["protocol_gap"] for c in results.get("comparisons", [])
            if "protocol_gap" in c}
    n_tok = sum(tokens.values())
    label = (f"briefly distilled on {n_tok:,} tokens on {device.upper()} in {seconds['distill']:.0f} s — a plumbing "
             "demonstration, not a quality result" if not full else
             f"distilled with {recipe_path.name} on {n_tok:,} tokens ({device})")
    n_held = int(rows["input_ids"].shape[0])
    table = _table(r, recipe_path, device, label, tokens, seconds, ppl, fid, accuracy, results, labels, n_held,
                   max_new_tokens, out)
    result = DemoResult(out, str(recipe_path), device, label, tokens, seconds, ppl, accuracy, gaps, table, results,
                        fidelity=fid)
    atomic_write_text(out / "demo.md", table)
    atomic_write_json(out / "demo.json", {
        "complete": True, "what": label, "recipe": str(recipe_path), "device": device, "tokens_per_stage": tokens,
        "seconds": seconds, "heldout_perplexity": ppl, "heldout_fidelity": fid, "heldout_sequences": n_held,
        "accuracy": accuracy, "protocol_gap": gaps, "models": specs, "eval": str(out / "eval" / "results.json"),
    })
    return result


def demo_recipe(recipe_path: Path, out: Path, device: torch.device, dtype: str, overrides: list[str]) -> Recipe:
    """The recipe the demo runs: ``recipe_path`` with the user's ``overrides``, then the demo's own: the run folder
    ``out/run``, ``run.device`` the whole ``device`` (with its index), and ``teacher.dtype`` unless ``dtype`` is
    ``auto``."""
    own = [f"run.output_dir={out / 'run'}", f"run.device={device}"]
    if dtype != "auto":
        own.append(f"teacher.dtype={dtype}")
    return load_recipe(recipe_path, [*overrides, *own])


def convert_step(r: Recipe, world: World, out: Path, heldout_sequences: int, seconds: dict[str, float],
                 teacher: torch.nn.Module, tok: Any):
    """1. The undistilled student of the loaded ``teacher`` (built exactly as the distillation builds it: same
    conversion and seed, saved to ``out/undistilled``), and its held-out fidelity against the teacher on the last
    stage's held-out rows (:func:`heldout_fidelity`: top-1, KL and both models' NLL, each document read on its own).
    Returns ``(undistilled folder, held-out rows, {"undistilled": figures})``."""
    t0 = time.perf_counter()
    teacher.eval()
    student = build_student(r, teacher, world.device).eval()
    undistilled = save_student(student, tok, out / "undistilled", overwrite=True, what="--out")
    seconds["convert"] = seconds.get("convert", 0.0) + time.perf_counter() - t0

    last = r.stages[-1]
    held = PackedStream(r.stage_data(last), tok, last.seq_len, last.masking).heldout_sequences(heldout_sequences)
    rows = collate(held)
    return undistilled, rows, {"undistilled": heldout_fidelity(teacher, student, rows, batch_rows=2)}


def distill_step(r: Recipe, teacher: torch.nn.Module, tok: Any, rows: dict[str, torch.Tensor],
                 fid: dict[str, dict[str, Any]], seconds: dict[str, float]) -> tuple[Path, dict[str, int]]:
    """2. The whole recipe, every stage; the distilled student's held-out perplexity. Returns its folder and the
    tokens distilled per stage."""
    t0 = time.perf_counter()
    res = run_recipe(r, overwrite=True, teacher=teacher, tokenizer=tok)
    seconds["distill"] = time.perf_counter() - t0
    distilled = res.student_dirs[res.completed[-1]]
    tokens = {name: int(sr.tokens) for name, sr in res.results.items()}
    fid["distilled"] = heldout_fidelity(teacher, res.student.eval(), rows, batch_rows=2)
    return distilled, tokens


def eval_step(specs: dict[str, str], out: Path, device: str, dtype: str, limit: int | None,
              max_new_tokens: int | None, show_progress: bool, seconds: dict[str, float],
              earlier=None) -> dict[str, Any]:
    """3. Both protocols on the shipped task set, the three models on the same examples (``out/eval``), in the
    teacher's dtype. ``out/eval`` is checked, locked and marked as ``eval --out`` is (a user's ``results.md`` there is
    refused, not overwritten); ``earlier`` recognises the eval folder of a demo written before folders were marked."""
    t0 = time.perf_counter()
    on_gpu = device.startswith("cuda")
    folder = out / "eval"
    cfg = EvalConfig(
        models=list(specs.values()), tasks=TASKS, protocols=["loglik", "generate"], limit=limit,
        out=str(folder), device=device, dtype=dtype,
        max_new_tokens=max_new_tokens, batch_size=64 if on_gpu else 8, show_progress=show_progress,
        command="gendistill demo",
    )
    check_report_folder(folder, REPORT_FILES, "--out", earlier=earlier)
    with acquire(folder, "--out"):
        claim_report_folder(folder, REPORT_FILES, "--out", earlier=earlier)  # under the lock; then it is ours
        results = run_eval(cfg)
    seconds["eval"] = time.perf_counter() - t0
    return results


def gap_lines(comparisons: list[dict[str, Any]]) -> list[str]:
    """The demo's protocol-gap paragraph: what the sign means, then one line per (student, task) from the evaluation's
    comparisons (:func:`gendistill.eval.report.comparisons`), each with the two retentions it is the difference of."""
    comps = [c for c in comparisons if "protocol_gap" in c]
    if not comps:
        return []
    lines = ["", "Protocol gap (points) = retention under log-likelihood − retention under generation (retention = "
                 "student / teacher under the same protocol). Positive: generation reveals a loss that "
                 "log-likelihood scoring hides; 0: both protocols show the same loss; negative: the student keeps "
                 "more of the teacher under generation.", ""]
    for c in comps:
        gap = c["protocol_gap"]
        rl, rg = (c[f"retention_{p}"]["raw"] for p in ("loglik", "generate"))
        why = ("the teacher is at or below chance under a protocol: nothing to keep" if gap is None else
               f"keeps {_pct(rl)} % of the teacher under log-likelihood, {_pct(rg)} % under generation")
        lines.append(f"* {c['student']} on {c['task']}: {signed_points(gap)} ({why})")
    return lines


def _table(r, recipe_path, device, label, tokens, seconds, ppl, fid, accuracy, results, labels, n_held,
           max_new_tokens, out) -> str:
    tasks = list(dict.fromkeys(row["task"] for row in results["rows"]))
    n = {(row["task"], row["protocol"]): row["n"] for row in results["rows"]}
    last = r.stages[-1]
    what = {"teacher": f"{r.teacher.spec} (the teacher)",
            "undistilled": "student fresh from conversion (KDA layers untrained)",
            "distilled": f"student after {', '.join(tokens)} ({sum(tokens.values()):,} tokens)"}
    head = ["model", "what it is", f"held-out ppl ({last.name} data, {n_held} seq.)", "top-1 / KL vs teacher"]
    for t in tasks:
        for proto, short in (("loglik", "LL"), ("generate", "gen")):
            if (t, proto) in n:
                head.append(f"{t} {short} % (n={n[(t, proto)]})")
    lines = [f"# gendistill demo — {label}", "",
             f"Recipe `{recipe_path.name}` on {device}; stages: "
             + ", ".join(f"{k} {v:,} tokens" for k, v in tokens.items())
             + f". Wall time: convert {seconds['convert']:.0f} s, distill {seconds['distill']:.0f} s, "
               f"eval {seconds['eval']:.0f} s.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for role in ("teacher", "undistilled", "distilled"):
        f = fid.get(role, {})
        cells = [labels[role], what[role], _fmt_ppl(ppl[role]),
                 f"{_pct(f.get('top1_agreement'))} / {f['kl_teacher_student']:.3f}" if "kl_teacher_student" in f
                 else "–"]
        for t in tasks:
            for proto in ("loglik", "generate"):
                if (t, proto) in n:
                    cells.append(_pct(accuracy[role].get(t, {}).get(proto)))
        lines.append("| " + " | ".join(cells) + " |")
    lines += gap_lines(results.get("comparisons", []))
    lines += ["", "Held-out ppl: the models' own next-token perplexity on the held-out documents of the last stage's "
                  f"data ({'assistant tokens only' if last.masking == 'completion_only' else 'all tokens'}); top-1 / "
                  "KL: how often the student's next-token argmax is the teacher's, and KL(teacher ‖ student) in "
                  "nats per token, on the same tokens (each document read on its own). "
                  "Task accuracies are on the demo's own small task set (32 questions written for it), "
                  "so a difference of a few points is noise"
                  + (f"; generation capped at {max_new_tokens} new tokens." if max_new_tokens else ".")
                  + f" Full report: {out / 'eval' / 'results.md'}.", ""]
    return "\n".join(lines)
