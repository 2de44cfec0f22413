"""The ablation report: per axis, how its variants rank under log-likelihood and under generation, where the two
rankings disagree (rank reversals), and how much of the teacher each variant keeps.

Definitions (every number is a share in [0, 1]; the Markdown shows points):

* a cell's score under a protocol is its student's mean accuracy over the axis' **common tasks** — the tasks every
  evaluated cell of that axis was scored on under *both* protocols (so the two rankings compare the same tasks;
  generation-only tasks such as GSM8K appear in the per-task table). Its standard error is
  ``sqrt(sum_t se_t^2) / T`` (tasks independent);
* a variant's score is the mean over its cells (one cell in one-at-a-time mode; in product mode all cells with that
  variant, i.e. the main effect averaged over the other axes), s.e. ``sqrt(sum_c se_c^2) / C``;
* ranks are competition ranks (1 = best; equal scores share a rank);
* a **rank reversal** is a pair (a, b) with ``(LL_a - LL_b) * (gen_a - gen_b) < 0``. It is marked *significant* when
  both differences exceed 1.96 standard errors of the difference (``sqrt(se_a^2 + se_b^2)``; conservative, since
  the cells are scored on the same examples);
* retention = student / teacher score, above chance = (student − chance) / (teacher − chance);
* protocol gap = retention under log-likelihood − retention under generation (``gendistill.eval.report.protocol_gap``,
  the definition every report uses; None where the teacher is at or below chance);
* fidelity = greedy exact match with the teacher (mean over generation tasks), mean first divergence (tokens), and
  when evaluated, teacher-forced top-1 agreement and KL on held-out chat;
* held-out KL and top-1 = what the trainer's last held-out evaluation of the cell's **last** stage recorded
  (``eval_kl``: mean KL(teacher‖student) in nats per scored token, ``eval_top1``: top-1 agreement): the same measure
  whatever the stage trained with, so cells of the objective axis compare on it. The stage's own held-out loss
  (``eval_loss``: forward KL, reverse KL, JSD, KL + CE ... as the stage's ``loss`` says) is reported per cell with
  its kind, never averaged or ranked across cells.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

from gendistill.ablate.curve import (CHAT_STAGE, CURVE_STAGE, curve_axes, curve_points, curve_table,
                                     plot_budget_curve, trained_when_cut)
from gendistill.ablate.heldout_curves import curve_markdown, plot_heldout_curves
from gendistill.eval.report import protocol_gap, retention, signed_points
from gendistill.reporting import figure_png, pyplot, spread_labels, write_report_files
from gendistill.reporting import num as _num
from gendistill.reporting import pct as _pct

Z95 = 1.96


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _mean_present(rows: list[dict[str, Any]], key: str) -> float | None:
    """The mean of ``row[key]`` over the rows that have a value there; None when none has."""
    vals = [r[key] for r in rows if r.get(key) is not None]
    return _mean(vals) if vals else None


def _se_of_mean(ses: list[float]) -> float:
    return math.sqrt(sum(s * s for s in ses)) / len(ses) if ses else float("nan")


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return x


# ----------------------------------------------------------------------------------------------- one cell
def cell_scores(results: dict[str, Any]) -> dict[str, Any]:
    """From one ``gendistill eval`` result (teacher first, the cell's student second): ``{"student"|"teacher":
    {task: {protocol: {acc, stderr, chance}}}, "fidelity": {...}}``."""
    teacher, student = results["meta"]["models"][0], results["meta"]["models"][1]
    out: dict[str, Any] = {"student": {}, "teacher": {}}
    for r in results["rows"]:
        who = "teacher" if r["model"] == teacher else "student" if r["model"] == student else None
        if who is None:
            continue
        se = r.get("stderr")  # unknown (None, NaN: a one-example task) stays unknown: no significance is claimed
        out[who].setdefault(r["task"], {})[r["protocol"]] = {
            "acc": r["acc"], "stderr": se if se is not None else math.nan, "chance": r.get("chance") or 0.0}
    gen = [f for f in results.get("fidelity") or [] if f.get("student") == student and f.get("task") != "chat held-out"]
    chat = [f for f in results.get("fidelity") or [] if f.get("student") == student and f.get("task") == "chat held-out"]
    out["fidelity"] = {
        "greedy_exact_match": _mean([f["exact_match"] for f in gen if "exact_match" in f]) if gen else None,
        # how often the student's extracted answer is the teacher's (gendistill eval's answer_agreement): with a weak
        # teacher, the figure that shows whether the student copies it; mean over tasks and per task
        "answer_agreement": _mean_present(gen, "answer_agreement"),
        "answer_agreement_by_task": {f["task"]: f["answer_agreement"] for f in gen
                                     if f.get("answer_agreement") is not None},
        # what the two models' answer shares alone give (a teacher that answers one option almost always agrees
        # with any student that mostly does too): the level to read answer_agreement against
        "answer_agreement_chance": _mean_present(gen, "answer_agreement_chance"),
        "mean_first_divergence": _mean([f["mean_first_divergence"] for f in gen if "mean_first_divergence" in f])
        if gen else None,
        "top1_agreement": chat[0].get("top1_agreement") if chat else None,
        "kl_teacher_student": chat[0].get("kl_teacher_student") if chat else None,
    }
    return out


def _protocol_mean(scores: dict[str, Any], who: str, tasks: list[str], proto: str) -> tuple[float, float, float]:
    """(mean acc, its s.e., mean chance) over ``tasks`` under ``proto``."""
    rows = [scores[who][t][proto] for t in tasks]
    return _mean([r["acc"] for r in rows]), _se_of_mean([r["stderr"] for r in rows]), _mean([r["chance"] for r in rows])


def common_tasks(scored: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(tasks scored under both protocols in every cell, tasks scored under generation in every cell), in the order
    of the first cell."""
    if not scored:
        return [], []
    order = list(scored[0]["student"])

    def every(proto_set: tuple[str, ...]) -> list[str]:
        return [t for t in order if all(all(p in s["student"].get(t, {}) and p in s["teacher"].get(t, {})
                                            for p in proto_set) for s in scored)]

    return every(("loglik", "generate")), every(("generate",))


# ----------------------------------------------------------------------------------------------- rankings
def _score(v: float) -> float:
    """A mean as rankings compare it: rounded to 1e-9 (equal means summed in another order are equal)."""
    return round(v, 9) if v == v else v


def competition_ranks(scores: dict[str, float]) -> dict[str, int]:
    """1 = highest; equal scores share the better rank (1, 1, 3). NaN scores rank last."""
    key = {k: _score(v) if v == v else -math.inf for k, v in scores.items()}
    return {k: 1 + sum(o > v for o in key.values()) for k, v in key.items()}


def rank_reversals(stats: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Pairs of variants ordered one way by log-likelihood and the other way by generation (see module doc)."""
    out = []
    for a, b in itertools.combinations(stats, 2):
        sa, sb = stats[a], stats[b]
        d_ll, d_gen = (_score(sa[p]) - _score(sb[p]) for p in ("loglik", "generate"))
        if not (d_ll * d_gen < 0):
            continue
        z_ll, z_gen = (_z(d, sa.get(f"{p}_se"), sb.get(f"{p}_se")) for d, p in ((d_ll, "loglik"), (d_gen, "generate")))
        ll_best, gen_best = (a, b) if d_ll > 0 else (b, a), (a, b) if d_gen > 0 else (b, a)
        out.append({"pair": [a, b], "loglik_prefers": ll_best[0], "generate_prefers": gen_best[0],
                    "delta_loglik": abs(d_ll), "delta_generate": abs(d_gen), "z_loglik": z_ll, "z_generate": z_gen,
                    "significant": None if z_ll is None or z_gen is None else z_ll > Z95 and z_gen > Z95})
    return out


def _z(d: float, se_a: float | None, se_b: float | None) -> float | None:
    """``|d|`` in standard errors of the difference; None when either s.e. is unknown (None or NaN)."""
    se = math.nan if se_a is None or se_b is None else math.hypot(se_a, se_b)
    return None if se != se else abs(d) / se if se > 0 else math.inf


def kendall_tau(x: dict[str, float], y: dict[str, float]) -> float | None:
    """Kendall's tau-a between two scorings of the same keys (1 = same order, -1 = reversed)."""
    keys = list(x)
    pairs = list(itertools.combinations(keys, 2))
    if not pairs:
        return None
    s = 0
    for a, b in pairs:
        p = (_score(x[a]) - _score(x[b])) * (_score(y[a]) - _score(y[b]))
        s += (p > 0) - (p < 0)
    return s / len(pairs)


# ----------------------------------------------------------------------------------------------- one axis
def axis_report(axis: str, variants: list[str], cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Rankings, reversals, retention, protocol gap and fidelity of one axis' variants, from the cells that carry
    it (``cells[i]["assignment"][axis]``) and have been evaluated (``cells[i]["scores"]``)."""
    mine = [c for c in cells if axis in c["assignment"] and c.get("scores") is not None]
    both, gen_tasks = common_tasks([c["scores"] for c in mine])
    table: dict[str, dict[str, Any]] = {}
    for v in variants:
        vc = [c for c in mine if c["assignment"][axis] == v]
        if not vc:
            table[v] = {"cells": 0}
            continue
        row: dict[str, Any] = {"cells": len(vc), "cell_names": [c["cell"] for c in vc]}
        for proto in ("loglik", "generate"):
            if not both:
                continue
            per = [_protocol_mean(c["scores"], "student", both, proto) for c in vc]
            tper = [_protocol_mean(c["scores"], "teacher", both, proto) for c in vc]
            s, t, ch = _mean([p[0] for p in per]), _mean([p[0] for p in tper]), _mean([p[2] for p in per])
            row[proto], row[f"{proto}_se"] = s, _se_of_mean([p[1] for p in per])
            row[f"teacher_{proto}"] = t
            kept = retention(t, s, ch)  # the definitions of gendistill eval's report
            row[f"retention_{proto}"], row[f"retention_above_chance_{proto}"] = kept["raw"], kept["above_chance"]
            row["chance"] = ch  # the common tasks' mean chance: the same under both protocols
        if both:
            row["protocol_gap"] = protocol_gap(row["teacher_generate"], row["generate"], row["teacher_loglik"],
                                               row["loglik"], row["chance"])
        if gen_tasks:
            row["generate_all_tasks"] = _mean([_protocol_mean(c["scores"], "student", gen_tasks, "generate")[0]
                                               for c in vc])
        for k in ("greedy_exact_match", "answer_agreement", "answer_agreement_chance", "mean_first_divergence",
                  "top1_agreement", "kl_teacher_student"):
            row[k] = _mean_present([c["scores"]["fidelity"] for c in vc], k)
        for k in ("heldout_kl", "heldout_top1"):  # forward KL and top-1 whatever each cell's loss: comparable
            row[k] = _mean_present(vc, k)
        row["tokens"] = _mean([sum(c["tokens"].values()) for c in vc])
        table[v] = row
    scored = {v: r for v, r in table.items() if "loglik" in r and "generate" in r}
    out: dict[str, Any] = {"axis": axis, "variants": variants, "common_tasks": both, "generation_tasks": gen_tasks,
                           "table": table, "reversals": [], "kendall_tau": None, "per_task": []}
    if len(scored) >= 1:
        ll = {v: r["loglik"] for v, r in scored.items()}
        gen = {v: r["generate"] for v, r in scored.items()}
        for proto, sc in (("loglik", ll), ("generate", gen)):
            for v, rk in competition_ranks(sc).items():
                table[v][f"rank_{proto}"] = rk
        out["reversals"] = rank_reversals(scored)
        out["kendall_tau"] = kendall_tau(ll, gen)
    # per task: each protocol's order of the variants, and the reversed pairs on that task alone
    for t in dict.fromkeys(both + gen_tasks):
        entry: dict[str, Any] = {"task": t}
        for proto in ("loglik", "generate"):
            accs = {}
            for v in variants:
                vc = [c for c in mine if c["assignment"][axis] == v and proto in c["scores"]["student"].get(t, {})]
                if vc:
                    accs[v] = _mean([c["scores"]["student"][t][proto]["acc"] for c in vc])
            if accs:
                entry[proto] = accs
                entry[f"order_{proto}"] = sorted(accs, key=lambda k: -accs[k])
        if "loglik" in entry and "generate" in entry:
            st = {v: {"loglik": entry["loglik"][v], "generate": entry["generate"][v]}
                  for v in entry["loglik"] if v in entry["generate"]}
            entry["reversed_pairs"] = [r["pair"] for r in rank_reversals(st)]
        out["per_task"].append(entry)
    return out


# ----------------------------------------------------------------------------------------------- the grid
def loss_label(loss: dict[str, Any] | None) -> str | None:
    """A stage's loss as the report names it (``forward_kl``, ``reverse_kl``, ``forward_kl + 0.01·CE``,
    ``topk_kl (k 64)``, ``jsd (β 0.5)``, ``… T 2``), from its recipe ``loss`` mapping; None when not known."""
    if not loss or not loss.get("kind"):
        return None
    kind = loss["kind"]
    out = kind + (f" (k {loss.get('top_k')})" if kind == "topk_kl" else "") + (
        f" (β {loss.get('jsd_beta'):g})" if kind == "jsd" and loss.get("jsd_beta") is not None else "")
    if loss.get("ce_weight"):
        out += f" + {loss['ce_weight']:g}·CE"
    if loss.get("temperature") not in (None, 1.0):
        out += f", T {loss['temperature']:g}"
    return out


def training_fields(metrics: dict[str, Any], losses: dict[str, Any] | None) -> dict[str, Any]:
    """What a cell's report entry says of its training, from its per-stage ``metrics`` (``runner.read_metrics``'s
    summary) and its recipe's ``losses``: the last held-out loss recorded, with its stage and that stage's loss kind
    (labelled, never compared), and the last stage's held-out KL(teacher‖student) / top-1 as its trainer recorded them
    (compared; None for a hidden-state stage, a run that predates them, or a stage not trained yet).
    ``tools/lease_record.py`` refreshes a collected report's cells with it, so a cell trained after the device last
    wrote its report still shows its figures."""
    final, stage = next(((metrics[st]["eval_loss_last"], st) for st in reversed(list(metrics))
                         if metrics[st].get("eval_loss_last") is not None), (None, None))
    last = list(metrics)[-1] if metrics else None
    m = metrics.get(last) or {}
    return {"final_eval_loss": final, "final_eval_loss_stage": stage,
            "final_eval_loss_kind": loss_label((losses or {}).get(stage)) if stage else None,
            "heldout_stage": last, "heldout_kl": m.get("eval_kl_last"), "heldout_top1": m.get("eval_top1_last")}


def build_report(meta: dict[str, Any], cells: list[dict[str, Any]]) -> dict[str, Any]:
    """``meta``: grid facts (``axes``: axis -> variant names in order, mode, teacher, eval settings ...). ``cells``:
    one entry per cell with ``cell``, ``assignment``, ``metrics`` (per stage), ``tokens`` (per stage), ``eval``
    (a ``gendistill eval`` result or None while not evaluated) and optionally ``losses`` (per stage, its recipe
    ``loss`` mapping)."""
    enriched = []
    for c in cells:
        e = dict(c)
        e["scores"] = cell_scores(c["eval"]) if c.get("eval") else None
        e.update(training_fields(c.get("metrics") or {}, c.get("losses")))
        e.pop("eval", None)
        enriched.append(e)
    axes = [axis_report(a, list(vs), enriched) for a, vs in meta["axes"].items()]
    teacher = None
    for c in enriched:
        if c["scores"] is not None:
            teacher = c["scores"]["teacher"]
            break
    points = curve_points(meta, enriched)
    kinds = {c["cell"]: loss_label((c.get("losses") or {}).get(CURVE_STAGE)) for c in enriched}
    for p in points:
        p["loss_kind_3a"] = kinds.get(p["cell"])
    return _nan_to_none({"meta": meta, "teacher": teacher, "axes": axes, "cells": enriched,
                         "evaluated": sum(c["scores"] is not None for c in enriched), "total": len(enriched),
                         "budget_curve": {"points": points, "curve_axes": curve_axes(points)}})


# ----------------------------------------------------------------------------------------------- Markdown
def human_tokens(n: float | None) -> str:
    if n is None:
        return "–"
    for div, suf in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.3g}{suf}"
    return f"{n:.0f}"


def _order(accs: dict[str, float] | None) -> str:
    """``a > b = c``: variants best first, equal scores joined by ``=``."""
    if not accs:
        return ""
    ks = sorted(accs, key=lambda k: -accs[k])
    return ks[0] + "".join((" = " if accs[b] == accs[a] else " > ") + b for a, b in zip(ks, ks[1:]))


def markdown(rep: dict[str, Any]) -> str:
    m = rep["meta"]
    ev = m.get("eval", {})
    lines = [f"# Ablation report — {m.get('grid', '')}", "",
             f"Mode: {m.get('mode')}. Teacher: `{m.get('teacher')}`. Cells evaluated: {rep['evaluated']} of "
             f"{rep['total']}. Evaluation: tasks `{ev.get('tasks')}`, protocols {', '.join(ev.get('protocols', []))}, "
             f"limit {ev.get('limit')} per task, seed {ev.get('seed')}, "
             f"{'greedy' if not ev.get('samples') else str(ev.get('samples')) + ' sampling seeds'}. "
             f"Tokens per stage (base): "
             + ", ".join(f"{k} {human_tokens(v)}" for k, v in (m.get("base_tokens") or {}).items()) + ". "
             f"Created {m.get('created', '')}.", "",
             "Scores are mean accuracy (points) over the tasks scored under both protocols; ± one standard error. "
             "Ranks: 1 = best. Retention = student / teacher; gap = protocol gap (retention under log-likelihood "
             "minus retention under generation; positive = generation reveals a loss that log-likelihood hides; "
             "– where the teacher's mean is at or below the tasks' mean chance under either protocol, so has no skill "
             "there to keep). Definitions: `gendistill/ablate/report.py`."]
    for ax in rep["axes"]:
        lines += ["", f"## Axis `{ax['axis']}`", ""]
        if not ax["common_tasks"]:
            lines.append("No evaluated cell scored under both protocols yet.")
            continue
        lines.append(f"Common tasks: {', '.join(ax['common_tasks'])}.")
        lines += ["", "| variant | LL | rank LL | gen | rank gen | retention LL | retention gen | gap | greedy match "
                      "| top-1 agree | held-out KL | held-out top-1 | tokens |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for v in ax["variants"]:
            r = ax["table"].get(v, {})
            if "loglik" not in r:
                lines.append(f"| {v} | not evaluated ||||||||||||")
                continue
            lines.append(
                f"| {v} | {_pct(r['loglik'])} ± {_pct(r.get('loglik_se'))} | {r.get('rank_loglik', '–')} "
                f"| {_pct(r['generate'])} ± {_pct(r.get('generate_se'))} | {r.get('rank_generate', '–')} "
                f"| {_pct(r.get('retention_loglik'))} | {_pct(r.get('retention_generate'))} "
                f"| {signed_points(r.get('protocol_gap'))} | {_pct(r.get('greedy_exact_match'))} "
                f"| {_pct(r.get('top1_agreement'))} | {_num(r.get('heldout_kl'))} | {_pct(r.get('heldout_top1'))} "
                f"| {human_tokens(r.get('tokens'))} |")
        t0 = next((ax["table"][v] for v in ax["variants"] if "teacher_loglik" in ax["table"].get(v, {})), None)
        if t0:
            lines.append(f"\nTeacher: LL {_pct(t0['teacher_loglik'])}, gen {_pct(t0['teacher_generate'])}. "
                         f"Kendall τ between the two rankings: {_num(ax.get('kendall_tau'), 2)}.")
        if ax["reversals"]:
            lines.append("")
            for r in ax["reversals"]:
                lines.append(
                    f"- **⚠ rank reversal** {r['pair'][0]} vs {r['pair'][1]}: log-likelihood prefers "
                    f"**{r['loglik_prefers']}** (+{_pct(r['delta_loglik'])} pts, z {_num(r['z_loglik'], 1)}), "
                    f"generation prefers **{r['generate_prefers']}** (+{_pct(r['delta_generate'])} pts, "
                    f"z {_num(r['z_generate'], 1)}) — "
                    + {True: "significant under both protocols", False: "within noise under at least one protocol",
                       None: "significance unknown (a standard error is missing)"}[r["significant"]])
        else:
            lines.append("\nNo rank reversal between log-likelihood and generation on the mean.")
        per = [p for p in ax["per_task"] if p.get("order_generate")]
        if per:
            lines += ["", "| task | order under LL | order under generation | reversed pairs |", "|---|---|---|---:|"]
            for p in per:
                lines.append(f"| {p['task']} | {_order(p.get('loglik')) or '– (generation only)'} "
                             f"| {_order(p.get('generate'))} | {len(p.get('reversed_pairs', []))} |")
    lines += _curve_markdown(rep.get("budget_curve") or {})
    lines += curve_markdown(rep)
    lines += ["", "## Cells", "",
              "Held-out fidelity to the teacher, as the trainer's last held-out evaluation of the stage recorded it: "
              "KL(teacher‖student) in nats per token and top-1 agreement (%), after stage 3a (its text) and after "
              "stage 3b (held-out chat); – where not recorded. These compare across cells; **own loss** is the last "
              "stage's held-out value of the loss it trained with (its kind in brackets), which does not compare "
              "across cells that train with different losses. A stage cut short (a timeout) is named with the step "
              "of its last held-out evaluation.", "",
              "| cell | tokens | 3a KL | 3a top-1 | chat KL | chat top-1 | LL | gen "
              "| answer agree (by chance) | greedy match | own loss (last stage) | stage nodes |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for c in rep["cells"]:
        sc = c.get("scores")
        ll = gen = "–"
        if sc:
            tasks = [t for t in sc["student"] if {"loglik", "generate"} <= set(sc["student"][t])]
            if tasks:
                ll = _pct(_mean([sc["student"][t]["loglik"]["acc"] for t in tasks]))
                gen = _pct(_mean([sc["student"][t]["generate"]["acc"] for t in tasks]))
        gm = _pct(sc["fidelity"].get("greedy_exact_match")) if sc else "–"
        aa = _pct(sc["fidelity"].get("answer_agreement")) if sc else "–"
        if sc and sc["fidelity"].get("answer_agreement_chance") is not None:
            aa += f" ({_pct(sc['fidelity']['answer_agreement_chance'])})"
        m = c.get("metrics") or {}
        a, b = m.get(CURVE_STAGE) or {}, m.get(CHAT_STAGE) or {}
        cut = [f"{st} cut at step {v['eval_step_last']}" for st, v in m.items()
               if trained_when_cut(v, (c.get("tokens") or {}).get(st)) is not None]
        name = f"{c['cell']} ({'; '.join(cut)})" if cut else c["cell"]
        own = _num(c.get("final_eval_loss")) + (f" ({c['final_eval_loss_kind']})"
                                                 if c.get("final_eval_loss") is not None
                                                 and c.get("final_eval_loss_kind") else "")
        lines.append(f"| {name} | {human_tokens(sum(c['tokens'].values()))} "
                     f"| {_num(a.get('eval_kl_last'))} | {_pct(a.get('eval_top1_last'))} "
                     f"| {_num(b.get('eval_kl_last'))} | {_pct(b.get('eval_top1_last'))} "
                     f"| {ll} | {gen} | {aa} | {gm} | {own} | {' → '.join(c.get('nodes', []))} |")
    lines += _partial_lines(rep["cells"])
    return "\n".join(lines) + "\n"


def _partial_lines(cells: list[dict[str, Any]]) -> list[str]:
    """A cell whose evaluation a timeout cut (``partial_scores``, which ``tools/lease_record.py`` adds from the cut
    evaluation's ``results.partial.json``): its finished tasks, student against teacher, each under both protocols —
    kept out of the table above, whose means compare cells over the same tasks."""
    out: list[str] = []
    for c in cells:
        part = c.get("partial_scores")
        if not part:
            continue
        rows = []
        for t in part.get("tasks_both_protocols", []):
            s, te = part["student"][t], part["teacher"].get(t, {})
            rows.append(f"{t} {_pct(s['loglik']['acc'])} / {_pct(s['generate']['acc'])}"
                        + (f" (teacher {_pct(te['loglik']['acc'])} / {_pct(te['generate']['acc'])})"
                           if {"loglik", "generate"} <= set(te) else ""))
        out += ["", f"{c['cell']}: its evaluation was cut; the tasks it finished, log-likelihood / generation (%): "
                    + ("; ".join(rows) if rows else "none") + "."]
    return out


# ----------------------------------------------------------------------------------------------- plot
def plot_png(rep: dict[str, Any]) -> bytes | None:
    """Per axis: (left) bars of each variant's score under LL (hatched) and generation, teacher dashed; (right) a
    slope chart from LL score to generation score — two lines cross exactly when the pair's ranking reverses
    (reversed pairs drawn in red)."""
    axes = [a for a in rep["axes"] if any("loglik" in a["table"].get(v, {}) for v in a["variants"])]
    if not axes:
        return None
    plt = pyplot()
    if plt is None:
        return None
    fig, grid = plt.subplots(len(axes), 2, figsize=(11, 3.6 * len(axes)), squeeze=False)
    for (bar_ax, slope_ax), ax in zip(grid, axes):
        vs = [v for v in ax["variants"] if "loglik" in ax["table"].get(v, {})]
        tab = ax["table"]
        xs = range(len(vs))
        for k, (proto, hatch) in enumerate((("loglik", "//"), ("generate", None))):
            bar_ax.bar([x + (k - 0.5) * 0.38 for x in xs], [100 * tab[v][proto] for v in vs], 0.38,
                       yerr=[100 * (tab[v].get(f"{proto}_se") or 0) for v in vs], hatch=hatch, alpha=0.85,
                       label="log-likelihood" if proto == "loglik" else "generation")
            t = tab[vs[0]].get(f"teacher_{proto}")
            if t is not None:
                bar_ax.axhline(100 * t, color=f"C{k}", linestyle="--", linewidth=1)
        bar_ax.set_xticks(list(xs))
        bar_ax.set_xticklabels(vs, rotation=20, ha="right")
        bar_ax.set_ylabel("accuracy (%)")
        bar_ax.set_title(f"{ax['axis']}: score per variant (teacher dashed)", fontsize=10)
        bar_ax.legend(fontsize=7)
        reversed_vs = {v for r in ax["reversals"] for v in r["pair"]}
        ends = [100 * tab[v]["generate"] for v in vs]
        span = max(ends + [100 * tab[v]["loglik"] for v in vs]) - min(ends)
        for v, end, at in zip(vs, ends, spread_labels(ends, gap=max(0.05 * span, 1e-3))):  # labels apart
            col = "C3" if v in reversed_vs else "0.4"
            slope_ax.plot([0, 1], [100 * tab[v]["loglik"], end], marker="o", color=col)
            slope_ax.annotate(v, (1, end), xytext=(1.04, at), textcoords="data", fontsize=8, va="center", color=col)
        slope_ax.set_xticks([0, 1])
        slope_ax.set_xticklabels(["log-likelihood", "generation"])
        slope_ax.set_xlim(-0.1, 1.35)
        slope_ax.set_ylabel("accuracy (%)")
        slope_ax.set_title(f"{ax['axis']}: crossing lines = rank reversal ({len(ax['reversals'])})", fontsize=10)
    fig.tight_layout()
    return figure_png(fig, dpi=110)


def _curve_markdown(curve: dict[str, Any]) -> list[str]:
    """The budget curves (axes whose cells train stage 3a on several budgets), by series, smallest budget first."""
    out = []
    for axis in curve.get("curve_axes", []):
        pts = curve_table(curve["points"], axis)
        out += ["", f"## Budget curve `{axis}` (budget_curve.png)", "",
                "| variant | stage-3a tokens | 3a KL | 3a top-1 | chat KL | chat top-1 | 3a own loss |",
                "|---|---:|---:|---:|---:|---:|---:|"]
        out += [f"| {p['label']} | {human_tokens(p['tokens_3a'])} | {_num(p['kl_3a'])} | {_pct(p['top1_3a'])} "
                f"| {_num(p['kl_3b'])} | {_pct(p['top1_3b'])} | {_num(p['loss_3a'])}"
                + (f" ({p['loss_kind_3a']})" if p.get("loss_kind_3a") and p["loss_3a"] is not None else "") + " |"
                for p in pts]
    return out


def write_report(rep: dict[str, Any], out_dir: str | Path) -> dict[str, str]:
    """``report.json``, ``report.md``, ``report.png``, and ``budget_curve.png`` and ``curves.png`` (the held-out
    curves, :mod:`gendistill.ablate.heldout_curves`) where a cell has stage-3a metrics."""
    points = (rep.get("budget_curve") or {}).get("points") or []
    return write_report_files(out_dir, "report", rep, lambda: markdown(rep),
                              {"plot": ("report.png", lambda: plot_png(rep)),
                               "budget_curve": ("budget_curve.png", lambda: plot_budget_curve(points)),
                               "curves": ("curves.png", lambda: plot_heldout_curves(rep))})
