"""``tools/sweep_cpu_smoke.py`` (the CPU rehearsal of a lease grid on the real teacher): for every shipped grid the
scaled-down grid trains a few steps per stage — the grid's own budgets and those it leaves to its base recipe —, keeps
a list-form token axis's budgets distinct, and names the layer files a selection grid reads. (Running it needs the
data folder and minutes per grid; this checks what it would run.)"""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import yaml

from gendistill.distill.shipped import recipe_file, shipped_recipes

ROOT = Path(__file__).resolve().parents[2]
SMOKE = runpy.run_path(str(ROOT / "tools" / "sweep_cpu_smoke.py"))
GRIDS = [r.name for r in shipped_recipes() if {"base", "axes"} <= set(yaml.safe_load(recipe_file(r.name).read_text()))]


def test_the_shipped_grids_are_found():
    assert {"sweep-smollm2-lease", "sweep3b-smollm2-lease", "sched-smollm2-lease", "gate-smollm2-lease",
            "select-smollm2-lease", "ablate-smollm2"} <= set(GRIDS)


def _token_values(grid: dict) -> list[int]:
    vals = [v for k, v in grid["set"].items() if k.endswith(".tokens")]
    for axis in grid["axes"].values():
        variants = axis.get("variants", axis) if isinstance(axis, dict) else axis
        if isinstance(variants, dict):
            vals += [v for ov in variants.values() for k, v in ov.items() if k.endswith(".tokens")]
        else:
            vals += [v for v in variants if isinstance(v, int)]
    return vals


@pytest.mark.parametrize("name", GRIDS)
def test_every_stage_trains_a_few_steps(name, tmp_path):
    grid = SMOKE["smoke_grid"](tmp_path, name)
    base = yaml.safe_load(Path(grid["base"]).read_text())
    for st in base["stages"]:
        assert f"stages[{st['name']}].tokens" in grid["set"] or f"stages[{st['name']}].steps" in grid["set"], st["name"]
    assert all(isinstance(v, int) and 0 < v <= 1024 for v in _token_values(grid)), _token_values(grid)
    assert grid["set"]["run.device"] == "cpu" and grid["eval"]["limit"] == 2
    for axis_name, axis in grid["axes"].items():
        if axis_name.startswith("tokens_") and isinstance(axis, list):
            assert len(set(axis)) == len(axis), (axis_name, axis)  # distinct budgets, distinct cells


def test_a_selection_grid_names_its_layer_files(tmp_path):
    grid = SMOKE["smoke_grid"](tmp_path, "select-smollm2-lease")
    assert sorted(SMOKE["layer_files"](grid)) == sorted(f"select/{m}/layers.json"
                                                        for m in ("kl-guided", "greedy-learned", "beam-add"))
    assert "context_lengths" in grid["eval"] and "ruler_" in grid["eval"]["tasks"]


def test_a_recipe_that_is_not_a_grid_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="not an ablation grid"):
        SMOKE["smoke_grid"](tmp_path, "smollm2-135m")
