"""Inference-efficiency benchmark: teacher Transformer vs hybrid (attention + KDA) student, measured in one run.

Entry points: :func:`gendistill.bench.runner.run_benchmark` (library), ``gendistill bench`` (CLI, see
:mod:`gendistill.bench.cli`), ``benchmarks/bench_inference.py`` (thin script). See ``docs/bench.md``."""

from __future__ import annotations

from gendistill.bench.settings import BenchSettings

__all__ = ["BenchSettings"]

from gendistill.api import callable_module as _callable_module
from gendistill.api import bench as _bench

_callable_module(__name__, _bench)  # gendistill.bench(...) is gendistill.api.bench(...)
