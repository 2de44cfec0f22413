"""Issue 31, medium items on input: every size a user types has a bound (src/gendistill/limits.py) and seq_len a check
against the teacher's positions before any data is read; a non-UTF-8 recipe, grid or layer file, a task with more
than 26 options, a negative bench context, a chat template that raises, select-layers' --budget and ablate's eval
tasks are each one line, exit 2, with nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.reliability.conftest import assert_one_line_error, cli, recipe_dict, write_recipe


# ------------------------------------------------------------------------------------------------ recipe sizes
@pytest.mark.parametrize("override,fragment", [
    ("stages[1].seq_len=1.0e+9", "stages[1].seq_len: Input should be less than or equal to 1048576"),
    ("stages[1].seq_len=1000000000", "stages[1].seq_len: Input should be less than or equal to 1048576"),
    ("stages[1].batch_size=2000000", "batch_size x seq_len = 2,000,000 x 32 = 64,000,000 tokens; at most 33,554,432"),
    ("stages[1].eval_sequences=2000000", "eval_sequences x seq_len = 2,000,000 x 32"),
    ("data.shuffle_buffer=1000000000000", "data.shuffle_buffer: Input should be less than or equal to 10000000"),
])
def test_sizes_that_would_fill_memory_are_refused_when_the_recipe_is_read(tmp_path, data_dir, override, fragment):
    # a teacher that does not exist: the recipe is refused before anything is loaded
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path / "no-teacher", data_dir, tmp_path / "run")
    assert_one_line_error(cli("distill", recipe, "--set", override), fragment)
    assert not (tmp_path / "run").exists()


def test_a_seq_len_beyond_the_teachers_positions_is_refused_before_any_data_is_read(
        tmp_path, monkeypatch, teacher_dir, data_dir):
    import gendistill.distill.pipeline as pipeline

    def never(*a, **k):
        raise AssertionError("the data was read")

    monkeypatch.setattr(pipeline, "validate_data", never)
    recipe = write_recipe(tmp_path / "r.yaml", teacher_dir, data_dir, tmp_path / "run")
    res = cli("distill", recipe, "--set", "stages[1].seq_len=1024")  # the tiny teacher has 512 positions
    assert_one_line_error(res, "stages[1].seq_len: 1,024 tokens is longer than the teacher's context (512 positions")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------ file encodings
def test_files_that_are_not_utf8_are_one_line(tmp_path, teacher_dir, data_dir):
    latin1 = yaml.safe_dump(recipe_dict(teacher_dir, data_dir, tmp_path / "run")).replace(
        "run:", "# r\xe9glage\nrun:").encode("latin-1")
    (tmp_path / "r.yaml").write_bytes(latin1)
    assert_one_line_error(cli("distill", tmp_path / "r.yaml"), "r.yaml: not UTF-8 text (byte 0xe9", "save the "
                          "recipe as UTF-8")
    (tmp_path / "grid.yaml").write_bytes(b"base: r.yaml\noutput_dir: out  # \xff\n")
    assert_one_line_error(cli("ablate", tmp_path / "grid.yaml", "--dry-run"), "grid.yaml: not UTF-8 text")
    (tmp_path / "layers.json").write_bytes(b'{"attention_layers": [0], "note": "\xe9"}')
    assert_one_line_error(cli("convert", "--teacher", teacher_dir, "-a", tmp_path / "layers.json", "--out",
                              tmp_path / "s"), "layers.json: not UTF-8 text")
    (tmp_path / "task.yaml").write_bytes(b"name: t\n\xff: x\n")
    assert_one_line_error(cli("eval", "-m", teacher_dir, "--tasks", tmp_path / "task.yaml", "--out", tmp_path / "e"),
                          "task.yaml: not UTF-8 text")
    assert not any((tmp_path / d).exists() for d in ("run", "out", "s", "e"))


# ------------------------------------------------------------------------------------------------ eval and chat
def _teacher_with_template(tmp_path: Path, teacher_dir: Path, template: str) -> Path:
    t = tmp_path / "teacher"
    shutil.copytree(teacher_dir, t)
    (t / "chat_template.jinja").write_text(template)
    return t


def test_a_task_with_more_than_26_options_is_one_line(tmp_path, teacher_dir):
    task = tmp_path / "many.jsonl"
    task.write_text(json.dumps({"question": "pick", "choices": [f"o{i}" for i in range(27)], "answer_idx": 26}) + "\n")
    res = cli("eval", "-m", teacher_dir, "--tasks", task, "--out", tmp_path / "e", "--device", "cpu")
    assert_one_line_error(res, f"{task}:1", "has 27 options; at most 26 (A-Z)")
    assert not (tmp_path / "e").exists()


def test_a_chat_template_that_raises_is_one_line(tmp_path, teacher_dir):
    teacher = _teacher_with_template(tmp_path, teacher_dir, "{{ raise_exception('system messages are not allowed') }}")
    res = cli("chat", "-p", "hi", "--teacher", teacher, "--device", "cpu")
    assert_one_line_error(res, f"the chat template of {teacher} failed", "system messages are not allowed")
    task = tmp_path / "quiz.jsonl"
    task.write_text(json.dumps({"question": "2+2?", "choices": ["3", "4"], "answer_idx": 1}) + "\n")
    res = cli("eval", "-m", teacher, "--tasks", task, "--protocol", "generate", "--out", tmp_path / "e",
              "--device", "cpu", "--no-progress", "--max-new-tokens", "2")
    assert_one_line_error(res, "the chat template of", "failed: system messages are not allowed")


@pytest.mark.parametrize("args,fragment", [
    (["chat", "-p", "hi", "-t", "x", "--max-new-tokens", "0"], "--max-new-tokens: 0 is out of range"),
    (["chat", "-p", "hi", "-t", "x", "--max-new-tokens", "1000000000"], "--max-new-tokens: 1,000,000,000 is out"),
    (["eval", "-m", "x", "--max-new-tokens", "1000000000"], "--max-new-tokens: 1,000,000,000 is out of range"),
    (["eval", "-m", "x", "--batch-size", "10000000"], "--batch-size: 10,000,000 is out of range"),
    (["eval", "-m", "x", "--token-budget", "0"], "--token-budget: 0 is out of range"),
    (["eval", "-m", "x", "--samples", "-2"], "--samples: -2 is out of range"),
    (["eval", "-m", "x", "--threads", "-1"], "--threads: -1 is out of range"),
    (["eval", "-m", "x", "--top-p", "1.5"], "--top-p: 1.5 must be in (0, 1]"),
    (["eval", "-m", "x", "--gpu-memory-fraction", "0"], "--gpu-memory-fraction: 0.0 must be in (0, 1]"),
    (["eval", "-m", "x", "--gpu-memory-fraction", "1.5"], "--gpu-memory-fraction: 1.5 must be in (0, 1]"),
    (["bench", "--tiny", "--contexts=-5"], "--contexts: -5 is out of range; use 1 to 4,194,304"),
    (["bench", "--tiny", "--contexts", "99999999"], "--contexts: 99,999,999 is out of range"),
    (["bench", "--tiny", "--throughput-contexts", "0"], "--throughput-contexts: 0 is out of range"),
    (["bench", "--tiny", "--max-batch", "0"], "--max-batch: 0 is out of range"),
    (["bench", "--tiny", "--repeats", "-1"], "--repeats: -1 is out of range"),
    (["bench", "--tiny", "--decode-tokens", "0"], "--decode-tokens: 0 is out of range"),
    (["bench", "--tiny", "--time-limit", "-3"], "--time-limit: -3.0 is not a number of seconds"),
])
def test_option_values_out_of_range_are_one_line_before_anything_runs(tmp_path, args, fragment):
    res = cli(*args, "--out", tmp_path / "o") if args[0] != "chat" else cli(*args)
    assert_one_line_error(res, fragment)
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------ select, ablate
def test_select_layers_checks_budget_and_lengths_before_writing(tmp_path, teacher_dir, data_dir):
    base = ["select-layers", "--teacher", str(teacher_dir), "--method", "uniform", "--out", str(tmp_path / "sel")]
    assert_one_line_error(cli(*base, "--budget", "9"), "--budget 9: the teacher has only 4 layers")
    assert not (tmp_path / "sel").exists()
    kl = ["--method", "kl-guided", "--data", str(data_dir / "text.jsonl"), "--budget", "1"]
    assert_one_line_error(cli(*base, *kl, "--seq-len", "1024"), "--seq-len 1,024: longer than the teacher's "
                          "context (512 positions")
    assert_one_line_error(cli(*base, *kl, "--seq-len", "100000000"), "seq_len: Input should be less than or equal")
    assert not (tmp_path / "sel").exists()


def _grid(tmp_path: Path, teacher_dir: Path, data_dir: Path, eval_cfg: dict) -> Path:
    base = recipe_dict(teacher_dir, data_dir, tmp_path / "unused")
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"base": "base.yaml", "output_dir": str(tmp_path / "grid"),
                                    "axes": {"lr": {"low": {"stages[stage3a].optim.lr": 1e-4}}}, "eval": eval_cfg}))
    return grid


@pytest.mark.parametrize("eval_cfg,fragment", [
    ({"tasks": "arc_easy,no_such_task"}, "eval.tasks: unknown task 'no_such_task'"),
    ({"tasks": "missing.jsonl"}, "eval.tasks: missing.jsonl: task file not found"),
    ({"tasks": "arc_easy", "max_new_tokens": 10 ** 9}, "eval.max_new_tokens: 1,000,000,000 is out of range"),
])
def test_ablate_checks_its_evaluation_before_training_and_in_the_dry_run(tmp_path, monkeypatch, teacher_dir,
                                                                         data_dir, eval_cfg, fragment):
    monkeypatch.chdir(tmp_path)
    grid = _grid(tmp_path, teacher_dir, data_dir, eval_cfg)
    for flags in (["--dry-run"], []):
        assert_one_line_error(cli("ablate", grid, *flags), f"{grid}: {fragment}")
    assert not (tmp_path / "grid").exists()  # nothing trained, nothing written


def test_ablate_names_a_missing_benchmark_file_before_training(tmp_path, monkeypatch, teacher_dir, data_dir):
    monkeypatch.setenv("GENDISTILL_DATA_DIR", str(tmp_path / "no-benchmarks"))
    (tmp_path / "no-benchmarks").mkdir()
    grid = _grid(tmp_path, teacher_dir, data_dir, {"tasks": "arc_easy"})
    assert_one_line_error(cli("ablate", grid), "eval: task arc_easy: data file", "arc_easy_test.jsonl.gz not found")
    assert not (tmp_path / "grid").exists()
