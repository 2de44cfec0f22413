"""tools/select_grid.py: the layer-selection grid of the methods that have finished (issue 27's lease trains each
method's cell as soon as its layers.json exists). Its cells must be the shipped grid's cells, node for node, so a
later run of the full grid skips what the partial one trained."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
import yaml

from gendistill.ablate.grid import load_grid
from gendistill.ablate.runner import describe_plan, plan_grid

ROOT = Path(__file__).resolve().parents[1]
TOOL = runpy.run_path(str(ROOT / "tools" / "select_grid.py"))
TEACHER = ["teacher.spec=/nowhere/teacher.gguf"]


def _chains(grid_path: str | Path) -> dict[str, list[str]]:
    plan = describe_plan(plan_grid(load_grid(grid_path, TEACHER)))
    return {c["cell"]: [n["id"] for n in c["nodes"]] for c in plan["cells"]}


def test_the_partial_grid_keeps_the_finished_methods_with_the_shipped_node_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the layer files are read relative to where the grid runs
    (tmp_path / "select" / "kl-guided").mkdir(parents=True)
    (tmp_path / "select" / "kl-guided" / "layers.json").write_text(
        json.dumps({"attention_layers": [0, 5, 9, 14, 20, 24, 29]}))
    out = tmp_path / "select-grid.yaml"
    assert TOOL["main"](["select-smollm2-lease", "--root", str(tmp_path), "--out", str(out)]) == 0

    partial = _chains(out)
    assert list(partial) == ["layers=uniform", "layers=kl-guided"]  # greedy-learned, beam-add: no file yet
    full = _chains("select-smollm2-lease")
    assert all(partial[c] == full[c] for c in partial)
    assert yaml.safe_load(out.read_text())["output_dir"] == "runs/select-smollm2-lease"


def test_a_method_that_finished_later_joins_and_the_earlier_cells_keep_their_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "select-grid.yaml"
    TOOL["main"](["select-smollm2-lease", "--root", str(tmp_path), "--out", str(out)])
    first = _chains(out)
    assert list(first) == ["layers=uniform"]
    (tmp_path / "select" / "beam-add").mkdir(parents=True)
    (tmp_path / "select" / "beam-add" / "layers.json").write_text(json.dumps({"attention_layers": [1, 2, 3]}))
    TOOL["main"](["select-smollm2-lease", "--root", str(tmp_path), "--out", str(out)])
    second = _chains(out)
    assert list(second) == ["layers=uniform", "layers=beam-add"]
    assert second["layers=uniform"] == first["layers=uniform"]
    assert second["layers=beam-add"] != second["layers=uniform"]


def test_a_grid_that_is_not_a_grid_is_refused_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: x.yaml\n")
    assert TOOL["main"]([str(bad), "--root", str(tmp_path), "--out", str(tmp_path / "o.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "no axes" in err and "\n" not in err
    assert not (tmp_path / "o.yaml").exists()


@pytest.mark.parametrize("missing", ["kl-guided", "greedy-learned", "beam-add"])
def test_each_missing_method_is_left_out(tmp_path, missing):
    for m in {"kl-guided", "greedy-learned", "beam-add"} - {missing}:
        (tmp_path / "select" / m).mkdir(parents=True)
        (tmp_path / "select" / m / "layers.json").write_text(json.dumps({"attention_layers": [1]}))
    data, kept = TOOL["available_grid"]("select-smollm2-lease", tmp_path)
    assert missing not in kept and len(kept) == 3 and "uniform" in kept
    assert Path(data["base"]).is_absolute()
