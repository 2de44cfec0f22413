"""Theoretical cache bytes: the paper's arithmetic (§2) and agreement with the student's own account."""

from __future__ import annotations

import torch

from gendistill.bench.cache import theoretical_cache_bytes
from gendistill.bench.models import qwen3_config
from gendistill.bench.settings import PAPER_ATTENTION_LAYERS

KiB, MiB, GiB = 1024, 1024**2, 1024**3


def test_qwen3_0_6b_teacher_and_student_arithmetic():
    from gendistill.convert.convert import student_config_from_teacher

    teacher = qwen3_config("qwen3-0.6b")
    student = student_config_from_teacher(teacher, list(PAPER_ATTENTION_LAYERS))
    t = theoretical_cache_bytes(teacher, 131072, 1, torch.bfloat16)
    s = theoretical_cache_bytes(student, 131072, 1, torch.bfloat16)
    assert theoretical_cache_bytes(teacher, 1, 1, torch.bfloat16)["total"] == 112 * KiB  # 112 KiB / token
    assert t["total"] == 14 * GiB and t["linear_attention"] == 0
    assert s["full_attention"] == 3.5 * GiB  # 7 of 28 layers keep their KV
    # 21 KDA layers: fp32 state 16 x 128 x 128 (1 MiB) + bf16 conv window (2048 + 1024 + 1024 channels x 4)
    assert s["linear_attention"] == 21 * (1 * MiB + 4096 * 4 * 2)
    assert s["total"] / t["total"] <= 0.255  # issue 5 target at 128K
    assert theoretical_cache_bytes(student, 1024, 8)["total"] == 8 * theoretical_cache_bytes(student, 1024, 1)["total"]


def test_matches_student_cache_bytes_api():
    from gendistill.convert import convert_teacher
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(0)
    teacher = Qwen3ForCausalLM(qwen3_config("tiny")).eval()
    student = convert_teacher(teacher, attention_layers=[0, 4])
    for L in (1, 100, 4096):
        for dtype in (torch.float32, torch.bfloat16):
            assert theoretical_cache_bytes(student.config, L, 3, dtype) == student.cache_bytes(L, batch=3, dtype=dtype)
