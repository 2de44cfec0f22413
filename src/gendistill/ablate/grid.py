"""The typed ablation grid: a base recipe, named variants per axis, and their expansion into cells.

A grid file is YAML validated by pydantic (unknown keys forbidden)::

    base: smollm2-135m.yaml          # a recipe file (relative to the grid), a shipped recipe's name, or a mapping
    set: {stages[stage3b].tokens: 4_000_000}   # overrides applied to the base, i.e. to every cell
    mode: one_at_a_time              # one_at_a_time | product
    output_dir: runs/ablate/smollm2
    axes:
      masking: [completion_only, all_tokens]               # a built-in axis: variants by name
      freeze: {stages: [stage3b], variants: [attention, none, attention+mlp]}
      lr_3b:                                               # any axis: named variants = dotted recipe overrides
        low: {stages[stage3b].optim.lr: 1.0e-5}
        high: {stages[stage3b].optim.lr: 1.0e-4}
    eval: {tasks: arc_easy, limit: 100}

Override keys are the dotted paths of ``gendistill distill --set`` and may name a stage instead of its index
(``stages[stage3b].masking``). A cell is the base recipe with one variant per varied axis applied; its recipe is
fully validated when the grid is loaded, so a bad variant fails before anything runs.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gendistill.distill.config import Recipe, format_validation_error, parse_recipe
from gendistill.distill.losses import LOGIT_LOSSES
from gendistill.distill.recipe_files import read_yaml, resolve_paths, set_dotted
from gendistill.distill.shipped import names_a_path, recipe_file
from gendistill.distill.stage_facts import MASKINGS, STAGE_ORDER, StageName
from gendistill.errors import ConfigError
from gendistill.layers.registry import LINEAR_MIXERS

VARIANT_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")
MAX_CELLS = 512  # a product grid beyond this is almost certainly a typo


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------------------------------- built-in axes
_FREEZE_GROUPS = {  # trainable groups per freezing variant (embeddings and lm_head stay frozen, as in the paper)
    "attention": ["kda", "mlp", "norms"],
    "none": ["kda", "mlp", "norms", "attention"],
    "attention+mlp": ["kda", "norms"],
    "mlp": ["kda", "norms", "attention"],
}
_OBJECTIVES = {  # stage-relative loss overrides: every registered logit loss, and kl+ce with the paper's CE weight
    **{kind: {"loss.kind": kind, "loss.ce_weight": 0.0} for kind in LOGIT_LOSSES},  # 0.01 (which it found harmful)
    "kl+ce": {"loss.kind": "forward_kl", "loss.ce_weight": 0.01},
}
_MASKINGS = {m: {"masking": m} for m in MASKINGS}

#: built-in axes whose variants are names: axis -> (default stages, variant -> overrides relative to a stage)
NAMED_AXES: dict[str, tuple[tuple[str, ...], dict[str, dict[str, Any]]]] = {
    "objective": (("stage3a", "stage3b"), _OBJECTIVES),
    "masking": (("stage3b",), _MASKINGS),
    "freeze": (("stage3b",), {k: {"trainable.groups": v} for k, v in _FREEZE_GROUPS.items()}),
}
_STAGE_SUFFIX = re.compile(r"^(tokens|dataset)_(1|2|3a|3b)$")
BUILTIN_AXES = "objective, masking, freeze, mixer, tokens_<stage>, dataset_<stage> (stage 1, 2, 3a or 3b)"


def _human_tokens(n: int) -> str:
    for div, suf in ((10**9, "B"), (10**6, "M"), (10**3, "K")):
        if n >= div and n % (div // 10) == 0:
            v = n / div
            return f"{v:.15g}{suf}"  # every digit: 1234567000 is "1234567K", not "1.23457e+06K"
    return str(n)


def parse_token_count(v: Any, where: str) -> int:
    """``100_000_000``, ``1.0e8``, ``"1e8"``, ``"100M"``, ``"2.5B"`` -> an int > 0."""
    if isinstance(v, bool):
        raise ConfigError(f"{where}: {v!r} is not a token count")
    if isinstance(v, (int, float)):
        n = v
    elif isinstance(v, str):
        m = re.fullmatch(r"\s*([0-9][0-9_.]*(?:e[0-9]+)?)\s*([KkMmBbGg]?)\s*", v)
        if not m:
            raise ConfigError(f"{where}: {v!r} is not a token count (e.g. 100000000, 1e8, 100M, 2.5B)")
        scale = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}[m.group(2).lower()]
        try:
            n = float(m.group(1).replace("_", "")) * scale
        except ValueError:
            raise ConfigError(f"{where}: {v!r} is not a token count") from None
    else:
        raise ConfigError(f"{where}: {v!r} is not a token count")
    if not math.isfinite(n) or n < 1 or n != int(n):
        raise ConfigError(f"{where}: {v!r} is not a positive whole number of tokens")
    return int(n)


# --------------------------------------------------------------------------------------------------- the schema
class AxisConfig(_Strict):
    """One axis: ``variants`` is a list (built-in axes: preset names, token counts, datasets, mixer names) or a
    mapping ``name -> {dotted.key: value}``; ``stages`` says which stages a built-in axis changes."""

    stages: list[StageName] | None = None
    variants: list[Any] | dict[str, dict[str, Any]] = Field(min_length=1)


class GridEvalConfig(_Strict):
    """How every cell's student (and the teacher, for retention and fidelity) is evaluated: the options of
    ``gendistill eval`` (docs/eval.md)."""

    tasks: str = "arc_easy"
    protocols: list[Literal["loglik", "generate"]] = Field(default_factory=lambda: ["loglik", "generate"],
                                                           min_length=1)
    limit: int | None = Field(default=100, gt=0)
    seed: int = 0
    batch_size: int | None = Field(default=None, gt=0, description="generation rows per batch; None: from free "
                                                                   "GPU memory (gendistill.eval.generate)")
    token_budget: int | None = Field(default=None, gt=0, description="log-likelihood tokens per batch; None: from "
                                                                     "free GPU memory (gendistill.eval.loglik)")
    loglik_chat_template: bool = False
    samples: int = Field(default=0, ge=0)
    temperature: float = Field(default=0.7, gt=0)
    top_p: float = Field(default=0.8, gt=0, le=1)
    top_k: int = Field(default=20, gt=0)
    max_new_tokens: int | None = Field(default=None, gt=0)
    data_source: Literal["local", "hf"] = "local"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"
    fidelity_chat: int = Field(default=0, ge=0)
    fidelity_data: str | None = None
    # the generated long-context tasks (``ruler_*`` in ``tasks``): context lengths and needle depths, as gendistill
    # eval's --context-lengths ("2k,4k,8k") and --depths ("0,50,100", percent); None: eval's defaults
    context_lengths: str | None = None
    depths: str | None = None


class GridConfig(_Strict):
    base: str | dict[str, Any]
    set: dict[str, Any] = Field(default_factory=dict)
    mode: Literal["one_at_a_time", "product"] = "one_at_a_time"
    output_dir: str
    axes: dict[str, AxisConfig] = Field(min_length=1)
    eval: GridEvalConfig = Field(default_factory=GridEvalConfig)
    equal_budget: bool = Field(default=True, description="every cell trains on the base's tokens per stage "
                                                         "(axes named tokens_* excepted)")

    @field_validator("axes", mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        out = {}
        for name, spec in v.items():
            if isinstance(spec, list) or (isinstance(spec, dict) and "variants" not in spec):
                spec = {"variants": spec}
            out[name] = spec
        return out

    @model_validator(mode="after")
    def _names(self) -> "GridConfig":
        for axis in self.axes:
            if not VARIANT_NAME.match(axis):
                raise ValueError(f"axes: axis name {axis!r} may only use letters, digits and _ . + -")
        return self


# --------------------------------------------------------------------------------------------------- cells
@dataclass
class Cell:
    """One point of the grid: ``assignment`` maps each varied axis to its variant; ``recipe`` is the base with those
    variants' ``overrides`` (resolved dotted keys) applied."""

    name: str
    assignment: dict[str, str]
    overrides: dict[str, Any]
    recipe: Recipe


@dataclass
class Grid:
    config: GridConfig
    source: str
    base: Recipe
    variants: dict[str, dict[str, dict[str, Any]]]  # axis -> variant -> resolved overrides
    cells: list[Cell] = field(default_factory=list)

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)


def _stage_index(raw: dict[str, Any]) -> dict[str, int]:
    stages = raw.get("stages") if isinstance(raw, dict) else None
    if not isinstance(stages, list):
        return {}
    return {s.get("name"): i for i, s in enumerate(stages) if isinstance(s, dict)}


def resolve_key(key: str, stage_index: dict[str, int], where: str) -> str:
    """``stages[stage3b].masking`` -> ``stages[3].masking`` (names looked up in the base recipe's stage list)."""

    def sub(m: re.Match) -> str:
        name = m.group(1)
        if name not in stage_index:
            have = ", ".join(stage_index) or "none"
            raise ConfigError(f"{where}: {key}: the base recipe has no stage {name!r} (it has {have})")
        return f"stages[{stage_index[name]}]"

    return re.sub(r"stages\[([A-Za-z][A-Za-z0-9_]*)\]", sub, key.strip())


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any], where: str) -> dict[str, Any]:
    """A deep copy of the raw recipe mapping with the resolved dotted ``overrides`` set. Setting a key under a
    stage's ``data`` when that stage has none starts from a copy of the recipe-level data (so ``limit`` or
    ``sources`` can change for one stage without losing the other data settings)."""
    out = copy.deepcopy(raw)
    for key, value in overrides.items():
        m = re.match(r"stages\[(\d+)\]\.data\.", key)
        if m:
            stages = out.get("stages") or []
            i = int(m.group(1))
            if i < len(stages) and isinstance(stages[i], dict) and stages[i].get("data") is None \
                    and isinstance(out.get("data"), dict):
                stages[i]["data"] = copy.deepcopy(out["data"])
        try:
            set_dotted(out, key, copy.deepcopy(value))
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    return out


def _key_parts(key: str) -> list[str]:
    return re.findall(r"[^.\[\]]+|\[\d+\]", key)


def _overlap(a: str, b: str) -> bool:
    pa, pb = _key_parts(a), _key_parts(b)
    n = min(len(pa), len(pb))
    return pa[:n] == pb[:n]


def _stage_relative(stages: list[str], rel: dict[str, Any]) -> dict[str, Any]:
    return {f"stages[{s}].{k}": v for s in stages for k, v in rel.items()}


def _axis_stages(axis: str, spec: AxisConfig, default: tuple[str, ...], present: list[str], where: str) -> list[str]:
    if spec.stages is not None:
        missing = [s for s in spec.stages if s not in present]
        if missing:
            raise ConfigError(f"{where}.stages: the base recipe has no stage {missing[0]} (it has {', '.join(present)})")
        return list(spec.stages)
    stages = [s for s in default if s in present]
    if not stages:
        raise ConfigError(f"{where}: none of its default stages ({', '.join(default)}) is in the base recipe; "
                          f"name them with '{axis}: {{stages: [...], variants: [...]}}'")
    return stages


def _builtin_variants(axis: str, spec: AxisConfig, raw_base: dict[str, Any], present: list[str],
                      where: str) -> dict[str, dict[str, Any]]:
    """A list of variants of a built-in axis -> ``{variant name: overrides}`` (stage names not yet resolved)."""
    assert isinstance(spec.variants, list)
    out: dict[str, dict[str, Any]] = {}
    if axis in NAMED_AXES:
        default, presets = NAMED_AXES[axis]
        stages = _axis_stages(axis, spec, default, present, where)
        for v in spec.variants:
            if v not in presets:
                raise ConfigError(f"{where}: unknown variant {v!r}; known: {', '.join(presets)} "
                                  f"(or give named variants as dotted overrides)")
            out[v] = _stage_relative(stages, presets[v])
        return out
    if axis == "mixer":
        student = raw_base.get("student") or {}
        if student.get("path") is not None:
            raise ConfigError(f"{where}: the base recipe loads an existing student (student.path); the mixer axis "
                              f"needs a student converted from the teacher (student.attention_layers)")
        base_mixer = (student.get("kda_options") or {}).get("linear_attention_type", "kda")
        for v in spec.variants:
            if v not in LINEAR_MIXERS:
                raise ConfigError(f"{where}: unknown mixer {v!r}; registered: {', '.join(sorted(LINEAR_MIXERS))}")
            # the base's own mixer is the base recipe unchanged, so that cell shares the base's stage runs
            out[v] = {} if v == base_mixer else {"student.kda_options.linear_attention_type": v}
        return out
    m = _STAGE_SUFFIX.match(axis)
    if m is None:
        raise ConfigError(f"{where}: a list of variants needs a built-in axis ({BUILTIN_AXES}); "
                          f"give named variants instead: {axis}: {{name: {{dotted.key: value}}}}")
    kind, stage = m.group(1), f"stage{m.group(2)}"
    stages = _axis_stages(axis, spec, (stage,), present, where)
    for i, v in enumerate(spec.variants):
        if kind == "tokens":
            n = parse_token_count(v, f"{where}[{i}]")
            out[_human_tokens(n)] = _stage_relative(stages, {"tokens": n, "steps": None})
        else:
            if not isinstance(v, dict) or not isinstance(v.get("name"), str):
                raise ConfigError(f"{where}[{i}]: a dataset variant is a mapping with a 'name' and data keys "
                                  f"(sources: [...], limit, skip_empty, ...)")
            rel = {f"data.{k}": val for k, val in v.items() if k != "name"}
            if not rel:
                raise ConfigError(f"{where}[{i}] ({v['name']}): no data keys (e.g. sources: [...])")
            out[v["name"]] = _stage_relative(stages, rel)
    return out



def _parse_cell(raw: dict[str, Any], base_dir: Path, source: str) -> Recipe:
    return resolve_paths(parse_recipe(raw, source), base_dir)


def stage_budget(recipe: Recipe) -> dict[str, int]:
    """Tokens each stage trains on: steps x batch_size x seq_len (padding counted, as the trainer counts them)."""
    return {s.name: s.total_steps() * s.batch_size * s.seq_len for s in recipe.stages}


def load_grid(path: str | Path, base_overrides: list[str] | None = None) -> Grid:
    """Read and validate a grid file, expand it into cells and validate every cell's recipe. ``base_overrides`` are
    ``key=value`` strings (value parsed as YAML) applied to the base recipe, after the grid's own ``set``. ``path``
    may also name a grid shipped with the package (``ablate-smollm2``)."""
    path = Path(path) if Path(path).exists() else recipe_file(path)
    data = read_yaml(path, "grid")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a grid is a YAML mapping, got {type(data).__name__}")
    try:
        cfg = GridConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path))) from None

    if isinstance(cfg.base, str):
        base_path = (path.parent / cfg.base) if not Path(cfg.base).is_absolute() else Path(cfg.base)
        if not base_path.exists() and not names_a_path(cfg.base):
            try:  # a shipped recipe's name, as `gendistill distill NAME` takes it
                base_path = recipe_file(cfg.base)
            except ConfigError as e:
                raise ConfigError(f"{path}: base: {cfg.base} is neither a file next to the grid nor a shipped "
                                  f"recipe ({e})") from None
        raw_base = read_yaml(base_path, "base recipe")
        if not isinstance(raw_base, dict):
            raise ConfigError(f"{base_path}: a recipe is a YAML mapping, got {type(raw_base).__name__}")
        base_dir, base_source = base_path.parent, str(base_path)
    else:
        raw_base, base_dir, base_source = cfg.base, path.parent, f"{path}: base"

    index = _stage_index(raw_base)
    sets = dict(cfg.set)
    for ov in base_overrides or []:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r}: expected key=value")
        k, v = ov.split("=", 1)
        sets[k.strip()] = yaml.safe_load(v)
    sets = {resolve_key(k, index, f"{path}: set"): v for k, v in sets.items()}
    raw_base = apply_overrides(raw_base, sets, f"{path}: set")
    base = _parse_cell(raw_base, base_dir, base_source)
    present = [s.name for s in base.stages]

    variants: dict[str, dict[str, dict[str, Any]]] = {}
    for axis, spec in cfg.axes.items():
        where = f"{path}: axes.{axis}"
        if isinstance(spec.variants, list):
            named = _builtin_variants(axis, spec, raw_base, present, f"{where}.variants")
            if len(named) != len(spec.variants):
                raise ConfigError(f"{where}: a variant is listed twice")
        else:
            if spec.stages is not None:
                raise ConfigError(f"{where}: 'stages' applies to built-in variant lists only; named variants give "
                                  f"full dotted keys (stages[stage3b]....)")
            named = dict(spec.variants)
        resolved = {}
        for vname, ovs in named.items():
            if not VARIANT_NAME.match(str(vname)):
                raise ConfigError(f"{where}: variant name {vname!r} may only use letters, digits and _ . + -")
            if not isinstance(ovs, dict):
                raise ConfigError(f"{where}.{vname}: a variant is a mapping of dotted keys to values")
            resolved[str(vname)] = {resolve_key(k, index, f"{where}.{vname}"): v for k, v in ovs.items()}
        variants[axis] = resolved

    grid = Grid(config=cfg, source=str(path), base=base, variants=variants)
    grid.cells = _expand(grid, raw_base, base_dir)
    _check_budget(grid)
    return grid


def _expand(grid: Grid, raw_base: dict[str, Any], base_dir: Path) -> list[Cell]:
    axes = list(grid.variants)
    if grid.config.mode == "one_at_a_time":
        assignments = [{a: v} for a in axes for v in grid.variants[a]]
    else:
        combos = list(itertools.product(*[list(grid.variants[a]) for a in axes]))
        if len(combos) > MAX_CELLS:
            raise ConfigError(f"{grid.source}: the product of the axes has {len(combos)} cells (more than "
                              f"{MAX_CELLS}); use mode: one_at_a_time or fewer variants")
        assignments = [dict(zip(axes, c)) for c in combos]
    cells = []
    for asg in assignments:
        name = "__".join(f"{a}={v}" for a, v in asg.items())
        merged: dict[str, Any] = {}
        owner: dict[str, str] = {}
        for a, v in asg.items():
            for k, val in grid.variants[a][v].items():
                clash = next((k2 for k2 in merged if _overlap(k, k2)), None)
                if clash is not None:
                    raise ConfigError(f"{grid.source}: cell {name}: axes {owner[clash]} and {a} both set {k} "
                                      f"(product mode needs axes that change different keys)")
                merged[k], owner[k] = val, a
        where = f"{grid.source}: cell {name}"
        raw = apply_overrides(raw_base, merged, where)
        cells.append(Cell(name=name, assignment=asg, overrides=merged, recipe=_parse_cell(raw, base_dir, where)))
    return cells


def _check_budget(grid: Grid) -> None:
    if not grid.config.equal_budget:
        return
    want = stage_budget(grid.base)
    for c in grid.cells:
        # a tokens_<stage> axis changes its own stage's budget on purpose; every other stage is compared (in product
        # mode every cell carries the tokens axis, and its other axes must still keep their budgets)
        free = {f"stage{m.group(2)}" for a in c.assignment if (m := _STAGE_SUFFIX.match(a)) and m.group(1) == "tokens"}
        got = stage_budget(c.recipe)
        stages = [s for s in sorted(set(want) | set(got), key=STAGE_ORDER.index) if s not in free]
        diff = next((s for s in stages if want.get(s) != got.get(s)), None)
        if diff is not None:
            raise ConfigError(f"{grid.source}: cell {c.name} trains {diff} on {got.get(diff, 0):,} tokens, the base "
                              f"on {want.get(diff, 0):,} (equal_budget: true; set it false to allow this)")

