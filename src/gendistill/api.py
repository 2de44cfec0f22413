"""gendistill's Python API: one function per command, each returning a typed result. This module only gathers them;
each lives in its own package.

==============================  =========================  ===================================================
function                        command                    result
==============================  =========================  ===================================================
:func:`convert`                 ``gendistill convert``     :class:`ConvertResult`   (:mod:`gendistill.convert.api`)
:func:`distill`                 ``gendistill distill``     :class:`~gendistill.distill.result.DistillResult`
                                                           (:mod:`gendistill.distill.api`)
:func:`evaluate`                ``gendistill eval``        :class:`EvalResult`      (:mod:`gendistill.eval.api`)
:func:`bench`                   ``gendistill bench``       :class:`BenchResult`     (:mod:`gendistill.bench.api`)
:func:`load`                    (every command's loader)   ``(model, tokenizer)``   (:mod:`gendistill.models.api`)
:func:`push_to_hub`             --                         the hub commit URL       (:mod:`gendistill.models.api`)
==============================  =========================  ===================================================

The commands are thin wrappers over these functions: the same arguments under the same names (``device`` and
``dtype`` default to ``"auto"``: cuda and bfloat16 when there is a GPU, else cpu and float32). Every user mistake
raises :class:`gendistill.errors.GendistillError` with one line naming what and where.
"""

from __future__ import annotations

from gendistill.bench.api import BenchResult, bench
from gendistill.convert.api import ConvertResult, convert
from gendistill.distill.api import distill
from gendistill.distill.result import DistillResult
from gendistill.eval.api import EvalResult, evaluate
from gendistill.models.api import load, push_to_hub
from gendistill.teachers import DEFAULT_TEACHER

__all__ = ["convert", "distill", "evaluate", "bench", "load", "push_to_hub", "ConvertResult", "DistillResult",
           "EvalResult", "BenchResult", "DEFAULT_TEACHER"]
