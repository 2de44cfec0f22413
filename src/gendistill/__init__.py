"""gendistill: convert a pretrained Transformer into a hybrid softmax-attention / Kimi Delta Attention (KDA) model,
distill it with GenDistill, and judge it by generation as well as by log-likelihood.

Importing the package registers the hybrid model with transformers' Auto classes, so
``AutoModelForCausalLM.from_pretrained(student_dir)`` works without ``trust_remote_code``.

The Python API (one function per command, each with a typed result; see :mod:`gendistill.api`)::

    import gendistill

    student = gendistill.convert("smollm2-135m-instruct", "every:4", out="runs/student")      # ConvertResult
    run = gendistill.distill("tiny-cpu", overrides=["run.output_dir=runs/tiny"])             # DistillResult
    report = gendistill.evaluate(["smollm2-135m-instruct", run.final_student_dir], "arc_easy")  # EvalResult
    speed = gendistill.bench(tiny=True)                                                       # BenchResult
    model, tokenizer = gendistill.load("runs/student")                                        # any model reference

Everything but the model classes is imported on first use, so ``import gendistill`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from gendistill.models.hybrid import HybridConfig, HybridForCausalLM, HybridModel  # noqa: F401  (registers Auto classes)
from gendistill.version import __version__

# name -> module that defines it, imported on first use (PEP 562). gendistill.convert / .distill / .bench are the
# sub-packages, callable as the API functions of the same names (gendistill.callable_package); gendistill.api gathers
# every API function.
_LAZY = {
    "convert": "gendistill.convert", "distill": "gendistill.distill", "bench": "gendistill.bench",
    "api": "gendistill.api", "evaluate": "gendistill.eval.api", "load": "gendistill.models.api",
    "push_to_hub": "gendistill.models.api", "ConvertResult": "gendistill.convert.api",
    "EvalResult": "gendistill.eval.api", "BenchResult": "gendistill.bench.api",
    "DistillResult": "gendistill.distill.result",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'gendistill' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    value = module if _LAZY[name] == f"gendistill.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["HybridConfig", "HybridForCausalLM", "HybridModel", "__version__", *(n for n in _LAZY if n != "api")]
