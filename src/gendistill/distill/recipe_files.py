"""Recipe files: a YAML recipe (a file, or the name of one shipped with the package) read into a
:class:`~gendistill.distill.config.Recipe`, with ``--set`` overrides applied and its relative paths resolved."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from gendistill.distill.config import Recipe, parse_recipe
from gendistill.distill.shipped import recipe_file
from gendistill.errors import ConfigError
from gendistill.io import data_dir


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``stages[1].optim.lr``-style ``dotted`` keys of a parsed YAML document to ``value``. A list element is
    named by its index or, in a list of mappings with a ``name`` (the stages), by that name: ``stages[stage3a].tokens``
    is ``stages[2].tokens`` in a recipe whose third stage is stage3a (the form ``gendistill ablate`` grids use)."""
    cur: Any = data
    keys = re.findall(r"[^.\[\]]+|\[[^\[\]]*\]", dotted)
    for i, k in enumerate(keys):
        last = i == len(keys) - 1
        if k.startswith("["):
            idx = _list_index(cur, k[1:-1], dotted)
            if last:
                cur[idx] = value
            else:
                cur = cur[idx]
        else:
            if not isinstance(cur, dict):
                raise ConfigError(f"override {dotted}: {k!r} is not inside a mapping")
            if last:
                cur[k] = value
            else:
                cur = cur.setdefault(k, {})


def _list_index(cur: Any, key: str, dotted: str) -> int:
    """The index ``key`` (digits, or the ``name`` of an element) names in the list ``cur``."""
    if not isinstance(cur, list):
        raise ConfigError(f"override {dotted}: [{key}] is not inside a list")
    if key.isdigit():
        if int(key) >= len(cur):
            raise ConfigError(f"override {dotted}: no list element {key} (the list has {len(cur)})")
        return int(key)
    names = [e.get("name") if isinstance(e, dict) else None for e in cur]
    if key not in names:
        have = ", ".join(str(n) for n in names if n is not None) or "no named elements"
        raise ConfigError(f"override {dotted}: no element named {key!r} (the list has: {have})")
    return names.index(key)


def read_yaml(path: Path, what: str) -> Any:
    """The YAML document in ``path``; a missing, malformed or empty file is one ``ConfigError`` line naming it."""
    if not path.is_file():
        raise ConfigError(f"{path}: {what} file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); save the "
                          f"{what} as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}".replace("\n", " ")) from None
    if data is None:
        raise ConfigError(f"{path}: the {what} is empty")
    return data


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe: a file, or the name of a recipe shipped with the package (``tiny-cpu``; see
    :mod:`gendistill.distill.shipped`). ``overrides`` are ``dotted.key=value`` strings (value parsed as YAML), e.g.
    ``run.output_dir=runs/x`` or ``stages[0].steps=10``. Relative paths are resolved by :func:`resolve_paths`."""
    given = str(path)
    path = recipe_file(path)
    data = read_yaml(path, "recipe")
    for ov in overrides or []:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r}: expected key=value")
        k, v = ov.split("=", 1)
        set_dotted(data, k.strip(), yaml.safe_load(v))
    with_set = f" with --set {' '.join(overrides)}" if overrides else ""  # a key may be wrong in either
    recipe = parse_recipe(data, f"{path}{with_set}")
    recipe._source = Path(given).name
    return resolve_paths(recipe, path.parent)


def _resolve(p: str, base: Path) -> str:
    if p.startswith("hf://") or Path(p).is_absolute():
        return p
    cand = (base / p).resolve()
    return str(cand) if cand.exists() or p.startswith(".") else p


def _resolve_data(p: str, base: Path) -> str:
    """A relative data file: beside the recipe if it is there, else in the data folder (``$GENDISTILL_DATA_DIR``,
    else ``../shared/data`` beside the working folder: :func:`gendistill.io.data_dir`), else left as written."""
    if p.startswith("hf://") or Path(p).is_absolute() or (base / p).exists():
        return _resolve(p, base)
    root = data_dir()
    if root is not None and (root / p).exists():
        return str((root / p).resolve())
    return _resolve(p, base)


def resolve_paths(recipe: Recipe, base: Path) -> Recipe:
    """Make local paths in the recipe absolute: data files beside the recipe (``base``) or in the data folder
    (:func:`_resolve_data`), ``student.path`` and a teacher file or folder relative to ``base``."""
    datas = [recipe.data] + [s.data for s in recipe.stages]
    for d in datas:
        if d is None:
            continue
        for s in d.sources:
            if not s.hub:
                s.path = _resolve_data(s.path, base)
    if recipe.student.path is not None:
        recipe.student.path = _resolve(recipe.student.path, base)
    t = recipe.teacher.spec
    if ("/" in t or t.endswith(".gguf")) and (base / t).exists():
        recipe.teacher.spec = str((base / t).resolve())
    return recipe
