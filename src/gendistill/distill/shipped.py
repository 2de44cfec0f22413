"""The recipes that ship inside the package (``gendistill/recipes/*.yaml``), found by name.

``gendistill recipes`` lists them, ``gendistill recipes NAME`` prints one, and every place that takes a recipe (or an
ablation grid) file also takes a shipped name: ``gendistill distill tiny-cpu``, ``gendistill.distill("tiny-cpu")``.
A shipped recipe names its data files relative to the data folder (see :func:`gendistill.distill.config.resolve_paths`),
so it runs from a wheel install without the repository.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from gendistill.errors import ConfigError

_SUFFIX = ".yaml"


@dataclass(frozen=True)
class ShippedRecipe:
    """``name``: what to type (the file name without ``.yaml``); ``description``: the file's first comment line."""

    name: str
    description: str
    path: Path


def _folder() -> Path:
    return Path(str(resources.files("gendistill") / "recipes"))


def shipped_recipes() -> list[ShippedRecipe]:
    """Every shipped recipe and grid, sorted by name."""
    out = []
    for p in sorted(_folder().glob(f"*{_SUFFIX}")):
        first = ""
        for line in p.read_text(encoding="utf-8").splitlines():
            if line.startswith("#"):
                first = line.lstrip("#").strip()
                break
        out.append(ShippedRecipe(p.name[: -len(_SUFFIX)], first, p))
    return out


def shipped_recipe(name: str) -> ShippedRecipe:
    """The shipped recipe called ``name`` (``.yaml`` optional); a :class:`ConfigError` listing them otherwise."""
    key = name.removesuffix(_SUFFIX)
    for r in shipped_recipes():
        if r.name == key:
            return r
    known = ", ".join(r.name for r in shipped_recipes())
    raise ConfigError(f"no shipped recipe named {name!r}; shipped: {known} (or pass a recipe file)")


def names_a_path(ref: str | Path) -> bool:
    """Whether a recipe reference has a folder part (so it names a file, never a shipped recipe)."""
    text = str(ref)
    return Path(ref).expanduser().parent != Path(".") or "/" in text or "\\" in text


def recipe_file(ref: str | Path) -> Path:
    """A recipe reference as a file: an existing file as is, else a shipped recipe's name. A missing file that looks
    like a path (:func:`names_a_path`) or ends in ``.yaml`` / ``.yml`` and is no shipped recipe's name is reported as
    a missing file."""
    p = Path(ref).expanduser()
    if p.is_file():
        return p
    if names_a_path(ref):
        raise ConfigError(f"{p}: recipe file not found")
    try:
        return shipped_recipe(str(ref)).path
    except ConfigError as e:
        if str(ref).endswith((".yaml", ".yml")):  # a file name first: say that no such file is here
            raise ConfigError(f"{p}: recipe file not found in {Path.cwd()} ({e})") from None
        raise


__all__ = ["ShippedRecipe", "names_a_path", "shipped_recipes", "shipped_recipe", "recipe_file"]
