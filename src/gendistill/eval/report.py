"""Aggregation and reporting.

Definitions (``docs/eval.md`` explains them in prose):

* accuracy ``p`` over ``n`` examples with standard error ``sqrt(p (1 - p) / (n - 1))`` (lm-eval's sample s.e.);
  with several sampling seeds the per-example score is the mean over seeds and the s.e. is that of the mean;
* chance: mean over examples of ``1 / number of options`` (0 for open answers);
* retention (raw) = student / teacher; retention above chance = (student − chance) / (teacher − chance);
* perplexity gap = (teacher − student under generation) − (teacher − student under log-likelihood), in points: how
  much of the student's loss log-likelihood scoring hides (positive = generation reveals a larger gap).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from gendistill.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from gendistill.eval.extract import LETTERS


def mean_stderr(scores: list[float]) -> tuple[float, float]:
    n = len(scores)
    if n == 0:
        return float("nan"), float("nan")
    mu = sum(scores) / n
    if n < 2:
        return mu, float("nan")
    var = sum((s - mu) ** 2 for s in scores) / (n - 1)
    return mu, math.sqrt(var / n)


def position_distribution(preds: list[int | None], n_choices: list[int]) -> dict[str, float]:
    """Share of valid answers on each option letter (the collapse detector: "always A" shows as A ≈ 1)."""
    valid = [p for p in preds if p is not None]
    if not valid:
        return {}
    width = max(n_choices) if n_choices else max(valid) + 1
    c = Counter(valid)
    return {LETTERS[i]: c.get(i, 0) / len(valid) for i in range(width)}


def retention(teacher: float, student: float, chance: float) -> dict[str, float | None]:
    raw = student / teacher if teacher > 0 else None
    above = (student - chance) / (teacher - chance) if teacher - chance > 1e-12 else None
    return {"raw": raw, "above_chance": above}


def perplexity_gap(t_gen: float, s_gen: float, t_ll: float, s_ll: float) -> float:
    """(teacher − student under generation) − (teacher − student under log-likelihood)."""
    return (t_gen - s_gen) - (t_ll - s_ll)


def comparisons(rows: list[dict[str, Any]], teacher: str) -> list[dict[str, Any]]:
    """Retention and perplexity gap for every (task, student) pair, from the metric rows."""
    by = {(r["task"], r["model"], r["protocol"]): r for r in rows}
    students = sorted({r["model"] for r in rows if r["model"] != teacher}, key=[r["model"] for r in rows].index)
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    out = []
    for task in tasks:
        for s in students:
            item: dict[str, Any] = {"task": task, "teacher": teacher, "student": s}
            accs = {}
            for proto in ("loglik", "generate"):
                t, st = by.get((task, teacher, proto)), by.get((task, s, proto))
                if t is None or st is None:
                    continue
                chance = t.get("chance") or 0.0
                accs[proto] = (t["acc"], st["acc"])
                item[f"retention_{proto}"] = retention(t["acc"], st["acc"], chance)
                item[f"delta_{proto}"] = t["acc"] - st["acc"]
            if len(accs) == 2:
                item["perplexity_gap"] = perplexity_gap(accs["generate"][0], accs["generate"][1], accs["loglik"][0],
                                                        accs["loglik"][1])
            out.append(item)
    return out


def _pct(x: float | None, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    rows = results["rows"]
    lines = [f"# gendistill eval — {results['meta'].get('created', '')}", ""]
    meta = results["meta"]
    lines.append(
        f"Models: {', '.join(meta['models'])} (teacher: {meta['models'][0]}). Limit: {meta.get('limit')} per task, "
        f"seed {meta.get('seed')}. Device: {meta.get('device')}. Command: `{meta.get('command', '')}`"
    )
    lines += ["", "## Accuracy (%, ± s.e.)", ""]
    lines.append("| task | model | protocol | metric | acc | ± s.e. | n | chance | invalid | top position | tok/s |")
    lines.append("|---|---|---|---|---:|---:|---:|---:|---:|---|---:|")
    for r in rows:
        pos = r.get("positions") or {}
        top = max(pos.items(), key=lambda kv: kv[1]) if pos else None
        tps = r.get("throughput", {}).get("new_tokens_per_s")
        lines.append(
            f"| {r['task']} | {r['model']} | {r['protocol']} | {r['metric']} | {_pct(r['acc'])} | {_pct(r['stderr'])} "
            f"| {r['n']} | {_pct(r.get('chance'))} | {_pct(r.get('invalid_rate')) if r['protocol'] == 'generate' else '–'} "
            f"| {f'{top[0]} {_pct(top[1], 0)}%' if top else '–'} | {tps if tps is not None else '–'} |"
        )
    comps = results.get("comparisons") or []
    if comps:
        lines += ["", "## Retention and perplexity gap (points)", ""]
        lines.append("| task | student | retention LL | above-chance LL | retention gen | above-chance gen | "
                     "Δ LL | Δ gen | perplexity gap |")
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for c in comps:
            rl, rg = c.get("retention_loglik") or {}, c.get("retention_generate") or {}
            gap = c.get("perplexity_gap")
            lines.append(
                f"| {c['task']} | {c['student']} | {_pct(rl.get('raw'))} | {_pct(rl.get('above_chance'))} | "
                f"{_pct(rg.get('raw'))} | {_pct(rg.get('above_chance'))} | {_pct(c.get('delta_loglik'))} | "
                f"{_pct(c.get('delta_generate'))} | {_pct(gap) if gap is not None else '–'} |"
            )
    fid = results.get("fidelity") or []
    if fid:
        lines += ["", "## Fidelity to the teacher", ""]
        lines.append("| student | task | greedy exact match | mean first divergence (tokens) | top-1 agreement | KL (nats/token) |")
        lines.append("|---|---|---:|---:|---:|---:|")
        for f in fid:
            lines.append(
                f"| {f['student']} | {f.get('task', 'chat held-out')} | {_pct(f.get('exact_match'))} | "
                f"{'–' if f.get('mean_first_divergence') is None else round(f['mean_first_divergence'], 1)} | "
                f"{_pct(f.get('top1_agreement'))} | "
                f"{'–' if f.get('kl_teacher_student') is None else round(f['kl_teacher_student'], 4)} |"
            )
    skipped = results.get("skipped") or []
    if skipped:
        lines += ["", "Not applicable: " + "; ".join(f"{s['task']}/{s['protocol']} ({s['reason']})" for s in skipped)]
    return "\n".join(lines) + "\n"


def plot_png(results: dict[str, Any]) -> bytes | None:
    """Grouped bars: accuracy per task, one bar per (model, protocol), chance as a tick. Returns PNG bytes."""
    try:
        import io

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001 - the plot is optional
        return None
    rows = results["rows"]
    if not rows:
        return None
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    series = list(dict.fromkeys((r["model"], r["protocol"]) for r in rows))
    by = {(r["task"], r["model"], r["protocol"]): r for r in rows}
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(tasks) * max(1, len(series)) / 2), 4.5))
    for k, (m, p) in enumerate(series):
        xs, ys, es = [], [], []
        for i, t in enumerate(tasks):
            r = by.get((t, m, p))
            if r is None:
                continue
            xs.append(i + (k - (len(series) - 1) / 2) * width)
            ys.append(100 * r["acc"])
            es.append(100 * r["stderr"] if r["stderr"] == r["stderr"] else 0)
        ax.bar(xs, ys, width, yerr=es, label=f"{m} · {p}", hatch="//" if p == "loglik" else None, alpha=0.85)
    for i, t in enumerate(tasks):
        ch = [r.get("chance") for r in rows if r["task"] == t and r.get("chance")]
        if ch:
            ax.hlines(100 * ch[0], i - 0.45, i + 0.45, colors="k", linestyles="dotted", linewidth=1)
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels(tasks, rotation=30, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("log-likelihood (hatched) vs generation; dotted = chance")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def merge_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine runs into one result: runs over disjoint task sets of the same models (shards run in parallel), or runs
    of further models that no earlier part evaluated (students scored later on the same tasks; the first part's first
    model stays the teacher). Rows, skipped tasks, fidelity and example files are concatenated; comparisons
    recomputed against the teacher."""
    from gendistill.errors import DataError

    if not parts:
        raise DataError("nothing to merge")
    first = parts[0]["meta"]["models"]
    models = list(first)
    seen: set[tuple[str, str, str]] = set()
    rows, skipped, fidelity, files, tasks, docs, commands, wall = [], [], [], [], [], {}, [], 0.0
    for i, p in enumerate(parts):
        pm = p["meta"]["models"]
        if pm != first:
            if set(pm) & set(models):
                raise DataError(f"merge: part {i + 1} evaluated models {pm}, part 1 {first} (a part must evaluate "
                                "the same models as part 1, or only models no earlier part evaluated)")
            models += pm
        for r in p["rows"]:
            key = (r["task"], r["model"], r["protocol"])
            if key in seen:
                raise DataError(f"merge: {key[0]}/{key[1]}/{key[2]} appears in more than one part")
            seen.add(key)
            rows.append(r)
        skipped += p.get("skipped", [])
        fidelity += p.get("fidelity", [])
        files += p.get("example_files", [])
        tasks += [t for t in p["meta"]["tasks"] if t not in tasks]
        docs.update(p["meta"].get("task_docs", {}))
        commands.append(p["meta"].get("command", ""))
        wall += float(p["meta"].get("wall_seconds", 0.0))
    meta = dict(parts[0]["meta"])
    meta.update(models=models, tasks=tasks, task_docs=docs, command=" && ".join(commands), wall_seconds=round(wall, 1),
                merged_from=len(parts))
    return {"meta": meta, "rows": rows, "comparisons": comparisons(rows, models[0]) if len(models) > 1 else [],
            "fidelity": fidelity, "skipped": skipped, "example_files": files}


def write_report(results: dict[str, Any], out_dir) -> dict[str, str]:
    from pathlib import Path

    out = Path(out_dir)
    paths = {"json": str(out / "results.json"), "markdown": str(out / "results.md")}
    atomic_write_json(paths["json"], results)
    atomic_write_text(paths["markdown"], markdown(results))
    png = plot_png(results)
    if png is not None:
        paths["plot"] = str(out / "results.png")
        atomic_write_bytes(paths["plot"], png)
    return paths
