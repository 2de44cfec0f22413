"""Shared fixtures: tiny random teachers of each supported family, and where ../shared/data lives."""

from __future__ import annotations

import pytest
import torch



@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is ~10x faster than two on a shared, oversubscribed 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def _session_eval_cache(tmp_path_factory):
    """Module- and session-scoped fixtures that evaluate write to a throw-away result cache, not the user's; GGUF
    teachers are kept in a throw-away teacher cache shared by the session (its entries are keyed by content)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENDISTILL_CACHE", str(tmp_path_factory.mktemp("session-eval-cache")))
        mp.setenv("GENDISTILL_TEACHER_CACHE", str(tmp_path_factory.mktemp("session-teacher-cache")))
        yield


@pytest.fixture(autouse=True)
def _own_eval_cache(tmp_path_factory, monkeypatch):
    """Every test its own, empty evaluation result cache (gendistill.eval.result_cache), never the user's: a result
    cached by one test must not stand in for another's evaluation."""
    monkeypatch.setenv("GENDISTILL_CACHE", str(tmp_path_factory.mktemp("eval-cache")))


TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=256, max_position_embeddings=512)


def make_teacher(family: str, seed: int = 0, **overrides):
    """A tiny random teacher (fp32, eval mode) of ``family`` in {"qwen3", "llama", "qwen2"}."""
    from transformers import (LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
                              Qwen3ForCausalLM)

    classes = {"qwen3": (Qwen3Config, Qwen3ForCausalLM, dict(head_dim=16)),
               "llama": (LlamaConfig, LlamaForCausalLM, dict(tie_word_embeddings=True)),
               "qwen2": (Qwen2Config, Qwen2ForCausalLM, dict())}
    config_cls, model_cls, extra = classes[family]
    torch.manual_seed(seed)
    config = config_cls(**{**TINY, **extra, **overrides})
    config._attn_implementation = "sdpa"
    model = model_cls(config).eval()
    if not config.tie_word_embeddings:
        with torch.no_grad():  # random weights give near-uniform logits; sharpen them so greedy choices are stable
            model.lm_head.weight.mul_(4.0)
    return model


@pytest.fixture(params=["qwen3", "llama", "qwen2"])
def family(request) -> str:
    return request.param

