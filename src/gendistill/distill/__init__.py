"""GenDistill: the multi-stage distillation pipeline (stage 1 mixer alignment, stage 2 block alignment, stage 3a
end-to-end KD on text, stage 3b instruction KD with completion-only masking). Entry points: ``gendistill distill
RECIPE.yaml`` (see :mod:`gendistill.distill.cli`) and :func:`gendistill.distill.pipeline.run_recipe`. The package is
also the API function :func:`gendistill.distill.api.distill`: ``gendistill.distill("tiny-cpu")`` (see
:mod:`gendistill.callable_package`)."""

from gendistill.callable_package import make_callable
from gendistill.distill.api import distill as _distill
from gendistill.distill.config import Recipe, parse_recipe
from gendistill.distill.recipe_files import load_recipe

__all__ = ["Recipe", "load_recipe", "parse_recipe"]

make_callable(__name__, _distill)  # gendistill.distill(...) is gendistill.distill.api.distill(...)
