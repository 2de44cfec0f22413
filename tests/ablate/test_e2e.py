"""A tiny grid end to end on CPU through the command line: a 2-layer random Llama teacher saved as a folder, stage 1
and stage 3b for 2 steps each, the masking axis (2 cells sharing one stage-1 student), both protocols on a 3-question
quiz. Then the same command again: every cell is skipped and nothing is retrained or re-evaluated."""

from __future__ import annotations

import json

import yaml
from conftest import base_recipe
from typer.testing import CliRunner

from gendistill.cli import app
from tests.fixtures_teachers import make_tiny_folder

WORDS = "the capital of france is paris and italy has rome while germany keeps berlin".split()


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _sentence(i: int) -> str:
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(8))


def test_tiny_grid_runs_reports_and_resumes(tmp_path):
    make_tiny_folder(tmp_path / "teacher", "llama")
    _write_jsonl(tmp_path / "text.jsonl", [{"text": _sentence(i) + ". " + _sentence(i + 3)} for i in range(24)])
    _write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": _sentence(i)},
                                                          {"role": "assistant", "content": _sentence(i + 5)}]}
                                            for i in range(24)])
    _write_jsonl(tmp_path / "quiz.jsonl", [{"question": f"What is the capital of {c}?", "choices": list(opts),
                                            "answer_idx": a}
                                           for c, opts, a in (("France", ("Paris", "Rome"), 0),
                                                              ("Italy", ("Berlin", "Rome", "Paris"), 1),
                                                              ("Germany", ("Rome", "Berlin"), 1))])
    base = base_recipe(teacher=str(tmp_path / "teacher"), stages=("stage1", "stage3b"), steps=2)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    grid = {"base": "base.yaml", "output_dir": str(tmp_path / "out"),
            "axes": {"masking": ["completion_only", "all_tokens"]},
            "eval": {"tasks": str(tmp_path / "quiz.jsonl"), "limit": 3, "max_new_tokens": 4, "batch_size": 4,
                     "device": "cpu"}}
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid))
    runner = CliRunner()

    res = runner.invoke(app, ["ablate", str(tmp_path / "grid.yaml")])
    assert res.exit_code == 0, res.output
    out = tmp_path / "out"
    assert sorted(p.name.split("-")[0] for p in (out / "stages").iterdir()) == ["stage1", "stage3b", "stage3b"]
    rep = json.loads((out / "report.json").read_text())
    assert rep["evaluated"] == 2 and (out / "report.png").is_file()
    (axis,) = rep["axes"]
    assert axis["common_tasks"] == ["quiz"] and {"rank_loglik", "rank_generate"} <= set(axis["table"]["all_tokens"])
    for name in ("masking=completion_only", "masking=all_tokens"):
        cell = out / "cells" / name
        info = json.loads((cell / "cell.json").read_text())
        assert info["complete"] and (cell / "student" / "config.json").is_file()
        metrics = json.loads((cell / "metrics.json").read_text())
        assert metrics["stage1"]["steps"] == 2 and metrics["stage3b"]["steps"] == 2
        assert yaml.safe_load((cell / "recipe.yaml").read_text())["stages"][1]["masking"] == name.split("=")[1]
        ev = json.loads((cell / "eval" / "results.json").read_text())
        assert {(r["model"] == "teacher", r["protocol"]) for r in ev["rows"]} == {
            (True, "loglik"), (True, "generate"), (False, "loglik"), (False, "generate")}
    # the two cells really differ only in stage 3b's loss tokens
    loss_tokens = {n: [json.loads(x).get("loss_tokens") for x in (out / "cells" / n / "metrics.jsonl").read_text()
                       .splitlines() if json.loads(x)["stage"] == "stage3b" and "loss" in json.loads(x)]
                   for n in ("masking=completion_only", "masking=all_tokens")}
    assert sum(loss_tokens["masking=completion_only"]) < sum(loss_tokens["masking=all_tokens"])

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")} | \
             {p: p.stat().st_mtime_ns for p in (out / "evals").rglob("results.json")}
    res = runner.invoke(app, ["ablate", str(tmp_path / "grid.yaml"), "--dry-run"])
    flat = " ".join(res.output.split())
    assert res.exit_code == 0 and "3 distinct stage runs (3 done, 0 to train or resume); 2 distinct evaluations (0 to run)" in flat
    res = runner.invoke(app, ["ablate", str(tmp_path / "grid.yaml")])
    assert res.exit_code == 0, res.output
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing retrained or re-evaluated
