"""Draw a recorded benchmark's figures again from its JSON: ``fig2_<stem>.png`` (cache, time to first token eager and
graphed, decode vs context) and ``fig5_<stem>.png`` (theoretical cache, peak throughput), what ``gendistill bench``
draws at the end of a run. For a JSON copied into ``docs/results`` (the figures there are made by this command) or
after a change to the plots:

    python tools/bench_figures.py docs/results/bench_qwen3-0.6b_nvidia-h100-80gb-hbm3.json [--out DIR]

``--out`` defaults to the JSON's folder. A file that is not a ``gendistill bench`` result, or figures that cannot be
drawn or written, is one error line, exit 2, and no figure written (both are drawn in a scratch folder first).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gendistill.bench.report import make_plots  # noqa: E402

ROLES = ("teacher", "student")


def bench_result_problem(results) -> str | None:
    """Why ``results`` is not a ``gendistill bench`` result the plots can read (None: it is)."""
    if not isinstance(results, dict):
        return "not a JSON object"
    missing = [k for k in ("model", "card", "dtype", "contexts") if k not in results]
    if missing:
        return f"no {', '.join(missing)}"
    contexts = results["contexts"]
    if not isinstance(contexts, list):
        return "'contexts' is not a list"
    for i, c in enumerate(contexts):
        if not (isinstance(c, dict) and isinstance(c.get("context"), int)
                and all(isinstance(c.get(r), dict) for r in ROLES)):
            return f"contexts[{i}] has no integer 'context' with 'teacher' and 'student' entries"
    curve = results.get("theoretical_cache_curve") or {}
    if not isinstance(curve, dict) or (any(curve.get(r) for r in ROLES) and not isinstance(curve.get("lengths"), list)):
        return "'theoretical_cache_curve' has values but no 'lengths'"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", type=Path, help="a bench_<model>_<card>.json written by gendistill bench")
    ap.add_argument("--out", type=Path, default=None, help="folder for the PNGs (default: the JSON's folder)")
    args = ap.parse_args(argv)
    out = args.out or args.json.parent
    try:
        results = json.loads(args.json.read_text())
    except (OSError, ValueError) as e:
        print(f"error: {args.json}: cannot read a JSON file ({e})", file=sys.stderr)
        return 2
    problem = bench_result_problem(results)
    if problem:
        print(f"error: {args.json}: not a gendistill bench result ({problem})", file=sys.stderr)
        return 2
    if out.exists() and not out.is_dir():
        print(f"error: --out {out}: exists and is not a folder", file=sys.stderr)
        return 2
    staged: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="bench_figures_") as scratch:
        try:
            drawn = [Path(p) for p in make_plots(results, scratch)]
            out.mkdir(parents=True, exist_ok=True)
            for p in drawn:  # every copy made before any lands
                staged.append(Path(shutil.copy2(p, out / f".{p.name}.partial")))
            written = [s.replace(out / p.name) for s, p in zip(staged, drawn)]
        except (KeyError, TypeError, ValueError, OSError) as e:
            for s in staged:  # only the copies this run made
                s.unlink(missing_ok=True)
            print(f"error: {args.json}: cannot draw or write its figures ({type(e).__name__}: {e})", file=sys.stderr)
            return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
