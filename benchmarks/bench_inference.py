#!/usr/bin/env python
"""Thin script around ``gendistill bench`` (same options), for machines where the package is on the path but the
console script is not installed:  python benchmarks/bench_inference.py --config qwen3-0.6b --out runs/bench
(``python -m gendistill bench ...`` does the same.)"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gendistill.cli import app  # noqa: E402

if __name__ == "__main__":
    app(["bench", *sys.argv[1:]])
