"""Aggregation and reporting.

Definitions (``docs/eval.md`` explains them in prose):

* accuracy ``p`` over ``n`` examples with standard error ``sqrt(p (1 - p) / (n - 1))`` (lm-eval's sample s.e.);
  with several sampling seeds the per-example score is the mean over seeds and the s.e. is that of the mean;
* chance: mean over examples of ``1 / number of options`` (0 for open answers);
* retention (raw) = student / teacher; retention above chance = (student − chance) / (teacher − chance);
* protocol gap = raw retention under log-likelihood − raw retention under generation (:func:`protocol_gap`): positive
  = generation reveals a loss that log-likelihood scoring hides; ``None`` where the teacher is at or below chance under
  either protocol. ``docs/eval.md`` ("The protocol gap") says why this definition.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from gendistill.errors import DataError
from gendistill.eval.extract import LETTERS
from gendistill.reporting import figure_png, pyplot, write_report_files
from gendistill.reporting import pct as _pct


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


def breakdown(scores: list[float], fields: list[dict[str, Any]], keys: tuple[str, ...], prefix: str = ""
              ) -> dict[str, list[dict[str, Any]]]:
    """Mean score per value of each key (``by_length``: ``[{"length": 1024, "acc": .., "n": ..}, ...]``) and, for two
    keys, per pair of values (``by_length_depth``). Examples whose field is ``None`` (no depth) are left out."""
    out: dict[str, list[dict[str, Any]]] = {}
    groupings = [(k,) for k in keys] + ([tuple(keys[:2])] if len(keys) >= 2 else [])
    for ks in groupings:
        groups: dict[tuple, list[float]] = {}
        for s, f in zip(scores, fields):
            vals = tuple(f.get(k) for k in ks)
            if any(v is None for v in vals):
                continue
            groups.setdefault(vals, []).append(s)
        if groups:
            out[prefix + "by_" + "_".join(ks)] = [
                {**dict(zip(ks, vals)), "acc": sum(v) / len(v), "n": len(v)} for vals, v in sorted(groups.items())
            ]
    return out


def retention(teacher: float, student: float, chance: float) -> dict[str, float | None]:
    raw = student / teacher if teacher > 0 else None
    above = (student - chance) / (teacher - chance) if teacher - chance > 1e-12 else None
    return {"raw": raw, "above_chance": above}


def protocol_gap(t_gen: float, s_gen: float, t_ll: float, s_ll: float, chance: float) -> float | None:
    """How much more of the teacher the student seems to keep under log-likelihood than under generation: raw retention
    under log-likelihood minus raw retention under generation, ``s_ll / t_ll − s_gen / t_gen`` (accuracies as
    fractions; the result is a fraction, reports show it in points).

    Positive: generation reveals a loss that log-likelihood hides; 0: both protocols keep the same share of the
    teacher; negative: the student keeps more under generation. Each protocol's student is divided by the teacher under
    that same protocol, so the teacher's own difference between the protocols cancels. ``None`` where the teacher is
    at or below ``chance`` (the task's, 0 for open answers) under either protocol: it has no skill there to keep, and a
    ratio would measure guessing."""
    if t_gen - chance <= 1e-12 or t_ll - chance <= 1e-12:
        return None
    return retention(t_ll, s_ll, chance)["raw"] - retention(t_gen, s_gen, chance)["raw"]


def signed_points(gap: float | None) -> str:
    """A protocol gap (a fraction) as signed points (``0.261`` -> ``+26.1``); ``–`` where it is undefined."""
    return "–" if gap is None else f"{100 * gap:+.1f}"


def comparisons(rows: list[dict[str, Any]], teacher: str) -> list[dict[str, Any]]:
    """Retention and protocol gap (:func:`protocol_gap`) for every (task, student) pair, from the metric rows."""
    by = {(r["task"], r["model"], r["protocol"]): r for r in rows}
    students = sorted({r["model"] for r in rows if r["model"] != teacher}, key=[r["model"] for r in rows].index)
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    out = []
    for task in tasks:
        for s in students:
            item: dict[str, Any] = {"task": task, "teacher": teacher, "student": s}
            accs, chance = {}, 0.0
            for proto in ("loglik", "generate"):
                t, st = by.get((task, teacher, proto)), by.get((task, s, proto))
                if t is None or st is None:
                    continue
                chance = max(chance, t.get("chance") or 0.0)  # the task's: the same under both protocols
                accs[proto] = (t["acc"], st["acc"])
                item[f"retention_{proto}"] = retention(t["acc"], st["acc"], chance)
                item[f"delta_{proto}"] = t["acc"] - st["acc"]
            if len(accs) == 2:
                item["protocol_gap"] = protocol_gap(accs["generate"][0], accs["generate"][1], accs["loglik"][0],
                                                    accs["loglik"][1], chance)
            out.append(item)
    return out


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
    budgets: dict[str, set[int]] = {}  # task -> max new tokens of its generation rows (one value unless merged)
    for r in rows:
        if r["protocol"] == "generate" and r.get("max_new_tokens") is not None:
            budgets.setdefault(r["task"], set()).add(r["max_new_tokens"])
    if budgets:
        lines += ["", "Max new tokens per generated reply: " + ", ".join(
            f"{t} {'/'.join(str(n) for n in sorted(ns))}" for t, ns in budgets.items()) + " (results.json rows: "
            "`max_new_tokens`; `hit_limit_rate` is the share of replies cut there; docs/eval.md, \"Tasks\")."]
    comps = results.get("comparisons") or []
    if comps:
        lines += ["", "## Retention and protocol gap (points)", "",
                  "Retention = student / teacher under the same protocol; above chance = (student − chance) / (teacher "
                  "− chance). Protocol gap = retention LL − retention gen: positive = generation reveals a loss that "
                  "log-likelihood hides; – where the teacher is at or below chance under a protocol (docs/eval.md).",
                  ""]
        lines.append("| task | student | retention LL | above-chance LL | retention gen | above-chance gen | "
                     "Δ LL | Δ gen | protocol gap |")
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for c in comps:
            rl, rg = c.get("retention_loglik") or {}, c.get("retention_generate") or {}
            gap = c.get("protocol_gap")
            lines.append(
                f"| {c['task']} | {c['student']} | {_pct(rl.get('raw'))} | {_pct(rl.get('above_chance'))} | "
                f"{_pct(rg.get('raw'))} | {_pct(rg.get('above_chance'))} | {_pct(c.get('delta_loglik'))} | "
                f"{_pct(c.get('delta_generate'))} | {signed_points(gap)} |"
            )
    fid = results.get("fidelity") or []
    if fid:
        lines += ["", "## Fidelity to the teacher", ""]
        lines.append("Answer agreement: the student's extracted answer is the teacher's; by chance: what the two "
                     "models' answer shares alone give (a teacher that answers A on 90 % of questions and a student "
                     "answering A on 60 %, each at random, agree about 54 % of the time).")
        lines.append("")
        lines.append("| student | task | greedy exact match | mean first divergence (tokens) | answer agreement | "
                     "by chance | top-1 agreement | KL (nats/token) |")
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|")
        for f in fid:
            lines.append(
                f"| {f['student']} | {f.get('task', 'chat held-out')} | {_pct(f.get('exact_match'))} | "
                f"{'–' if f.get('mean_first_divergence') is None else round(f['mean_first_divergence'], 1)} | "
                f"{_pct(f.get('answer_agreement'))} | {_pct(f.get('answer_agreement_chance'))} | "
                f"{_pct(f.get('top1_agreement'))} | "
                f"{'–' if f.get('kl_teacher_student') is None else round(f['kl_teacher_student'], 4)} |"
            )
    long_rows = [r for r in rows if r.get("by_length")]
    if long_rows:
        lengths = sorted({b["length"] for r in long_rows for b in r["by_length"]})
        lines += ["", "## Long context: accuracy (%) by context length", "",
                  "Generation: RULER's string_match_all (share of gold strings in the reply). Log-likelihood: greedy "
                  "match of the gold answer, and its mean log-probability per token in brackets.", ""]
        lines.append("| task | model | protocol | " + " | ".join(str(n) for n in lengths) + " |")
        lines.append("|---|---|---|" + "---:|" * len(lengths))
        for r in long_rows:
            acc = {b["length"]: b["acc"] for b in r["by_length"]}
            lp = {b["length"]: b["acc"] for b in r.get("logprob_per_token_by_length", [])}
            cells = [f"{_pct(acc.get(n))}" + (f" ({lp[n]:.2f})" if n in lp else "") for n in lengths]
            lines.append(f"| {r['task']} | {r['model']} | {r['protocol']} | " + " | ".join(cells) + " |")
    code_rows = [r for r in rows if any(k.startswith("pass@") for k in r)]
    if code_rows:
        lines += ["", "## Code (executed)", "", "| task | model | decoding | pass@1 | pass@10 | pass@100 | status |",
                  "|---|---|---|---:|---:|---:|---|"]
        for r in code_rows:
            st = ", ".join(f"{k} {v}" for k, v in sorted(r.get("exec_status", {}).items()))
            lines.append(f"| {r['task']} | {r['model']} | {r.get('decoding', '')} | {_pct(r.get('pass@1'))} | "
                         f"{_pct(r.get('pass@10'))} | {_pct(r.get('pass@100'))} | {st} |")
    skipped = results.get("skipped") or []
    if skipped:
        lines += ["", "Not applicable: " + "; ".join(f"{s['task']}/{s['protocol']} ({s['reason']})" for s in skipped)]
    return "\n".join(lines) + "\n"


def plot_png(results: dict[str, Any]) -> bytes | None:
    """Grouped bars: accuracy per task, one bar per (model, protocol), chance as a tick. Returns PNG bytes."""
    plt = pyplot()
    if plt is None:
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
    return figure_png(fig, dpi=110)


def plot_long_context_png(results: dict[str, Any]) -> bytes | None:
    """Long-context tasks: accuracy vs context length per task (one line per model; generation solid, log-likelihood
    greedy match dashed), and per model a length × depth heat map of generation accuracy averaged over the tasks that
    sweep depth — teacher beside students."""
    rows = [r for r in results["rows"] if r.get("by_length")]
    if not rows:
        return None
    plt = pyplot()
    if plt is None:
        return None
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    ncols = min(4, len(tasks))
    nrows_lines = -(-len(tasks) // ncols)
    grids = {m: [r for r in rows if r["model"] == m and r["protocol"] == "generate" and r.get("by_length_depth")]
             for m in models}
    has_grid = any(grids.values())
    nrows = nrows_lines + (1 if has_grid else 0)
    width = max(ncols, len(models) if has_grid else 0)
    fig, axes = plt.subplots(nrows, width, figsize=(3.6 * width + 1.5, 3.0 * nrows + 0.4), squeeze=False,
                             layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, t in enumerate(tasks):
        ax = axes[i // ncols][i % ncols]
        for r in rows:
            if r["task"] != t:
                continue
            pts = r["by_length"]
            ax.plot([p["length"] for p in pts], [100 * p["acc"] for p in pts], marker="o",
                    linestyle="-" if r["protocol"] == "generate" else "--",
                    color=colors[models.index(r["model"]) % len(colors)], label=f"{r['model']} · {r['protocol']}")
        ax.set_xscale("log", base=2)
        ticks = sorted({p["length"] for r in rows for p in r["by_length"]})
        ax.set_xticks(ticks, [f"{n // 1024}K" if n % 1024 == 0 else str(n) for n in ticks])
        ax.minorticks_off()
        ax.set_ylim(-3, 103)
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("context length (tokens)", fontsize=8)
        ax.set_ylabel("accuracy (%)", fontsize=8)
        ax.tick_params(labelsize=7)
    for j in range(len(tasks), nrows_lines * ncols):  # empty panels of the last line row
        axes[j // ncols][j % ncols].axis("off")
    for rr in range(nrows_lines):  # columns only the heat-map row uses
        for j in range(ncols, width):
            axes[rr][j].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="outside right upper")
    if has_grid:
        lengths = sorted({p["length"] for rs in grids.values() for r in rs for p in r["by_length_depth"]})
        depths = sorted({p["depth"] for rs in grids.values() for r in rs for p in r["by_length_depth"]})
        for k in range(width):
            ax = axes[nrows - 1][k]
            if k >= len(models) or not grids[models[k]]:
                ax.axis("off")
                continue
            mat = np.full((len(depths), len(lengths)), np.nan)
            sums: dict[tuple, list[float]] = {}
            for r in grids[models[k]]:
                for p in r["by_length_depth"]:
                    sums.setdefault((p["depth"], p["length"]), []).append(p["acc"])
            for (d, n), v in sums.items():
                mat[depths.index(d), lengths.index(n)] = 100 * sum(v) / len(v)
            im = ax.imshow(mat, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto", origin="upper")
            ax.set_xticks(range(len(lengths)), [str(n) for n in lengths], fontsize=7)
            ax.set_yticks(range(len(depths)), [f"{100 * d:.0f}%" for d in depths], fontsize=7)
            ax.set_xlabel("context length", fontsize=8)
            ax.set_ylabel("needle depth", fontsize=8)
            ax.set_title(f"{models[k]}: generation, mean over tasks", fontsize=8)
        fig.colorbar(im, ax=axes[nrows - 1].tolist(), shrink=0.8, label="accuracy (%)")
    fig.suptitle("long context: accuracy vs length (solid: generation, dashed: log-likelihood greedy match)",
                 fontsize=9)
    return figure_png(fig, dpi=100)


def merge_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine runs into one result: runs over disjoint task sets of the same models (shards run in parallel), or runs
    of further models that no earlier part evaluated (students scored later on the same tasks; the first part's first
    model stays the teacher). Rows, skipped tasks, fidelity and example files are concatenated; comparisons
    recomputed against the teacher."""
    if not parts:
        raise DataError("nothing to merge")
    first = parts[0]["meta"]["models"]
    models = list(first)
    # parts scored on other examples cannot be compared: the same selection and data in every part
    same = ("limit", "seed", "smoke", "data_source")
    for i, p in enumerate(parts[1:], 2):
        diff = [f"{k} {p['meta'].get(k)!r} (part 1: {parts[0]['meta'].get(k)!r})" for k in same
                if p["meta"].get(k) != parts[0]["meta"].get(k)]
        if diff:
            raise DataError(f"merge: part {i} selected other examples: {', '.join(diff)}; merge parts run with the "
                            "same --limit, --seed, --smoke and data")
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


#: the files an eval report writes (and, for the partial report and stale examples, deletes) in its folder
REPORT_FILES = ("results.json", "results.md", "results.png", "long_context.png", "results.partial.json",
                "examples/*__*.jsonl")


def write_report(results: dict[str, Any], out_dir: str | Path) -> dict[str, str]:
    """``results.json``, ``results.md``, ``results.png`` and, with long-context tasks, ``long_context.png``."""
    return write_report_files(out_dir, "results", results, lambda: markdown(results),
                              {"plot": ("results.png", lambda: plot_png(results)),
                               "long_context_plot": ("long_context.png", lambda: plot_long_context_png(results))})
