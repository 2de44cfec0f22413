"""tools/e2e.py (the whole job: convert, distill, evaluate teacher and students, fidelity, budget curve, summary) in
its smallest setting on CPU: a tiny teacher, a few steps per stage, two tiny task files."""

from __future__ import annotations

import json
import os
import runpy
import sys
import time
from pathlib import Path

import pytest
import yaml

from gendistill.errors import GendistillError
from gendistill.eval.report import comparisons
from tests.distill._distill_helpers import chat_records, text_records, write_jsonl
from tests.eval.conftest import MC_ROWS, QA_ROWS
from tests.eval.conftest import write_jsonl as write_task
from tests.fixtures_teachers import make_tiny_folder

ROOT = Path(__file__).resolve().parents[1]


E2E = runpy.run_path(str(ROOT / "tools" / "e2e.py"))


def test_a_job_is_timed_by_when_it_ran_not_by_when_it_was_waited_on(tmp_path):
    # the child sleeps 0.3 s; the job is waited on only after 2 s (as eval_base is, after distill and fidelity)
    job = E2E["Job"]("sleepy", [], tmp_path, dict(os.environ),
                     cmd=[sys.executable, "-c", "import time; time.sleep(0.3)"])
    time.sleep(2.0)
    start, end = job.wait()
    assert 0.3 <= end - start < 1.5  # launch → exit (interpreter start-up included), not launch → wait (≥ 2 s)
    phases: dict = {}
    e = E2E["record_phase"](phases, "sleepy", start, end, origin=start - 10.0)
    assert phases == {"sleepy": e} and e["start_s"] == 10.0 and e["seconds"] == round(end - start, 1)
    assert e["end_s"] == round(end - start + 10.0, 1)
    lines = E2E["phase_table"](phases, wall=20.0)
    assert f"| sleepy | 10.0 | {e['end_s']} | {e['seconds']} |" in lines
    assert "| whole job (wall) | 0 | 20.0 | 20.0 |" in lines
    # a failing child ends the job with its exit code and its log's tail
    bad = E2E["Job"]("bad", [], tmp_path, dict(os.environ),
                     cmd=[sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"])
    with pytest.raises(SystemExit, match=r"(?s)bad failed \(exit 3\).*boom"):
        bad.wait()


def _stage(name: str, **kw):
    base = {"name": name, "steps": 4, "seq_len": 32, "batch_size": 2, "micro_batch_size": 1,
            "optim": {"lr": 1.0e-3}, "eval_every": 4, "eval_sequences": 2}
    return {**base, **kw}


@pytest.mark.slow
def test_e2e_smallest_setting(tmp_path, monkeypatch):
    teacher = tmp_path / "teacher"
    make_tiny_folder(teacher, "llama", seed=0)
    text = write_jsonl(tmp_path / "text.jsonl", text_records(40))
    chat = write_jsonl(tmp_path / "chat.jsonl", chat_records(40))
    recipe = {
        "teacher": {"spec": str(teacher)},
        "student": {"attention_layers": [0]},
        "data": {"sources": [{"path": str(text), "format": "text"}], "heldout_documents": 4},
        "stages": [_stage("stage1", loss={"kind": "mse"}), _stage("stage2", loss={"kind": "mse"}),
                   _stage("stage3a"),
                   _stage("stage3b", seq_len=64, data={"sources": [{"path": str(chat), "format": "chat"}],
                                                      "heldout_documents": 4})],
        "run": {"output_dir": "unused", "device": "cpu", "tensorboard": False, "progress": "none"},
    }
    rp = tmp_path / "recipe.yaml"
    rp.write_text(yaml.safe_dump(recipe))
    mc = write_task(tmp_path / "quiz.jsonl", MC_ROWS)
    qa = write_task(tmp_path / "qa.jsonl", QA_ROWS)
    out = tmp_path / "job"
    # a bubblewrap that cannot create its sandbox: HumanEval is refused, and the job must go on and say so
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "bwrap").write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    (fake / "bwrap").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    s = E2E["main"]([str(rp), "--out", str(out), "--tasks", str(mc), "--extra-tasks", str(qa), "--smoke",
                     "--device", "cpu", "--snapshot-tasks", "quiz", "--fidelity-sequences", "2",
                     "--long-context", "512", "--long-context-tasks", "ruler_niah_single_2,ruler_vt",
                     "--depths", "0,100", "--long-context-limit", "2", "--code"])

    # every phase ran and is timed by its own start and end; the summary on disk is the returned one, complete
    ph = s["phases"]
    assert set(ph) >= {"convert", "distill", "fidelity", "eval_base", "eval_stage3a", "eval_stage3b",
                       "eval_snapshots", "eval_distilled", "summary", "eval_longctx_base", "eval_longctx_final",
                       "eval_code_base", "eval_code_final"}
    for v in ph.values():
        assert 0 <= v["start_s"] <= v["end_s"] <= s["wall_seconds"] + 0.1
        assert v["seconds"] == pytest.approx(v["end_s"] - v["start_s"], abs=0.11)
    # eval_base is launched beside distill; the distilled evaluations span from the first launch to the last exit
    assert ph["eval_base"]["start_s"] == pytest.approx(ph["distill"]["start_s"], abs=1.0)
    later = [ph[k] for k in ("eval_stage3a", "eval_stage3b", "eval_snapshots")]
    assert ph["eval_distilled"]["start_s"] == min(v["start_s"] for v in later)
    assert ph["eval_distilled"]["end_s"] == max(v["end_s"] for v in later)
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["complete"] and on_disk["phases"] == ph
    assert [b["stage"] for b in s["budgets"]] == ["stage1", "stage2", "stage3a", "stage3b"]
    assert s["student"] == {"attention_layers": [0]}  # which layers kept attention: records of one recipe differ in it
    assert "Attention layers: `[0]`." in (out / "summary.md").read_text()
    assert s["distill_metrics"]["stage3b"]["steps"] == 4
    # all four models evaluated on both tasks under both protocols, compared against the teacher
    ev = s["evaluation"]
    assert ev["models"] == ["teacher", "undistilled", "stage3a", "stage3b"]
    for task in ("quiz", "qa"):
        for m in ev["models"]:
            assert set(ev["accuracy"][task][m]) >= {"loglik", "generate"}, (task, m)
    # retention and the protocol gap are gendistill eval's comparisons of the same rows (one function)
    rows = [r for d in ("base", "distilled_stage3a", "distilled_stage3b")
            for r in json.loads((out / "eval" / d / "results.json").read_text())["rows"]]
    comps = {(c["student"], c["task"]): c for c in comparisons(rows, "teacher")}
    merged_comps = {(c["student"], c["task"]): c
                    for c in json.loads((out / "eval" / "all" / "results.json").read_text())["comparisons"]}
    for m in ("undistilled", "stage3a", "stage3b"):
        e = ev["students"][m]["quiz"]
        assert 0 <= e["answer_agreement"] <= 1 and e["n"] == 4
        for task in ("quiz", "qa"):
            c, et = comps[(m, task)], ev["students"][m][task]
            assert et["protocol_gap"] == c["protocol_gap"] == merged_comps[(m, task)]["protocol_gap"]
            assert et["retention_loglik"] == c["retention_loglik"]["raw"]
            assert et["retention_generate"] == c["retention_generate"]["raw"]
        t_acc = ev["accuracy"]["quiz"]["teacher"]["loglik"]
        s_acc = ev["accuracy"]["quiz"][m]["loglik"]
        assert e.get("retention_loglik") == (pytest.approx(s_acc / t_acc) if t_acc > 0 else None)
    # held-out fidelity for every student on both stages' held-out sequences (the trainer's masks)
    fid = s["heldout_fidelity"]
    assert set(fid) == {"undistilled", "stage3a-25pct", "stage3a-50pct", "stage3a", "stage3b"}
    for per in fid.values():
        assert set(per) == {"stage3a", "stage3b"}
        assert all(v["n_tokens"] > 0 and 0 <= v["top1_agreement"] <= 1 and v["kl_teacher_student"] >= 0
                   for v in per.values())
    # the budget curve: 25 %, 50 %, 100 % of stage 3a, each with held-out KL and answer agreement
    curve = s["budget_curve"]
    assert [p["fraction"] for p in curve] == [0.25, 0.5, 1.0]
    assert [p["tokens"] for p in curve] == [round(f * s["distill_metrics"]["stage3a"]["tokens"]) for f in (0.25, .5, 1)]
    assert all(p["heldout_kl_stage3a"] is not None and p["n_answers"] == 4 and p["answer_tasks"] == ["quiz"]
               for p in curve)
    assert curve[-1]["heldout_kl_stage3a"] == fid["stage3a"]["stage3a"]["kl_teacher_student"]
    t = s["targets_met"]  # issue 25's targets, each with its value and whether it is met
    for k in ("text_top1", "text_kl", "chat_top1", "chat_kl", "answer_agreement", "generation_retention",
              "loglik_retention"):
        assert f"{k}_met" in t
    assert t["text_kl"] == fid["stage3b"]["stage3a"]["kl_teacher_student"]
    assert t["chat_kl"] == fid["stage3b"]["stage3b"]["kl_teacher_student"]
    assert t["text_kl_met"] == (t["text_kl"] <= 0.10) and not t["all_met"]
    # the long-context and code suites (issue 29): teacher, undistilled and final student on the same examples, the
    # summary's means are the merged report's rows averaged over the tasks
    lc = s["longctx"]
    assert lc["models"] == ["teacher", "undistilled", "stage3b"]
    merged_lc = json.loads((out / "eval_extra" / "longctx" / "all" / "results.json").read_text())
    assert merged_lc["rows"] == lc["rows"] and (out / "eval_extra" / "longctx" / "all" / "long_context.png").is_file()
    for m in lc["models"]:
        for proto in ("generate", "loglik"):
            accs = [b["acc"] for r in lc["rows"] if r["model"] == m and r["protocol"] == proto for b in r["by_length"]]
            assert len(accs) == 2 and lc["mean_by_length"][m][proto] == {"512": pytest.approx(sum(accs) / 2)}
    assert ph["eval_longctx_base"]["start_s"] == pytest.approx(ph["distill"]["start_s"], abs=1.0)
    code = s["code"]  # refused on both parts, each named with its log's last line; the rest of the job complete
    assert set(code) == {"error"} and set(code["error"]) == {"eval_code_base", "eval_code_final"}
    assert all("bubblewrap sandbox" in v for v in code["error"].values())
    md = (out / "summary.md").read_text()
    assert "Budget curve" in md and "stage3b" in md and "on the snapshot tasks (quiz)" in md
    assert "## Long context" in md and "## HumanEval" in md and "failed: eval_code_final" in md
    assert (out / "budget_curve.png").read_bytes()[:4] == b"\x89PNG"
    merged = json.loads((out / "eval" / "all" / "results.json").read_text())
    assert merged["meta"]["models"] == ["teacher", "undistilled", "stage3a", "stage3b"]
    # the distilled students' model cards carry their evaluation beside the trainer's held-out figures
    for stage in ("stage3a", "stage3b"):
        card = (out / "run" / stage / "README.md").read_text()
        assert "Not evaluated yet" not in card and "quiz" in card, stage
    # answer agreement is the evaluator's function of the two models' extracted answers (invalid replies agree)
    tex = [json.loads(line) for line in next((out / "eval" / "base" / "examples").glob("teacher__quiz__generate*"))
           .read_text().splitlines()]
    sex = [json.loads(line) for line in next((out / "eval" / "distilled_stage3b" / "examples")
                                             .glob("stage3b__quiz__generate*")).read_text().splitlines()]
    by_id = {r["id"]: r["pred"] for r in sex}
    same = [r["pred"] == by_id[r["id"]] for r in tex]
    assert ev["students"]["stage3b"]["quiz"]["answer_agreement"] == sum(same) / len(same)
    assert "answer_agreement_valid" in ev["students"]["stage3b"]["quiz"]
    # and between the two models' log-likelihood choices, with the agreement their choice shares give by chance
    tll, sll = ({r["id"]: r["pred"] for line in next((out / "eval" / d / "examples").glob(f"{m}__quiz__loglik*"))
                 .read_text().splitlines() for r in [json.loads(line)]}
                for d, m in (("base", "teacher"), ("distilled_stage3b", "stage3b")))
    quiz = ev["students"]["stage3b"]["quiz"]
    assert quiz["loglik_answer_agreement"] == sum(tll[i] == sll[i] for i in tll) / len(tll)
    assert 0.0 <= quiz["loglik_answer_agreement_chance"] <= 1.0 and "loglik_answer_kappa" in quiz
    assert "choice agreement (loglik)" in (out / "summary.md").read_text()
    # the targets carry each task's chance level beside its agreement, and the markdown shows both
    chance = s["targets_met"]["mc_answer_agreement_chance"]
    assert chance["quiz"] == ev["students"]["stage3b"]["quiz"]["answer_agreement_chance"]
    assert "per task, answer agreement (by chance): " in (out / "summary.md").read_text()

    # --suites-only: a suite part that wrote no results (here removed) runs again on the job's own students and the
    # suite is merged and summarised anew; the same examples and greedy decoding give the same rows
    import shutil

    shutil.rmtree(out / "eval_extra" / "longctx" / "final")
    again = ["--out", str(out), "--device", "cpu", "--smoke", "--long-context", "512", "--long-context-tasks",
             "ruler_niah_single_2,ruler_vt", "--depths", "0,100", "--long-context-limit", "2", "--suites-only"]
    r = E2E["main"]([str(rp), *again])
    # how long a row took, and whether the evaluator's result cache served it: all two runs of it may differ in
    timing = ("seconds", "throughput", "cached")

    def scored(rows):
        return [{k: v for k, v in row.items() if k not in timing} for row in rows]

    assert scored(r["longctx"]["rows"]) == scored(lc["rows"]) and "error" not in r["longctx"]
    assert set(r["phases"]) - set(ph) == {"eval_longctx_final_rerun"}
    assert {k: r["phases"][k] for k in ph} == ph, "the job's own phases are kept"
    assert (out / "logs" / "eval_longctx_final.previous.log").is_file()
    assert json.loads((out / "summary.json").read_text()) == r
    # the students gone: nothing runs and the summary is left as it was
    shutil.rmtree(out / "eval_extra" / "longctx" / "final")
    shutil.rmtree(out / "run" / "stage3b")
    before = (out / "summary.json").read_text()
    with pytest.raises(SystemExit, match=r"stage3b not found: the students must still be in the job folder"):
        E2E["main"]([str(rp), *again])
    assert (out / "summary.json").read_text() == before


def test_a_failed_suite_part_is_reported_by_its_log(tmp_path):
    """One evaluation of a suite refused (HumanEval without a usable sandbox): the summary names its last log line
    beside the figures of the part that ran, and the markdown shows both."""
    logs, folder = tmp_path / "logs", tmp_path / "eval_extra" / "code"
    logs.mkdir()
    (logs / "eval_code_base.log").write_text("loading\nerror: task humaneval: executing model-written code needs the "
                                             "bubblewrap sandbox\n")
    assert E2E["_suite_summary"](folder, logs, "code") == {"error": {
        "eval_code_base": "error: task humaneval: executing model-written code needs the bubblewrap sandbox",
        "eval_code_final": "(no log)"}}
    rows = [{"task": "humaneval", "model": "stage3b", "protocol": "generate", "acc": 0.25}]
    for part in ("final", "all"):
        (folder / part).mkdir(parents=True)
        (folder / part / "results.json").write_text(json.dumps({"meta": {"models": ["stage3b"]}, "rows": rows}))
    got = E2E["_suite_summary"](folder, logs, "code")
    assert got["pass@1"] == {"stage3b": 0.25} and list(got["error"]) == ["eval_code_base"]
    md = "\n".join(E2E["_suite_markdown"]({"code": got}))
    assert "## HumanEval" in md and "failed: eval_code_base: error: task humaneval" in md and "stage3b: 25.0" in md


def test_bad_suite_settings_fail_before_the_distillation(tmp_path, capsys):
    for extra, needle in ((["--long-context", "1k,lots"], "--context-lengths: 'lots'"),
                          (["--scaled-context", "16k"], "give LENGTH:ROPE"),
                          (["--long-context", "1k", "--long-context-tasks", "nope"], "unknown task 'nope'")):
        with pytest.raises(SystemExit) as e:
            E2E["main"](["tiny-cpu", "--out", str(tmp_path / "job"), "--device", "cpu", *extra])
        assert needle in str(e.value), e.value
        assert not (tmp_path / "job").exists(), "nothing written for bad input"
    with pytest.raises(SystemExit, match=r"holds no e2e job \(no summary\.json\)"):
        E2E["main"](["tiny-cpu", "--out", str(tmp_path / "job"), "--device", "cpu", "--code", "--suites-only"])
    with pytest.raises(SystemExit, match=r"name the suites"):
        E2E["main"](["tiny-cpu", "--out", str(tmp_path / "job"), "--device", "cpu", "--suites-only"])
    assert not (tmp_path / "job").exists()


def test_the_suites_plan_their_batches_within_a_share_of_the_card():
    """The long-context and code evaluations start together with others on one card: on CUDA each gets its share
    (gendistill eval --gpu-memory-fraction) and plans its batches within it, no fixed batch; on CPU small fixed ones."""
    args = E2E["parse_args"](["tiny-cpu", "--out", "x", "--long-context", "1k,2k", "--scaled-context", "16k:yarn:2",
                              "--code", "--suite-memory-fraction", "0.1"])
    suites = E2E["_suites"](args, "cuda", "bfloat16", True, 4096)
    for name in ("longctx", "longctx_scaled", "code"):
        a = suites[name]
        assert a[a.index("--gpu-memory-fraction") + 1] == "0.1", a
        assert "--batch-size" not in a and "--token-budget" not in a, a
    cpu = E2E["_suites"](args, "cpu", "float32", False, 2048)
    assert all("--gpu-memory-fraction" not in a and "--batch-size" in a for a in cpu.values())
    with pytest.raises(GendistillError, match="--suite-memory-fraction: 1.5 must be in"):
        E2E["_suites"](E2E["parse_args"](["tiny-cpu", "--out", "x", "--code", "--suite-memory-fraction", "1.5"]),
                       "cuda", "bfloat16", True, 4096)


def test_choice_agreement_counts_the_choice_the_task_accuracy_counts(tmp_path):
    """ARC-style tasks are scored by acc_norm: the teacher's and the student's choice is their ``pred_norm``, not the
    raw-sum ``pred`` (here the two disagree on every question, so the wrong field gives the opposite figure)."""
    def part(folder: str, model: str, preds: list[tuple[int, int]]) -> None:
        d = tmp_path / "eval" / folder
        (d / "examples").mkdir(parents=True)
        rows = [{"task": "arc_easy", "model": model, "protocol": "loglik", "acc": 0.5, "chance": 0.25}]
        (d / "results.json").write_text(json.dumps({"meta": {"teacher": "T"}, "rows": rows}))
        (d / "examples" / f"{model}__arc_easy__loglik.jsonl").write_text("".join(
            json.dumps({"id": str(i), "task": "arc_easy", "model": model, "protocol": "loglik", "pred": p,
                        "pred_norm": pn}) + "\n" for i, (p, pn) in enumerate(preds)))

    part("base", "T", [(0, 1), (0, 2), (0, 3), (0, 1)])
    part("distilled_stage3b", "S", [(1, 1), (2, 2), (3, 3), (2, 1)])  # raw choices never the teacher's; normed 4 of 4
    e = E2E["_evaluation_summary"](tmp_path / "eval")["students"]["S"]["arc_easy"]
    assert e["loglik_answer_agreement"] == 1.0
    assert e["loglik_answer_agreement_chance"] == pytest.approx(0.5 * 0.5 + 0.25 * 0.25 + 0.25 * 0.25)


def test_a_profiled_steps_shares_are_of_the_total_its_table_states(tmp_path):
    """Summaries logged before the phases were added counted each kernel twice in their total (its host op and the
    kernel itself); the stage metrics take the total from the table's own footer, so each share is the table's."""
    run = tmp_path / "run"
    (run / "profile").mkdir(parents=True)
    (run / "profile" / "stage3a_step5.txt").write_text("...\nSelf CPU time total: 400.000ms\n"
                                                        "Self CUDA time total: 500.000ms\n")
    top = [{"op": "aten::mm", "ms": 100.0, "share": 0.1}, {"op": "nvjet_kernel", "ms": 50.0, "share": 0.05}]
    recs = [{"stage": "stage3a", "step": 5, "time": 1.0, "loss": 1.0, "tokens": 10, "tokens_per_s": 5.0},
            {"stage": "stage3a", "step": 5, "time": 1.5,
             "profile": {"table": "stage3a_step5.txt", "total_ms": 1000.0, "top": top}}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    prof = E2E["_stage_metrics"](run / "metrics.jsonl")["stage3a"]["profile"]
    assert prof["total_ms"] == 500.0 and [op["share"] for op in prof["top"]] == [0.2, 0.1]
    (run / "profile" / "stage3a_step5.txt").unlink()  # no table: the summary as logged
    prof = E2E["_stage_metrics"](run / "metrics.jsonl")["stage3a"]["profile"]
    assert prof["total_ms"] == 1000.0 and prof["top"] == top
