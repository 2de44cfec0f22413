"""``eval --out`` / ``eval --merge --out`` never overwrite or delete report files gendistill did not write: the
working folder, a git repository and a folder holding a user's ``results.*`` are refused with one line and left as
they were; a folder an earlier eval wrote is written again, and stale examples are removed only there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gendistill import ownership
from gendistill.cli import app
from gendistill.eval.api import _previous_example_files, evaluate

runner = CliRunner()
RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results" / "eval_smollm2-135m-instruct_cpu.json"


def _merge(out: str):
    return runner.invoke(app, ["eval", "--merge", str(RESULTS), "--out", out])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line(res, needle: str) -> None:
    lines = [x for x in res.output.strip().splitlines() if x.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and needle in lines[0], res.output


@pytest.mark.parametrize("as_cwd", [True, False])
def test_merge_refuses_a_git_repository_with_a_hand_written_report(tmp_path, monkeypatch, as_cwd):
    paper = tmp_path / "paper"
    (paper / ".git").mkdir(parents=True)
    (paper / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (paper / "results.md").write_text("# my hand-written results\n")
    before = _snapshot(paper)
    if as_cwd:
        monkeypatch.chdir(paper)
    res = _merge("." if as_cwd else str(paper))
    _one_line(res, "it is the current working folder" if as_cwd else "it is a git repository")
    assert _snapshot(paper) == before and sorted(p.name for p in paper.iterdir()) == [".git", "results.md"]


def test_a_users_results_file_is_refused_and_an_eval_folder_is_written_again(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.partial.json").write_text('{"rows": "mine"}')
    before = _snapshot(mine)
    _one_line(_merge(str(mine)), "was not written by gendistill")
    with pytest.raises(ownership.OutputError, match="results.partial.json: .* was not written by gendistill"):
        evaluate("no-such-model", out=mine)  # refused before any model is resolved or loaded
    assert _snapshot(mine) == before
    # a folder with unrelated files of the user: the report is added beside them and the folder marked
    (mine / "results.partial.json").unlink()
    (mine / "notes.txt").write_text("keep me")
    assert _merge(str(mine)).exit_code == 0
    assert ownership.marker_kind(mine) == "report" and (mine / "notes.txt").read_text() == "keep me"
    (mine / "results.md").write_text("stale")
    assert _merge(str(mine)).exit_code == 0  # ours now: replaced
    assert (mine / "results.md").read_text().startswith("# gendistill eval")


def test_stale_examples_are_removed_only_in_a_folder_gendistill_marked(tmp_path):
    out = tmp_path / "out"
    (out / "examples").mkdir(parents=True)
    example = out / "examples" / "quiz__teacher.jsonl"
    example.write_text("{}\n")
    (out / "results.json").write_text(json.dumps({"example_files": [str(example)]}))
    assert _previous_example_files(out) == set()  # no marker: nothing listed there is ever deleted
    ownership.write_marker(out, "report")
    assert _previous_example_files(out) == {str(example.resolve())}
