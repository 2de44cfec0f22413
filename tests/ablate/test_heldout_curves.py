"""The held-out curves of a grid's cells (gendistill.ablate.heldout_curves): points from the trainer's metrics
records (tokens, seconds after the first optimizer step, KL / top-1), the per-axis table at equal tokens (a cut
variant blank where it stopped), the plot, and the report carrying them."""

from __future__ import annotations

from gendistill.ablate.heldout_curves import axis_curves, curve_markdown, plot_heldout_curves, stage_curves
from gendistill.ablate.report import build_report, markdown, write_report


def _records(stage, batch_tokens, evals, t_start=1000.0, step_s=2.0, first_step_s=30.0, every=2):
    """A stage's metrics.jsonl rows as the trainer writes them: an evaluation before training (step 0), training rows
    (the first step slow: compiling), an evaluation every ``every`` steps. ``evals``: (kl, top1) per evaluation."""
    rows = [{"time": t_start, "stage": stage, "step": 0, "tokens": 0, "eval_loss": 3.0, "eval_kl": 3.0,
             "eval_top1": 0.25, "eval_tokens": 100}]
    t = t_start + first_step_s
    step = 0
    for kl, top1 in evals:
        for _ in range(every):
            step += 1
            rows.append({"time": t, "stage": stage, "step": step, "tokens": step * batch_tokens, "loss": kl + 0.1,
                         "tokens_per_s": batch_tokens / step_s})
            t += step_s
        rows.append({"time": t, "stage": stage, "step": step, "tokens": step * batch_tokens, "eval_loss": kl,
                     "eval_kl": kl, "eval_top1": top1, "eval_tokens": 100})
    return rows


def test_points_count_tokens_and_seconds_after_the_first_step_per_stage():
    recs = (_records("stage2", 10, [(0.9, None)], t_start=0.0)  # a hidden-state stage: no KL, a loss
            + _records("stage3a", 100, [(0.5, 0.6), (0.3, 0.7)], t_start=500.0, first_step_s=40.0, step_s=3.0))
    recs[-1], recs[-4] = recs[-4], recs[-1]  # out of order (two processes appending): sorted by step
    curves = stage_curves(recs)
    assert list(curves) == ["stage2", "stage3a"]
    a = curves["stage3a"]
    assert [p["step"] for p in a] == [0, 2, 4] and [p["tokens"] for p in a] == [0, 200, 400]
    assert [p["eval_kl"] for p in a] == [3.0, 0.5, 0.3] and a[2]["eval_top1"] == 0.7
    # step 1's record is written at 540 s: its 40 s (compiling) are not counted; each later step 3 s
    assert [p["seconds"] for p in a] == [0.0, 6.0, 12.0]
    assert curves["stage2"][1]["eval_kl"] == 0.9 and curves["stage2"][1]["eval_top1"] is None
    # logged every other step (log_every 2): time counts from the first logged step, 2
    sparse = [r for r in _records("stage3a", 100, [(0.5, 0.6), (0.3, 0.7)], t_start=0.0, first_step_s=40.0,
                                  step_s=3.0) if "loss" not in r or r["step"] % 2 == 0]
    assert [p["seconds"] for p in stage_curves(sparse)["stage3a"]] == [0.0, 3.0, 9.0]
    # resumed after step 2 in a second process that appended: step 2's evaluation again, 100 s later; the last kept
    resumed = _records("stage3a", 100, [(0.5, 0.6)], t_start=0.0, first_step_s=40.0, step_s=3.0)
    resumed.append({**resumed[-1], "time": resumed[-1]["time"] + 100.0, "eval_kl": 0.49})
    pts = stage_curves(resumed)["stage3a"]
    assert [(p["step"], p["eval_kl"], p["seconds"]) for p in pts] == [(0, 3.0, 0.0), (2, 0.49, 106.0)]
    # no training row at all: no seconds, the points kept
    evals_only = [r for r in _records("stage3a", 100, [(0.5, 0.6)]) if "loss" not in r]
    assert [p["seconds"] for p in stage_curves(evals_only)["stage3a"]] == [None, None]
    assert stage_curves([r for r in evals_only if "eval_loss" not in r]) == {}


def _cell(name, axis, variant, curve_records):
    return {"cell": name, "assignment": {axis: variant}, "tokens": {"stage3a": 400},
            "metrics": {"stage3a": {"eval_loss_last": 0.3, "eval_kl_last": 0.3, "eval_top1_last": 0.7}},
            "curves": stage_curves(curve_records), "nodes": ["n1", name], "eval": None}


def _batch_report():
    full = _records("stage3a", 1_000_000, [(0.5, 0.6), (0.4, 0.65), (0.3, 0.7)])
    cut = _records("stage3a", 1_000_000, [(0.45, 0.62), (0.35, 0.68)], step_s=4.0)  # stopped after 4M tokens
    return build_report({"axes": {"batch_3a": ["32", "16"], "lr_3a": ["1e-3"]}},
                        [_cell("batch_3a=32", "batch_3a", "32", full), _cell("batch_3a=16", "batch_3a", "16", cut),
                         _cell("lr_3a=1e-3", "lr_3a", "1e-3", _records("stage3a", 1_000_000, []))])


def test_the_report_tabulates_each_axis_at_equal_tokens_and_draws_the_curves(tmp_path):
    rep = _batch_report()
    assert [p["tokens"] for p in rep["cells"][0]["curves"]["stage3a"]] == [0, 2_000_000, 4_000_000, 6_000_000]
    assert list(axis_curves(rep, "batch_3a")) == ["32", "16"]
    md = markdown(rep)
    table = md[md.index("## Held-out curve of stage3a, axis `batch_3a` (curves.png)"):]
    assert "| tokens | 32 | 16 |" in table
    rows = [line for line in table.splitlines() if line.startswith(("| 0 |", "| 2.00M", "| 4.00M", "| 6.00M"))]
    assert rows == ["| 0 | 3.000 / 25.0 (0 s) | 3.000 / 25.0 (0 s) |",
                    "| 2.00M | 0.500 / 60.0 (4 s) | 0.450 / 62.0 (8 s) |",
                    "| 4.00M | 0.400 / 65.0 (8 s) | 0.350 / 68.0 (16 s) |",
                    "| 6.00M | 0.300 / 70.0 (12 s) | – |"]  # the cut variant: blank where it had stopped
    # lr_3a has only the evaluation before training: nothing to draw, no table
    assert "axis `lr_3a`" not in md
    small = build_report({"axes": {"batch_3a": ["32"]}},
                         [_cell("batch_3a=32", "batch_3a", "32", _records("stage3a", 64, [(0.5, 0.6)]))])
    assert "| 128 | 0.500 / 60.0" in markdown(small)  # a CPU smoke run's budgets: tokens, not 0.00M
    assert "| 96.0K |" in markdown(build_report({"axes": {"b": ["x"]}}, [_cell("b=x", "b", "x", _records(
        "stage3a", 48_000, [(0.5, 0.6)]))]))
    paths = write_report(rep, tmp_path)
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG" and paths["curves"].endswith("curves.png")


def test_nothing_to_draw_without_curves():
    rep = build_report({"axes": {"a": ["x"]}}, [{"cell": "a=x", "assignment": {"a": "x"}, "tokens": {},
                                                 "metrics": {}, "nodes": [], "eval": None}])
    assert curve_markdown(rep) == [] and plot_heldout_curves(rep) is None


def test_runs_outside_the_grid_are_drawn_dashed_in_the_colour_of_the_cell_they_repeat(monkeypatch):
    """``extra``: a repeat of the batch-16 cell (``extra_like``) is dashed in that cell's colour; an extra run that
    names no cell gets a colour no variant has."""
    import gendistill.ablate.heldout_curves as hc

    figures = []
    monkeypatch.setattr(hc, "figure_png", lambda fig, dpi: figures.append(fig) or b"png")
    rep = _batch_report()
    again = stage_curves(_records("stage3a", 1_000_000, [(0.44, 0.63), (0.34, 0.69)]))["stage3a"]
    assert hc.plot_heldout_curves(rep, extra={"16 again": again, "other": again},
                                  extra_like={"16 again": "16"}) == b"png"
    left = figures[0].axes[0]
    style = {ln.get_label(): (ln.get_linestyle(), ln.get_color()) for ln in left.get_lines()}
    assert style["batch_3a=16"][0] == "-" and style["16 again"] == ("--", style["batch_3a=16"][1])
    assert style["other"][0] == "--" and style["other"][1] not in {c for _, c in style.values() if _ == "-"}
    assert [p.get_xdata().tolist() for p in left.get_lines() if p.get_label() == "16 again"] == [[2.0, 4.0]]


def _hidden_state_stage(step_s=2.0):
    """Stage 1's records: held-out losses, no KL or top-1 (a hidden-state stage)."""
    return [{**r, "eval_kl": None, "eval_top1": None} if "eval_loss" in r else r
            for r in _records("stage1", 10, [(0.9, None)], step_s=step_s)]


def _chain_cell(name, axis, variant, stages):
    """A cell whose stage runs' records are ``stages`` (stage -> records), in chain order."""
    recs = [r for rows in stages.values() for r in rows]
    return {"cell": name, "assignment": {axis: variant}, "tokens": {}, "metrics": {}, "curves": stage_curves(recs),
            "nodes": [], "eval": None}


def test_each_axis_is_drawn_in_the_stage_that_tells_its_variants_apart(monkeypatch):
    """A stage-3b axis (masking) shares stages 1-3a between its variants: its table and plot show stage 3b, where they
    differ; an axis that changes stage 3a (objective) shows stage 3a even though stage 3b differs too; an axis that
    differs from stage 1 on (a mixer; stage 1 has no KL) shows stage 3a, not stage 1. A repeat of stage 3a (extra) is
    drawn only on stage-3a rows."""
    import gendistill.ablate.heldout_curves as hc

    s1 = _hidden_state_stage()
    s3a = _records("stage3a", 1_000_000, [(0.5, 0.6), (0.3, 0.7)])
    other_3a = _records("stage3a", 1_000_000, [(0.55, 0.58), (0.35, 0.68)])
    chat = {v: _records("stage3b", 100_000, [(kl, 0.6), (kl - 0.05, 0.62)]) for v, kl in (("c", 0.5), ("a", 0.45))}
    cells = [_chain_cell("masking=c", "masking", "c", {"stage1": s1, "stage3a": s3a, "stage3b": chat["c"]}),
             _chain_cell("masking=a", "masking", "a", {"stage1": s1, "stage3a": s3a, "stage3b": chat["a"]}),
             _chain_cell("objective=f", "objective", "f", {"stage1": s1, "stage3a": s3a, "stage3b": chat["c"]}),
             _chain_cell("objective=r", "objective", "r", {"stage1": s1, "stage3a": other_3a, "stage3b": chat["a"]}),
             _chain_cell("mixer=k", "mixer", "k", {"stage1": s1, "stage3a": s3a}),
             _chain_cell("mixer=g", "mixer", "g", {"stage1": _hidden_state_stage(step_s=3.0),
                                                   "stage3a": other_3a})]
    rep = build_report({"axes": {"masking": ["c", "a"], "objective": ["f", "r"], "mixer": ["k", "g"]}}, cells)
    assert [hc.axis_stage(rep, a) for a in ("masking", "objective", "mixer")] == ["stage3b", "stage3a", "stage3a"]
    md = "\n".join(curve_markdown(rep))
    assert "## Held-out curve of stage3b, axis `masking`" in md and "stage3a, axis `masking`" not in md
    assert "## Held-out curve of stage3a, axis `objective`" in md and "## Held-out curve of stage3a, axis `mixer`" in md
    masking = md[md.index("axis `masking`"):md.index("axis `objective`")]
    assert "| 200.0K | 0.500 / 60.0 (4 s) | 0.450 / 60.0 (4 s) |" in masking
    # one stage for every axis still draws that stage (the shared stage-3a curve, equal per variant)
    assert "## Held-out curve of stage3a, axis `masking`" in "\n".join(curve_markdown(rep, "stage3a"))
    # one variant alone has nothing to tell apart: stage 3a
    assert hc.axis_stage(build_report({"axes": {"masking": ["c"]}}, cells[:1]), "masking") == "stage3a"

    figures = []
    monkeypatch.setattr(hc, "figure_png", lambda fig, dpi: figures.append(fig) or b"png")
    assert hc.plot_heldout_curves(rep, extra={"f again": stage_curves(other_3a)["stage3a"]},
                                  extra_like={"f again": "f"}) == b"png"
    rows = figures[0].axes[0::2]  # the left panel of each row
    labels = [[ln.get_label() for ln in ax.get_lines()] for ax in rows]
    assert labels == [["masking=c", "masking=a"], ["objective=f", "objective=r", "f again"],
                      ["mixer=k", "mixer=g", "f again"]]
    assert rows[0].get_xlabel() == "stage3b tokens (millions)" and rows[1].get_xlabel() == "stage3a tokens (millions)"
