"""Presentation of benchmark results: a rich table (printed last) and PNG plots in the style of the paper's
Figure 2 (memory, TTFT, decode speed vs context) and Figure 5 (theoretical cache vs length; peak throughput bars)."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gendistill.errors import ConfigError, first_line

GiB = 1024**3
MiB = 1024**2


def file_stem(model: str, card: str) -> str:
    """``<model>_<card>`` in lower case, every character but letters, digits, '-' and '.' made a '-': the name of a
    run's JSON (``bench_<stem>.json``) and of its figures (``fig2_<stem>.png``, ``fig5_<stem>.png``)."""
    def slug(text: str) -> str:
        return "".join(c if c.isalnum() or c in "-." else "-" for c in text.lower()).strip("-").replace("--", "-")

    return f"{slug(model)}_{slug(card)}"


def _fmt_bytes(n) -> str:
    if n is None:
        return "-"
    if n >= GiB:
        return f"{n / GiB:.2f} GiB"
    if n >= MiB:
        return f"{n / MiB:.1f} MiB"
    return f"{n / 1024:.1f} KiB"


def _fmt(v, spec=".1f", suffix="") -> str:
    return "-" if v is None else f"{v:{spec}}{suffix}"


def _ctx(n: int) -> str:
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)


def _err_cell(e: dict, what: str, text: str) -> str:
    err = (e.get("errors") or {}).get(what)
    if err and text == "-":
        return "OOM" if err.startswith("oom") else ("skip" if err.startswith("skipped") else "ERR")
    return text


def print_table(results: dict, console=None) -> None:
    console = console or Console(width=200)
    tbl = Table(title=f"gendistill bench: {results['model']} on {results['card']} ({results['dtype']})"
                + ("  [STAND-IN STUDENT]" if results.get("student_is_standin") else ""))
    for col in ("context", "cache T", "cache S", "S/T", "TTFT T ms", "TTFT S ms", "TTFT x", "graphed TTFT T/S ms",
                "graphed x", "dec T tok/s", "dec S tok/s", "dec x", "thr T tok/s (B)", "thr S tok/s (B)", "thr x"):
        tbl.add_column(col, justify="right")
    for c in results["contexts"]:
        t, s, r = c["teacher"], c["student"], c.get("ratios", {})
        ct = (t.get("cache_bytes_measured") or t.get("cache_bytes_theoretical") or {}).get("total")
        cs = (s.get("cache_bytes_measured") or s.get("cache_bytes_theoretical") or {}).get("total")

        def thr(e):
            v = e.get("throughput_tok_s")
            return _err_cell(e, "throughput", "-" if v is None else f"{v:.0f} ({e.get('throughput_batch')})")

        tbl.add_row(
            _ctx(c["context"]), _fmt_bytes(ct), _fmt_bytes(cs), _fmt(r.get("cache_theoretical_student_over_teacher"), ".3f"),
            _err_cell(t, "ttft", _fmt(t.get("ttft_ms"), ".1f")), _err_cell(s, "ttft", _fmt(s.get("ttft_ms"), ".1f")),
            _fmt(r.get("ttft_speedup"), ".2f", "x"),
            f"{_err_cell(t, 'ttft_graph', _fmt(t.get('ttft_graph_ms'), '.1f'))} / "
            f"{_err_cell(s, 'ttft_graph', _fmt(s.get('ttft_graph_ms'), '.1f'))}",
            _fmt(r.get("ttft_graph_speedup"), ".2f", "x"),
            _err_cell(t, "decode", _fmt(t.get("decode_tok_s"), ".1f")),
            _err_cell(s, "decode", _fmt(s.get("decode_tok_s"), ".1f")), _fmt(r.get("decode_speedup"), ".2f", "x"),
            thr(t), thr(s), _fmt(r.get("throughput_ratio"), ".2f", "x"),
        )
    console.print(tbl)
    targets = (results.get("summary") or {}).get("targets") or []
    if targets:
        tt = Table(title="targets (student vs teacher)")
        for col in ("metric", "where", "target", "value", "met"):
            tt.add_column(col)
        for x in targets:
            met = {True: "yes", False: "NO", None: "n/a"}[x["met"]]
            tt.add_row(x["metric"], x["where"], x["target"], _fmt(x["value"], ".3f"), met)
        console.print(tt)
    prof = results.get("profile") or {}
    if prof:
        parts = ("attention", "kda", "mlp", "lm_head")
        pt = Table(title="where the time goes (ms; prefill per call, decode per token; "
                         "CUDA kernel time on GPU, CPU time on CPU)")
        for col in ("context", "model", "phase", *parts, "sum"):
            pt.add_column(col, justify="right")
        for L, by_role in sorted(prof.items(), key=lambda kv: int(kv[0])):
            for role, r in by_role.items():
                for phase in ("prefill", "decode"):
                    d = r.get(f"{phase}_ms_by_part")
                    if d is None:
                        continue
                    pt.add_row(_ctx(int(L)), role, phase, *[_fmt(d.get(p), ".3f") for p in parts],
                               _fmt(sum(d.values()), ".3f"))
        console.print(pt)
    if results.get("json_path"):
        console.print(f"JSON: {results['json_path']}", markup=False)


def _ttft_variants(ax, ctxs: list[dict], colors: dict, labels: dict) -> None:
    """The TTFT panel's graphed prefills (no launch overhead), dashed; log scale, so that 1K and 128K both read."""
    for role in ("teacher", "student"):
        pts = [(c["context"], c[role]["ttft_graph_ms"]) for c in ctxs if c[role].get("ttft_graph_ms")]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, "s--", color=colors[role], alpha=0.7, markersize=4, label=f"{labels[role]}, CUDA graph")
    ax.set_yscale("log")


def make_plots(results: dict, out_dir: str | Path) -> list[str]:
    import matplotlib  # noqa: PLC0415  (heavy: plots only)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415  (heavy: plots only)
    from matplotlib.ticker import FuncFormatter  # noqa: PLC0415  (heavy: plots only)

    kfmt = FuncFormatter(lambda x, _: _ctx(int(x)) if x >= 1 else "")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    colors = {"teacher": "#555555", "student": "#d62728"}
    labels = {"teacher": "Transformer (teacher)", "student": "Hybrid-KDA (student)"}
    ctxs = results["contexts"]
    stem = file_stem(results["model"], results["card"])
    paths = []

    # Figure 2: memory, TTFT, decode vs context (batch 1).
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = [
        ("cache memory (GiB)", lambda e: (e.get("cache_bytes_measured") or {}).get("total"), GiB, "(a) memory"),
        ("TTFT (ms)", lambda e: e.get("ttft_ms"), 1, "(b) time to first token"),
        ("decode (tokens/s)", lambda e: e.get("decode_tok_s"), 1, "(c) decode speed"),
    ]
    for ax, (ylabel, get, scale, title) in zip(axes, panels):
        for role in ("teacher", "student"):
            pts = [(c["context"], get(c[role])) for c in ctxs if get(c[role]) is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, [y / scale for y in ys], "o-", color=colors[role], label=labels[role])
        if title.startswith("(b)"):
            _ttft_variants(ax, ctxs, colors, labels)
        if title.startswith("(a)"):
            for role in ("teacher", "student"):
                pts = [(c["context"], (c[role].get("cache_bytes_theoretical") or {}).get("total")) for c in ctxs]
                pts = [p for p in pts if p[1] is not None]
                if pts:
                    xs, ys = zip(*pts)
                    ax.plot(xs, [y / scale for y in ys], ":", color=colors[role], alpha=0.6)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(kfmt)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"{results['model']} on {results['card']}, batch 1, {results['dtype']}")
    fig.tight_layout()
    p = out_dir / f"fig2_{stem}.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    paths.append(str(p))

    # Figure 5: (a) theoretical cache vs length, (b) peak throughput bars.
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    curve = results.get("theoretical_cache_curve") or {}
    for role in ("teacher", "student"):
        if curve.get(role):
            axes[0].plot(curve["lengths"], [y / GiB for y in curve[role]], "-", color=colors[role], label=labels[role])
    axes[0].set_xscale("log", base=2)
    axes[0].xaxis.set_major_formatter(kfmt)
    axes[0].set_xlabel("sequence length (tokens)")
    axes[0].set_ylabel("cache (GiB, batch 1)")
    axes[0].set_title("(a) theoretical cache memory")
    axes[0].grid(alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8)
    tp = [c for c in ctxs if any(c[r].get("throughput_tok_s") for r in ("teacher", "student"))]
    if tp:
        x = list(range(len(tp)))
        w = 0.38
        for k, role in enumerate(("teacher", "student")):
            ys = [c[role].get("throughput_tok_s") or 0 for c in tp]
            bars = axes[1].bar([i + (k - 0.5) * w for i in x], ys, w, color=colors[role], label=labels[role])
            for bar, c in zip(bars, tp):
                bsz = c[role].get("throughput_batch")
                if bsz:
                    axes[1].annotate(f"B={bsz}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                                     ha="center", va="bottom", fontsize=7)
        axes[1].set_xticks(x, [_ctx(c["context"]) for c in tp])
    axes[1].set_xlabel("context length")
    axes[1].set_ylabel("peak decode throughput (tokens/s)")
    axes[1].set_title("(b) peak throughput (max batch before OOM)")
    axes[1].grid(alpha=0.3, axis="y")
    if axes[1].get_legend_handles_labels()[0]:
        axes[1].legend(fontsize=8)
    fig.tight_layout()
    p = out_dir / f"fig5_{stem}.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    paths.append(str(p))
    return paths


def load_baseline(path: str | Path, flag: str = "--compare") -> dict:
    """A previous run's bench JSON (what ``--compare`` prints this run against), read and checked before anything is
    measured: a missing file, a folder, a file that is not JSON or not a bench JSON (a mapping with a ``card`` and a
    ``contexts`` list of per-context entries) is one :class:`ConfigError` line naming ``flag`` and the file."""
    where = f"{flag} {path}"
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{where}: no such file")
    if p.is_dir():
        raise ConfigError(f"{where}: a folder, not a bench JSON file (bench_<model>_<card>.json)")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{where}: cannot read it ({first_line(e)})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{where}: not a JSON file ({first_line(e)})") from None
    contexts = data.get("contexts") if isinstance(data, dict) else None
    if (not isinstance(data, dict) or not isinstance(data.get("card"), str) or not isinstance(contexts, list)
            or not all(isinstance(c, dict) and isinstance(c.get("context"), int) for c in contexts)):
        raise ConfigError(f"{where}: not a bench JSON (expected the mapping `gendistill bench` writes, with a 'card' "
                          "and a 'contexts' list of per-context entries)")
    return data


#: what else than the card makes two runs' timings incomparable: (label, path in the results mapping). Not the
#: ``model`` label (a bounded-gate run is ``<model>-gate<LB>``, timed against the exact run on purpose) nor the student
#: (what a comparison is usually about).
COMPARED_SETUP = (("dtype", ("dtype",)), ("decode_cache", ("settings", "decode_cache")),
                  ("teacher params", ("models", "teacher", "params")),
                  ("teacher layer_types", ("models", "teacher", "layer_types")))


def _at(d, path: tuple[str, ...]):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def setup_differences(results: dict, baseline: dict) -> list[str]:
    """What differs, besides the card, between this run's setup and the baseline's (:data:`COMPARED_SETUP`), as
    ``"<what> <baseline> vs <now>"``; a key one of the runs lacks (an older JSON) is not a difference."""
    out = []
    for label, path in COMPARED_SETUP:
        then, now = _at(baseline, path), _at(results, path)
        if then is not None and now is not None and then != now:
            out.append(f"{label} {then} vs {now}")
    return out


def print_comparison(results: dict, baseline: dict, console=None) -> None:
    """This run against a previous bench JSON (e.g. the committed docs/results/bench_<model>_<card>.json). The ratios
    are printed either way; the title says ``[DIFFERENT CARD: not comparable]`` when the cards differ and ``[NOT
    COMPARABLE: <what differs>]`` when the dtype, the decode cache or the teacher (params, layer types) do."""
    console = console or Console(width=200)
    same_card = results.get("card") == baseline.get("card")
    differs = setup_differences(results, baseline)
    tbl = Table(title=escape(f"vs baseline {baseline.get('started', '?')} on {baseline.get('card')}"
                             + ("" if same_card else "  [DIFFERENT CARD: not comparable]")
                             + (f"  [NOT COMPARABLE: {'; '.join(differs)}]" if differs else "")))
    for col in ("context", "model", "metric", "baseline", "now", "now/baseline"):
        tbl.add_column(col, justify="right")
    base = {c["context"]: c for c in baseline.get("contexts", [])}
    metrics = (("ttft_ms", ".2f"), ("decode_tok_s", ".1f"), ("throughput_tok_s", ".0f"), ("throughput_batch", "d"))
    for c in results["contexts"]:
        b = base.get(c["context"])
        if b is None:
            continue
        for role in ("teacher", "student"):
            for key, spec in metrics:
                now, then = c.get(role, {}).get(key), b.get(role, {}).get(key)
                if now is None or then is None:
                    continue
                tbl.add_row(_ctx(c["context"]), role, key, format(then, spec), format(now, spec),
                            _fmt(now / then if then else None, ".3f", "x"))
    console.print(tbl)
