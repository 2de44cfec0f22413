"""Cut the machine paths out of result files before they are committed to ``docs/results`` (committed JSON carries
no absolute paths: ``/root/out/bench/fig2.png`` -> ``fig2.png``, the rule of ``gendistill.io.portable_command``).

    python tools/portable_results.py docs/results/bench_qwen3-0.6b_nvidia-h200.json [more.json ...]

Rewrites each file in place (atomically) and prints what changed; ``--check`` only lists the paths and exits 1 when
there are any (``tests/test_results_files.py`` runs the same check over ``docs/results``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gendistill.io import absolute_paths, atomic_write_text, portable_paths  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", type=Path, help="JSON result files")
    ap.add_argument("--check", action="store_true", help="list the paths only; exit 1 when there are any")
    args = ap.parse_args()
    found = False
    for path in args.files:
        try:
            text = path.read_text()
            data = json.loads(text)
        except (OSError, ValueError) as e:
            sys.exit(f"error: {path}: not a readable JSON file ({e})")
        paths = sorted(absolute_paths(data))
        found |= bool(paths)
        for p in paths:
            print(f"{path}: {p}")
        if paths and not args.check:
            lines = text.splitlines()
            indent = len(lines[1]) - len(lines[1].lstrip()) if len(lines) > 1 else None  # the file's own layout
            atomic_write_text(path, json.dumps(portable_paths(data), indent=indent, ensure_ascii=False) + "\n")
    sys.exit(1 if found and args.check else 0)


if __name__ == "__main__":
    main()
