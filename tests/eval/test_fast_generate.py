"""The fast generation engine (static cache, explicit masks, per-row stopping, compaction, CUDA-graph replay) gives
exactly the tokens of the reference engine (transformers' ``generate``) — for the tiny Llama teacher and the tiny
hybrid student, with left padding, end-of-turn tokens that finish rows at different steps, stop strings, and the
graph bookkeeping (warm-up steps are real steps) exercised on CPU with an eager stand-in for the graph.

fp32 throughout: both engines run the same prefill; their decode steps attend over the same keys (the static cache
adds masked columns, whose softmax weight is exactly 0), so the logits agree to round-off and the sharpened tiny
models (conftest) keep argmax decisions far from ties: tokens must be identical, not close."""

from __future__ import annotations

import pytest
import torch

from gendistill.errors import ConfigError, GendistillError
from gendistill.eval import generate as G
from gendistill.eval.prompts import apply_chat
from gendistill.models import decode_slots
from gendistill.models.decode_slots import DecodeSlots
from tests.eval.conftest import MODEL_FACTORIES, card_index, fake_cuda_memory
from tests.eval.test_generate import PROMPTS as GENERATE_PROMPTS

# test_generate's prompts, and two more so that batches mix more lengths
PROMPTS = [*GENERATE_PROMPTS, "Count: 1 2 3 4 5 6 7 8 9", "x"]


def _prompts(tok, n=len(PROMPTS)):
    return [apply_chat(tok, [{"role": "user", "content": p}]) for p in PROMPTS[:n]]


@pytest.fixture(scope="module", params=sorted(MODEL_FACTORIES))
def model(request, tok):
    torch.manual_seed(0)
    return MODEL_FACTORIES[request.param](tok)


def _both(model, tok, prompts, **kw):
    ref, _ = G.generate(model, tok, prompts, engine="reference", show_progress=False, **kw)
    fast, stats = G.generate(model, tok, prompts, engine="fast", show_progress=False, **kw)
    return ref, fast, stats


def _eos_finishing_most_rows(model, tok, prompts, max_new):
    """End-of-turn tokens chosen from the model's own free-running output so that more than half of the rows finish,
    at different steps, and at least one row runs to the limit (the per-row stopping and compaction paths)."""
    free, _ = G.generate(model, tok, prompts, max_new_tokens=max_new, batch_size=len(prompts), engine="reference",
                         show_progress=False)
    rows = [o.token_ids for o in free]

    def stops(eos):  # the step at which each row would finish (None = runs to the limit)
        return [next((k for k, t in enumerate(r) if t in eos), None) for r in rows]

    eos: set[int] = set()
    for r, row in enumerate(rows):
        cand = eos | {row[2 + r % (max_new - 4)]}
        ends = stops(cand)
        if all(e is not None for e in ends) or min(e for e in ends if e is not None) == 0:
            continue
        eos = cand
        early = [e for e in ends if e is not None and e < max_new - 3]  # finished while decoding goes on
        if len(early) > len(rows) // 2 and len(set(early)) > 1:
            return sorted(eos)
    pytest.skip("no end-of-turn set finishes most but not all rows of this tiny model")


def test_fast_equals_reference_left_padded(model, tok):
    prompts = _prompts(tok)
    ref, fast, stats = _both(model, tok, prompts, max_new_tokens=10, batch_size=4)
    assert [o.token_ids for o in fast] == [o.token_ids for o in ref]
    assert [o.text for o in fast] == [o.text for o in ref]
    assert [o.hit_limit for o in fast] == [o.hit_limit for o in ref]
    assert stats.extra["engine"] == "fast" and stats.batches == 2
    assert len({o.prompt_tokens for o in fast}) > 2  # really left-padded batches


def test_rows_finishing_at_different_steps_and_compaction(model, tok, monkeypatch):
    prompts = _prompts(tok)
    eos = _eos_finishing_most_rows(model, tok, prompts, max_new=14)
    monkeypatch.setattr(model.generation_config, "eos_token_id", eos)
    ref, fast, stats = _both(model, tok, prompts, max_new_tokens=14, batch_size=len(prompts), check_every=1)
    assert [o.token_ids for o in fast] == [o.token_ids for o in ref]
    assert [o.hit_limit for o in fast] == [o.hit_limit for o in ref]
    finished = [not o.hit_limit for o in fast]
    assert sum(finished) > len(prompts) // 2 and not all(finished)
    assert stats.extra["compactions"] >= 1  # the finished rows were dropped from the batch


def test_compaction_keeps_each_row_its_own(tok, monkeypatch):
    """Several compactions in one batch (check every step): every surviving row keeps its cache, position and start."""
    model = MODEL_FACTORIES["hybrid"](tok)
    prompts = _prompts(tok)
    eos = _eos_finishing_most_rows(model, tok, prompts, max_new=16)
    monkeypatch.setattr(model.generation_config, "eos_token_id", eos)
    monkeypatch.setattr(G._FastDecoder, "MIN_COMPACT_ROWS", 2)
    ref, fast, stats = _both(model, tok, prompts, max_new_tokens=16, batch_size=len(prompts), check_every=1)
    assert [o.token_ids for o in fast] == [o.token_ids for o in ref]
    assert stats.extra["compactions"] >= 1


def test_stop_strings(model, tok):
    prompts = _prompts(tok, 4)
    full, _ = G.generate(model, tok, prompts, max_new_tokens=8, engine="reference", show_progress=False)
    k = next(i for i, o in enumerate(full) if len(o.text) >= 3)
    stop = [full[k].text[2:3]]
    ref, fast, _ = _both(model, tok, prompts, max_new_tokens=8, batch_size=4, stop=stop)
    assert [o.text for o in fast] == [o.text for o in ref]
    assert not fast[k].hit_limit and fast[k].text == full[k].text[: full[k].text.find(stop[0])]


class EagerGraph:
    """Stands in for ``GraphStep`` on CPU: the warm-up steps run for real (as on the GPU), replays run eagerly."""

    made = 0

    def __init__(self, step, warmup=2, after_warmup_step=None):
        for _ in range(warmup):
            step()
            if after_warmup_step is not None:
                after_warmup_step()
        self.step = step
        EagerGraph.made += 1

    def __call__(self):
        self.step()


def test_graph_bookkeeping(model, tok, monkeypatch):
    """The graph path's control flow (real warm-up steps, one capture per slot shape, the second batch replaying the
    first's graph from its first step over its own rows, placeholder rows beside them) loses no token."""
    prompts = _prompts(tok)
    monkeypatch.setattr(G, "GraphStep", EagerGraph)
    EagerGraph.made = 0
    ref, _ = G.generate(model, tok, prompts, max_new_tokens=20, batch_size=5, engine="reference",
                        show_progress=False)
    fast, stats = G.generate(model, tok, prompts, max_new_tokens=20, batch_size=4, engine="fast",
                             cuda_graphs=True, check_every=3, show_progress=False)
    assert [o.token_ids for o in fast] == [o.token_ids for o in ref]
    assert stats.batches == 2  # 4 and 3 rows: one slot of 4 rows, a placeholder row beside the second batch's three
    assert stats.extra["graph_captures"] == EagerGraph.made == 1 and stats.extra["graph_reuses"] == 1


def test_short_answers_decode_eagerly_without_a_graph(model, tok, monkeypatch):
    """Rows that all finish within the first reads (a letter and an end-of-turn token) never pay for a capture, and
    lose no token; the reads come at 2, 4 and 8 tokens, then every ``check_every``."""
    prompts = _prompts(tok)
    free, _ = G.generate(model, tok, prompts, max_new_tokens=20, batch_size=len(prompts), engine="reference",
                         show_progress=False)
    eos = sorted({o.token_ids[2] for o in free})  # every row ends by its third token
    monkeypatch.setattr(model.generation_config, "eos_token_id", eos)
    monkeypatch.setattr(G, "GraphStep", EagerGraph)
    EagerGraph.made = 0
    ref, fast, stats = _both(model, tok, prompts, max_new_tokens=20, batch_size=len(prompts), cuda_graphs=True)
    assert [o.token_ids for o in fast] == [o.token_ids for o in ref]
    assert all(not o.hit_limit and o.new_tokens <= 3 for o in fast)
    assert stats.extra["graph_captures"] == EagerGraph.made == 0
    assert stats.extra["checks"] <= 2 and stats.extra["decode_steps"] <= 3
    decoder = G._FastDecoder(model, tok, eos, None, 0, torch.device("cpu"), DecodeSlots(model, graphs=True),
                             check_every=8)
    made, reads = 1, []
    while made < 40:
        made = decoder.next_check(made)
        reads.append(made)
    assert reads == [2, 4, 8, 16, 24, 32, 40]
    decoder.check_every = 1
    assert [decoder.next_check(m) for m in (1, 2, 5)] == [2, 3, 6]


def test_many_short_answer_batches_of_one_shape_capture_their_slot_once(model, tok, monkeypatch):
    """Short answers never pay for a capture in one batch, but a task of many batches of one slot shape does: the slot
    counts its eager steps over its batches and captures once they reach EAGER_STEPS; later batches replay it from
    their first step. The tokens are the reference's throughout."""
    prompts = _prompts(tok) * 2  # batches of 2 rows: one slot shape
    free, _ = G.generate(model, tok, prompts, max_new_tokens=20, batch_size=2, engine="reference",
                         show_progress=False)
    eos = sorted({o.token_ids[2] for o in free})  # every row ends by its third token
    monkeypatch.setattr(model.generation_config, "eos_token_id", eos)
    monkeypatch.setattr(G, "GraphStep", EagerGraph)
    ref, fast, stats = _both(model, tok, prompts, max_new_tokens=20, batch_size=2, cuda_graphs=True)
    assert [o.token_ids for o in fast] == [o.token_ids for o in ref]
    n = stats.batches
    assert n == len(prompts) // 2 >= 5
    assert stats.extra["graph_captures"] == 1, "one capture for the slot shape all batches share"
    assert stats.extra["graph_reuses"] >= 1, "a batch after the capturing one replays from its first step"
    # without the pooled count each batch would start from zero and never capture
    slots = DecodeSlots(model, graphs=True)
    decoder = G._FastDecoder(model, tok, eos, None, 0, torch.device("cpu"), slots, check_every=8)
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts[:2]]
    decoder(ids, 20)
    assert decoder.captures == 0 and 0 < sum(s.eager_steps for s in slots.slots.values()) < G._FastDecoder.EAGER_STEPS


def test_planned_batches_change_no_token(model, tok):
    """Without a batch size the fast engine plans its batches (gendistill.eval.batching): one batch when batches are
    costly, one per prompt length when they are free; the tokens are the reference's either way."""
    prompts = _prompts(tok)
    ref, _ = G.generate(model, tok, prompts, max_new_tokens=6, batch_size=3, engine="reference", show_progress=False)
    widths = {len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts}
    batches = {}
    for scale in (0.0, 1e9):
        fast, stats = G.generate(model, tok, prompts, max_new_tokens=6, engine="fast", overhead_scale=scale,
                                 show_progress=False)
        assert [o.token_ids for o in fast] == [o.token_ids for o in ref]
        batches[scale] = stats.batches
    assert batches == {0.0: len(widths), 1e9: 1}


def test_a_small_graphed_batch_keeps_its_finished_rows(model, tok, monkeypatch):
    """With graphs a batch of up to ROW_STEP rows keeps its finished rows (one capture for the batch: a new slot would
    cost a capture, the finished rows nothing); with a row step of 1 they move to slots of fewer rows. The tokens are
    the reference's either way."""
    prompts = _prompts(tok)
    eos = _eos_finishing_most_rows(model, tok, prompts, max_new=24)
    monkeypatch.setattr(model.generation_config, "eos_token_id", eos)
    monkeypatch.setattr(G, "GraphStep", EagerGraph)
    ref, _ = G.generate(model, tok, prompts, max_new_tokens=24, batch_size=len(prompts), engine="reference",
                        show_progress=False)
    stats = {}
    for min_rows in (len(prompts) + 1, 2):
        monkeypatch.setattr(decode_slots, "ROW_STEP", len(prompts) + 1 if min_rows > 2 else 1)
        monkeypatch.setattr(G._FastDecoder, "MIN_COMPACT_ROWS", 2)
        monkeypatch.setattr(G._FastDecoder, "EAGER_STEPS", 0)  # graphed from the first steps on
        fast, stats[min_rows] = G.generate(model, tok, prompts, max_new_tokens=24, batch_size=len(prompts),
                                           engine="fast", cuda_graphs=True, check_every=2, show_progress=False)
        assert [o.token_ids for o in fast] == [o.token_ids for o in ref]
    small, large = stats[len(prompts) + 1].extra, stats[2].extra
    assert small["compactions"] == 0 and small["graph_captures"] == 1
    assert large["compactions"] >= 1 and large["graph_captures"] >= 1  # (a late compaction may finish eagerly)
    # eagerly the rows drop from the first read at which half have finished, graphs or not
    monkeypatch.setattr(decode_slots, "ROW_STEP", len(prompts) + 1)
    monkeypatch.setattr(G._FastDecoder, "EAGER_STEPS", 100)
    _, eager = G.generate(model, tok, prompts, max_new_tokens=24, batch_size=len(prompts), engine="fast",
                          cuda_graphs=False, check_every=2, show_progress=False)
    assert eager.extra["compactions"] >= 1 and eager.extra["graph_captures"] == 0


def test_one_new_token_and_empty_input(model, tok):
    prompts = _prompts(tok, 3)
    ref, fast, _ = _both(model, tok, prompts, max_new_tokens=1, batch_size=2)
    assert [o.token_ids for o in fast] == [o.token_ids for o in ref]
    outs, stats = G.generate(model, tok, [], max_new_tokens=4, engine="fast", show_progress=False)
    assert outs == [] and stats.n_prompts == 0


def test_engine_choice():
    assert G.resolve_engine("auto", do_sample=False) == "fast"
    assert G.resolve_engine("auto", do_sample=True) == "reference"
    with pytest.raises(ConfigError, match="greedily"):
        G.resolve_engine("fast", do_sample=True)
    with pytest.raises(ConfigError, match="unknown generation engine 'turbo'"):
        G.resolve_engine("turbo", do_sample=False)


def test_auto_batch_size_off_gpu_and_memory_estimate(model):
    assert G.auto_batch_rows(model, 16, torch.device("cpu"))(100) == G.CPU_BATCH
    from gendistill.models.decoding import ROW_PREFILL_TOKENS, decode_memory, prefills_by_row

    (_, short), (_, long) = decode_memory(model, 10, 4), decode_memory(model, 1000, 4)
    assert 0 < short < long  # grows with the prompt (KV and activations)
    itemsize = next(model.parameters()).element_size()
    fixed, per_row = decode_memory(model, 16384, 4)
    if prefills_by_row(model, 16384):  # one unpadded prefill a row: no mask, one row's activations at a time
        assert fixed > per_row > 0 and per_row < 16384**2
        assert decode_memory(model, ROW_PREFILL_TOKENS - 1, 4)[0] == 0
    else:  # a left-padded prefill's attention mask with each row, boolean and the additive copy SDPA makes
        assert fixed == 0 and per_row >= 16384**2 * (1 + itemsize)


def test_long_prompts_are_prefilled_one_row_at_a_time_with_the_same_tokens(model, tok, monkeypatch):
    """A batch of long prompts in a model of attention layers only is prefilled one unpadded row at a time into the
    left-padded static cache (no mask); the tokens are the reference engine's and the batched prefill's. A hybrid's
    batches stay batched."""
    from gendistill.models import decoding as D

    prompts = _prompts(tok)
    lengths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    monkeypatch.setattr(D, "ROW_PREFILL_TOKENS", max(lengths) - 1)  # the longest batch only: the others padded
    ref, fast, stats = _both(model, tok, prompts, max_new_tokens=10, batch_size=4)
    assert [o.token_ids for o in fast] == [o.token_ids for o in ref]
    by_row = all(t == D.FULL for t in D.layer_types(model.config))
    assert stats.extra["row_prefill_batches"] == (1 if by_row else 0)
    monkeypatch.setattr(D, "ROW_PREFILL_TOKENS", 1)  # every batch, and a batch of one token (max_new_tokens=1)
    every, stats = G.generate(model, tok, prompts, engine="fast", max_new_tokens=10, batch_size=4,
                              show_progress=False)
    assert [o.token_ids for o in every] == [o.token_ids for o in ref]
    assert stats.extra["row_prefill_batches"] == (stats.batches if by_row else 0)
    one, _ = G.generate(model, tok, prompts, engine="fast", max_new_tokens=1, batch_size=4, show_progress=False)
    assert [o.token_ids for o in one] == [o.token_ids[:1] for o in ref]


def test_batch_rows_count_the_allocators_cached_blocks_as_free(model, monkeypatch):
    """After a big batch PyTorch keeps its blocks cached (reserved, unused): the driver reports them as taken, but the
    next batch gets them first, so the rows are planned on driver-free + cached-unused memory."""
    from gendistill.models.decoding import decode_memory

    gib = 2**30
    # 1 GiB of the cached 6 are fragments of segments that still hold live tensors: not usable for a large tensor
    fake_cuda_memory(monkeypatch, free=2 * gib, total=80 * gib, reserved=7 * gib, allocated=gib, fragments=gib)
    rows = G.auto_batch_rows(model, 16, torch.device("cuda"))
    fixed, per_row = decode_memory(model, 4000, 16)
    assert fixed == 0  # prompts under ROW_PREFILL_TOKENS: a batched prefill, every byte a row's
    assert rows(4000) == min(G.MAX_AUTO_BATCH, int(G.MEMORY_SHARE * 7 * gib // per_row)) > 1
    # only fragments cached
    fake_cuda_memory(monkeypatch, free=2 * gib, total=80 * gib, reserved=2 * gib, allocated=gib, fragments=gib)
    assert G.auto_batch_rows(model, 16, torch.device("cuda"))(4000) == min(
        G.MAX_AUTO_BATCH, int(G.MEMORY_SHARE * 2 * gib // per_row)) < rows(4000)


def test_batches_are_planned_within_the_process_memory_limit(monkeypatch):
    """Under ``--gpu-memory-fraction`` (PyTorch's per-process limit) the memory a batch may plan for is the limit less
    what this process's tensors and fragments hold, even where the card has more free: an evaluation beside a
    distillation must not plan for memory the trainer takes later."""
    from gendistill.devices import available_cuda_bytes, limit_cuda_memory

    gib = 2**30
    cuda = torch.device("cuda")
    for fraction, expected in ((1.0, 41 * gib), (0.1, 6 * gib), (0.02, 0)):
        fake_cuda_memory(monkeypatch, free=40 * gib, total=80 * gib, reserved=3 * gib, allocated=gib, fragments=gib,
                         fraction=fraction)
        assert available_cuda_bytes(cuda) == expected
    set_to = []
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                        lambda f, device: card_index(device) and set_to.append((f, device)))
    limit_cuda_memory(0.05, cuda)  # the device as the CLI passes it: no index, the current card's is used
    limit_cuda_memory(0.05, torch.device("cuda", 1))
    assert set_to == [(0.05, 0), (0.05, 1)]
    with pytest.raises(GendistillError, match=r"--gpu-memory-fraction: 0 must be in \(0, 1\]"):
        limit_cuda_memory(0, cuda)


class FailingCapture(EagerGraph):
    """A capture that fails after its (real) warm-up steps, as ``torch.cuda.graph`` does for an uncapturable op."""

    def __init__(self, step, warmup=2, after_warmup_step=None):
        super().__init__(step, warmup, after_warmup_step)
        raise RuntimeError("operation not permitted when stream is capturing")


def test_failed_capture_falls_back_to_eager(model, tok, monkeypatch):
    prompts = _prompts(tok, 4)
    monkeypatch.setattr(G, "GraphStep", FailingCapture)
    ref, _ = G.generate(model, tok, prompts, max_new_tokens=20, batch_size=4, engine="reference", show_progress=False)
    with pytest.warns(UserWarning, match="decoding eagerly"):
        fast, stats = G.generate(model, tok, prompts, max_new_tokens=20, batch_size=4, engine="fast",
                                 cuda_graphs=True, show_progress=False)
    assert [o.token_ids for o in fast] == [o.token_ids for o in ref]
    assert stats.extra["graph_captures"] == 0


def test_the_fast_engine_runs_the_mixers_on_weights_joined_for_the_call(model, tok, monkeypatch):
    """The fast engine's batches run inside :func:`gendistill.layers.base.joined_weights` (the student's mixers copy
    no weights per step), released when the call returns; the reference engine runs the model as it is."""
    from gendistill.layers.base import TeacherShapedMixer

    mixers = [m for m in model.modules() if isinstance(m, TeacherShapedMixer)]
    if not mixers:
        pytest.skip("the tiny teacher has no linear mixer")
    seen = []
    real_call = G._FastDecoder.__call__

    def call(self, rows, max_new_tokens):
        seen.append(all(m._joined is not None for m in mixers))
        return real_call(self, rows, max_new_tokens)

    monkeypatch.setattr(G._FastDecoder, "__call__", call)
    _both(model, tok, _prompts(tok), max_new_tokens=4)
    assert seen and all(seen)
    assert all(m._joined is None for m in mixers)


def test_end_of_turn_tokens_are_the_vocabularys_own(model, tok, monkeypatch):
    """The end-of-turn ids: the model's and tokenizer's EOS and each known end-of-turn token the vocabulary holds (by
    the vocabulary itself, not by a conversion that maps an unknown token to the unknown token's id: here a tokenizer
    whose unknown token is id 5)."""
    vocab = tok.get_vocab()
    real = tok.convert_tokens_to_ids
    monkeypatch.setattr(tok, "convert_tokens_to_ids", lambda t: vocab.get(t, 5) if isinstance(t, str) else real(t))
    want = {vocab[t] for t in G.END_OF_TURN_TOKENS if t in vocab}
    for src in (model.generation_config, tok):
        e = getattr(src, "eos_token_id", None)
        want |= set([e] if isinstance(e, int) else e or [])
    assert set(G._eos_ids(model, tok)) == want
    assert any(t not in vocab for t in G.END_OF_TURN_TOKENS)  # the tiny vocabulary lacks some: they are left out


def test_the_checkpoints_generation_settings_do_not_change_the_reference(model, tok):
    """A checkpoint's generation_config.json may set a repetition penalty or a no-repeat n-gram size (Qwen2.5-Instruct
    ships 1.05): transformers' generate would apply them, the fast engine does not. The reference engine decodes by
    the evaluator's settings alone, so the two agree whatever the checkpoint says, and the model keeps its config."""
    prompts = _prompts(tok, 4)
    before, _ = G.generate(model, tok, prompts, max_new_tokens=10, engine="reference", show_progress=False)
    cfg = model.generation_config
    saved = (cfg.repetition_penalty, cfg.no_repeat_ngram_size)
    cfg.repetition_penalty, cfg.no_repeat_ngram_size = 3.0, 2
    try:
        ref, fast, _ = _both(model, tok, prompts, max_new_tokens=10)
        assert model.generation_config is cfg and cfg.repetition_penalty == 3.0
    finally:
        cfg.repetition_penalty, cfg.no_repeat_ngram_size = saved
    assert [o.token_ids for o in ref] == [o.token_ids for o in before] == [o.token_ids for o in fast]
