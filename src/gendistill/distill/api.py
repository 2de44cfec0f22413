"""``gendistill.distill(...)``: the ``gendistill distill`` command's function."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gendistill.distill.config import Recipe
from gendistill.distill.pipeline import run_recipe
from gendistill.distill.recipe_files import load_recipe
from gendistill.distill.result import DistillResult
from gendistill.errors import ConfigError


def distill(recipe: Recipe | str | Path, *, overrides: list[str] | None = None, resume: bool = False,
            overwrite: bool = False, dry_run: bool = False, allow_optim_change: bool = False,
            stop_after: int | None = None, teacher: Any = None, tokenizer: Any = None,
            student: Any = None) -> DistillResult:
    """Run a GenDistill recipe: stage 1 (mixer alignment), stage 2 (block alignment), stage 3a (KL on text), stage
    3b (chat KD, completion-only), saving the student (with its model card) after each stage.

    ``recipe``: a :class:`~gendistill.distill.config.Recipe`, a YAML file, or the name of a shipped recipe
    (``gendistill recipes`` lists them, e.g. ``"tiny-cpu"``). ``overrides``: ``"dotted.key=value"`` strings, as
    ``--set``. ``dry_run`` checks the recipe and every data source and builds the student, writing nothing.
    ``teacher``/``tokenizer``/``student`` may be given in memory instead of being loaded from the recipe.

    >>> res = gendistill.distill("tiny-cpu", overrides=["run.output_dir=runs/tiny"])  # doctest: +SKIP
    >>> res.final_student_dir, res.results["stage3b"].losses[-1]                          # doctest: +SKIP
    """
    if allow_optim_change and not resume:
        raise ConfigError("--allow-optim-change only applies with --resume")
    if stop_after is not None and stop_after < 1:
        raise ConfigError(f"--stop-after {stop_after}: must be at least 1 (optimizer steps)")
    if isinstance(recipe, Recipe):
        if overrides:
            raise ConfigError("overrides apply to a recipe file or name; change the Recipe object instead")
        r = recipe
    else:
        r = load_recipe(recipe, list(overrides or []))
    return run_recipe(r, resume=resume, overwrite=overwrite, dry_run=dry_run, stop_after=stop_after,
                      allow_optim_change=allow_optim_change, teacher=teacher, tokenizer=tokenizer, student=student)


__all__ = ["distill"]
