"""Decode slots (:mod:`gendistill.models.decode_slots`): the fast engine's static buffers and captured graphs kept from
one batch, and one ``generate`` call, to the next. Whatever a slot held before (longer prompts, more rows, another
batch's states) must not reach a later batch's tokens: every test compares with the reference engine (transformers'
``generate``), on the tiny Llama and on the hybrid. Graph replays run eagerly on CPU (``EagerGraph``); the GPU test
replays real graphs (tests/gpu/test_fast_generate_gpu.py)."""

from __future__ import annotations

import pytest
import torch

from gendistill.errors import ConfigError
from gendistill.eval import generate as G
from gendistill.eval import runner as eval_runner
from gendistill.layers.base import TeacherShapedMixer
from gendistill.models import decode_slots as S
from gendistill.models.decode_slots import DecodeSlots
from tests.eval.conftest import MC_ROWS, MODEL_FACTORIES, QA_ROWS, write_jsonl
from tests.eval.test_fast_generate import EagerGraph, _eos_finishing_most_rows, _prompts
from tests.fixtures_teachers import make_tiny_folder


@pytest.fixture(scope="module", params=sorted(MODEL_FACTORIES))
def model(request, tok):
    torch.manual_seed(0)
    return MODEL_FACTORIES[request.param](tok)


def _compacting(model, tok, monkeypatch, max_new: int, row_step: int) -> list[str]:
    """The compaction tests' set-up: the prompts, end-of-turn tokens that finish most rows at different steps
    (:func:`_eos_finishing_most_rows`), graphs replayed eagerly, slots of ``row_step`` rows, compaction from 2 rows."""
    prompts = _prompts(tok)
    monkeypatch.setattr(model.generation_config, "eos_token_id", _eos_finishing_most_rows(model, tok, prompts, max_new))
    monkeypatch.setattr(G, "GraphStep", EagerGraph)
    monkeypatch.setattr(S, "ROW_STEP", row_step)
    monkeypatch.setattr(G._FastDecoder, "MIN_COMPACT_ROWS", 2)
    return prompts


def _reference(model, tok, prompts, max_new):
    out, _ = G.generate(model, tok, prompts, max_new_tokens=max_new, batch_size=3, engine="reference",
                        show_progress=False)
    return [o.token_ids for o in out]


def _fast(model, tok, prompts, max_new, slots, **kw):
    out, stats = G.generate(model, tok, prompts, max_new_tokens=max_new, engine="fast", slots=slots,
                            show_progress=False, **kw)
    return [o.token_ids for o in out], stats.extra


def test_a_later_call_replays_the_slot_an_earlier_one_captured(model, tok, monkeypatch):
    """One pool, two calls: the first (all 7 prompts, the widest among them) captures its slot's graph (8 rows);
    the second (the 5 shortest: stale columns past their width, stale rows) replays it from its first step."""
    monkeypatch.setattr(G, "GraphStep", EagerGraph)
    prompts = _prompts(tok)
    short = sorted(prompts, key=len)[:5]
    assert len(prompts) == 7
    slots = DecodeSlots(model, graphs=True)
    first, stats1 = _fast(model, tok, prompts, 20, slots, batch_size=len(prompts))
    assert first == _reference(model, tok, prompts, 20)
    assert stats1["graph_captures"] == 1 and stats1["graph_reuses"] == 0
    second, stats2 = _fast(model, tok, short, 20, slots, batch_size=len(short))
    assert second == _reference(model, tok, short, 20)
    assert stats2["graph_captures"] == 0 and stats2["graph_reuses"] == 1
    assert list(slots.slots) == [(8, S.COLUMN_STEP)]  # both calls in one slot (7 and 5 rows: 8, a power of two)


def test_slot_shapes_pad_rows_less_than_twofold_and_columns_to_their_step(model):
    slots = DecodeSlots(model, graphs=True)
    assert [slots.shape(n, 1)[0] for n in (1, 3, 5, 8, 33, 50, 64, 65, 96, 100, 300, 313, 500, 512)] == \
        [1, 4, 8, 8, 64, 64, 64, 128, 128, 128, 320, 320, 512, 512]
    assert all(n <= slots.shape(n, 1)[0] < 2 * n for n in range(2, 600))
    assert [slots.shape(4, c)[1] for c in (1, 256, 257, 4100)] == [256, 256, 512, 4352]
    assert DecodeSlots(model, graphs=False).shape(5, 301) == (5, 301)  # without graphs nothing to share
    assert DecodeSlots(model).graphs is False  # by default graphs where the model is on CUDA, not here


def test_compaction_with_graphs_moves_rows_into_a_slot_of_at_least_the_row_step(tok, monkeypatch):
    model = MODEL_FACTORIES["hybrid"](tok)
    prompts = _compacting(model, tok, monkeypatch, max_new=16, row_step=3)
    slots = DecodeSlots(model, graphs=True)
    tokens, stats = _fast(model, tok, prompts, 16, slots, batch_size=len(prompts), check_every=1)
    assert tokens == _reference(model, tok, prompts, 16)
    assert stats["compactions"] >= 1 and min(r for r, _ in slots.slots) == 3
    big = slots.slots[max(slots.slots)]
    with torch.inference_mode():  # (as generate runs)
        one = slots.move(big, torch.tensor([1]), pad=0)  # one row left: still a slot of ROW_STEP rows, the row first
        assert one.rows == 3 and one.columns == big.columns
        assert one.state.pos[0, 0] == big.state.pos[1, 0] and one.state.start[0, 0] == big.state.start[1, 0]
        exact = DecodeSlots(model, graphs=False)
        assert exact.move(big, torch.tensor([1]), pad=0).rows == 1  # without graphs the rows themselves


def test_the_budget_and_the_slot_count_drop_the_least_recently_used(model, tok, monkeypatch):
    prompts = _prompts(tok)
    slots = DecodeSlots(model, graphs=False)  # each batch's own shape: one slot per (rows, columns)
    shapes = []
    for n in (2, 3, 2, 4):
        _fast(model, tok, prompts[:n], 6, slots, batch_size=n)
        shapes.append(next(reversed(slots.slots)))
    assert len(set(shapes)) == 3 and shapes[0] == shapes[2]
    assert list(slots.slots) == [shapes[1], shapes[0], shapes[3]]  # least recently used first
    monkeypatch.setattr(S, "MAX_SLOTS", 2)
    _fast(model, tok, prompts[:5], 6, slots, batch_size=5)
    assert len(slots.slots) == 2 and shapes[1] not in slots.slots
    slots.budget = int(1.5 * max(s.nbytes for s in slots.slots.values()))  # room for one slot
    ref = _reference(model, tok, prompts[:6], 6)
    assert _fast(model, tok, prompts[:6], 6, slots, batch_size=6)[0] == ref
    assert len(slots.slots) == 1 and slots.nbytes <= slots.budget


def test_joins_live_inside_the_slots_block_and_changed_weights_drop_the_slots(tok, monkeypatch):
    model = MODEL_FACTORIES["hybrid"](tok)
    mixers = [m for m in model.modules() if isinstance(m, TeacherShapedMixer)]
    monkeypatch.setattr(G, "GraphStep", EagerGraph)
    prompts = _prompts(tok, 4)
    slots = DecodeSlots(model, graphs=True)
    assert _fast(model, tok, prompts, 20, slots)[1]["graph_captures"] == 1
    assert slots.slots and set(slots.joins) == set(mixers)
    assert all(m._joined is None for m in mixers)  # outside a generate call the model runs on its live weights
    with torch.no_grad():
        mixers[0].q_proj.weight.data = mixers[0].q_proj.weight.data * 1.5  # another tensor: the joins are stale
    tokens, stats = _fast(model, tok, prompts, 20, slots)
    assert stats["graph_reuses"] == 0 and stats["graph_captures"] == 1  # the old slot was dropped, not replayed
    assert tokens == _reference(model, tok, prompts, 20)
    slots.close()
    assert not slots.slots and not slots.joins


@pytest.mark.parametrize("change", ["in place", "replaced"])
def test_weights_changed_under_a_pool_drop_its_slots(model, tok, monkeypatch, change):
    """A graph reads the memory of the tensors it was captured with: an in-place edit or a new tensor (a ``.to()``,
    a loaded state dict) between two calls drops the slots, and the second call gives the new weights' tokens."""
    monkeypatch.setattr(G, "GraphStep", EagerGraph)
    prompts = _prompts(tok, 4)
    slots = DecodeSlots(model, graphs=True)
    assert _fast(model, tok, prompts, 20, slots)[1]["graph_captures"] == 1
    weight = model.get_input_embeddings().weight
    with torch.no_grad():
        if change == "in place":
            weight.mul_(1.5)
        else:
            weight.data = weight.data * 1.5
    tokens, stats = _fast(model, tok, prompts, 20, slots)
    assert stats["graph_reuses"] == 0 and tokens == _reference(model, tok, prompts, 20)


def test_slots_inside_another_joined_weights_block_live_for_that_block_only(tok, monkeypatch):
    """Inside a caller's own ``joined_weights`` block the mixers read that block's joins, which end with it: a graph
    captured there must not replay after it."""
    from gendistill.layers.base import joined_weights

    model = MODEL_FACTORIES["hybrid"](tok)
    monkeypatch.setattr(G, "GraphStep", EagerGraph)
    prompts = _prompts(tok, 4)
    slots = DecodeSlots(model, graphs=True)
    with joined_weights(model):
        assert _fast(model, tok, prompts, 20, slots)[1]["graph_captures"] == 1
    assert not slots.slots
    tokens, stats = _fast(model, tok, prompts, 20, slots)
    assert stats["graph_reuses"] == 0 and tokens == _reference(model, tok, prompts, 20)


def test_long_prompts_prefilled_a_row_at_a_time_decode_in_their_own_cache(tok, monkeypatch):
    """A batch prefilled one row at a time (long prompts, attention-only model) was planned with one static cache:
    it decodes in it, neither copied into a pooled slot nor compacted."""
    from gendistill.models import decoding as D

    model = MODEL_FACTORIES["llama"](tok)
    prompts = _compacting(model, tok, monkeypatch, max_new=20, row_step=1)  # a pooled slot would compact
    monkeypatch.setattr(D, "ROW_PREFILL_TOKENS", 1)
    slots = DecodeSlots(model, graphs=True)
    tokens, stats = _fast(model, tok, prompts, 20, slots, batch_size=len(prompts), check_every=1)
    assert tokens == _reference(model, tok, prompts, 20)
    assert stats["row_prefill_batches"] == 1 and not slots.slots and stats["compactions"] == 0
    monkeypatch.setattr(D, "ROW_PREFILL_TOKENS", 10**6)  # the same batch prefilled padded: its slot compacts
    assert _fast(model, tok, prompts, 20, slots, batch_size=len(prompts), check_every=1)[1]["compactions"] >= 1


def test_slots_serve_the_fast_engine_and_their_own_model_only(model, tok):
    with pytest.raises(ConfigError, match="fast generation engine only"):
        G.generate(model, tok, _prompts(tok, 2), max_new_tokens=2, engine="reference", show_progress=False,
                   slots=DecodeSlots(model, graphs=False))
    other = MODEL_FACTORIES["llama"](tok, seed=1)
    with pytest.raises(ConfigError, match="another model"):
        G.generate(model, tok, _prompts(tok, 2), max_new_tokens=2, engine="fast", show_progress=False,
                   slots=DecodeSlots(other, graphs=False))
    with pytest.raises(ConfigError, match="the slots decide"):
        G.generate(model, tok, _prompts(tok, 2), max_new_tokens=2, engine="fast", show_progress=False,
                   slots=DecodeSlots(model, graphs=False), cuda_graphs=True)


def test_the_evaluator_keeps_one_pool_per_model_for_all_its_tasks(tmp_path, monkeypatch):
    from gendistill.eval.api import evaluate

    models = [tmp_path / "a", tmp_path / "b"]
    for seed, path in enumerate(models):
        make_tiny_folder(path, "llama", seed=seed)
    tasks = [write_jsonl(tmp_path / "quiz.jsonl", MC_ROWS), write_jsonl(tmp_path / "qa.jsonl", QA_ROWS)]
    seen = []
    real = eval_runner.generate

    def spy(*a, **kw):
        seen.append(kw.get("slots"))
        return real(*a, **kw)

    monkeypatch.setattr(eval_runner, "generate", spy)
    evaluate([str(m) for m in models], ",".join(map(str, tasks)), out=tmp_path / "out", device="cpu",
             max_new_tokens=4, batch_size=2, show_progress=False, protocols=["generate"], cache_dir=None)
    assert len(seen) == 4 and all(isinstance(s, DecodeSlots) for s in seen)
    assert seen[0] is seen[1] and seen[2] is seen[3] and seen[0] is not seen[2]
    assert not seen[0].slots  # released with its model
    seen.clear()
    evaluate([str(models[0])], str(tasks[0]), out=tmp_path / "sampled", device="cpu", max_new_tokens=4,
             batch_size=2, show_progress=False, protocols=["generate"], samples=2, cache_dir=None)
    assert seen == [None, None]  # sampling runs on the reference engine, without slots
