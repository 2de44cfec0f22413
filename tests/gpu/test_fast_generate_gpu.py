"""GPU check (skipped without CUDA): the fast generation engine with real CUDA-graph capture and replay gives the
reference engine's tokens for the tiny Llama teacher and its hybrid student (fla's KDA decode kernels), with left
padding, rows that finish at different steps, compaction into slots of fewer rows, and a later call replaying the
graph an earlier one captured (stale columns and placeholder rows beside its own); fp32, so tokens must be identical
(the CPU tests' argument: same prefill, masked extra columns weigh exactly 0, sharpened logits keep argmax far from
ties)."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run through the device tool)")]


def graphed_fast_engine_equals_reference(model, tok, prompts, monkeypatch):
    """Assert that the fast engine, CUDA-graphed, with rows finishing at different steps and a compacted graphed batch,
    gives the reference engine's tokens for ``model`` on ``prompts`` (24 new tokens). Returns the reference outputs."""
    from gendistill.eval import generate as G
    from gendistill.models import decode_slots
    from tests.eval.test_fast_generate import _eos_finishing_most_rows

    eos = _eos_finishing_most_rows(model, tok, prompts, max_new=24)
    monkeypatch.setattr(model.generation_config, "eos_token_id", eos)
    monkeypatch.setattr(decode_slots, "ROW_STEP", 1)  # a graphed batch compacted into a slot of fewer rows
    ref, _ = G.generate(model, tok, prompts, max_new_tokens=24, batch_size=len(prompts), engine="reference",
                        show_progress=False)
    fast, stats = G.generate(model, tok, prompts, max_new_tokens=24, batch_size=len(prompts), engine="fast",
                             check_every=2, show_progress=False)
    assert stats.extra["cuda_graphs"] and stats.extra["graph_captures"] >= 1
    assert stats.extra["compactions"] >= 1
    assert [o.token_ids for o in fast] == [o.token_ids for o in ref]
    return ref


@pytest.mark.parametrize("role", ["llama", "hybrid"])
def test_graphed_fast_engine_equals_reference(role, monkeypatch):
    from gendistill.eval import generate as G
    from tests.eval.conftest import MODEL_FACTORIES
    from tests.eval.test_fast_generate import _prompts
    from tests.fixtures_teachers import tiny_tokenizer

    tok = tiny_tokenizer()

    torch.manual_seed(0)
    model = MODEL_FACTORIES[role](tok).to("cuda")
    prompts = _prompts(tok)
    ref = graphed_fast_engine_equals_reference(model, tok, prompts, monkeypatch)
    auto, auto_stats = G.generate(model, tok, prompts, max_new_tokens=24, engine="fast", show_progress=False)
    assert auto_stats.batch_size >= len(prompts)  # from free memory: the whole list in one batch
    assert [o.token_ids for o in auto] == [o.token_ids for o in ref]


@pytest.mark.parametrize("role", ["llama", "hybrid"])
def test_a_later_call_replays_the_captured_slot_on_the_card(role):
    """One pool of decode slots, two calls: the first captures its slot's graph (all 7 prompts, 24 new tokens: a slot
    of 8 rows, a placeholder row beside them); the second, the 5 shortest prompts, replays it from its first step
    over stale columns and rows. fp32: both give the reference engine's tokens."""
    from gendistill.eval import generate as G
    from gendistill.models.decode_slots import DecodeSlots
    from tests.eval.conftest import MODEL_FACTORIES
    from tests.eval.test_fast_generate import _prompts
    from tests.fixtures_teachers import tiny_tokenizer

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    model = MODEL_FACTORIES[role](tok).to("cuda")
    prompts = _prompts(tok)
    short = sorted(prompts, key=len)[:5]
    slots = DecodeSlots(model, graphs=True)
    for rows, captures, reuses in ((prompts, 1, 0), (short, 0, 1)):
        ref, _ = G.generate(model, tok, rows, max_new_tokens=24, batch_size=3, engine="reference",
                            show_progress=False)
        fast, stats = G.generate(model, tok, rows, max_new_tokens=24, batch_size=len(rows), engine="fast",
                                 slots=slots, show_progress=False)
        assert (stats.extra["graph_captures"], stats.extra["graph_reuses"]) == (captures, reuses)
        assert [o.token_ids for o in fast] == [o.token_ids for o in ref]


def test_prefill_one_row_at_a_time_equals_reference_on_the_card(monkeypatch):
    """Long prompts in a model of attention layers only are prefilled one unpadded row at a time into the left-padded
    static cache (here every batch: the threshold lowered to one token); CUDA-graphed decode, fp32: the reference
    engine's tokens."""
    from gendistill.eval import generate as G
    from gendistill.models import decoding as D
    from tests.eval.conftest import MODEL_FACTORIES
    from tests.eval.test_fast_generate import _prompts
    from tests.fixtures_teachers import tiny_tokenizer

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    model = MODEL_FACTORIES["llama"](tok).to("cuda")
    prompts = _prompts(tok)
    ref, _ = G.generate(model, tok, prompts, max_new_tokens=24, batch_size=4, engine="reference",
                        show_progress=False)
    monkeypatch.setattr(D, "ROW_PREFILL_TOKENS", 1)
    fast, stats = G.generate(model, tok, prompts, max_new_tokens=24, batch_size=4, engine="fast",
                             check_every=2, show_progress=False)
    assert stats.extra["row_prefill_batches"] == stats.batches and stats.extra["graph_captures"] >= 1
    assert [o.token_ids for o in fast] == [o.token_ids for o in ref]
