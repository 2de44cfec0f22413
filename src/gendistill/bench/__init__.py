"""Inference-efficiency benchmark: teacher Transformer vs hybrid (attention + KDA) student, measured in one run.

Entry points: :func:`gendistill.bench.runner.run_benchmark` (library), ``gendistill bench`` (CLI, see
:mod:`gendistill.bench.cli`), ``benchmarks/bench_inference.py`` (thin script). See ``docs/bench.md``. The package is
also the API function :func:`gendistill.bench.api.bench`: ``gendistill.bench(tiny=True)`` (see
:mod:`gendistill.callable_package`)."""

from __future__ import annotations

from gendistill.bench.api import bench as _bench
from gendistill.bench.settings import BenchSettings
from gendistill.callable_package import make_callable

__all__ = ["BenchSettings"]

make_callable(__name__, _bench)  # gendistill.bench(...) is gendistill.bench.api.bench(...)
