"""How many stage-3a tokens would reach a fidelity target: a fit through the ends of committed stage-3a runs.

Each point is one finished stage 3a (its learning-rate schedule decayed to its own end; a snapshot taken mid-run is
not a point: it overstates the KL a run of its length reaches) read from a committed record:

* ``docs/results/e2e_*.json`` (tools/lease_record.py): the trainer's held-out KL and top-1 agreement at the end of
  stage 3a (``lease.stages.stage3a.trainer_heldout_at_end``) after the tokens it trained;
* ``GRID.json:CELL`` (a grid record of tools/lease_record.py, e.g. ``layers_smollm2-135m_h100.json:layers=every-4``):
  that cell's stage 3a, the same figures.

Per series (``--series LABEL POINT...``, repeatable) it fits ``KL = a * tokens^b`` (least squares in log-log) and
``top-1 = c + d * log2(tokens)``, and prints the tokens at which each fit reaches ``--target-kl`` and
``--target-top1``: extrapolations, not measurements, and only as good as the assumption that the trend holds that
far. ``--tokens-per-s`` turns tokens into hours of stage 3a at that rate. Every point of a series must come from the
same held-out rows (equal held-out token counts); the student's attention layers are shown per point (the record's,
else its recipe at the record's commit, via git) and a series that mixes layouts is flagged.

    python tools/budget_fit.py --series shipped POINT... [--series other POINT...] [--target-kl 0.10]
        [--target-top1 0.90] [--tokens-per-s 138000] [--out FIT.json] [--plot FIT.png]
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from gendistill.io import portable_paths  # noqa: E402
RECIPES = "src/gendistill/recipes"


def _git_yaml(commit: str | None, name: str) -> dict[str, Any] | None:
    """The shipped recipe or grid ``name`` as it was at ``commit`` (None when git cannot say)."""
    if not commit:
        return None
    res = subprocess.run(["git", "show", f"{commit}:{RECIPES}/{name}"], cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        return None
    try:
        return yaml.safe_load(res.stdout)
    except yaml.YAMLError:
        return None


def _layers_from_sets(sets: dict[str, Any] | list[str]) -> Any:
    items = sets.items() if isinstance(sets, dict) else (s.split("=", 1) for s in sets if "=" in s)
    found = None
    for key, value in items:
        if key == "student.attention_layers":
            found = yaml.safe_load(value) if isinstance(value, str) and value.startswith("[") else value
    return found


def _recipe_layers(commit: str | None, recipe: str) -> Any:
    doc = _git_yaml(commit, recipe) or {}
    return (doc.get("student") or {}).get("attention_layers")


def e2e_point(path: Path, rec: dict[str, Any]) -> dict[str, Any]:
    lease = rec.get("lease") or {}
    st = (lease.get("stages") or {}).get("stage3a") or {}
    end = st.get("trainer_heldout_at_end")
    if not end or not st.get("tokens"):
        raise SystemExit(f"error: {path}: no stage-3a held-out figures at the stage's end "
                         "(lease.stages.stage3a.trainer_heldout_at_end): not an e2e record of tools/lease_record.py")
    if end.get("step") != st.get("steps"):
        raise SystemExit(f"error: {path}: stage 3a's last held-out evaluation (step {end.get('step')}) is not at its "
                         f"end (step {st.get('steps')})")
    layers = ((rec.get("student") or {}).get("attention_layers") or _layers_from_sets(rec.get("overrides") or [])
              or _recipe_layers(lease.get("commit"), rec.get("recipe", "")))
    return {"tokens": st["tokens"], "kl": end["eval_kl"], "top1": end["eval_top1"], "eval_tokens": end["eval_tokens"],
            "commit": lease.get("commit"), "card": lease.get("card"), "attention_layers": layers}


def grid_point(path: Path, rec: dict[str, Any], cell: str) -> dict[str, Any]:
    cells = {c.get("cell"): c for c in rec.get("cells") or []}
    if cell not in cells:
        raise SystemExit(f"error: {path}: no cell '{cell}' (the record has: {', '.join(map(str, cells)) or 'none'})")
    m = (cells[cell].get("metrics") or {}).get("stage3a") or {}
    if m.get("eval_kl_last") is None or m.get("eval_step_last") != m.get("steps"):
        raise SystemExit(f"error: {path}: cell '{cell}' has no held-out KL at the end of its stage 3a")
    lease = rec.get("lease") or {}
    grid = _git_yaml(lease.get("commit"), (rec.get("meta") or {}).get("grid", "")) or {}
    sets = dict(grid.get("set") or {})
    for kv in cells[cell].get("assignment", {}).items():
        sets.update((grid.get("axes") or {}).get(kv[0], {}).get(kv[1]) or {})
    layers = _layers_from_sets(sets) or (_recipe_layers(lease.get("commit"), grid["base"]) if "base" in grid else None)
    return {"tokens": m["tokens"], "kl": m["eval_kl_last"], "top1": m["eval_top1_last"],
            "eval_tokens": m["eval_tokens_last"], "commit": lease.get("commit"), "card": lease.get("card"),
            "attention_layers": layers}


def read_point(spec: str) -> dict[str, Any]:
    """One point from ``FILE.json`` (an e2e record) or ``FILE.json:CELL`` (a grid record's cell)."""
    name, _, cell = spec.partition(".json:")
    path = Path(name + ".json" if cell else spec)
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {path}: not a readable JSON record ({e})") from None
    point = grid_point(path, rec, cell) if cell else e2e_point(path, rec)
    return {"source": spec, **point}


def fit_series(points: list[dict[str, Any]], target_kl: float, target_top1: float) -> dict[str, Any]:
    """Least-squares fits of ``log KL`` and ``top-1`` on ``log2 tokens`` and where each reaches its target."""
    xs = [math.log2(p["tokens"]) for p in points]
    if len(set(xs)) < 2:
        raise SystemExit("error: a series needs runs of at least two different stage-3a lengths to fit")

    def line(ys: list[float]) -> tuple[float, float]:
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        return my - slope * mx, slope

    a, b = line([math.log(p["kl"]) for p in points])  # log KL = a + b log2 tokens
    c, d = line([p["top1"] for p in points])  # top-1 = c + d log2 tokens

    def reach(x: float | None) -> float | None:
        return 2.0 ** x if x is not None and x < 1000 else None

    return {
        "kl_exponent": b / math.log(2),  # KL ∝ tokens^exponent
        "kl_per_doubling": math.exp(b),
        "top1_per_doubling": d,
        "tokens_at_target_kl": reach((math.log(target_kl) - a) / b if b < 0 else None),
        "tokens_at_target_top1": reach((target_top1 - c) / d if d > 0 else None),
        "kl_fit": {"intercept_log": a, "slope_log_per_log2_token": b},
        "top1_fit": {"intercept": c, "slope_per_log2_token": d},
        "largest_residual_kl": max(abs(math.log(p["kl"]) - a - b * x) for p, x in zip(points, xs)),
        "largest_residual_top1": max(abs(p["top1"] - c - d * x) for p, x in zip(points, xs)),
    }


def plot(series: dict[str, dict[str, Any]], target_kl: float, target_top1: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_kl, ax_t1) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (label, s) in enumerate(series.items()):
        colour = f"C{i}"
        pts, fit = s["points"], s["fit"]
        toks = [p["tokens"] for p in pts]
        ends = [t for t in (fit["tokens_at_target_kl"], fit["tokens_at_target_top1"]) if t] + toks
        grid = [min(toks) * (max(ends) * 1.3 / min(toks)) ** (k / 60) for k in range(61)]
        kl_line = [math.exp(fit["kl_fit"]["intercept_log"] + fit["kl_fit"]["slope_log_per_log2_token"]
                            * math.log2(t)) for t in grid]
        t1_line = [100 * (fit["top1_fit"]["intercept"] + fit["top1_fit"]["slope_per_log2_token"] * math.log2(t))
                   for t in grid]
        ax_kl.plot(toks, [p["kl"] for p in pts], "o", color=colour, label=f"{label} (runs)")
        ax_kl.plot(grid, kl_line, "--", color=colour, lw=1, label=f"{label} (fit, extrapolated)")
        ax_t1.plot(toks, [100 * p["top1"] for p in pts], "o", color=colour)
        ax_t1.plot(grid, [min(v, 100) for v in t1_line], "--", color=colour, lw=1)
    ax_kl.axhline(target_kl, color="grey", lw=0.8)
    ax_t1.axhline(100 * target_top1, color="grey", lw=0.8)
    for ax, title in ((ax_kl, "held-out text KL (nats/token), log scale"), (ax_t1, "held-out text top-1 (%)")):
        ax.set_xscale("log")
        ax.set_xlabel("stage-3a tokens")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    ax_kl.set_yscale("log")
    ax_kl.legend(fontsize=7)
    fig.suptitle("Stage-3a budget: finished runs and the fit through them (grey: the targets)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _millions(t: float | None) -> str:
    return f"{t / 1e6:,.0f}M" if t else "never (no trend toward it)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Points: e2e records (docs/results/e2e_*.json) or grid cells (GRID.json:CELL).")
    ap.add_argument("--series", nargs="+", action="append", required=True, metavar=("LABEL", "POINT"),
                    help="a label, then the records of its finished stage-3a runs (repeatable)")
    ap.add_argument("--target-kl", type=float, default=0.10, help="held-out text KL target (default 0.10, issue 25)")
    ap.add_argument("--target-top1", type=float, default=0.90, help="held-out top-1 target (default 0.90)")
    ap.add_argument("--tokens-per-s", type=float, default=None, help="stage 3a's speed, to state hours of training")
    ap.add_argument("--out", type=Path, help="the fit as JSON")
    ap.add_argument("--plot", type=Path, help="the points and fits as PNG")
    args = ap.parse_args(argv)
    if not 0 < args.target_kl or not 0 < args.target_top1 < 1:
        ap.error("--target-kl must be > 0 and --target-top1 between 0 and 1")
    series: dict[str, dict[str, Any]] = {}
    for label, *specs in args.series:
        if not specs:
            ap.error(f"--series {label}: no points")
        if label in series:
            ap.error(f"--series {label}: given twice")
        points = sorted((read_point(s) for s in specs), key=lambda p: p["tokens"])
        rows = {p["eval_tokens"] for p in points}
        if len(rows) > 1:
            raise SystemExit(f"error: --series {label}: its runs were evaluated on different held-out rows "
                             f"({sorted(rows)} tokens): their figures do not compare")
        layouts = {json.dumps(p["attention_layers"]) for p in points}
        series[label] = {"points": points, "fit": fit_series(points, args.target_kl, args.target_top1),
                         "mixed_layouts": len(layouts) > 1}
    print(f"targets: held-out text KL <= {args.target_kl}, top-1 >= {100 * args.target_top1:.0f} %")
    for label, s in series.items():
        print(f"\n## {label}" + ("   (WARNING: its points differ in attention layers)" if s["mixed_layouts"] else ""))
        print("| stage-3a tokens | KL | top-1 | attention layers | card | commit | source |")
        print("|---:|---:|---:|---|---|---|---|")
        for p in s["points"]:
            print(f"| {p['tokens'] / 1e6:.1f}M | {p['kl']:.4f} | {100 * p['top1']:.1f} % | {p['attention_layers']} "
                  f"| {p['card'] or '-'} | {p['commit'] or '-'} | {p['source']} |")
        f = s["fit"]
        print(f"KL x {f['kl_per_doubling']:.3f} per doubling (KL ∝ tokens^{f['kl_exponent']:.3f}; largest residual "
              f"{f['largest_residual_kl']:.3f} in log KL); top-1 {100 * f['top1_per_doubling']:+.2f} points per "
              f"doubling (largest residual {100 * f['largest_residual_top1']:.2f} points)")
        for what, t in (("KL target", f["tokens_at_target_kl"]), ("top-1 target", f["tokens_at_target_top1"])):
            hours = f" = {t / args.tokens_per_s / 3600:.1f} h of stage 3a at {args.tokens_per_s:,.0f} tokens/s" \
                if t and args.tokens_per_s else ""
            print(f"  {what} at about {_millions(t)} stage-3a tokens (extrapolated){hours}")
    result = {"what": "stage-3a budget fit (tools/budget_fit.py): extrapolations from finished runs, not measurements",
              "command": shlex.join(["tools/budget_fit.py", *(argv if argv is not None else sys.argv[1:])]),
              "target_kl": args.target_kl, "target_top1": args.target_top1, "tokens_per_s": args.tokens_per_s,
              "series": series}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(portable_paths(result), indent=1) + "\n")  # committed: no machine paths
    if args.plot:
        plot(series, args.target_kl, args.target_top1, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
