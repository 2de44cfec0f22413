"""The trainer's held-out fidelity: every held-out evaluation of stages 3a/3b logs top-1 agreement and KL computed by
gendistill.eval.heldout.heldout_fidelity on rows it writes to ``run/heldout/<stage>.safetensors``; the evaluator
(``gendistill eval --fidelity-heldout``) gives the same number on the saved student, loaded as users load it."""

from __future__ import annotations

import json

import pytest
import torch
from test_distill_trainer import make_recipe

from gendistill.cli import app
from gendistill.distill.heldout import heldout_file
from gendistill.distill.pipeline import run_recipe
from gendistill.eval.heldout import heldout_fidelity, load_heldout_rows
from gendistill.models.loading import load_model


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_trainer_and_evaluator_give_one_number(tmp_path, teacher, tok):
    recipe = make_recipe(tmp_path, ["stage1", "stage3a", "stage3b"], steps=4, stage1={"steps": 1, "eval_every": 1},
                         stage3a={"eval_every": 2}, stage3b={"eval_every": 2})
    run_recipe(recipe, teacher=teacher, tokenizer=tok)
    run_dir = tmp_path / "run"
    evals = [r for r in _records(run_dir) if "eval_loss" in r]
    logit = [r for r in evals if r["stage"] in ("stage3a", "stage3b")]
    assert [(r["stage"], r["step"]) for r in logit] == [(s, k) for s in ("stage3a", "stage3b") for k in (0, 2, 4)]
    assert all("eval_kl" not in r for r in evals if r["stage"] == "stage1"), "hidden-state stages have no logits"
    for r in logit:
        assert 0.0 <= r["eval_top1"] <= 1.0 and r["eval_tokens"] > 0
        # the stage loss is forward KL at temperature 1: the held-out loss and the held-out KL are one quantity,
        # computed by the loss (chunked reference) and by the fidelity function (float32 logits): 1e-5 relative
        assert r["eval_kl"] == pytest.approx(r["eval_loss"], rel=1e-5)
    assert logit[2]["eval_kl"] < logit[0]["eval_kl"], "stage 3a's training lowered its held-out KL"

    # the rows file holds exactly the rows the trainer scored: its token count is the trainer's
    rows, meta = load_heldout_rows(heldout_file(run_dir, "stage3b"))
    assert meta["stage"] == "stage3b" and meta["training_masking"] == "completion_only"
    assert int(rows["loss_mask"].sum()) == logit[-1]["eval_tokens"]
    assert not heldout_file(run_dir, "stage1").exists()

    # the final student loaded as users load it, through the evaluator's entry point: the trainer's number
    student, _ = load_model(str(run_dir / "stage3b"), dtype=torch.float32, device=torch.device("cpu"))
    res = heldout_fidelity(teacher, student, rows)
    assert res["kl_teacher_student"] == pytest.approx(logit[-1]["eval_kl"], rel=1e-5, abs=1e-7)
    assert res["top1_agreement"] == pytest.approx(logit[-1]["eval_top1"], abs=1e-9)
    # the student's model card carries each logit stage's last held-out figures
    card = (run_dir / "stage3b" / "README.md").read_text()
    for r in (logit[2], logit[-1]):
        assert f"| {r['eval_kl']:.4f} / {100 * r['eval_top1']:.1f} % |" in card


def test_eval_command_scores_the_trainers_heldout_rows(tmp_path, teacher, tok):
    """``gendistill eval --fidelity-heldout``: a teacher folder and the run's student; the fidelity row is the
    trainer's last held-out figure. A file that is not a rows file fails before any model is loaded."""
    from typer.testing import CliRunner

    recipe = make_recipe(tmp_path, ["stage3a"], steps=2, stage3a={"eval_every": 2})
    run_recipe(recipe, teacher=teacher, tokenizer=tok)
    run_dir = tmp_path / "run"
    last = [r for r in _records(run_dir) if "eval_kl" in r][-1]
    teacher.save_pretrained(tmp_path / "teacher")
    tok.save_pretrained(tmp_path / "teacher")
    runner = CliRunner()
    rows_file = heldout_file(run_dir, "stage3a")
    common = ["eval", "-m", str(tmp_path / "teacher"), "-m", str(run_dir / "stage3a"), "--tasks",
              "mc:" + str(_quiz(tmp_path)), "--protocol", "loglik", "--device", "cpu", "--no-progress", "--no-cache"]
    res = runner.invoke(app, [*common, "--fidelity-heldout", str(rows_file), "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    fid = [f for f in json.loads((tmp_path / "ev" / "results.json").read_text())["fidelity"]
           if f["task"] == "held-out stage3a"]
    assert len(fid) == 1
    assert fid[0]["kl_teacher_student"] == pytest.approx(last["eval_kl"], rel=1e-5, abs=1e-7)
    assert fid[0]["n_tokens"] == last["eval_tokens"]

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"nope")
    res = runner.invoke(app, [*common, "--fidelity-heldout", str(bad), "--out", str(tmp_path / "ev2")])
    assert res.exit_code != 0 and "not a held-out rows file" in res.output
    assert not (tmp_path / "ev2" / "results.json").exists()


def _quiz(tmp_path):
    p = tmp_path / "quiz.jsonl"
    p.write_text("".join(json.dumps({"id": f"q{i}", "question": f"pick {i}", "choices": ["a", "b"], "answer_idx": 0})
                         + "\n" for i in range(2)))
    return p


def test_a_copy_of_the_teacher_scores_kl_0_in_the_trainer_and_the_evaluator(tmp_path, teacher, tok):
    """A student that keeps attention in every layer computes the teacher's function: on the packed held-out rows the
    trainer's held-out evaluation before training and the evaluator on its rows file both give KL 0 and top-1 100 %
    (the defect this replaced gave a perfect copy a chat KL of about 2.4)."""
    n = teacher.config.num_hidden_layers
    recipe = make_recipe(tmp_path, ["stage3a"], steps=1,
                         stage3a={"eval_every": 1, "trainable": {"groups": ["mlp", "norms"]}})
    recipe.student.attention_layers = list(range(n))
    run_recipe(recipe, teacher=teacher, tokenizer=tok)
    run_dir = tmp_path / "run"
    first = [r for r in _records(run_dir) if "eval_kl" in r][0]
    assert first["step"] == 0 and first["eval_top1"] == 1.0 and abs(first["eval_kl"]) < 1e-6
    rows, _ = load_heldout_rows(heldout_file(run_dir, "stage3a"))
    assert int(rows["position_ids"].eq(0).sum()) > int(rows["input_ids"].shape[0]), "the rows pack several documents"
    student, _ = load_model(str(run_dir / "stage3a"), dtype=torch.float32, device=torch.device("cpu"))
    with torch.no_grad():  # undo the one training step (same parameter names): the saved copy is the teacher again
        missing = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not missing.missing_keys
    res = heldout_fidelity(teacher, student, rows)
    assert res["top1_agreement"] == 1.0 and abs(res["kl_teacher_student"]) < 1e-6


def test_one_pass_heldout_loss_is_the_stage_loss(tmp_path, teacher, tok):
    """The trainer computes a logit stage's held-out loss in the fidelity pass (one forward of each model over the
    held-out rows). For a loss that is not the KL (JSD at temperature 2 plus cross-entropy) that loss must still be
    the stage's training loss: the stage module's own forward over the same rows, micro-batch by micro-batch, on the
    saved student (fp32 on CPU: 1e-5 relative is float32 summation-order noise)."""
    from gendistill.distill.stages import Stage3Module

    loss = {"kind": "jsd", "temperature": 2.0, "ce_weight": 0.5}
    recipe = make_recipe(tmp_path, ["stage3a"], steps=2, stage3a={"eval_every": 2, "loss": loss})
    run_recipe(recipe, teacher=teacher, tokenizer=tok)
    run_dir = tmp_path / "run"
    last = [r for r in _records(run_dir) if "eval_loss" in r][-1]
    assert last["step"] == 2 and last["eval_kl"] != pytest.approx(last["eval_loss"], rel=1e-3), "not the KL"
    rows, _ = load_heldout_rows(heldout_file(run_dir, "stage3a"))
    student, _ = load_model(str(run_dir / "stage3a"), dtype=torch.float32, device=torch.device("cpu"))
    module = Stage3Module(student, teacher, recipe.stages[0]).eval()
    total, count = 0.0, 0
    mb = recipe.stages[0].micro_batch_size
    with torch.no_grad():
        for i in range(0, rows["input_ids"].shape[0], mb):
            b = module.prepare({k: v[i : i + mb] for k, v in rows.items()})
            total += float(module(b, 1.0))
            count += module.count(b)
    assert count == last["eval_tokens"]
    assert last["eval_loss"] == pytest.approx(total / count, rel=1e-5)
