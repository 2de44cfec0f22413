"""Items 6, 7, 11 and the low items of issue 11: every bad value a user types is one line, exit 2, before anything
is loaded or written: bench options, KDA options (CLI and recipe), token counts, attention-layer specs that select
nothing, eval options; a damaged student folder in chat is one line; stale eval examples are removed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gendistill.distill.recipe_files import load_recipe
from tests.reliability.conftest import assert_one_line_error, cli, write_recipe


@pytest.mark.parametrize("args,fragment", [
    (["--config", "qwen9-huge"], "--config: unknown shape"),
    (["--teacher", "/no/such/folder"], "--teacher: teacher file or folder /no/such/folder does not exist"),
    (["--tiny", "--attention-layers", "0,99"], "--attention-layers: attention layer 99"),
    (["--tiny", "--device", "cuda"], "CUDA is not available"),
    (["--tiny", "--skip", "everything"], "--skip: unknown everything; known: cache, ttft, decode, throughput"),
])
def test_bench_mistakes_are_one_line(tmp_path, args, fragment):
    import torch

    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    res = cli("bench", *args, "--out", tmp_path / "bench")
    assert_one_line_error(res, fragment)
    assert not (tmp_path / "bench").exists()


def test_bench_refuses_an_unsupported_family(tmp_path):
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2", "num_hidden_layers": 2}))
    assert_one_line_error(cli("bench", "--teacher", tmp_path / "gpt2", "--out", tmp_path / "b"),
                          "--teacher:", "architecture 'gpt2'", "is not supported")


@pytest.mark.parametrize("flag,value", [("--conv-activation", "tanh"), ("--gate-activation", "relu"),
                                        ("--kv-mode", "shared")])
def test_convert_refuses_bad_kda_options_before_loading(tmp_path, flag, value):
    res = cli("convert", "--teacher", tmp_path / "no-teacher", "-a", "0", "--out", tmp_path / "s", flag, value)
    assert_one_line_error(res, flag, value)
    assert not (tmp_path / "s").exists()


def test_recipe_kda_options_and_the_config_class_validate_values(tmp_path, teacher_dir, data_dir):
    recipe = write_recipe(tmp_path / "r.yaml", teacher_dir, data_dir, tmp_path / "run",
                          **{"student.kda_options": {"kda_conv_activation": "tanh"}})
    assert_one_line_error(cli("distill", recipe), "student.kda_options", "kda_conv_activation", "tanh")
    assert not (tmp_path / "run").exists()
    from gendistill.models.hybrid import HybridConfig

    with pytest.raises(ValueError, match="kda_conv_activation"):
        HybridConfig(base_model_type="llama", num_hidden_layers=2, kda_conv_activation="tanh")


@pytest.mark.parametrize("text,tokens", [("1e8", 10**8), ("100M", 10**8), ("1.5B", 15 * 10**8), ("64k", 64000),
                                         ("100_000", 10**5)])
def test_token_counts_accept_numeric_and_suffixed_forms(tmp_path, teacher_dir, data_dir, text, tokens):
    recipe = write_recipe(tmp_path / "r.yaml", teacher_dir, data_dir, tmp_path / "run")
    r = load_recipe(recipe, ["stages[1].steps=null", f"stages[1].tokens={text}"])
    assert r.stages[1].tokens == tokens


def test_a_malformed_token_count_is_one_line(tmp_path, teacher_dir, data_dir):
    recipe = write_recipe(tmp_path / "r.yaml", teacher_dir, data_dir, tmp_path / "run")
    res = cli("distill", recipe, "--set", "stages[1].steps=null", "--set", "stages[1].tokens=1.5x")
    assert_one_line_error(res, "stages[1].tokens")


@pytest.mark.parametrize("spec,fragment", [(",,", "names no layer"), ("every:9", "only 4 layers"),
                                           ("ratio:0.01", "rounds to no attention layer")])
def test_attention_layer_specs_that_select_nothing_are_refused(tmp_path, teacher_dir, spec, fragment):
    res = cli("convert", "--teacher", teacher_dir, "-a", spec, "--out", tmp_path / "s")
    assert_one_line_error(res, fragment)
    assert not (tmp_path / "s").exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_chat_with_a_damaged_student_folder_is_one_line(tmp_path, teacher_dir):
    assert cli("convert", "--teacher", teacher_dir, "-a", "0", "--out", tmp_path / "s").code == 0
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    cfg["kda_conv_activation"] = "tanh"  # hand-edited: every forward would crash
    (tmp_path / "s" / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(cli("chat", "-p", "hi", "--student", tmp_path / "s", "--device", "cpu"),
                          "cannot load student folder", "kda_conv_activation")


def test_eval_refuses_zero_new_tokens_and_an_unwritable_out(tmp_path):
    res = cli("eval", "-m", "x", "--max-new-tokens", "0", "--out", tmp_path / "e")
    assert_one_line_error(res, "--max-new-tokens must be at least 1")
    (tmp_path / "f").write_text("")
    assert_one_line_error(cli("eval", "-m", "x", "--out", tmp_path / "f" / "e"), "--out", "cannot write")


def test_eval_removes_the_stale_examples_of_an_earlier_run_only(tmp_path):
    from gendistill.eval.api import _previous_example_files, _remove_stale
    from gendistill.ownership import write_marker

    ex = tmp_path / "examples"
    ex.mkdir()
    old, again, mine = ex / "t__arc__generate.jsonl", ex / "t__gsm8k__generate.jsonl", ex / "notes.jsonl"
    for p in (old, again, mine):
        p.write_text("{}\n")
    (tmp_path / "results.json").write_text(json.dumps({"example_files": [str(old), str(again), "/etc/passwd"]}))
    assert _previous_example_files(str(tmp_path)) == set()  # not marked by gendistill: nothing is removed there
    write_marker(tmp_path, "report")  # as an earlier eval into this folder left it
    _remove_stale(_previous_example_files(str(tmp_path)), [str(again)])
    assert not old.exists() and again.exists() and mine.exists() and Path("/etc/passwd").exists()


def test_a_rerun_of_evaluate_into_the_same_folder_keeps_only_its_own_examples(tmp_path, teacher_dir):
    """The stale-example removal runs inside :func:`gendistill.evaluate`, under the folder's lock, for the command
    and the library alike: a rerun with another task removes the first run's example files, and only those."""
    from gendistill.eval.api import evaluate

    tasks = []
    for name in ("quiz", "trivia"):
        tasks.append(tmp_path / f"{name}.jsonl")
        tasks[-1].write_text('{"question": "2+2?", "choices": ["3", "4"], "answer_idx": 1}\n')
    out = tmp_path / "out"
    first = evaluate(str(teacher_dir), str(tasks[0]), out=out, protocols="loglik", show_progress=False)
    (out / "examples" / "mine.jsonl").write_text("{}\n")
    second = evaluate(str(teacher_dir), str(tasks[1]), out=out, protocols="loglik", show_progress=False)
    names = sorted(p.name for p in (out / "examples").iterdir())
    assert names == ["mine.jsonl", *(Path(f).name for f in second.raw["example_files"])], names
    assert not any(Path(f).exists() for f in first.raw["example_files"])
