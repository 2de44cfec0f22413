"""``gendistill select-compare``: the chosen sets of real select-layers runs side by side — overlaps equal to the set
arithmetic, votes, costs as recorded, a plot, no paths in the JSON — and bad inputs refused with one line."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from gendistill.cli import app
from gendistill.errors import ConfigError
from gendistill.ownership import MARKER
from gendistill.select import select_layers
from gendistill.select.compare import compare_selections, markdown, write_comparison
from tests.select._synthetic import NUM_LAYERS, synthetic_teacher

runner = CliRunner()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tok):
    """Three real results on the synthetic teacher: uniform (k=2 and k=3) and kl-guided (k=2)."""
    from gendistill.distill.config import DataConfig, SourceConfig
    from gendistill.select import SelectConfig
    from tests.select._synthetic import text_file

    root = tmp_path_factory.mktemp("select")
    text = text_file(root / "text.jsonl")
    teacher = synthetic_teacher(tok, recall_layers=(1, 4))

    def run(method, budget, name):
        cfg = SelectConfig(teacher="synthetic", method=method, budget=budget, output_dir=str(root / name),
                           data=DataConfig(sources=[SourceConfig(path=str(text), format="text")], heldout_documents=8),
                           seq_len=32, batch_size=2, micro_batch_size=2, eval_sequences=4, align_steps=2,
                           candidate_steps=0, device="cpu", recall=dict(prompts=4, pairs=8, queries=4))
        select_layers(cfg, teacher=teacher, tokenizer=tok, progress="none")
        return root / name

    return root, [run("uniform", 2, "uniform"), run("kl-guided", 2, "kl"), run("uniform", 3, "uniform-k3")]


def test_the_comparison_is_the_set_arithmetic_of_the_results(runs):
    root, folders = runs
    files = [folders[0], folders[1] / "layers.json", folders[2]]  # a run folder or its layers.json
    cmp = compare_selections(files)
    raw = [json.loads((f / "layers.json").read_text()) for f in folders]
    sets = [set(r["attention_layers"]) for r in raw]
    assert [s["label"] for s in cmp["selections"]] == ["uniform (uniform)", "kl-guided", "uniform (uniform-k3)"]
    assert [s["attention_layers"] for s in cmp["selections"]] == [sorted(s) for s in sets]
    assert [s["cost"] for s in cmp["selections"]] == [r["cost"] for r in raw]
    assert cmp["num_layers"] == NUM_LAYERS and cmp["teacher"] == "synthetic"
    for i, a in enumerate(sets):
        for j, b in enumerate(sets):
            assert cmp["overlap"]["shared"][i][j] == len(a & b)
            assert cmp["overlap"]["jaccard"][i][j] == pytest.approx(len(a & b) / len(a | b))
    assert cmp["votes"] == [sum(i in s for s in sets) for i in range(NUM_LAYERS)]
    assert cmp["chosen_by_all"] == sorted(set.intersection(*sets))
    assert cmp["chosen_by_any"] == sorted(set.union(*sets))
    assert set(cmp["selections"][1]["attention_layers"]) == {1, 4}  # kl-guided finds the synthetic teacher's layers

    md = markdown(cmp)
    assert "| kl-guided | 2 | 1, 4 |" in md and "Jaccard" in md


def test_the_files_carry_no_paths_and_a_plot(runs, tmp_path):
    root, folders = runs
    paths = write_comparison(compare_selections(folders), tmp_path / "cmp")
    assert set(paths) >= {"json", "markdown"}
    text = (tmp_path / "cmp" / "select_compare.json").read_text()
    assert str(root) not in text and str(tmp_path) not in text
    pytest.importorskip("matplotlib")
    png = (tmp_path / "cmp" / "select_compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_command_prints_the_table_and_writes_the_report(runs, tmp_path):
    root, folders = runs
    res = runner.invoke(app, ["select-compare", *map(str, folders[:2]), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "kl-guided" in res.output and "Jaccard" in res.output
    assert (tmp_path / "o" / MARKER).is_file() and (tmp_path / "o" / "select_compare.md").is_file()


def test_a_foreign_file_of_that_name_is_never_overwritten(runs, tmp_path):
    root, folders = runs
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "select_compare.json").write_text("my notes")
    res = runner.invoke(app, ["select-compare", *map(str, folders[:2]), "--out", str(mine)])
    assert res.exit_code != 0 and "refusing to overwrite" in res.output and "Traceback" not in res.output
    assert (mine / "select_compare.json").read_text() == "my notes"


def test_a_teacher_given_as_a_path_is_shown_by_its_name(runs, tmp_path):
    root, folders = runs
    docs = []
    for i, spec in enumerate([str(tmp_path / "models" / "teacher.gguf"), "../models/teacher.gguf"]):
        d = json.loads((folders[i] / "layers.json").read_text()) | {"teacher": spec}
        (tmp_path / f"r{i}.json").write_text(json.dumps(d))
        docs.append(tmp_path / f"r{i}.json")
    cmp = compare_selections(docs)
    assert cmp["teacher"] == "teacher.gguf"
    write_comparison(cmp, tmp_path / "cmp")
    assert str(tmp_path) not in (tmp_path / "cmp" / "select_compare.json").read_text()
    assert compare_selections(folders[:2])["teacher"] == "synthetic"  # a name or hub id as written


def test_bad_inputs_are_one_clear_error(runs, tmp_path):
    root, folders = runs
    with pytest.raises(ConfigError, match="two or more"):
        compare_selections([folders[0]])
    with pytest.raises(ConfigError, match="no select-layers result here"):
        compare_selections([folders[0], tmp_path / "missing"])
    plain = tmp_path / "plain.json"
    plain.write_text("[1, 4]")
    with pytest.raises(ConfigError, match="a plain list of layers has no method or ranking"):
        compare_selections([folders[0], plain])
    for bad in ({"attention_layers": 3}, {"ranked": [True, 1]}, {"attention_layers": [99]}):
        d = json.loads((folders[1] / "layers.json").read_text()) | bad
        (tmp_path / "bad.json").write_text(json.dumps(d))
        with pytest.raises(ConfigError, match="must be lists of layer indices"):
            compare_selections([folders[0], tmp_path / "bad.json"])
    other = json.loads((folders[1] / "layers.json").read_text()) | {"teacher": "another", "num_layers": 12}
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(ConfigError, match="compare one teacher's choices"):
        compare_selections([folders[0], tmp_path / "other.json"])
    res = runner.invoke(app, ["select-compare", str(folders[0]), str(tmp_path / "missing")])
    assert res.exit_code != 0 and "no select-layers result here" in res.output and "Traceback" not in res.output
