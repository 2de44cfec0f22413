#!/usr/bin/env python
"""Thin script around ``gendistill bench`` (same options), for machines where the package is on the path but the
console script is not installed:  python benchmarks/bench_inference.py --config qwen3-0.6b --out runs/bench"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import typer  # noqa: E402

from gendistill.bench.cli import bench  # noqa: E402

if __name__ == "__main__":
    typer.run(bench)
