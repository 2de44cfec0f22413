"""The stage-3a budget curve of a grid: every cell's stage-3a token budget against its student's held-out fidelity to
the teacher after stage 3a (KL(teacher‖student) in nats per token and top-1 agreement, as the trainer's last
held-out evaluation of the stage recorded them), next to the same numbers after stage 3b on held-out chat.

An axis whose cells train stage 3a on more than one budget (``tokens_3a``) is a **budget curve** and is drawn as a
line; the cells of every other axis (a learning-rate sweep, a data-size pair) are drawn as separate markers at their
own budget, so a variant that beats the curve stands out. In product mode a budget axis crossed with another axis
(``tokens_3a`` x ``lr_3a``) is one line per variant of the other axes (a point's ``series``), and the other axis,
whose budget changes only because its cells sit on those lines, is not a curve and not drawn twice. Cells without
stage-3a metrics are left out; a run whose trainer predates ``eval_kl`` is drawn with its held-out loss instead (the
plot says so).
"""

from __future__ import annotations

from typing import Any

from gendistill.reporting import figure_png, pyplot

CURVE_STAGE = "stage3a"
CHAT_STAGE = "stage3b"


def trained_when_cut(stage_metrics: dict[str, Any], planned_tokens: int | None) -> int | None:
    """The tokens a stage had trained at its last held-out evaluation when that was before its planned budget (a stage
    cut short, e.g. by a timeout), else None. ``stage_metrics``: the stage's entry of a cell's ``metrics``."""
    at = stage_metrics.get("eval_at_tokens_last")
    return at if at is not None and planned_tokens is not None and at < planned_tokens else None


def curve_points(meta: dict[str, Any], cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One point per (axis, cell carrying that axis) whose recipe has a stage 3a: ``axis``, ``variant``, ``cell``,
    ``tokens_3a`` (the stage's budget: steps x batch x seq_len; for a stage cut short, ``cut`` is True and the tokens
    it had trained at its last held-out evaluation, ``planned_tokens_3a`` the budget), ``kl_3a``, ``top1_3a``, ``loss_3a`` (held-out, last
    evaluation of stage 3a), ``kl_3b``, ``top1_3b`` (the same after stage 3b); None where not recorded. ``cells`` are
    the report's cell entries (``assignment``, ``tokens`` and ``metrics`` per stage). ``series``: the cell's variants of
    the other axes (``"lr_3a=1e-3"``; empty in one-at-a-time mode), the line a budget curve's point belongs to."""
    points = []
    for axis in meta.get("axes", {}):
        for c in cells:
            variant = c["assignment"].get(axis)
            tokens = (c.get("tokens") or {}).get(CURVE_STAGE)
            if variant is None or tokens is None:
                continue
            m = c.get("metrics") or {}
            a, b = m.get(CURVE_STAGE) or {}, m.get(CHAT_STAGE) or {}
            at = trained_when_cut(a, tokens)  # stopped early: its figures belong to the tokens it trained
            cut = at is not None
            series = ", ".join(f"{other}={v}" for other, v in c["assignment"].items() if other != axis)
            points.append({"axis": axis, "variant": f"{variant} (cut at {at / 1e6:.1f}M)" if cut else variant,
                           "series": series, "cell": c["cell"], "tokens_3a": at if cut else tokens,
                           "planned_tokens_3a": tokens, "cut": cut,
                           "kl_3a": a.get("eval_kl_last"), "top1_3a": a.get("eval_top1_last"),
                           "loss_3a": a.get("eval_loss_last"),
                           "kl_3b": b.get("eval_kl_last"), "top1_3b": b.get("eval_top1_last")})
    return points


def curve_axes(points: list[dict[str, Any]]) -> list[str]:
    """The axes whose variants train stage 3a on more than one budget while the other axes stay put (the same
    ``series``), in order: in product mode an axis crossed with a budget axis is not a curve itself."""
    budgets: dict[str, dict[str, set[int]]] = {}
    for p in points:
        budgets.setdefault(p["axis"], {}).setdefault(p.get("series", ""), set()).add(
            p.get("planned_tokens_3a", p["tokens_3a"]))
    return [a for a, by_series in budgets.items() if any(len(b) > 1 for b in by_series.values())]


def curve_table(points: list[dict[str, Any]], axis: str) -> list[dict[str, Any]]:
    """One budget curve's points in table order (by ``series``, smallest budget first), each with ``label``: its
    variant, and in product mode its series in brackets (``4M (lr_3a=1e-3)``)."""
    mine = sorted((p for p in points if p["axis"] == axis), key=lambda p: (p.get("series", ""), p["tokens_3a"]))
    return [{**p, "label": f"{p['variant']} ({p['series']})" if p.get("series") else p["variant"]} for p in mine]


def _y_key(points: list[dict[str, Any]]) -> str | None:
    """``kl_3a`` where any point has it, else ``loss_3a`` (runs that predate eval_kl), else None."""
    for key in ("kl_3a", "loss_3a"):
        if any(p[key] is not None for p in points):
            return key
    return None


def plot_budget_curve(points: list[dict[str, Any]]) -> bytes | None:
    """Two panels, x = stage-3a tokens (log scale): held-out KL (or loss) after stage 3a, and top-1 agreement
    (percent). Budget-curve axes are lines (one per ``series``), other axes' cells single markers labelled
    ``axis=variant`` unless their cell is on a line already. None when no point has a value to draw or matplotlib is
    missing."""
    y_key = _y_key(points)
    if y_key is None:
        return None
    plt = pyplot()
    if plt is None:
        return None
    lines = curve_axes(points)
    on_a_line = {p["cell"] for p in points if p["axis"] in lines}
    panels = [(y_key, "held-out KL(teacher‖student), nats/token" if y_key == "kl_3a"
               else "held-out loss (no eval_kl recorded)", 1.0), ("top1_3a", "held-out top-1 agreement (%)", 100.0)]
    fig, axs = plt.subplots(1, 2, figsize=(11, 4.2), squeeze=False)
    markers = "osD^v<>PX*"
    for ax, (key, label, scale) in zip(axs[0], panels):
        k = 0
        for axis in dict.fromkeys(p["axis"] for p in points):
            mine = sorted((p for p in points if p["axis"] == axis and p[key] is not None), key=lambda p: p["tokens_3a"])
            if not mine:
                continue
            if axis in lines:
                for n, series in enumerate(dict.fromkeys(p.get("series", "") for p in mine)):
                    line = [p for p in mine if p.get("series", "") == series]
                    ax.plot([p["tokens_3a"] for p in line], [scale * p[key] for p in line], marker="o",
                            color=f"C{n % 10}", label=f"{axis} (budget curve{', ' + series if series else ''})")
                    for p in line:
                        ax.annotate(p["variant"], (p["tokens_3a"], scale * p[key]), xytext=(4, 4),
                                    textcoords="offset points", fontsize=7)
                continue
            for p in (p for p in mine if p["cell"] not in on_a_line):
                k += 1
                ax.scatter([p["tokens_3a"]], [scale * p[key]], marker=markers[k % len(markers)], s=40,
                           color=f"C{k % 10}", label=f"{axis}={p['variant']}", zorder=3)
        ax.set_xscale("log")
        ax.set_xlabel("stage-3a tokens")
        ax.set_ylabel(label)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    axs[0][0].set_title("after stage 3a: held-out fidelity to the teacher", fontsize=10)
    axs[0][1].set_title("top-1 agreement (higher is better)", fontsize=10)
    fig.tight_layout()
    return figure_png(fig, dpi=110)
