"""``gendistill eval`` end to end on tiny models (teacher + students), and its behaviour on bad input."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from gendistill.cli import app
from gendistill.eval.generate import CPU_BATCH
from tests.eval.conftest import MC_ROWS, QA_ROWS, write_jsonl
from tests.fixtures_teachers import make_tiny_folder

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalcli")
    teacher = root / "teacher"
    make_tiny_folder(teacher, "llama", seed=0)
    twin = root / "twin"
    shutil.copytree(teacher, twin)  # a "student" identical to the teacher
    other = root / "other"
    make_tiny_folder(other, "llama", seed=1)
    mc = write_jsonl(root / "quiz.jsonl", MC_ROWS)
    qa = write_jsonl(root / "qa.jsonl", QA_ROWS)
    chat = write_jsonl(root / "chat.jsonl", [
        {"messages": [{"role": "user", "content": "What is the capital of France?"},
                      {"role": "assistant", "content": "The capital of France is Paris."}]}
        for _ in range(4)
    ])
    return root, teacher, twin, other, mc, qa, chat


def _run(args):
    return runner.invoke(app, ["eval", *args, "--no-progress", "--threads", "1"])


def test_end_to_end_teacher_and_students(setup, tmp_path):
    root, teacher, twin, other, mc, qa, chat = setup
    out = tmp_path / "out"
    r = _run(["-m", str(teacher), "-m", str(twin), "-m", str(other), "--tasks", f"{mc},{qa}",
              "--max-new-tokens", "6", "--batch-size", "2", "--fidelity-chat", "2", "--fidelity-data", str(chat),
              "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert res["meta"]["models"] == ["teacher", "twin", "other"]
    assert {(x["task"], x["model"], x["protocol"]) for x in res["rows"]} == {
        (t, m, p) for t in ("quiz", "qa") for m in ("teacher", "twin", "other") for p in ("loglik", "generate")}
    def row(task, model, protocol):
        return next(x for x in res["rows"] if (x["task"], x["model"], x["protocol"]) == (task, model, protocol))

    def records(model, task, protocol):
        path = out / "examples" / f"{model}__{task}__{protocol}.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()]

    # every reported accuracy is the mean of the per-example records it summarises
    for model in ("teacher", "twin", "other"):
        for task in ("quiz", "qa"):
            ll, recs = row(task, model, "loglik"), records(model, task, "loglik")
            assert ll["n"] == len(recs) and ll["acc"] == pytest.approx(sum(r["acc"] for r in recs) / len(recs))
            gen, grecs = row(task, model, "generate"), records(model, task, "generate")
            assert gen["n"] == len(grecs)
            assert gen["acc"] == pytest.approx(sum(r["correct"] for r in grecs) / len(grecs))
            assert gen["invalid_rate"] == pytest.approx(sum(not r["valid"] for r in grecs) / len(grecs))
            assert all(r["valid"] for r in grecs if r["correct"])
    quiz_t = row("quiz", "teacher", "loglik")
    assert quiz_t["n"] == 6 and quiz_t["chance"] == 0.25
    gen = row("quiz", "teacher", "generate")
    assert gen["throughput"]["new_tokens"] > 0
    assert sum(gen["gold_positions"].values()) == pytest.approx(1.0)
    # the twin is the teacher: identical accuracy and generations, protocol gap 0, perfect fidelity
    twin = [c for c in res["comparisons"] if c["student"] == "twin"]
    assert sorted(c["task"] for c in twin) == ["qa", "quiz"]
    for c in twin:
        assert c["delta_loglik"] == 0 and c["delta_generate"] == 0
        # gap 0, or undefined where the (random tiny) teacher is at or below chance under a protocol
        t_rows = [row(c["task"], "teacher", p) for p in ("loglik", "generate")]
        above = all(r["acc"] > (r.get("chance") or 0.0) for r in t_rows)
        assert c["protocol_gap"] == (0 if above else None)
        assert [r["generation"] for r in records("twin", c["task"], "generate")] == \
            [r["generation"] for r in records("teacher", c["task"], "generate")]
    assert {c["task"] for c in res["comparisons"] if c["student"] == "other"} == {"qa", "quiz"}
    fid = {(f["student"], f["task"]): f for f in res["fidelity"]}
    assert fid[("twin", "quiz")]["exact_match"] == 1.0
    assert fid[("twin", "chat held-out")]["top1_agreement"] == 1.0
    assert fid[("twin", "chat held-out")]["kl_teacher_student"] == pytest.approx(0.0, abs=1e-6)
    assert fid[("other", "chat held-out")]["kl_teacher_student"] > 0.01
    assert fid[("other", "chat held-out")]["n_tokens"] > 0
    # per-example records, one file per model/task/protocol
    lines = (out / "examples" / "teacher__quiz__generate.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    assert len(lines) == 6 and {"generation", "pred", "valid", "correct", "gold"} <= set(rec)
    assert (out / "results.md").read_text().count("| quiz |") >= 6
    assert (out / "results.png").is_file()
    assert not (out / "results.partial.json").exists()  # removed once the run completes
    assert res["meta"]["complete"] is True


def test_fast_and_reference_engines_give_the_same_records(setup, tmp_path):
    """The whole command on both generation engines: every per-example generation record is the same (the
    throughput figures aside), for the teacher and a student."""
    root, teacher, twin, other, mc, qa, chat = setup
    recs = {}
    for engine in ("fast", "reference"):
        out = tmp_path / engine
        r = _run(["-m", str(teacher), "-m", str(other), "--tasks", f"{mc},{qa}", "--protocol", "generate",
                  "--max-new-tokens", "8", "--engine", engine, "--out", str(out)])
        assert r.exit_code == 0, r.output
        res = json.loads((out / "results.json").read_text())
        # the largest batch that ran: the fast engine plans within CPU_BATCH rows, the reference runs 8 at most
        sizes = {row["throughput"]["batch_size"] for row in res["rows"]}
        assert sizes and all(1 <= b <= (CPU_BATCH if engine == "fast" else 8) for b in sizes), sizes
        # where the time went: one line, from the phases the run timed, which fit in its wall time
        secs = res["meta"]["seconds"]
        assert {"data", "teacher load", "teacher generate", "other load", "other generate"} <= set(secs)
        assert sum(secs.values()) <= res["meta"]["wall_seconds"] + 0.1
        line = next(x for x in r.output.splitlines() if x.startswith("time: "))
        assert "teacher: load" in line and "other: load" in line and "generate" in line
        recs[engine] = {p.name: p.read_text() for p in sorted((out / "examples").iterdir())}
    assert len(recs["fast"]) == 4 and recs["fast"] == recs["reference"]


def test_limit_and_seed_subsample(setup, tmp_path):
    root, teacher, *_ , mc, qa, chat = setup
    outs = []
    for seed in (0, 0, 3):
        out = tmp_path / f"o{len(outs)}"
        r = _run(["-m", str(teacher), "--tasks", str(mc), "--protocol", "loglik", "--limit", "3", "--seed", str(seed),
                  "--out", str(out)])
        assert r.exit_code == 0, r.output
        outs.append([json.loads(x)["id"] for x in (out / "examples" / "teacher__quiz__loglik.jsonl").read_text().splitlines()])
    assert len(outs[0]) == 3 and outs[0] == outs[1] != outs[2]


def test_smoke_and_sampling(setup, tmp_path):
    root, teacher, *_ , mc, qa, chat = setup
    out = tmp_path / "s"
    r = _run(["-m", str(teacher), "--tasks", str(qa), "--protocol", "generate", "--smoke", "--samples", "2",
              "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    row = res["rows"][0]
    assert res["meta"]["smoke"] and row["max_new_tokens"] <= 16 and row["n"] == 3
    recs = [json.loads(x) for x in (out / "examples" / "teacher__qa__generate.jsonl").read_text().splitlines()]
    assert sorted({r["seed"] for r in recs}) == [0, 1] and len(recs) == 6


@pytest.mark.parametrize(
    "args,needle",
    [
        (["-m", "{root}/no_such_model", "--tasks", "{mc}"], "does not exist"),
        (["-m", "{teacher}", "--tasks", "arc_easy,nonsense"], "unknown task 'nonsense'; known tasks: arc_challenge"),
        (["-m", "{teacher}", "--tasks", "{bad}"], "bad.jsonl:2: field 'answer_idx' = 7 is out of range for 4 choices"),
        (["-m", "{teacher}", "--tasks", "{missing}"], "missing.jsonl:1: missing field 'choices'"),
        (["-m", "{teacher}", "--tasks", "{mc}", "--protocol", "vibes"], "unknown protocol 'vibes'"),
        (["-m", "{teacher}", "--tasks", "{mc}", "--limit", "0"], "--limit must be a positive integer"),
        (["--tasks", "{mc}"], "give at least one --model"),
        (["-m", "{teacher}", "--tasks", "{mc}", "--engine", "turbo"], "unknown generation engine 'turbo'"),
        (["-m", "{teacher}", "--tasks", "{mc}", "--engine", "fast", "--samples", "2"], "decodes greedily"),
        (["-m", "{teacher}", "--tasks", "{mc}", "--fidelity-chat", "2"], "--fidelity-chat compares students with"),
        (["-m", "{teacher}", "--tasks", "{mc}", "--fidelity-heldout", "{mc}"], "--fidelity-heldout compares students"),
    ],
)
def test_bad_input_one_line_nothing_written(setup, tmp_path, args, needle):
    root, teacher, twin, other, mc, qa, chat = setup
    bad = write_jsonl(tmp_path / "bad.jsonl", [MC_ROWS[0], {**MC_ROWS[1], "answer_idx": 7}])
    missing = write_jsonl(tmp_path / "missing.jsonl", [{"question": "q", "answer_idx": 0, "choices2": []}])
    fmt = dict(root=root, teacher=teacher, mc=mc, bad=bad, missing=f"mc:{missing}")
    out = tmp_path / "out"
    r = _run([a.format(**fmt) for a in args] + ["--out", str(out)])
    assert r.exit_code == 2, r.output
    err = r.stderr if hasattr(r, "stderr") else r.output
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and needle in lines[0], err
    assert not out.exists()


def test_merge_cli(setup, tmp_path):
    root, teacher, twin, other, mc, qa, chat = setup
    for name, task in (("a", mc), ("b", qa)):
        r = _run(["-m", str(teacher), "--tasks", str(task), "--protocol", "loglik", "--out", str(tmp_path / name)])
        assert r.exit_code == 0, r.output
    r = _run(["--merge", str(tmp_path / "a"), "--merge", str(tmp_path / "b" / "results.json"), "--out",
              str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "m" / "results.json").read_text())
    assert [x["task"] for x in res["rows"]] == ["quiz", "qa"]
    r = _run(["--merge", str(tmp_path / "nope"), "--out", str(tmp_path / "m2")])
    assert r.exit_code == 2 and "results file not found" in r.output
