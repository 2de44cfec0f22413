"""Draw a recorded benchmark's figures again from its JSON: ``fig2_<stem>.png`` (cache, time to first token eager and
graphed, decode vs context) and ``fig5_<stem>.png`` (theoretical cache, peak throughput), what ``gendistill bench``
draws at the end of a run. For a JSON copied into ``docs/results`` (the figures there are made by this command) or
after a change to the plots:

    python tools/bench_figures.py docs/results/bench_qwen3-0.6b_nvidia-h100-80gb-hbm3.json [--out DIR]

``--out`` defaults to the JSON's folder. A file that is not a ``gendistill bench`` result is one error line, exit 2,
nothing written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gendistill.bench.report import make_plots  # noqa: E402

REQUIRED = ("model", "card", "dtype", "contexts")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", type=Path, help="a bench_<model>_<card>.json written by gendistill bench")
    ap.add_argument("--out", type=Path, default=None, help="folder for the PNGs (default: the JSON's folder)")
    args = ap.parse_args(argv)
    try:
        results = json.loads(args.json.read_text())
    except (OSError, ValueError) as e:
        print(f"error: {args.json}: cannot read a JSON file ({e})", file=sys.stderr)
        return 2
    missing = [k for k in REQUIRED if not isinstance(results, dict) or k not in results]
    if missing:
        print(f"error: {args.json}: not a gendistill bench result (no {', '.join(missing)})", file=sys.stderr)
        return 2
    for path in make_plots(results, args.out or args.json.parent):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
