"""The run folder: a stopped selection resumes from its score cache without re-scoring, settings are fingerprinted,
nothing the user wrote is deleted; and ``gendistill select-layers`` as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gendistill.cli import app
from gendistill.errors import ConfigError, GendistillError
from gendistill.ownership import MARKER, OutputError, marker_kind
from gendistill.select import select_layers
from gendistill.select.session import Session, prepare_output
from tests.select._synthetic import synthetic_teacher

runner = CliRunner()


class _Stopped(Exception):
    """Stands for the run being killed."""


def test_a_stopped_run_resumes_from_the_cache_and_matches_a_straight_run(make_cfg, tok, monkeypatch):
    teacher = synthetic_teacher(tok, recall_layers=(2,), num_layers=4)
    straight = select_layers(make_cfg("kl-guided", 1, out="straight"), teacher=teacher, tokenizer=tok, progress="none")

    calls: list[str] = []
    stop_at = [4]  # align-stage1, align-stage2, the all-KDA candidate, then the stop
    real_train = Session.train

    def train(self, student, stage, phase, progress="none", checkpoints=True):
        calls.append(phase)
        if len(calls) == stop_at[0]:
            raise _Stopped
        return real_train(self, student, stage, phase, progress, checkpoints)

    monkeypatch.setattr(Session, "train", train)
    cfg = make_cfg("kl-guided", 1, out="stopped")
    with pytest.raises(_Stopped):
        select_layers(cfg, teacher=teacher, tokenizer=tok, progress="none")
    assert not (Path(cfg.output_dir) / "layers.json").exists()
    calls.clear()
    stop_at[0] = -1
    resumed = select_layers(cfg, resume=True, teacher=teacher, tokenizer=tok, progress="none")
    # only the four single-layer candidates trained again: alignment and the all-KDA score came from the cache
    assert calls == ["candidate-attn-0", "candidate-attn-1", "candidate-attn-2", "candidate-attn-3"]
    assert resumed["attention_layers"] == straight["attention_layers"] == [2]
    for i, rec in straight["scores"]["per_layer"].items():
        assert resumed["scores"]["per_layer"][i]["heldout_kl"] == pytest.approx(rec["heldout_kl"], rel=1e-5)
    assert resumed["cost"]["cached_records_reused"] == 2
    assert resumed["cost"]["train_tokens"] == straight["cost"]["train_tokens"]  # the whole selection's cost
    calls.clear()
    again = select_layers(cfg, resume=True, teacher=teacher, tokenizer=tok, progress="none")
    assert calls == [] and again["ranked"] == resumed["ranked"]


def test_run_folder_rules(make_cfg, tmp_path):
    cfg = make_cfg("uniform", 2)
    prepare_output(cfg, resume=False, overwrite=False)
    with pytest.raises(ConfigError, match="already holds a selection run; pass --resume"):
        prepare_output(cfg, resume=False, overwrite=False)
    with pytest.raises(ConfigError, match="--resume with different settings"):
        prepare_output(make_cfg("uniform", 3), resume=True, overwrite=False)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="is not a select-layers folder"):
        prepare_output(make_cfg("uniform", 2, out="mine"), resume=False, overwrite=False)
    with pytest.raises(OutputError, match="it was not written by gendistill"):
        prepare_output(make_cfg("uniform", 2, out="mine"), resume=False, overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep me"


def _user_repo(folder: Path) -> Path:
    """A user's git repository that happens to hold a file named select.json (the reviewer's probe)."""
    (folder / ".git").mkdir(parents=True)
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (folder / "notes.txt").write_text("keep me")
    (folder / "select.json").write_text('{"mine": true}')
    return folder


@pytest.mark.parametrize("as_cwd", [True, False])
def test_overwrite_never_clears_a_folder_select_layers_did_not_mark(make_cfg, tok, tmp_path, monkeypatch, as_cwd):
    repo = _user_repo(tmp_path / "repo")
    before = sorted(p.name for p in repo.iterdir())
    if as_cwd:
        monkeypatch.chdir(repo)
    cfg = make_cfg("uniform", 1, output_dir="." if as_cwd else str(repo))
    teacher = synthetic_teacher(tok, num_layers=4)
    with pytest.raises(OutputError) as err:
        select_layers(cfg, overwrite=True, teacher=teacher, tokenizer=tok, progress="none")
    reason = "it is the current working folder" if as_cwd else "it is a git repository"
    assert f"refusing to overwrite {cfg.output_dir}: {reason}" in str(err.value) and "\n" not in str(err.value)
    assert sorted(p.name for p in repo.iterdir()) == before
    assert (repo / "notes.txt").read_text() == "keep me" and (repo / ".git" / "HEAD").exists()


def test_overwrite_replaces_a_run_select_layers_wrote_and_resume_keeps_it(make_cfg, tok):
    teacher = synthetic_teacher(tok, num_layers=4)
    cfg = make_cfg("uniform", 1)
    out = Path(cfg.output_dir)
    select_layers(cfg, teacher=teacher, tokenizer=tok, progress="none")
    assert marker_kind(out) == "select"
    (out / "runs").mkdir()
    (out / "runs" / "stale.txt").write_text("from the old run")
    select_layers(cfg, resume=True, teacher=teacher, tokenizer=tok, progress="none")  # resume keeps what is there
    assert (out / "runs" / "stale.txt").exists()
    res = select_layers(make_cfg("uniform", 2), overwrite=True, teacher=teacher, tokenizer=tok, progress="none")
    assert not (out / "runs").exists() and marker_kind(out) == "select"
    assert json.loads((out / "layers.json").read_text())["attention_layers"] == res["attention_layers"]
    # a run written before runs were marked (select.json only) is resumed, and marked then; never overwritten
    (out / MARKER).unlink()
    with pytest.raises(OutputError, match="it was not written by gendistill"):
        select_layers(cfg, overwrite=True, teacher=teacher, tokenizer=tok, progress="none")
    select_layers(make_cfg("uniform", 2), resume=True, teacher=teacher, tokenizer=tok, progress="none")
    assert marker_kind(out) == "select"


def test_cli_selects_from_a_teacher_folder_and_convert_takes_the_file(tok, text_path, tmp_path):
    teacher = synthetic_teacher(tok, recall_layers=(2,), num_layers=4)
    folder = tmp_path / "teacher"
    teacher.save_pretrained(folder)
    tok.save_pretrained(folder)
    out = tmp_path / "sel"
    args = ["select-layers", "--teacher", str(folder), "--budget", "1", "--method", "beam-add", "--data",
            str(text_path), "--heldout-documents", "8", "--out", str(out), "--seq-len", "32", "--batch-size", "2",
            "--micro-batch-size", "2", "--eval-sequences", "4", "--align-steps", "0", "--candidate-steps", "0",
            "--recall-prompts", "4", "--recall-pairs", "8", "--recall-queries", "4", "--device", "cpu",
            "--progress", "none"]
    res = runner.invoke(app, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "attention layers: 2" in res.output and "CPU-minutes" in res.output
    layers = json.loads((out / "layers.json").read_text())
    assert layers["attention_layers"] == [2] and layers["ranked"][0] == 2
    assert runner.invoke(app, args, catch_exceptions=False).exit_code == 2  # an existing run needs --resume
    student = tmp_path / "student"
    res = runner.invoke(app, ["convert", "--teacher", str(folder), "--attention-layers", str(out / "layers.json"),
                              "--out", str(student)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert json.loads((student / "SUMMARY.json").read_text())["attention_layers"] == [2]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "kl-guided"], "method kl-guided trains and scores students: give the data to use (--data FILE)"),
        (["--method", "best"], "method: Input should be 'uniform', 'kl-guided', 'greedy-learned' or 'beam-add'"),
        (["--method", "uniform", "--beam-width", "0"], "beam_width: Input should be greater than 0"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, args, message):
    res = runner.invoke(app, ["select-layers", "--budget", "2", "--out", str(tmp_path / "o"), *args])
    assert res.exit_code == 2
    assert message in res.output.replace("\n", " ") and "Traceback" not in res.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("bad, message", [
    (["--data", "/nonexistent/text.jsonl"], "file not found"),
    (["--heldout-documents", "5000"], "all taken by heldout_documents=5000"),
])
def test_cli_bad_data_writes_nothing_and_the_corrected_run_needs_no_overwrite(tok, text_path, tmp_path, bad,
                                                                               message):
    """The data was read only after select.json was written: the failed run left a run folder behind, and the
    corrected command was refused as 'already holds a selection run'."""
    teacher = synthetic_teacher(tok, recall_layers=(1,), num_layers=3)
    folder = tmp_path / "teacher"
    teacher.save_pretrained(folder)
    tok.save_pretrained(folder)
    args = ["select-layers", "--teacher", str(folder), "--budget", "1", "--method", "kl-guided", "--data",
            str(text_path), "--heldout-documents", "8", "--seq-len", "32", "--batch-size", "2", "--micro-batch-size",
            "2", "--eval-sequences", "4", "--align-steps", "0", "--candidate-steps", "0", "--recall-prompts", "4",
            "--recall-pairs", "8", "--recall-queries", "4", "--device", "cpu", "--progress", "none"]
    out, empty = tmp_path / "sel", tmp_path / "empty"
    empty.mkdir()
    for folder_out in (out, empty):
        res = runner.invoke(app, [*args, *bad, "--out", str(folder_out)])
        assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output
        assert sum(line.startswith("error:") for line in res.output.splitlines()) == 1, res.output
    assert not out.exists() and [p.name for p in empty.iterdir() if p.name != ".gendistill.lock"] == []
    for folder_out in (out, empty):
        res = runner.invoke(app, [*args, "--out", str(folder_out)], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        assert (folder_out / "layers.json").is_file()


def test_overwrite_with_bad_data_keeps_the_run_there(make_cfg, tok, tmp_path):
    from gendistill.distill.config import DataConfig, SourceConfig

    teacher = synthetic_teacher(tok, recall_layers=(1,), num_layers=3)
    cfg = make_cfg("kl-guided", 1, align_steps=0, candidate_steps=0)
    select_layers(cfg, teacher=teacher, tokenizer=tok, progress="none")
    before = sorted(p.relative_to(cfg.output_dir) for p in Path(cfg.output_dir).rglob("*"))
    bad = cfg.model_copy(update={"data": DataConfig(sources=[SourceConfig(path=str(tmp_path / "missing.jsonl"),
                                                                          format="text")], heldout_documents=8)})
    with pytest.raises(GendistillError, match="file not found"):
        select_layers(bad, overwrite=True, teacher=teacher, tokenizer=tok, progress="none")
    assert sorted(p.relative_to(cfg.output_dir) for p in Path(cfg.output_dir).rglob("*")) == before
