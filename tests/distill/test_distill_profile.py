"""``run.profile_step``: the trainer profiles that optimizer step of every stage with torch.profiler, writes the
op table, records the largest ops in metrics.jsonl, and trains exactly as without it."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from torch.autograd import DeviceType
from test_distill_trainer import make_recipe

from gendistill.distill.config import parse_recipe
from gendistill.distill.pipeline import run_recipe
from gendistill.distill.profiling import device_total_us, phase_times, table_device_total_ms
from gendistill.errors import ConfigError


def _losses(run_dir):
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["stage"], r["step"], r["loss"]) for r in recs if "loss" in r], [r for r in recs if "profile" in r]


def test_a_profiled_step_is_written_and_trains_as_an_unprofiled_one(tmp_path, teacher, tok):
    plain = make_recipe(tmp_path / "plain", ["stage1", "stage3a"], steps=3)
    profiled = make_recipe(tmp_path / "prof", ["stage1", "stage3a"], steps=3)
    profiled.run.profile_step = 2
    run_recipe(plain, teacher=teacher, tokenizer=tok)
    run_recipe(profiled, teacher=teacher, tokenizer=tok)
    base, none = _losses(tmp_path / "plain" / "run")
    got, recs = _losses(tmp_path / "prof" / "run")
    assert none == [] and [(s, k) for s, k, _ in got] == [(s, k) for s, k, _ in base]
    for (_, _, a), (_, _, b) in zip(got, base):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-7)  # the same arithmetic (CPU, fp32; the data stream is seeded)
    assert [(r["stage"], r["step"]) for r in recs] == [("stage1", 2), ("stage3a", 2)]
    for r in recs:
        table = tmp_path / "prof" / "run" / "profile" / r["profile"]["table"]
        assert table.name == f"{r['stage']}_step2.txt" and "aten::" in table.read_text()
        top = r["profile"]["top"]
        assert top and all(op["ms"] >= 0 and 0 <= op["share"] <= 1 for op in top)
        assert [op["ms"] for op in top] == sorted((op["ms"] for op in top), reverse=True)
        assert not any(op["op"].startswith("gendistill::") for op in top)  # phases are not ops
        text = table.read_text()
        assert "Phases of the step" in text and "Ops by own time and input shapes" in text

        # the step's phases: every op that started inside a phase counts its own time there once, so the forward
        # holds the teacher's and the student's forward and the loss, and no phase exceeds all ops together
        ph = r["profile"]["phases_ms"]
        inner = ["teacher_forward", "student_forward"] + (["logit_loss"] if r["stage"] == "stage3a" else [])
        assert set(ph) == {"input", "forward", "backward", "clip_grad", "optimizer", *inner}, sorted(ph)
        assert all(v > 0 for k, v in ph.items() if k != "input")
        assert sum(ph[k] for k in inner) <= ph["forward"] * (1 + 1e-9)
        assert sum(ph[k] for k in ("input", "forward", "backward", "clip_grad", "optimizer")) <= (
            r["profile"]["total_ms"] * (1 + 1e-9))
        assert ph["teacher_forward"] > 0 and ph["backward"] > ph["clip_grad"]


def test_profile_step_must_be_a_positive_step(tmp_path):
    raw = {"teacher": {"spec": "x"}, "data": {"sources": [{"path": "x.jsonl", "format": "text"}]},
           "stages": [{"name": "stage1", "steps": 1, "seq_len": 8, "batch_size": 1}],
           "run": {"output_dir": str(tmp_path), "profile_step": 0}}
    with pytest.raises(ConfigError, match="profile_step"):
        parse_recipe(raw, "r.yaml")


def _event(name, start, end, device=DeviceType.CPU, cuda_us=0.0, cpu_us=0.0, annotation=False):
    return SimpleNamespace(name=name, device_type=device, is_user_annotation=annotation,
                           time_range=SimpleNamespace(start=start, end=end), self_device_time_total=cuda_us,
                           self_cpu_time_total=cpu_us)


def test_phase_times_count_each_kernel_once_on_a_cuda_timeline():
    """On CUDA the profiler lists host ops (their own device time: the kernels they launched), the kernels again on
    the device timeline, and each range again there: a phase sums its host ops only, on any thread, each once, and
    the total is every kernel once."""
    events = [
        _event("gendistill::forward", 0, 100), _event("gendistill::forward", 5000, 5100, DeviceType.CUDA, annotation=True),
        _event("gendistill::teacher_forward", 10, 40),
        _event("aten::mm", 12, 20, cuda_us=300.0), _event("aten::add", 50, 60, cuda_us=100.0),
        _event("gendistill::backward", 200, 400),
        _event("aten::mm_backward", 250, 260, cuda_us=700.0),  # on autograd's thread, inside the range's window
        _event("aten::copy_", 500, 510, cuda_us=50.0),  # outside every phase
        _event("nvjet_kernel", 5010, 5040, DeviceType.CUDA, cuda_us=300.0),  # the kernels, on the device timeline
        _event("elementwise_kernel", 5060, 5070, DeviceType.CUDA, cuda_us=100.0),
        _event("bwd_kernel", 5200, 5300, DeviceType.CUDA, cuda_us=700.0),
        _event("copy_kernel", 5400, 5410, DeviceType.CUDA, cuda_us=50.0),
    ]
    ph = phase_times(events, cuda=True)
    assert ph == pytest.approx({"forward": 0.4, "teacher_forward": 0.3, "backward": 0.7})
    assert device_total_us(events) == pytest.approx(1150.0)


@pytest.mark.parametrize("footer, ms", [("Self CUDA time total: 491.304ms", 491.304),
                                        ("Self CUDA time total: 1.250s", 1250.0),
                                        ("Self CUDA time total: 950.000us", 0.95)])
def test_the_device_total_a_table_states(footer, ms):
    text = f"--- table ---\nSelf CPU time total: 1.000s\n{footer}\n\n--- by shapes ---\n{footer}\n"
    assert table_device_total_ms(text) == pytest.approx(ms)
    assert table_device_total_ms("--- table ---\nSelf CPU time total: 1.000s\n") is None  # a CPU table
