"""Node ids hash what a path names, not just the path: a layer file by the layers it lists, a local data file by its
content. Re-running ``select-layers`` into the same file, or rewriting a data file, gives new stage runs instead of
silently reusing the students (and evaluations) trained on the old ones; ids of unchanged inputs stay as they were."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import base_recipe

from gendistill.ablate.grid import load_grid
from gendistill.ablate.runner import check_layer_files, plan_grid
from gendistill.ablate.store import _digest, cell_nodes
from gendistill.errors import ConfigError


def _ids(grid_path) -> dict[str, list[str]]:
    return {p.cell.name: [n.id for n in p.nodes] for p in plan_grid(load_grid(grid_path))}


def test_a_rewritten_layer_file_gives_new_nodes_and_the_same_layers_the_same_ones(write_grid, tmp_path):
    layers = tmp_path / "select" / "kl-guided" / "layers.json"
    layers.parent.mkdir(parents=True)
    axes = {"layers": {"kl": {"student.attention_layers": str(layers)}, "inline": {"student.attention_layers": [0, 2]}}}
    grid = write_grid(axes)

    layers.write_text(json.dumps({"attention_layers": [0, 2], "method": "kl-guided"}))
    first = _ids(grid)
    layers.write_text(json.dumps({"attention_layers": [1, 3], "method": "kl-guided"}))  # select-layers re-run
    second = _ids(grid)
    assert all(a != b for a, b in zip(first["layers=kl"], second["layers=kl"]))  # every stage of the cell is new
    assert second["layers=inline"] == first["layers=inline"]

    layers.write_text(json.dumps([2, 0]))  # the same layers, written another way: the same student
    assert _ids(grid)["layers=kl"] == first["layers=kl"] == first["layers=inline"]


def test_a_changed_data_file_gives_new_nodes_from_the_stage_that_reads_it(write_grid, tmp_path):
    text, chat = tmp_path / "text.jsonl", tmp_path / "chat.jsonl"
    text.write_text(json.dumps({"text": "one document"}) + "\n")
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}) + "\n")
    base = base_recipe()
    base["data"]["sources"][0]["path"] = str(text)
    base["stages"][2]["data"]["sources"][0]["path"] = str(chat)
    grid = write_grid({"masking": ["completion_only"]}, base=base)
    (s1, s3a, s3b), = _ids(grid).values()

    mtime = chat.stat().st_mtime_ns
    os.utime(chat, ns=(mtime + 10**9, mtime + 10**9))  # a copy without its times: same content, same nodes
    assert list(_ids(grid).values())[0] == [s1, s3a, s3b]

    chat.write_text(chat.read_text().replace("hello", "hello there"))  # stage 3b's data changed: only stage 3b
    (t1, t3a, t3b), = _ids(grid).values()
    assert (t1, t3a) == (s1, s3a) and t3b != s3b

    text.write_text(json.dumps({"text": "another document"}) + "\n")  # the recipe's data: every stage after
    (u1, u3a, u3b), = _ids(grid).values()
    assert u1 != t1 and u3a != t3a and u3b != t3b


def test_a_folder_source_is_keyed_by_each_file(write_grid, tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.jsonl").write_text(json.dumps({"text": "a"}) + "\n")
    base = base_recipe()
    base["data"]["sources"][0]["path"] = str(folder)
    grid = write_grid({"masking": ["completion_only"]}, base=base)
    before = list(_ids(grid).values())[0]
    (folder / "b.jsonl").write_text(json.dumps({"text": "b"}) + "\n")  # a file added to the folder
    assert list(_ids(grid).values())[0][0] != before[0]


def test_ids_of_grids_without_files_are_as_before(write_grid):
    """Inline layers and no local data file (the conftest recipe's data paths are not files): the id is the digest of
    the recipe as written, as it was before contents were hashed, so such grids keep their stage folders."""
    g = load_grid(write_grid({"masking": ["completion_only"]}))
    (cell,) = g.cells
    r = cell.recipe
    key = _digest({"teacher": r.teacher.model_dump(mode="json"), "student": r.student.model_dump(mode="json"),
                   "seed": r.run.seed, "precision": r.run.precision})
    for node, st in zip(cell_nodes(cell, Path("/r")), r.stages):
        d = {k: v for k, v in st.model_dump(mode="json").items() if k not in ("log_every", "checkpoint_every")}
        d["data"] = r.stage_data(st).model_dump(mode="json")
        key = _digest([key, d])
        assert node.id == key


def test_a_layer_file_that_lists_no_layers_is_reported_before_training(write_grid, tmp_path):
    bad = tmp_path / "layers.json"
    bad.write_text('{"attention_layers": "0,2"}')
    g = load_grid(write_grid({"layers": {"bad": {"student.attention_layers": str(bad)}}}))
    with pytest.raises(ConfigError, match=r"cell layers=bad: student\.attention_layers: .*layers\.json: "
                                          r"'attention_layers' must be a list of integers"):
        check_layer_files(g)
    with pytest.raises(ConfigError, match=r"cell layers=bad: student\.attention_layers: "):  # the dry run's plan too
        plan_grid(g)
