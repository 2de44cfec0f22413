"""The ablation report's arithmetic on constructed evaluation results: per-variant means and standard errors over
the common tasks, retention, protocol gap, fidelity, competition ranks, rank reversals (and their significance),
Kendall's tau, product-mode main effects, and the Markdown/plot outputs."""

from __future__ import annotations

import math

import pytest

from gendistill.ablate.curve import plot_budget_curve
from gendistill.ablate.report import (build_report, competition_ranks, kendall_tau, markdown, plot_png,
                                      rank_reversals, write_report)

TEACHER = {("t1", "loglik"): 0.8, ("t1", "generate"): 0.7, ("t2", "loglik"): 0.6, ("t2", "generate"): 0.5,
           ("gsm", "generate"): 0.3}


def results(student: dict, se: float = 0.02, exact: float | None = None) -> dict:
    rows = []
    for who, accs in (("teach", TEACHER), ("stud", student)):
        for (task, proto), acc in accs.items():
            rows.append({"task": task, "model": who, "protocol": proto, "acc": acc, "stderr": se,
                         "chance": 0.0 if task == "gsm" else 0.25, "n": 100})
    fid = [] if exact is None else [{"student": "stud", "task": "t1", "exact_match": exact,
                                     "mean_first_divergence": 10 * exact, "answer_agreement": 0.9,
                                     "answer_agreement_chance": 0.8},
                                    {"student": "stud", "task": "gsm", "exact_match": exact / 2,
                                     "mean_first_divergence": 0.0, "answer_agreement": 0.5,
                                     "answer_agreement_chance": 0.2}]
    return {"meta": {"models": ["teach", "stud"], "complete": True}, "rows": rows, "fidelity": fid}


def scores(ll1, gen1, ll2, gen2, gsm=0.1):
    return {("t1", "loglik"): ll1, ("t1", "generate"): gen1, ("t2", "loglik"): ll2, ("t2", "generate"): gen2,
            ("gsm", "generate"): gsm}


def cell(name, assignment, res, eval_loss=1.0, kl=None, top1=None, loss=None):
    """``eval_loss``: the last stage's held-out value of its own loss (``loss``: its recipe mapping); ``kl``/``top1``:
    the forward KL and top-1 agreement the trainer recorded on the same rows."""
    return {"cell": name, "assignment": assignment, "tokens": {"stage3b": 1000},
            "metrics": {"stage3a": {"eval_loss_last": 9.0, "eval_kl_last": 8.0, "eval_top1_last": 0.1},
                        "stage3b": {"eval_loss_last": eval_loss, "eval_kl_last": kl, "eval_top1_last": top1}},
            "losses": {"stage3a": {"kind": "forward_kl"}, "stage3b": loss or {"kind": "forward_kl"}},
            "nodes": ["n1", name], "eval": res}


A = scores(0.78, 0.40, 0.58, 0.30)  # LL 0.68, gen 0.35
B = scores(0.70, 0.60, 0.50, 0.40)  # LL 0.60, gen 0.50
C = scores(0.62, 0.20, 0.52, 0.20)  # LL 0.57, gen 0.20


def _freeze_report(se=0.02):
    cells = [cell("freeze=a", {"freeze": "a"}, results(A, se, exact=0.5), 1.2),
             cell("freeze=b", {"freeze": "b"}, results(B, se, exact=0.25), 1.1),
             cell("freeze=c", {"freeze": "c"}, results(C, se)),
             cell("freeze=d", {"freeze": "d"}, None)]  # not evaluated yet
    return build_report({"axes": {"freeze": ["a", "b", "c", "d"]}, "mode": "one_at_a_time"}, cells)


def test_axis_arithmetic_on_the_common_tasks():
    rep = _freeze_report()
    (ax,) = rep["axes"]
    assert ax["common_tasks"] == ["t1", "t2"] and ax["generation_tasks"] == ["t1", "t2", "gsm"]
    a = ax["table"]["a"]
    assert a["loglik"] == pytest.approx(0.68) and a["generate"] == pytest.approx(0.35)
    assert a["loglik_se"] == pytest.approx(math.sqrt(2 * 0.02**2) / 2)
    assert a["teacher_loglik"] == pytest.approx(0.7) and a["teacher_generate"] == pytest.approx(0.6)
    assert a["retention_loglik"] == pytest.approx(0.68 / 0.7) and a["retention_generate"] == pytest.approx(0.35 / 0.6)
    assert a["retention_above_chance_loglik"] == pytest.approx((0.68 - 0.25) / (0.7 - 0.25))
    assert a["protocol_gap"] == pytest.approx(0.68 / 0.7 - 0.35 / 0.6)  # retention LL − retention gen
    assert a["generate_all_tasks"] == pytest.approx((0.40 + 0.30 + 0.1) / 3)  # GSM8K-like task: generation only
    assert a["greedy_exact_match"] == pytest.approx(0.375) and a["mean_first_divergence"] == pytest.approx(2.5)
    assert a["tokens"] == 1000 and "final_eval_loss" not in a  # each cell's own loss is not averaged across cells
    assert a["heldout_kl"] is None and a["heldout_top1"] is None  # the last stage recorded none: not stage 3a's
    assert ax["table"]["c"]["greedy_exact_match"] is None and ax["table"]["d"] == {"cells": 0}
    assert rep["evaluated"] == 3 and rep["total"] == 4


def test_rankings_and_the_reversal_they_hide():
    (ax,) = _freeze_report()["axes"]
    t = ax["table"]
    assert [t[v]["rank_loglik"] for v in "abc"] == [1, 2, 3] and [t[v]["rank_generate"] for v in "abc"] == [2, 1, 3]
    (rev,) = ax["reversals"]
    assert rev["pair"] == ["a", "b"] and rev["loglik_prefers"] == "a" and rev["generate_prefers"] == "b"
    assert rev["delta_loglik"] == pytest.approx(0.08) and rev["delta_generate"] == pytest.approx(0.15)
    assert rev["z_loglik"] == pytest.approx(4.0) and rev["z_generate"] == pytest.approx(7.5) and rev["significant"]
    assert ax["kendall_tau"] == pytest.approx(1 / 3)
    per = {p["task"]: p for p in ax["per_task"]}
    assert per["t1"]["order_loglik"] == ["a", "b", "c"] and per["t1"]["order_generate"] == ["b", "a", "c"]
    assert per["t1"]["reversed_pairs"] == [["a", "b"]]
    assert per["t2"]["reversed_pairs"] == [["a", "b"], ["b", "c"]]  # on t2 alone c (52) beats b (50) under LL
    assert "order_loglik" not in per["gsm"] and per["gsm"]["order_generate"] == ["a", "b", "c"]  # ties keep order


def test_reversal_within_noise_is_flagged_but_not_significant():
    (ax,) = _freeze_report(se=0.1)["axes"]
    (rev,) = ax["reversals"]
    assert not rev["significant"] and rev["z_loglik"] == pytest.approx(0.8)


def test_ranks_ties_and_tau_edge_cases():
    assert competition_ranks({"x": 0.5, "y": 0.5, "z": 0.4, "n": float("nan")}) == {"x": 1, "y": 1, "z": 3, "n": 4}
    tie = {"x": {"loglik": 0.5, "generate": 0.6}, "y": {"loglik": 0.5, "generate": 0.2}}
    assert rank_reversals(tie) == []  # a tie under one protocol is not a reversal
    assert kendall_tau({"x": 1.0, "y": 2.0}, {"x": 2.0, "y": 1.0}) == -1.0 and kendall_tau({"x": 1.0}, {"x": 1.0}) is None


def test_equal_means_summed_in_another_order_are_equal_scores():
    """0.1 + 0.2 + 0.3 and 0.3 + 0.2 + 0.1 differ in the last bit: the two variants share a rank, make no reversal
    with a variant that generation orders apart, and add nothing to tau."""
    a, b = (0.1 + 0.2 + 0.3) / 3, (0.3 + 0.2 + 0.1) / 3
    assert a != b
    assert competition_ranks({"a": a, "b": b}) == {"a": 1, "b": 1}
    stats = {"a": {"loglik": a, "generate": 0.5}, "b": {"loglik": b, "generate": 0.6}}
    assert rank_reversals(stats) == []
    assert kendall_tau({"a": a, "b": b}, {"a": 0.5, "b": 0.6}) == 0.0


def test_a_reversal_with_an_unknown_standard_error_claims_no_significance():
    """A one-example task has no standard error (None in the results): a reversal on it has no z and is neither
    significant nor within noise, and the report says so (it was significant, z = inf)."""
    cells = [cell("freeze=a", {"freeze": "a"}, results(A, se=None)),
             cell("freeze=b", {"freeze": "b"}, results(B, se=None))]
    (ax,) = build_report({"axes": {"freeze": ["a", "b"]}, "mode": "one_at_a_time"}, cells)["axes"]
    (rev,) = ax["reversals"]
    assert rev["z_loglik"] is None and rev["z_generate"] is None and rev["significant"] is None
    assert "significance unknown" in markdown(build_report({"axes": {"freeze": ["a", "b"]},
                                                            "mode": "one_at_a_time"}, cells))


def test_product_mode_ranks_main_effects():
    cells = []
    for m, base in (("c", 0.0), ("a", -0.1)):  # masking=a costs 10 points under both protocols
        for f, (ll, gen) in (("x", (0.6, 0.5)), ("y", (0.5, 0.3))):
            s = scores(ll + base, gen + base, ll + base, gen + base)
            cells.append(cell(f"masking={m}__freeze={f}", {"masking": m, "freeze": f}, results(s)))
    rep = build_report({"axes": {"masking": ["c", "a"], "freeze": ["x", "y"]}, "mode": "product"}, cells)
    mask, freeze = rep["axes"]
    assert mask["table"]["c"]["loglik"] == pytest.approx(0.55) and mask["table"]["a"]["loglik"] == pytest.approx(0.45)
    assert mask["table"]["c"]["cells"] == 2 and mask["table"]["c"]["loglik_se"] == pytest.approx(
        math.sqrt(2 * (math.sqrt(2 * 0.02**2) / 2) ** 2) / 2)
    assert freeze["table"]["x"]["generate"] == pytest.approx(0.45) and freeze["table"]["y"]["generate"] == pytest.approx(0.25)
    assert mask["reversals"] == [] and freeze["reversals"] == [] and mask["kendall_tau"] == 1.0


def test_markdown_json_and_plot(tmp_path):
    rep = _freeze_report()
    md = markdown(rep)
    assert "## Axis `freeze`" in md and "**⚠ rank reversal** a vs b" in md and "significant under both" in md
    assert "| a | 68.0 ± 1.4 | 1 | 35.0 ± 1.4 | 2 | 97.1 | 58.3 | +38.8 |" in md
    assert "| d | not evaluated |" in md and "| gsm | – (generation only) | a = b = c | 0 |" in md
    assert "| t1 | a > b > c | b > a > c | 1 |" in md
    png = plot_png(rep)
    assert png is not None and png[:4] == b"\x89PNG"
    paths = write_report(rep, tmp_path)
    assert set(paths) == {"json", "markdown", "plot"} and (tmp_path / "report.md").read_text() == md
    empty = build_report({"axes": {"freeze": ["a"]}}, [cell("freeze=a", {"freeze": "a"}, None)])
    assert "No evaluated cell scored under both protocols yet." in markdown(empty) and plot_png(empty) is None


def test_slope_chart_labels_stay_apart_and_name_their_lines(monkeypatch):
    """Two variants that end within a hair of each other under generation (29.5 and 29.6, as a freezing lease did) get
    labels at least 5 % of the chart's span apart; each label still sits at its own line's height order."""
    import gendistill.ablate.report as report_mod

    figures = []
    monkeypatch.setattr(report_mod, "figure_png", lambda fig, dpi: figures.append(fig) or b"png")
    cells = [cell(f"freeze={v}", {"freeze": v}, results(scores(ll, gen, ll, gen)))
             for v, ll, gen in (("attention", 0.401, 0.295), ("none", 0.401, 0.296), ("mlp", 0.405, 0.317))]
    assert plot_png(build_report({"axes": {"freeze": ["attention", "none", "mlp"]}}, cells)) == b"png"
    slope = figures[0].axes[1]
    labels = {t.get_text(): t.get_position()[1] for t in slope.texts}
    assert set(labels) == {"attention", "none", "mlp"}
    assert labels["attention"] < labels["none"] < labels["mlp"]
    span = 100 * (0.405 - 0.295)
    assert labels["none"] - labels["attention"] >= 0.05 * span - 1e-9


def test_spread_labels_keeps_order_and_gap_and_leaves_distant_labels_alone():
    from gendistill.reporting import spread_labels

    assert spread_labels([10.0, 30.0, 20.0], gap=1.0) == [10.0, 30.0, 20.0]  # already apart: unchanged
    ys = spread_labels([5.0, 5.1, 4.95], gap=1.0)
    order = sorted(range(3), key=lambda i: [5.0, 5.1, 4.95][i])
    assert all(ys[order[k + 1]] - ys[order[k]] == pytest.approx(1.0) for k in range(2))
    assert max(ys) - 5.1 > 0 and max(ys) - 5.1 == pytest.approx(4.95 - min(ys))  # centred: as far above as below
    assert spread_labels([], gap=1.0) == []


def _curve_cell(name, assignment, tokens_3a, kl, top1, chat_kl=None):
    fid = {} if kl is None else {"eval_kl_last": kl, "eval_top1_last": top1}
    chat = {} if chat_kl is None else {"eval_kl_last": chat_kl, "eval_top1_last": 0.5}
    return {"cell": name, "assignment": assignment, "tokens": {"stage1": 10, "stage3a": tokens_3a, "stage3b": 5},
            "metrics": {"stage1": {"eval_loss_last": 3.0},
                        "stage3a": {"eval_loss_last": 2.0 * (kl or 1.0), **fid}, "stage3b": {"eval_loss_last": 1.0, **chat}},
            "nodes": ["n1", name], "eval": results(A)}


def test_budget_curve_points_table_and_plot(tmp_path):
    cells = [_curve_cell("tokens_3a=4M", {"tokens_3a": "4M"}, 4_000_000, 0.40, 0.61, chat_kl=0.9),
             _curve_cell("tokens_3a=8M", {"tokens_3a": "8M"}, 8_000_000, 0.30, 0.66),
             _curve_cell("tokens_3a=16M", {"tokens_3a": "16M"}, 16_000_000, 0.25, 0.70),
             _curve_cell("lr_3a=1e-3", {"lr_3a": "1e-3"}, 8_000_000, 0.28, 0.67)]
    rep = build_report({"axes": {"tokens_3a": ["4M", "8M", "16M"], "lr_3a": ["1e-3"]}}, cells)
    curve = rep["budget_curve"]
    assert curve["curve_axes"] == ["tokens_3a"]  # lr_3a trains one budget: markers, not a curve
    pts = {(p["axis"], p["variant"]): p for p in curve["points"]}
    assert set(pts) == {("tokens_3a", "4M"), ("tokens_3a", "8M"), ("tokens_3a", "16M"), ("lr_3a", "1e-3")}
    assert (pts[("tokens_3a", "16M")]["tokens_3a"], pts[("tokens_3a", "16M")]["kl_3a"],
            pts[("tokens_3a", "16M")]["top1_3a"]) == (16_000_000, 0.25, 0.70)
    assert pts[("tokens_3a", "4M")]["kl_3b"] == 0.9 and pts[("tokens_3a", "8M")]["kl_3b"] is None
    md = markdown(rep)
    assert "## Budget curve `tokens_3a` (budget_curve.png)" in md and "| 4M | 4M | 0.400 | 61.0 | 0.900 | 50.0 | 0.800 |" in md
    assert "| tokens_3a=16M | 16M | 0.250 | 70.0 | – | – |" in md  # the cells table: 3a and chat fidelity
    paths = write_report(rep, tmp_path)
    assert (tmp_path / "budget_curve.png").read_bytes()[:4] == b"\x89PNG" and paths["budget_curve"].endswith(".png")


def test_a_budget_axis_crossed_with_another_is_one_curve_per_variant_of_the_other(tmp_path):
    """Product mode: tokens_3a x lr_3a. The budget axis is a curve per learning rate; the learning-rate axis, whose
    cells' budgets differ only because they sit on those curves, is not a budget curve (it once zigzagged across both
    learning rates as one line)."""
    cells = [_curve_cell(f"tokens_3a={t},lr_3a={lr}", {"tokens_3a": t, "lr_3a": lr}, n, kl, 0.6)
             for t, n in (("4M", 4_000_000), ("8M", 8_000_000))
             for lr, kl in (("1e-3", 0.30 if t == "8M" else 0.40), ("5e-4", 0.35 if t == "8M" else 0.50))]
    rep = build_report({"mode": "product", "axes": {"tokens_3a": ["4M", "8M"], "lr_3a": ["1e-3", "5e-4"]}}, cells)
    curve = rep["budget_curve"]
    assert curve["curve_axes"] == ["tokens_3a"]
    series = {(p["variant"], p["series"]): p["kl_3a"] for p in curve["points"] if p["axis"] == "tokens_3a"}
    assert series == {("4M", "lr_3a=1e-3"): 0.40, ("8M", "lr_3a=1e-3"): 0.30,
                      ("4M", "lr_3a=5e-4"): 0.50, ("8M", "lr_3a=5e-4"): 0.35}
    md = markdown(rep)
    rows = [line.split(" | ")[0] for line in md.splitlines() if line.startswith("| 4M (") or line.startswith("| 8M (")]
    assert rows == ["| 4M (lr_3a=1e-3)", "| 8M (lr_3a=1e-3)", "| 4M (lr_3a=5e-4)", "| 8M (lr_3a=5e-4)"]
    assert "## Budget curve `lr_3a`" not in md
    assert plot_budget_curve(curve["points"])[:4] == b"\x89PNG"


def test_budget_curve_of_runs_without_eval_kl_draws_the_loss_and_nothing_without_metrics():
    old = [_curve_cell("tokens_3a=4M", {"tokens_3a": "4M"}, 4_000_000, None, None),
           _curve_cell("tokens_3a=8M", {"tokens_3a": "8M"}, 8_000_000, None, None)]
    rep = build_report({"axes": {"tokens_3a": ["4M", "8M"]}}, old)
    assert all(p["kl_3a"] is None and p["loss_3a"] == 2.0 for p in rep["budget_curve"]["points"])
    assert plot_budget_curve(rep["budget_curve"]["points"])[:4] == b"\x89PNG"  # held-out loss instead
    bare = [{**c, "metrics": {}} for c in old]
    assert plot_budget_curve(build_report({"axes": {"tokens_3a": ["4M", "8M"]}}, bare)["budget_curve"]["points"]) is None


def test_a_stage_cut_short_is_plotted_at_the_tokens_it_trained_and_named_in_the_cells_table():
    """A timeout that stops a cell's stage 3a part-way leaves its last held-out figures at an earlier step: the curve
    puts them at the tokens trained then (not at the planned budget) and the cells table says where it was cut."""
    full = _curve_cell("data_3a=850docs", {"data_3a": "850docs"}, 16_000_000, 0.27, 0.74)
    cut = _curve_cell("data_3a=2923docs", {"data_3a": "2923docs"}, 16_000_000, 0.29, 0.72)
    full["metrics"]["stage3a"].update(eval_step_last=245, eval_at_tokens_last=16_000_000)
    cut["metrics"]["stage3a"].update(eval_step_last=200, eval_at_tokens_last=13_107_200)
    cut["metrics"].pop("stage3b")
    rep = build_report({"axes": {"data_3a": ["850docs", "2923docs"]}}, [full, cut])
    pts = {p["cell"]: p for p in rep["budget_curve"]["points"]}
    assert not pts["data_3a=850docs"]["cut"] and pts["data_3a=850docs"]["tokens_3a"] == 16_000_000
    assert pts["data_3a=2923docs"]["cut"] and pts["data_3a=2923docs"]["tokens_3a"] == 13_107_200
    assert pts["data_3a=2923docs"]["planned_tokens_3a"] == 16_000_000
    assert pts["data_3a=2923docs"]["variant"] == "2923docs (cut at 13.1M)"
    assert rep["budget_curve"]["curve_axes"] == [], "one planned budget: markers, not a budget curve"
    md = markdown(rep)
    assert "| data_3a=2923docs (stage3a cut at step 200) |" in md and "| data_3a=850docs |" in md


def test_answer_agreement_per_cell_and_task():
    """The answer agreement of gendistill eval (the student's extracted answer equals the teacher's) is carried per
    cell (mean over the generation tasks, and per task) and shown in the cells table."""
    cells = [cell("freeze=a", {"freeze": "a"}, results(A, exact=0.5), 1.2),
             cell("freeze=b", {"freeze": "b"}, results(B), 1.1)]
    rep = build_report({"axes": {"freeze": ["a", "b"]}}, cells)
    fa = rep["cells"][0]["scores"]["fidelity"]
    assert fa["answer_agreement"] == pytest.approx(0.7) and fa["answer_agreement_by_task"] == {"t1": 0.9, "gsm": 0.5}
    assert rep["cells"][1]["scores"]["fidelity"]["answer_agreement"] is None
    rows = [line for line in markdown(rep).splitlines() if line.startswith("| freeze=")]
    assert fa["answer_agreement_chance"] == pytest.approx(0.5)  # (0.8 + 0.2) / 2, beside the agreement
    # answer agree (by chance), greedy match (0.5, 0.25)
    assert "| 70.0 (50.0) | 37.5 |" in rows[0] and "| – | – |" in rows[1]


def test_objective_cells_compare_on_held_out_forward_kl_and_their_own_losses_are_labelled():
    """The objective axis trains with different losses, so their held-out losses are different quantities: the axis
    table shows the held-out forward KL and top-1 (the same measure in every cell) instead, and the cells table
    names each cell's own loss with its kind."""
    cells = [cell("objective=forward_kl", {"objective": "forward_kl"}, results(A), 0.52, kl=0.52, top1=0.71),
             cell("objective=reverse_kl", {"objective": "reverse_kl"}, results(B), 0.31, kl=0.60, top1=0.68,
                  loss={"kind": "reverse_kl", "ce_weight": 0.0, "temperature": 1.0}),
             cell("objective=kl+ce", {"objective": "kl+ce"}, results(C), 0.55, kl=0.50, top1=0.72,
                  loss={"kind": "forward_kl", "ce_weight": 0.01, "temperature": 1.0})]
    rep = build_report({"axes": {"objective": ["forward_kl", "reverse_kl", "kl+ce"]}}, cells)
    t = rep["axes"][0]["table"]
    assert [(t[v]["heldout_kl"], t[v]["heldout_top1"]) for v in ("forward_kl", "reverse_kl", "kl+ce")] == [
        (0.52, 0.71), (0.60, 0.68), (0.50, 0.72)]
    assert all("final_eval_loss" not in t[v] for v in t)
    by = {c["cell"]: c for c in rep["cells"]}
    assert (by["objective=reverse_kl"]["final_eval_loss"], by["objective=reverse_kl"]["final_eval_loss_kind"],
            by["objective=reverse_kl"]["final_eval_loss_stage"]) == (0.31, "reverse_kl", "stage3b")
    md = markdown(rep)
    axis_rows = [line for line in md.split("## Cells")[0].splitlines() if line.startswith("| reverse_kl |")]
    assert len(axis_rows) == 1 and "| 0.600 | 68.0 |" in axis_rows[0] and "0.310" not in axis_rows[0]
    assert "| 0.310 (reverse_kl) |" in md and "| 0.550 (forward_kl + 0.01·CE) |" in md


def test_loss_labels():
    from gendistill.ablate.report import loss_label

    assert loss_label({"kind": "forward_kl", "ce_weight": 0.0, "temperature": 1.0}) == "forward_kl"
    assert loss_label({"kind": "topk_kl", "top_k": 64, "temperature": 2.0}) == "topk_kl (k 64), T 2"
    assert loss_label({"kind": "jsd", "jsd_beta": 0.5, "ce_weight": 0.1}) == "jsd (β 0.5) + 0.1·CE"
    assert loss_label(None) is None and loss_label({}) is None
