"""``gendistill distill`` end to end through the command line, with a teacher saved as a local folder: bad recipes
exit 2 with one line, --dry-run prints the plan, a run stopped with --stop-after is finished by --resume."""

from __future__ import annotations

import json

import yaml
from _distill_helpers import chat_records, text_records, write_jsonl
from typer.testing import CliRunner

from gendistill.cli import app


def _recipe(tmp_path, teacher, tok) -> str:
    tdir = tmp_path / "teacher"
    teacher.save_pretrained(tdir)
    tok.save_pretrained(tdir)
    write_jsonl(tmp_path / "text.jsonl", text_records(40))
    write_jsonl(tmp_path / "chat.jsonl", chat_records(40))
    r = {
        "teacher": {"spec": str(tdir)},
        "student": {"attention_layers": [0, 2]},
        "data": {"sources": [{"path": "text.jsonl", "format": "text"}], "heldout_documents": 4},
        "stages": [
            {"name": "stage1", "steps": 2, "seq_len": 32, "batch_size": 2, "optim": {"lr": 1e-3}},
            {"name": "stage3b", "steps": 3, "seq_len": 32, "batch_size": 2, "masking": "completion_only",
             "optim": {"lr": 1e-4},
             "data": {"sources": [{"path": "chat.jsonl", "format": "chat"}], "heldout_documents": 4}},
        ],
        "run": {"output_dir": str(tmp_path / "run"), "checkpoint_every": 1, "progress": "lines"},
    }
    p = tmp_path / "recipe.yaml"
    p.write_text(yaml.safe_dump(r))
    return str(p)


def test_bad_recipe_exits_2_with_the_key(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"teacher": {"spec": "x"}, "student": {"attention_layers": [0]}, "stages": [],
                                 "run": {"output_dir": "o"}, "oops": 1}))
    res = CliRunner().invoke(app, ["distill", str(p)])
    assert res.exit_code == 2
    out = res.output.replace("\n", " ")
    assert "oops: unknown key" in out and "stages: List should have at least 1 item" in out
    assert "Traceback" not in res.output


def test_stop_after_below_one_is_refused_before_anything_runs(tmp_path, teacher, tok):
    """--stop-after 0 (or -3) once trained a step: it is one line now, and no run folder is made."""
    recipe = _recipe(tmp_path, teacher, tok)
    for n in ("0", "-3"):
        res = CliRunner().invoke(app, ["distill", recipe, "--stop-after", n])
        assert res.exit_code == 2 and f"--stop-after {n}: must be at least 1" in res.output.replace("\n", " ")
        assert not (tmp_path / "run").exists()


def test_dry_run_stop_and_resume(tmp_path, teacher, tok):
    recipe = _recipe(tmp_path, teacher, tok)
    runner = CliRunner()
    res = runner.invoke(app, ["distill", recipe, "--dry-run"])
    assert res.exit_code == 0, res.output
    plan = json.loads(res.stdout[res.stdout.index("{"):])
    assert [s["stage"] for s in plan["plan"]] == ["stage1", "stage3b"]
    assert plan["plan"][1]["masking"] == "completion_only" and plan["data"]["stage3b"]
    assert not (tmp_path / "run").exists()

    res = runner.invoke(app, ["distill", recipe, "--stop-after", "1"])
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "run" / "stage1").exists()
    # the tens of seconds before the first step say what they are doing, in order, before the first step's line
    notes = [x for x in res.stderr.splitlines() if x.startswith("[distill] ")]
    assert [n.split(" ")[1] for n in notes] == ["loading", "reading", "building", "training"], notes
    assert notes[-1].startswith(f"[distill] training stage1, stage3b into {tmp_path / 'run'}  (")
    # each note and the first step's line say how long the process has run: never less than the note before
    seconds = [float(n.rsplit("(", 1)[1].removesuffix(" s)")) for n in notes]
    first = next(x for x in res.stderr.splitlines() if x.startswith("[stage1] step 1/2"))
    seconds.append(float(first.split("(first step ", 1)[1].split(" s after the process started)")[0]))
    assert seconds == sorted(seconds) and seconds[0] > 0, seconds
    assert res.stderr.index(notes[-1]) < res.stderr.index("[stage1] step 1/2")
    res = runner.invoke(app, ["distill", recipe])
    assert res.exit_code == 2 and "--resume" in res.output
    res = runner.invoke(app, ["distill", recipe, "--resume", "--set", "stages[1].steps=2", "--set",
                              "stages[1].log_every=2"])
    assert res.exit_code == 0, res.output
    # each stage's first step in each invocation is logged (also between log_every steps) with the process's age
    steps = [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    aged = [(r["stage"], r["step"]) for r in steps if r.get("process_seconds", 0) > 0]
    assert aged == [("stage1", 1), ("stage1", 2), ("stage3b", 1)], steps
    assert [(r["stage"], r["step"]) for r in steps if r["stage"] == "stage3b"] == [("stage3b", 1), ("stage3b", 2)]
    assert "[distill] training stage1, stage3b into" in res.stderr  # --stop-after 1 stopped stage 1 after one step
    assert "stage1: 2 steps" in res.output and "stage3b: 2 steps" in res.output
    assert (tmp_path / "run" / "stage3b" / "config.json").exists()
    resolved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert resolved["stages"][1]["steps"] == 2 and resolved["stages"][1]["loss"]["kind"] == "forward_kl"
