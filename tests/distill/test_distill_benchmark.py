"""benchmarks/train_throughput.py --tiny runs on CPU and writes its JSON (the GPU numbers come from the same code),
and the step it times — the trainer's ``train_step`` with gradient accumulation and the chunked KL — equals a naive
reference step (full logits, one batch) in float64."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gendistill.convert import convert_teacher
from gendistill.distill.config import LossConfig, RunConfig, StageConfig
from gendistill.distill.distributed import World
from gendistill.distill.freezing import apply_trainable
from gendistill.distill.losses import full_logit_loss
from gendistill.distill.stages import build_stage_module
from gendistill.distill.trainer import train_step

ROOT = Path(__file__).resolve().parents[2]


def test_train_throughput_tiny(tmp_path):
    out = tmp_path / "tt.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--tiny", "--steps", "1", "--warmup", "1",
         "--stages", "stage2,stage3a", "--micro-batches", "2", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    r = json.loads(out.read_text())
    assert [(row["stage"], row["micro_batch"], row["status"]) for row in r["runs"]] == [("stage2", 2, "ok"),
                                                                                      ("stage3a", 2, "ok")]
    s3 = r["runs"][1]
    assert s3["tokens_per_s"] > 0 and s3["flops_per_step"]["total"] > s3["flops_per_step"]["teacher_forward"] > 0
    assert len(s3["step_times_s"]) == 1 and s3["step_time_s"] == pytest.approx(s3["step_times_s"][0])
    assert r["batch"] == 2 and r["seq_len"] == 128 and r["first_step_s"] > 0
    # where the first step's seconds went: the models, then the step's phases by the wall clock, within the total
    first = r["first_step_phases_ms"]
    assert 0 < r["models_ready_s"] < r["first_step_s"]
    assert {"backward", "optimizer", "total"} <= set(first) and first["backward"] > 0
    assert sum(v for k, v in first.items() if k != "total") == pytest.approx(first["total"], rel=1e-6)
    assert r["models_ready_s"] + first["total"] / 1000 <= r["first_step_s"] + 1e-3
    # each row's warm-up (its own compilation): the first row's holds the first step
    assert r["runs"][0]["warmup_s"] >= first["total"] / 1000 and s3["warmup_s"] > 0
    assert "tok/s" in res.stdout


def test_train_throughput_bounded_gate_rows_train_the_bounded_student(tmp_path):
    """``--variants optimized,bounded-gate``: two rows of one run, the second on a student whose KDA layers have the
    bounded decay gate (its rows say which gate they trained), the first on the paper's gate."""
    out = tmp_path / "tt.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--tiny", "--steps", "1", "--warmup", "0",
         "--stages", "stage1", "--micro-batches", "2", "--variants", "optimized,bounded-gate", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    r = json.loads(out.read_text())
    assert [(row["variant"], row["status"], row["kda_gate_lower_bound"]) for row in r["runs"]] == [
        ("optimized", "ok", None), ("bounded-gate", "ok", -5.0)]
    assert r["bounded_gate"] == -5.0


def test_train_throughput_refuses_an_unknown_variant_before_building_models(tmp_path):
    out = tmp_path / "tt.json"
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--tiny", "--variants", "optimized,fused",
         "--out", str(out)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, timeout=120,
    )
    assert res.returncode != 0 and not out.exists()
    assert res.stderr.strip().splitlines()[-1] == ("--variants: unknown variant 'fused' (choose from optimized, "
                                                   "baseline, uncast, unfused, eager-attention, bf16-student, bounded-gate)")
    assert "building" not in res.stdout


def test_train_parts_residual_variants_compute_one_block(tmp_path):
    """The residual-stream candidates of benchmarks/train_parts.py are one block three ways: on CPU (no autocast, fp32)
    they must agree with the float64 block as closely as fp32 allows; on a GPU the same fields carry bf16's error."""
    out = tmp_path / "parts.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_parts.py"), "--tiny", "--parts", "residual",
                          "--repeats", "1", "--warmup", "0", "--out", str(out)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    r = json.loads(out.read_text())["residual"]
    assert set(r) >= {"fp32_residual", "bf16_norm_output", "bf16_residual"}, r
    for name in ("fp32_residual", "bf16_norm_output", "bf16_residual"):
        err = r[name]["rel_err_vs_fp64"]
        assert {"out", "grad_x", "grad_q.weight", "grad_norm1.weight", "grad_mlp.down_proj.weight"} <= set(err)
        assert max(err.values()) < 1e-5, (name, err)
        assert r[name]["fwd_bwd_ms"] > 0 and r[name]["speedup_vs_fp32_residual"] > 0


def test_train_step_equals_naive_reference_step(teacher):
    """Two micro-batches with accumulation through the chunked KL (chunk smaller than a micro-batch) give the same
    update as one full-batch step on full-vocabulary logits. float64 and SGD(lr=1) make the update the gradient.
    The loss path is float64 end to end (1e-9 relative: rounding over a few hundred summands); the KDA mixer computes
    its L2 norms, gate and gated RMSNorm in float32 whatever the input dtype, and a row's float32 rounding may differ
    between a batch of 2 and of 4, so gradients agree to float32 precision (1e-6 relative), not float64's. A wrong
    accumulation denominator or a dropped micro-batch is off by a factor of 2."""
    teacher = teacher.double()
    torch.manual_seed(0)
    student = convert_teacher(teacher, [1]).double().train()
    ref = convert_teacher(teacher, [1]).double().train()
    ref.load_state_dict(student.state_dict())
    stage = StageConfig(name="stage3a", steps=1, seq_len=16, batch_size=4, micro_batch_size=2,
                        optim={"lr": 1.0}, loss=LossConfig(chunk_size=5, temperature=2.0))
    for m in (student, ref):
        apply_trainable(m, stage.trainable)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, teacher.config.vocab_size, (4, 16), generator=g)
    mask = torch.rand(4, 16, generator=g) > 0.3
    pos = torch.arange(16).expand(4, -1).contiguous()
    full = {"input_ids": ids, "position_ids": pos, "loss_mask": mask, "token_mask": mask,
            "labels": torch.where(mask, torch.roll(ids, -1, 1), -100)}
    module = build_stage_module(student, teacher, stage)
    micro = [module.prepare({k: v[i : i + 2] for k, v in full.items()}) for i in (0, 2)]
    trainable = [p for p in student.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    world = World()
    run = RunConfig(output_dir="unused", precision="fp32", tensorboard=False, progress="none")
    loss, _, denom, ok = train_step(module, module, micro, torch.optim.SGD(trainable, lr=1.0), trainable, world, run,
                                    None)
    assert ok and denom == float(mask.sum())

    with torch.no_grad():
        t_logits = teacher(input_ids=ids, position_ids=pos).logits
    s_logits = ref(input_ids=ids, position_ids=pos).logits
    sel = mask.reshape(-1)
    V = teacher.config.vocab_size
    per = full_logit_loss(s_logits.reshape(-1, V)[sel], t_logits.reshape(-1, V)[sel], full["labels"].reshape(-1)[sel],
                          stage.loss)
    ref_loss = per.sum() / sel.sum()
    ref_loss.backward()
    assert abs(loss - ref_loss.item()) <= 1e-9 * abs(ref_loss.item())
    ref_params = dict(ref.named_parameters())
    names = [n for n, p in student.named_parameters() if p.requires_grad]
    for name, p0, p1 in zip(names, before, trainable):
        grad = ref_params[name].grad
        assert grad is not None, name
        step = p0 - p1  # SGD(lr=1): the applied update is the gradient
        assert torch.allclose(step, grad, rtol=1e-6, atol=1e-9), (name, (step - grad).abs().max().item())
