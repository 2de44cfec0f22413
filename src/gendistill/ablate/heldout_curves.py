"""The held-out curves of a grid's cells: every held-out evaluation the trainer recorded during a stage, so variants
compare at **equal tokens** and at **equal training time**, not only where each ended.

A cell's end point (the report's cells table, the budget curve) hides two things a recipe decision needs: a cell cut
short by a timeout ends at fewer tokens than the others, and two schedules can end equal after very different paths.
Here each stage's evaluations are kept as points ``{step, tokens, seconds, eval_kl, eval_top1, eval_loss}``:

* ``tokens``: the tokens the stage had trained at that evaluation (steps x batch x seq_len, as the trainer counts);
* ``seconds``: wall time since the stage's first logged optimizer step ended (its record's time: step 1 with the
  default ``log_every``), so the first step's compiling and autotuning are left out and the held-out evaluations in
  between are counted; 0 for the evaluation before training. A stage resumed in another process counts the pause
  between the two, and an evaluation repeated after a resume (``metrics.jsonl`` is appended to) keeps its last record;
* ``eval_kl`` / ``eval_top1`` / ``eval_loss``: as the trainer recorded them (None where it did not).

:func:`curve_markdown` tabulates each axis' curves (one row per evaluation point, one column per variant);
:func:`plot_heldout_curves` draws them (``curves.png``): KL against tokens and against seconds, one line per variant.
Each axis is drawn in the stage that tells its variants apart (:func:`axis_stage`): stage 3a where they differ there,
else the first stage with a KL curve where they do — an axis that changes stage 3b alone (masking, freezing) shares
stages 1–3a between its variants, whose stage-3a curves would be one run drawn once per variant.
"""

from __future__ import annotations

from typing import Any

from gendistill.ablate.curve import CURVE_STAGE
from gendistill.reporting import figure_png, pyplot
from gendistill.reporting import num as _num
from gendistill.reporting import pct as _pct

POINT_KEYS = ("eval_kl", "eval_top1", "eval_loss")


def stage_curves(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per stage (in the records' order), its held-out evaluations as points, in step order. ``records``: the stage
    runs' ``metrics.jsonl`` rows, each carrying ``stage``, ``step``, ``tokens`` and ``time``; training rows carry
    ``loss``, evaluation rows ``eval_loss``. A stage without evaluations is left out."""
    first_step: dict[str, tuple[int, float]] = {}  # stage -> (step, time) of its first logged training row
    for r in records:
        step, t = r.get("step"), r.get("time")
        if "loss" in r and isinstance(step, int) and step >= 1 and t is not None and "stage" in r:
            if r["stage"] not in first_step or step < first_step[r["stage"]][0]:
                first_step[r["stage"]] = (step, t)
    out: dict[str, dict[Any, dict[str, Any]]] = {}
    for r in records:
        if "eval_loss" not in r or "stage" not in r:
            continue
        t0, t = first_step.get(r["stage"], (None, None))[1], r.get("time")
        seconds = None if t0 is None or t is None else round(max(0.0, t - t0), 1)
        out.setdefault(r["stage"], {})[r.get("step")] = {"step": r.get("step"), "tokens": r.get("tokens"),
                                                         "seconds": seconds, **{k: r.get(k) for k in POINT_KEYS}}
    return {stage: sorted(pts.values(), key=lambda p: p["step"] if p["step"] is not None else -1)
            for stage, pts in out.items()}


def axis_curves(rep: dict[str, Any], axis: str, stage: str = CURVE_STAGE) -> dict[str, list[dict[str, Any]]]:
    """``variant -> points`` of ``stage`` for the cells of ``axis`` (in the axis' variant order; a variant whose cell
    has no such curve is left out). ``rep``: a report (:func:`gendistill.ablate.report.build_report`) whose cells
    carry ``curves``. In product mode a variant has several cells: the first is drawn."""
    variants = next((a["variants"] for a in rep.get("axes", []) if a["axis"] == axis), [])
    out: dict[str, list[dict[str, Any]]] = {}
    for v in variants:
        for c in rep.get("cells", []):
            pts = (c.get("curves") or {}).get(stage)
            if c.get("assignment", {}).get(axis) == v and pts:
                out[v] = pts
                break
    return out


def _curve_key(pts: list[dict[str, Any]]) -> tuple[tuple[Any, Any, Any], ...]:
    """What makes two runs' curves the same run: the points' steps, tokens and KL (a shared stage run is one record
    set, so its curve is equal in every cell that shares it; two separate runs never agree at every point)."""
    return tuple((p["step"], p["tokens"], p["eval_kl"]) for p in pts)


def axis_stage(rep: dict[str, Any], axis: str) -> str:
    """The stage whose held-out curves tell ``axis``' variants apart: :data:`CURVE_STAGE` (stage 3a) where the
    variants' curves differ there; else the first stage (in the cells' stage order) with KL points whose curves
    differ (stage 3b for an axis that changes stage 3b alone: its variants share stages 1–3a); else
    :data:`CURVE_STAGE`. A variant without a curve of a stage does not count for it."""
    stages: list[str] = []
    for c in rep.get("cells", []):
        if axis in c.get("assignment", {}):
            stages += [s for s in (c.get("curves") or {}) if s not in stages]

    def differs(stage: str) -> bool:
        curves = axis_curves(rep, axis, stage)
        return (len(curves) > 1 and any(p["eval_kl"] is not None for pts in curves.values() for p in pts)
                and len({_curve_key(pts) for pts in curves.values()}) > 1)

    if differs(CURVE_STAGE):
        return CURVE_STAGE
    return next((s for s in stages if s != CURVE_STAGE and differs(s)), CURVE_STAGE)


def _drawn_axes(rep: dict[str, Any],
                stage: str | None) -> list[tuple[str, str, dict[str, list[dict[str, Any]]]]]:
    """The axes with a curve of at least two points in some variant: (axis, its stage, its curves). ``stage``: the
    stage of every axis, or None for each axis' own (:func:`axis_stage`)."""
    out = []
    for a in rep.get("axes", []):
        at = stage or axis_stage(rep, a["axis"])
        curves = axis_curves(rep, a["axis"], at)
        if any(len(p) > 1 for p in curves.values()):
            out.append((a["axis"], at, curves))
    return out


def _tokens(n: int) -> str:
    """Tokens as the table's rows name them: 16.06M, 96.0K, 128."""
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    return f"{n / 1e3:.1f}K" if n >= 1_000 else str(n)


def curve_markdown(rep: dict[str, Any], stage: str | None = None) -> list[str]:
    """Per axis, a table of the held-out KL / top-1 at every evaluation point of ``stage`` (None: the axis' own,
    :func:`axis_stage`); rows: tokens; columns: the variants; – where a variant was not evaluated at those tokens,
    e.g. after a cut. Empty when no axis has a curve."""
    out: list[str] = []
    for axis, shown, curves in _drawn_axes(rep, stage):
        tokens = sorted({p["tokens"] for pts in curves.values() for p in pts if p["tokens"] is not None})
        at = {v: {p["tokens"]: p for p in pts} for v, pts in curves.items()}
        out += ["", f"## Held-out curve of {shown}, axis `{axis}` (curves.png)", "",
                "KL(teacher‖student) in nats per token / top-1 agreement (%) at each held-out evaluation the trainer "
                "recorded; seconds of training in brackets (from the end of the first optimizer step).", "",
                "| tokens | " + " | ".join(curves) + " |", "|---:|" + "---:|" * len(curves)]
        for n in tokens:
            row = []
            for v in curves:
                p = at[v].get(n)
                row.append("–" if p is None else
                           f"{_num(p['eval_kl'])} / {_pct(p['eval_top1'])}"
                           + (f" ({p['seconds']:.0f} s)" if p["seconds"] is not None else ""))
            out.append(f"| {_tokens(n)} | " + " | ".join(row) + " |")
    return out


def plot_heldout_curves(rep: dict[str, Any], stage: str | None = None,
                        extra: dict[str, list[dict[str, Any]]] | None = None,
                        extra_like: dict[str, str] | None = None, extra_stage: str = CURVE_STAGE) -> bytes | None:
    """One row per axis with a curve: held-out KL (log scale) against its stage's tokens (left) and against its
    training seconds (right), one line per variant; the stage is ``stage``, or each axis' own (None,
    :func:`axis_stage`). ``extra`` (label -> points of ``extra_stage``, as :func:`stage_curves` gives them: runs
    outside the grid, e.g. a repeat of some cells under another data order) drawn dashed on every row of that stage,
    in the colour of the variant ``extra_like`` names for it (label -> variant) where that variant is drawn there,
    else in a colour of its own. None when there is nothing to draw or matplotlib is missing."""
    def with_kl(named: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
        return {name: [p for p in pts if p["eval_kl"] is not None] for name, pts in named.items()}

    more = with_kl(extra or {})
    drawn = [(axis, at, with_kl(curves)) for axis, at, curves in _drawn_axes(rep, stage)]
    drawn = [(axis, at, curves) for axis, at, curves in drawn if any(len(p) > 1 for p in curves.values())]
    if not drawn:
        return None
    plt = pyplot()
    if plt is None:
        return None
    fig, axs = plt.subplots(len(drawn), 2, figsize=(11, 3.8 * len(drawn)), squeeze=False)
    for (left, right), (axis, at, curves) in zip(axs, drawn):
        colour = {v: f"C{k % 10}" for k, v in enumerate(curves)}
        lines = [(f"{axis}={v}", pts, "-", colour[v]) for v, pts in curves.items()]
        spare = len(curves)
        for lb, pts in (more if at == extra_stage else {}).items():
            c = colour.get((extra_like or {}).get(lb, ""))
            if c is None:
                c, spare = f"C{spare % 10}", spare + 1
            lines.append((lb, pts, "--", c))
        for label, pts, dash, c in lines:
            pts = [p for p in pts if p["step"]]  # the evaluation before training sits at 0 tokens: off a log plot
            style = {"marker": "o", "markersize": 3, "color": c, "label": label, "linestyle": dash}
            left.plot([p["tokens"] / 1e6 for p in pts], [p["eval_kl"] for p in pts], **style)
            timed = [p for p in pts if p["seconds"] is not None]
            right.plot([p["seconds"] for p in timed], [p["eval_kl"] for p in timed], **style)
        for ax, xlabel in ((left, f"{at} tokens (millions)"), (right, f"{at} seconds after its first step")):
            ax.set_yscale("log")
            for fmt in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):  # 0.47, not 4.7 x 10^-1
                fmt(plt.FuncFormatter(lambda y, _: f"{y:.3g}"))
            ax.set_xlabel(xlabel)
            ax.set_ylabel("held-out KL(teacher‖student), nats/token")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        left.set_title(f"{axis}: {at} at equal tokens", fontsize=10)
        right.set_title(f"{axis}: {at} at equal training time", fontsize=10)
    fig.tight_layout()
    return figure_png(fig, dpi=110)


__all__ = ["POINT_KEYS", "axis_curves", "axis_stage", "curve_markdown", "plot_heldout_curves", "stage_curves"]
