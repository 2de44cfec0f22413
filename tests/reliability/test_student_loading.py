"""Issue 31, "a student whose config.json layer types do not match its weights loads with randomly initialised
mixers": every command loads students through one loader (src/gendistill/models/loading.py), which refuses missing
or unexpected weights with one line naming the folder and the first keys -- checked from the safetensors headers
before any model is loaded, and again by transformers' loading report. A pytorch_model.bin student (a pickle) is
refused without being opened."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from tests.reliability.conftest import assert_one_line_error, cli, write_recipe


@pytest.fixture(scope="module")
def students(tmp_path_factory, teacher_dir) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("students")
    good = base / "good"
    assert cli("convert", "--teacher", teacher_dir, "-a", "0", "--out", good).code == 0
    # layer 0 keeps attention in the weights; the config now says layer 1 does (hand-edited or copied)
    edited = base / "edited"
    edited.mkdir()
    for f in good.iterdir():
        (edited / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((edited / "config.json").read_text())
    cfg["layer_types"] = ["linear_attention", "full_attention", "linear_attention", "linear_attention"]
    (edited / "config.json").write_text(json.dumps(cfg))
    # the same student with its weights as a pickle
    binary = base / "binary"
    binary.mkdir()
    for f in good.iterdir():
        if f.name != "model.safetensors":
            (binary / f.name).write_bytes(f.read_bytes())
    from safetensors.torch import load_file

    torch.save(load_file(str(good / "model.safetensors")), binary / "pytorch_model.bin")
    return {"good": good, "edited": edited, "binary": binary}


def _quiz(tmp_path: Path) -> Path:
    p = tmp_path / "quiz.jsonl"
    p.write_text(json.dumps({"question": "2+2?", "choices": ["3", "4"], "answer_idx": 1}) + "\n")
    return p


def _run(command: str, student: Path, tmp_path: Path, teacher_dir: Path, data_dir: Path):
    if command == "chat":
        return cli("chat", "-p", "hi", "--student", student, "--device", "cpu")
    if command == "eval":
        return cli("eval", "-m", teacher_dir, "-m", student, "--tasks", _quiz(tmp_path), "--out", tmp_path / "e",
                   "--device", "cpu", "--no-progress", "--protocol", "loglik")
    if command == "distill":
        recipe = write_recipe(tmp_path / "r.yaml", teacher_dir, data_dir, tmp_path / "run",
                              **{"student": {"path": str(student)}})
        return cli("distill", recipe)
    return cli("bench", "--teacher", teacher_dir, "--student", student, "--device", "cpu", "--dtype", "fp32",
               "--contexts", "32", "--throughput-contexts", "32", "--out", tmp_path / "b")


@pytest.mark.parametrize("command", ["chat", "eval", "distill", "bench"])
def test_a_student_whose_config_does_not_match_its_weights_is_one_line_in_every_command(
        tmp_path, teacher_dir, data_dir, students, command):
    res = _run(command, students["edited"], tmp_path, teacher_dir, data_dir)
    assert_one_line_error(res, f"student folder {students['edited']}", "do not match its config.json",
                          "missing (model.layers.0.linear_attn.", "unexpected (model.layers.0.self_attn.")
    assert not any((tmp_path / d).exists() for d in ("e", "run", "b"))  # refused before anything was written


def test_the_loader_itself_refuses_what_transformers_only_warns_about(students, monkeypatch):
    """The headers check aside (a hub student has no local headers), the load report is an error too."""
    import gendistill.models.loading as loading
    from gendistill.errors import GendistillError

    monkeypatch.setattr(loading, "check_student_weights", lambda folder: None)
    with pytest.raises(GendistillError, match="do not match its config.json: 23 missing"):
        loading.load_model(students["edited"], device="cpu")
    model, _ = loading.load_model(students["good"], device="cpu")  # a matching student loads as before
    assert model.config.layer_types[0] == "full_attention"


@pytest.mark.parametrize("command", ["chat", "eval", "distill", "bench"])
def test_a_pickled_student_is_refused_without_being_opened(tmp_path, monkeypatch, teacher_dir, data_dir, students,
                                                           command):
    def refuse(*a, **k):
        raise AssertionError("a pickle was opened")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    res = _run(command, students["binary"], tmp_path, teacher_dir, data_dir)
    assert_one_line_error(res, f"student folder {students['binary']}", "pytorch_model.bin, a pickle file",
                          "safetensors")
