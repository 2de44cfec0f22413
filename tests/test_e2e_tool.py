"""tools/e2e.py (the whole job: convert, distill, evaluate teacher and students, fidelity, budget curve, summary) in
its smallest setting on CPU: a tiny teacher, a few steps per stage, two tiny task files."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
import yaml

from tests.distill._distill_helpers import chat_records, text_records, write_jsonl
from tests.eval.conftest import MC_ROWS, QA_ROWS
from tests.eval.conftest import write_jsonl as write_task
from tests.fixtures_teachers import make_tiny_folder

ROOT = Path(__file__).resolve().parents[1]


def _stage(name: str, **kw):
    base = {"name": name, "steps": 4, "seq_len": 32, "batch_size": 2, "micro_batch_size": 1,
            "optim": {"lr": 1.0e-3}, "eval_every": 4, "eval_sequences": 2}
    return {**base, **kw}


@pytest.mark.slow
def test_e2e_smallest_setting(tmp_path):
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
    mod = runpy.run_path(str(ROOT / "tools" / "e2e.py"))
    s = mod["main"]([str(rp), "--out", str(out), "--tasks", str(mc), "--extra-tasks", str(qa), "--smoke",
                     "--device", "cpu", "--snapshot-tasks", "quiz", "--fidelity-sequences", "2"])

    # every phase ran and is timed; the summary on disk is the returned one, complete
    assert set(s["phases"]) >= {"convert", "distill", "fidelity", "eval_base", "eval_distilled", "summary"}
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["complete"] and on_disk["phases"] == s["phases"]
    assert [b["stage"] for b in s["budgets"]] == ["stage1", "stage2", "stage3a", "stage3b"]
    assert s["distill_metrics"]["stage3b"]["steps"] == 4
    # all four models evaluated on both tasks under both protocols, compared against the teacher
    ev = s["evaluation"]
    assert ev["models"] == ["teacher", "undistilled", "stage3a", "stage3b"]
    for task in ("quiz", "qa"):
        for m in ev["models"]:
            assert set(ev["accuracy"][task][m]) >= {"loglik", "generate"}, (task, m)
    for m in ("undistilled", "stage3a", "stage3b"):
        e = ev["students"][m]["quiz"]
        assert 0 <= e["answer_agreement"] <= 1 and e["n"] == 4
        both = e.get("retention_loglik") is not None and e.get("retention_generate") is not None
        assert ("perplexity_gap" in e) == both  # a random tiny teacher may score 0: no retention then
        if both:
            assert e["perplexity_gap"] == pytest.approx(e["retention_loglik"] - e["retention_generate"])
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
    assert all(p["heldout_kl_stage3a"] is not None and p["n_answers"] == 4 for p in curve)
    assert curve[-1]["heldout_kl_stage3a"] == fid["stage3a"]["stage3a"]["kl_teacher_student"]
    assert set(s["targets_met"]) >= {"top1_agreement_met", "kl_met", "generation_retention_met",
                                     "mc_answer_agreement_met"}
    md = (out / "summary.md").read_text()
    assert "Budget curve" in md and "stage3b" in md
    assert (out / "budget_curve.png").read_bytes()[:4] == b"\x89PNG"
    merged = json.loads((out / "eval" / "all" / "results.json").read_text())
    assert merged["meta"]["models"] == ["teacher", "undistilled", "stage3a", "stage3b"]
