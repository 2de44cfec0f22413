"""The decode machinery the benchmark times: the static-cache / explicit-mask step (the graph-capturable one) must
decode exactly what the model's default dynamic-cache path decodes."""

from __future__ import annotations

import pytest
import torch

from gendistill.bench import engine
from gendistill.bench.models import qwen3_config


@pytest.fixture(scope="module")
def models():
    from gendistill.convert import convert_teacher
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(0)
    teacher = Qwen3ForCausalLM(qwen3_config("tiny")).eval()
    student = convert_teacher(teacher, attention_layers=[0, 4])
    return {"teacher": teacher, "student": student}


@pytest.mark.parametrize("role", ["teacher", "student"])
@torch.inference_mode()
def test_static_step_matches_dynamic_decode(models, role):
    m = models[role]
    L, n = 20, 5
    ids = engine.random_prompt(m.config.vocab_size, L, 2, torch.device("cpu"), seed=1)
    forced = engine.random_prompt(m.config.vocab_size, n, 2, torch.device("cpu"), seed=2)
    # reference: model's own dynamic cache, default masks
    cache, first = engine.prefill(m, ids)
    ref = []
    for i in range(n):
        out = m(input_ids=forced[:, i : i + 1], cache=cache, use_cache=True)
        ref.append(out.logits[:, -1])
    # benchmark path: static copy of a fresh prefill, explicit mask from positions, forced tokens
    cache2, first2 = engine.prefill(m, ids)
    assert torch.equal(first, first2)
    max_len = L + n + 3
    state = engine.make_state(engine.to_static_cache(cache2, m.config, max_len), first2, L, max_len)
    step = engine.make_step(m, state)
    for i in range(n):
        state.ids.copy_(forced[:, i : i + 1])
        step()
        torch.testing.assert_close(state.last_logits, ref[i], atol=1e-4, rtol=1e-4)
    assert int(state.pos[0, 0]) == L + n


@torch.inference_mode()
def test_snapshot_restore_and_batch_template(models):
    m = models["student"]
    cache, first = engine.prefill(m, engine.random_prompt(m.config.vocab_size, 8, 1, torch.device("cpu")))
    static = engine.to_static_cache(cache, m.config, 64, batch=3, context=40, copy_kv=False)
    state = engine.make_state(static, first.expand(3, 1), 40, 64)
    step = engine.make_step(m, state)
    snap = state.snapshot()
    step()
    a = state.last_logits.clone()
    engine.DecodeState.restore(snap)
    step()
    torch.testing.assert_close(state.last_logits, a)
    assert state.last_logits.shape[0] == 3
    torch.testing.assert_close(a[0], a[2])  # replicated rows decode alike


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("role", ["teacher", "student"])
def test_cuda_graph_decode_matches_eager(models, role):
    m = models[role].to("cuda", torch.bfloat16)
    with torch.inference_mode():
        cache, first = engine.prefill(m, engine.random_prompt(m.config.vocab_size, 64, 1, torch.device("cuda")))
        state = engine.make_state(engine.to_static_cache(cache, m.config, 96), first, 64, 96)
    v = engine.validate_graph(m, state, steps=4)
    assert v["argmax_match"], v
    assert v["max_abs_diff"] <= 0.05 * max(1.0, v["logit_scale"]), v


def test_profile_splits_time_by_block_part(models, tmp_path):
    from gendistill.bench.profile import profile_model

    t = profile_model(models["teacher"], "teacher", 16, torch.device("cpu"), tmp_path / "p.txt", decode_steps=2)
    s = profile_model(models["student"], "student", 16, torch.device("cpu"), tmp_path / "p.txt", decode_steps=2)
    assert {"attention", "mlp", "lm_head"} <= set(t["prefill_ms_by_part"]) and "kda" not in t["prefill_ms_by_part"]
    assert {"attention", "kda", "mlp", "lm_head"} <= set(s["decode_ms_by_part"])
    assert all(v > 0 for v in s["prefill_ms_by_part"].values())
    text = (tmp_path / "p.txt").read_text()
    assert "student decode (2 steps), context 16" in text and "teacher prefill, context 16" in text
    # hooks are removed afterwards
    assert not models["student"].lm_head._forward_pre_hooks


def test_compare_prefills_rejects_a_cache_off_by_more_than_bf16_rounding():
    from transformers import DynamicCache

    def pair(scale: float):
        c = DynamicCache()
        c.update(torch.ones(1, 2, 4, 8) * scale, torch.ones(1, 2, 4, 8), 0)
        return c, torch.tensor([[3]])

    assert engine.compare_prefills(pair(1.0), pair(1.005))["accepted"]
    off = engine.compare_prefills(pair(1.0), pair(1.05))
    assert not off["accepted"] and off["cache_rel_diff"] == pytest.approx(0.05, rel=1e-3)
    other_token = (pair(1.0)[0], torch.tensor([[4]]))
    assert not engine.compare_prefills(pair(1.0), other_token)["accepted"]
