"""Dual-protocol evaluation: every model x task under log-likelihood ranking and under generation with answer
extraction, per-example records, retention and the protocol gap (docs/eval.md).

Entry points: :func:`gendistill.evaluate` (Python, returns an :class:`gendistill.api.EvalResult`), ``gendistill eval``
(the command, :mod:`gendistill.eval.cli`), and :func:`gendistill.eval.runner.run_eval` (the runner both use, on an
:class:`gendistill.eval.config.EvalConfig`). Sub-modules are imported on use, so this package is cheap to import.
"""
