"""GenDistill: the multi-stage distillation pipeline (stage 1 mixer alignment, stage 2 block alignment, stage 3a
end-to-end KD on text, stage 3b instruction KD with completion-only masking). Entry points: ``gendistill distill
RECIPE.yaml`` (see :mod:`gendistill.distill.cli`) and :func:`gendistill.distill.pipeline.run_recipe`."""

from gendistill.distill.config import Recipe, load_recipe, parse_recipe

__all__ = ["Recipe", "load_recipe", "parse_recipe"]

from gendistill.api import callable_module as _callable_module
from gendistill.api import distill as _distill

_callable_module(__name__, _distill)  # gendistill.distill(...) is gendistill.api.distill(...)
