"""``eval --out`` / ``eval --merge --out`` never overwrite or delete report files gendistill did not write: the
working folder, a git repository and a folder holding a user's ``results.*`` are refused with one line and left as
they were; a folder an earlier eval wrote is written again, and stale examples are removed only there."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gendistill import ownership
from gendistill.cli import app
from gendistill.eval.api import _previous_example_files, evaluate
from gendistill.eval.report import REPORT_FILES

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


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.eval.conftest import MC_ROWS, write_jsonl
    from tests.fixtures_teachers import make_tiny_folder

    root = tmp_path_factory.mktemp("ownership")
    make_tiny_folder(root / "teacher", "llama", seed=0)
    return root / "teacher", write_jsonl(root / "quiz.jsonl", MC_ROWS)


def _evaluate(tiny, out):
    teacher, quiz = tiny
    return evaluate(str(teacher), str(quiz), out=out, protocols="loglik", limit=2, device="cpu", cache=False,
                    show_progress=False)


def test_a_folder_another_command_marked_keeps_the_users_results(tmp_path, tiny):
    # bench marked the folder (claiming its bench_*.json ...); eval then found the user's results.md and replaced it
    mine = tmp_path / "userdir"
    mine.mkdir()
    (mine / "results.md").write_text("MY THESIS RESULTS\n")
    ownership.claim_report_folder(mine, ("bench_*.json", "profiles.txt"), "--out")
    assert json.loads((mine / ownership.MARKER).read_text())["files"] == ["bench_*.json", "profiles.txt"]
    before = _snapshot(mine)
    with pytest.raises(ownership.OutputError, match=r"results.md: gendistill did not write it"):
        _evaluate(tiny, mine)
    _one_line(_merge(str(mine)), "gendistill did not write it")
    assert _snapshot(mine) == before
    # without the user's file eval writes its report, and the marker lists both commands' files
    (mine / "results.md").unlink()
    _evaluate(tiny, mine)
    files = json.loads((mine / ownership.MARKER).read_text())["files"]
    assert files[:2] == ["bench_*.json", "profiles.txt"] and "results.md" in files and "examples/*__*.jsonl" in files
    _evaluate(tiny, mine)  # its own files: written again
    ownership.check_report_folder(mine, ("bench_*.json",), "--out")


def test_a_marker_of_an_older_gendistill_protects_files_older_than_itself(tmp_path):
    # a marker without a files list: a report file already there when the folder was marked is the user's
    out = tmp_path / "old"
    out.mkdir()
    (out / "results.md").write_text("mine")
    os.utime(out / "results.md", (1_000_000, 1_000_000))
    (out / ownership.MARKER).write_text(json.dumps({"written_by": "gendistill", "kind": "report", "version": "0.1.0",
                                                   "created": 2_000_000.0}))
    with pytest.raises(ownership.OutputError, match="results.md: gendistill did not write it .it is older than"):
        ownership.check_report_folder(out, REPORT_FILES, "--out")
    os.utime(out / "results.md", (2_000_000, 2_000_000))  # written after the marker: the earlier run's
    ownership.claim_report_folder(out, REPORT_FILES, "--out")
    assert "files" not in json.loads((out / ownership.MARKER).read_text())  # left as it was


@pytest.mark.parametrize("kind", ["run", "select"])
def test_a_report_in_a_run_folder_is_written_again_after_the_run_resumed(tmp_path, kind):
    """distill and select-layers rewrite their folder's marker (no files list) on every resume: a report an earlier
    eval or select-compare wrote there is still gendistill's, not refused as older than the marker."""
    out = tmp_path / "run"
    out.mkdir()
    ownership.write_marker(out, kind)
    ownership.claim_report_folder(out, REPORT_FILES, "--out")
    (out / "results.md").write_text("# gendistill eval")
    os.utime(out / "results.md", (1_000_000, 1_000_000))
    ownership.write_marker(out, kind)  # the resume: a new marker, newer than the report
    ownership.check_report_folder(out, REPORT_FILES, "--out")


def test_a_users_examples_file_in_an_unmarked_folder_is_refused(tmp_path, tiny):
    u = tmp_path / "u"
    (u / "examples").mkdir(parents=True)
    (u / "examples" / "teacher__quiz__loglik.jsonl").write_text("NOTES\n")
    before = _snapshot(u)
    with pytest.raises(ownership.OutputError, match=r"examples/teacher__quiz__loglik.jsonl: .* not written by"):
        _evaluate(tiny, u)
    assert _snapshot(u) == before and sorted(p.name for p in u.iterdir()) == ["examples"]
    (u / "examples" / "teacher__quiz__loglik.jsonl").unlink()
    (u / "examples" / "my_notes.txt").write_text("keep")  # not a name eval writes: the report goes beside it
    _evaluate(tiny, u)
    assert (u / "examples" / "my_notes.txt").read_text() == "keep" and list(u.glob("examples/*__*.jsonl"))
