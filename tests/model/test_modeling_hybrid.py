"""The hybrid model as transformers sees it: equivalence of fast and slow paths, generation, save/load."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

import gendistill  # noqa: F401  (registers the Auto classes)
from gendistill.convert import convert_teacher, save_student
from tests._trained_like import make_trained_like
from tests.conftest import make_teacher

MIXED = "0,2"  # layers 0 and 2 keep attention, 1 and 3 are KDA


@pytest.fixture(params=[None, -5.0], ids=["paper_gate", "bounded_gate"])
def gate_lower_bound(request):
    """``kda_gate_lower_bound`` of the student: the paper's decay gate, or fla's bounded (safe_gate) one."""
    return request.param


def student_of(family: str, spec: str = MIXED, seed: int = 0, **kw):
    """A teacher and its converted student with trained-like KDA parameters (see tests/_trained_like.py)."""
    teacher = make_teacher(family, seed=seed)
    torch.manual_seed(seed + 1)
    student = make_trained_like(convert_teacher(teacher, spec, **kw), seed=seed)
    return teacher, student


def test_all_attention_student_reproduces_teacher(family):
    teacher = make_teacher(family)
    student = convert_teacher(teacher, "all")
    x = torch.randint(0, 256, (2, 21))
    with torch.no_grad():
        assert (student(x).logits - teacher(x).logits).abs().max().item() <= 1e-5


def test_cached_decode_equals_full_recompute(family, gate_lower_bound):
    _, student = student_of(family, kda_gate_lower_bound=gate_lower_bound)
    x = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        full = student(x).logits
        out = student(x[:, :29], use_cache=True)  # chunked prefill (29 is not a multiple of the chunk)
        logits, cache = [out.logits], out.cache
        for t in range(29, 40):  # then token by token through the recurrent path
            out = student(x[:, t:t + 1], cache=cache, use_cache=True)
            logits.append(out.logits)
            cache = out.cache
    # fp32: chunked and recurrent forms round differently; logits are O(1) so 1e-4 absolute is ~1e-5 relative
    assert (torch.cat(logits, 1) - full).abs().max().item() < 1e-4


def test_multi_token_continuation_from_cache(family, gate_lower_bound):
    """Continuations of 30, 5 and 70 tokens from a cached prefix: up to RECURRENT_MAX_TOKENS (64) new tokens take the
    step-by-step kernel, more take the chunked one; both must start from the cached (non-zero) state and conv window."""
    from gendistill.layers.kda import RECURRENT_MAX_TOKENS

    _, student = student_of(family, kda_gate_lower_bound=gate_lower_bound)
    x = torch.randint(0, 256, (1, 95))
    assert 95 - 25 > RECURRENT_MAX_TOKENS
    with torch.no_grad():
        full = student(x).logits
        for prefix, end in ((20, 50), (20, 25), (25, 95)):
            out = student(x[:, :prefix], use_cache=True)
            cont = student(x[:, prefix:end], cache=out.cache, use_cache=True)
            # fp32, chunked vs recurrent rounding: 1e-4 absolute on O(1) logits (a dropped state gives O(1) errors)
            err = (cont.logits - full[:, prefix:end]).abs().max().item()
            assert err < 1e-4, (prefix, end, err)
            # and the cache after the continuation serves the next token
            nxt = student(x[:, end:end + 1], cache=cont.cache, use_cache=True).logits if end < 95 else None
            if nxt is not None:
                assert (nxt - full[:, end:end + 1]).abs().max().item() < 1e-4


def test_left_padded_batch_equals_each_sequence_alone(family, gate_lower_bound):
    _, student = student_of(family, kda_gate_lower_bound=gate_lower_bound)
    lengths = [9, 14, 5]
    seqs = [torch.randint(1, 256, (n,)) for n in lengths]
    T = max(lengths)
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, T - len(s):] = s
        mask[i, T - len(s):] = 1
    with torch.no_grad():
        batched = student.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                                   pad_token_id=0)
        for i, s in enumerate(seqs):
            alone = student.generate(input_ids=s[None], max_new_tokens=6, do_sample=False, pad_token_id=0)
            assert torch.equal(batched[i, T:], alone[0, len(s):]), f"row {i} differs"
            logits_alone = student(s[None]).logits[0, -1]
            logits_batched = student(ids, attention_mask=mask).logits[i, -1]
            assert (logits_alone - logits_batched).abs().max().item() < 1e-4


def test_packed_documents_are_isolated(family, gate_lower_bound):
    _, student = student_of(family, kda_gate_lower_bound=gate_lower_bound)
    docs = [torch.randint(0, 256, (n,)) for n in (11, 7, 13)]
    ids = torch.cat(docs)[None]
    position_ids = torch.cat([torch.arange(len(d)) for d in docs])[None]
    with torch.no_grad():
        packed = student(ids, position_ids=position_ids).logits[0]
        start = 0
        for d in docs:
            alone = student(d[None]).logits[0]
            assert (packed[start:start + len(d)] - alone).abs().max().item() < 1e-4
            start += len(d)


def test_generate_sampling_is_seeded_and_greedy_is_deterministic(family):
    _, student = student_of(family)
    x = torch.randint(0, 256, (2, 6))
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        runs.append(student.generate(x, max_new_tokens=8, do_sample=True, top_k=20, temperature=0.7))
    assert torch.equal(runs[0], runs[1])
    g1 = student.generate(x, max_new_tokens=8, do_sample=False)
    g2 = student.generate(x, max_new_tokens=8, do_sample=False)
    assert torch.equal(g1, g2) and g1.shape == (2, 14)


def test_beam_search_with_the_hybrid_cache_equals_beam_search_without_it(monkeypatch):
    """Beam search reorders the KDA states with the beams; without a cache every step recomputes from the tokens, so
    both must pick the same beams with the same scores. A no-op reorder of the linear-attention layers must break it
    (checked here, so the comparison is known to be able to fail)."""
    from transformers.cache_utils import LinearAttentionCacheLayerMixin

    _, student = student_of("qwen3", spec="0")  # one attention layer, three KDA layers
    x = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(5))
    kw = dict(max_new_tokens=8, num_beams=4, num_return_sequences=4, do_sample=False, return_dict_in_generate=True,
              output_scores=True, length_penalty=0.0, pad_token_id=0)

    def beams(use_cache: bool):
        with torch.no_grad():
            out = student.generate(x, use_cache=use_cache, **kw)
        return out.sequences, out.sequences_scores

    ref_seq, ref_scores = beams(use_cache=False)
    seq, scores = beams(use_cache=True)
    assert seq.shape == (4, 14)
    assert torch.equal(seq, ref_seq)
    assert (scores - ref_scores).abs().max().item() < 1e-4  # summed fp32 log-probs of 8 steps, chunk vs recurrent
    monkeypatch.setattr(LinearAttentionCacheLayerMixin, "reorder_cache", lambda self, beam_idx: None)
    bad_seq, bad_scores = beams(use_cache=True)
    assert not torch.equal(bad_seq, ref_seq) or (bad_scores - ref_scores).abs().max().item() > 1e-3


def test_save_load_roundtrip_and_fresh_process(tmp_path, family):
    _, student = student_of(family)
    out = save_student(student, None, tmp_path / "student")
    assert (out / "model.safetensors").is_file()
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # a normal folder, not mkdtemp's 0700
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".student")]  # no temporary left behind
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "hybrid_kda" and config["base_model_type"] == family
    x = torch.randint(0, 256, (1, 12))
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, student(x).logits)
        expected = student(x).logits[0, -1].tolist()
    code = (
        "import json, sys, torch, gendistill\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(out)!r}).eval()\n"
        f"x = torch.tensor({x.tolist()})\n"
        "with torch.no_grad(): print(json.dumps(m(x).logits[0, -1].tolist()))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert max(abs(a - b) for a, b in zip(got, expected)) < 1e-6


def test_bounded_gate_student_round_trips_its_setting(tmp_path):
    """A bounded-gate student saved and loaded: config.json carries kda_gate_lower_bound, the loaded mixers use it,
    the logits are identical; and the setting matters (the same weights with the paper's gate give other logits)."""
    _, student = student_of("qwen3", kda_gate_lower_bound=-5.0)
    out = save_student(student, None, tmp_path / "student")
    assert json.loads((out / "config.json").read_text())["kda_gate_lower_bound"] == -5.0
    card = (out / "README.md").read_text()
    assert "| kda_gate_lower_bound (decay gate) | bounded, lower bound -5 |" in card
    assert "`-5 * sigmoid(exp(A_log) * (f + dt_bias))`" in card
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert [m.linear_attn.gate_lower_bound for m in loaded.model.layers if hasattr(m, "linear_attn")] == [-5.0, -5.0]
    x = torch.randint(0, 256, (2, 30))
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, student(x).logits)
        for layer in loaded.model.layers:
            if hasattr(layer, "linear_attn"):
                layer.linear_attn.gate_lower_bound = None
        assert (loaded(x).logits - student(x).logits).abs().max().item() > 1e-3


def test_cache_bytes_matches_the_measured_cache(family):
    _, student = student_of(family)
    x = torch.randint(0, 256, (3, 17))
    with torch.no_grad():
        cache = student(x, use_cache=True).cache
    measured = {"full_attention": 0, "linear_attention": 0}
    for layer, kind in zip(cache.layers, student.config.layer_types):
        if kind == "linear_attention":
            measured[kind] += sum(t.numel() * t.element_size() for t in (*layer.conv_states.values(), *layer.recurrent_states.values())
                                  if t is not None)
        else:
            measured[kind] += layer.keys.numel() * layer.keys.element_size() * 2
    predicted = student.cache_bytes(17, batch=3, dtype=torch.float32)
    assert predicted["full_attention"] == measured["full_attention"]
    assert predicted["linear_attention"] == measured["linear_attention"]
    assert predicted["total"] == sum(measured.values())


def test_training_backward_with_gradient_checkpointing():
    _, student = student_of("llama")
    student.train()
    student.activation_checkpointing_enable()
    x = torch.randint(0, 256, (2, 24))
    loss = student(x, labels=x, use_cache=False).loss
    loss.backward()
    kda = student.model.layers[1].linear_attn
    for name in ("A_log", "dt_bias", "f_proj.0.weight", "b_proj.weight", "q_conv1d.weight", "g_proj.0.weight"):
        grad = kda.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_bfloat16_forward_keeps_recurrence_parameters_in_float32():
    _, student = student_of("qwen3")
    student = student.to(torch.bfloat16)
    student.upcast_recurrence_parameters()
    kda = student.model.layers[1].linear_attn
    assert kda.A_log.dtype == torch.float32 and kda.dt_bias.dtype == torch.float32
    x = torch.randint(0, 256, (1, 10))
    with torch.no_grad():
        logits = student(x).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def test_all_kda_student_decodes_and_generates():
    """``--attention-layers none``: the cache holds only linear-attention layers (no sequence length to read)."""
    _, student = student_of("qwen3", spec="none")
    x = torch.randint(1, 256, (2, 12))
    with torch.no_grad():
        full = student(x).logits
        out = student(x[:, :7], use_cache=True)
        steps, cache = [out.logits], out.cache
        for t in range(7, 12):
            out = student(x[:, t:t + 1], cache=cache, use_cache=True)
            steps.append(out.logits)
            cache = out.cache
        assert (torch.cat(steps, 1) - full).abs().max().item() < 1e-4
        mask = torch.ones_like(x)
        mask[0, :4] = 0
        batched = student.generate(x, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
        alone = student.generate(x[:1, 4:], max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(batched[0, 12:], alone[0, 8:])


def test_student_inherits_the_teacher_generation_config():
    teacher = make_teacher("qwen2")
    teacher.generation_config.eos_token_id = [5, 7]
    teacher.generation_config.temperature = 0.6
    student = convert_teacher(teacher, "0")
    assert student.generation_config.eos_token_id == [5, 7]
    assert student.generation_config.temperature == 0.6


def test_past_key_values_is_the_old_name_of_cache():
    """transformers renamed ``past_key_values`` to ``cache``; the hybrid still takes the old name through
    transformers' own deprecation helper, as transformers' models do: the same result, with a FutureWarning."""
    import pytest

    _, student = student_of("llama")
    x = torch.randint(0, 256, (1, 12))
    with torch.no_grad():
        new = student(x[:, 8:], cache=student(x[:, :8], use_cache=True).cache, use_cache=True)
        with pytest.warns(FutureWarning, match="past_key_values"):
            old = student(x[:, 8:], past_key_values=student(x[:, :8], use_cache=True).cache, use_cache=True)
        with pytest.warns(FutureWarning, match="past_key_values"):
            base = student.model(x[:, 8:], past_key_values=student(x[:, :8], use_cache=True).cache)
    assert torch.equal(new.logits, old.logits) and old.cache is not None
    assert torch.equal(base.last_hidden_state, student.model(x[:, 8:], cache=student(x[:, :8], use_cache=True).cache)
                       .last_hidden_state)


def test_a_cache_whose_first_layer_is_kda_counts_every_token():
    """A student whose layer 0 is KDA (``every:4`` keeps 0, 3, …; here 1 and 3): its cache's sequence length counts
    the prefill's tokens (transformers >= 5.25 reads it off layer 0), so a cached forward without ``position_ids``
    gives the attention layers the right positions, and ``generate`` continuing a returned cache feeds only the new
    tokens: both equal a full recompute (to float32 rounding)."""
    _, s = student_of("llama", "1,3")
    with torch.no_grad():  # sharper attention: a position error shows
        for i in (1, 3):
            s.model.layers[i].self_attn.q_proj.weight.mul_(8)
    s.generation_config.eos_token_id, s.generation_config.pad_token_id = None, 0
    x = torch.randint(3, 256, (1, 20))
    with torch.no_grad():
        full = s(x).logits
        out = s(x[:, :12], use_cache=True)
        cache, logits = out.cache, [out.logits]
        for t in range(12, 20):
            logits.append(s(x[:, t : t + 1], cache=cache, use_cache=True).logits)
        assert int(cache.get_seq_length()) == 20
        torch.testing.assert_close(torch.cat(logits, 1), full, rtol=1e-4, atol=1e-5)
        gen = s.generate(x[:, :12], max_new_tokens=5, do_sample=False, return_dict_in_generate=True)
        seq = gen.sequences
        cont = s.generate(seq, cache=gen.past_key_values, max_new_tokens=1, do_sample=False,
                          return_dict_in_generate=True, output_logits=True)
        torch.testing.assert_close(cont.logits[0], s(seq).logits[:, -1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spec", [MIXED, "1,3"])
def test_assisted_decoding_equals_greedy_decoding(spec):
    """transformers' assisted (speculative) decoding verifies several drafted tokens in one forward and crops the
    rejected ones from the cache: the KDA layers hand it the state after each of the last tokens, so the result
    equals plain greedy decoding; a cache cropped by hand continues as a full recompute does."""
    import transformers.cache_utils as cu

    if not hasattr(cu.DynamicCache, "get_recurrent_states_to_keep"):
        pytest.skip("transformers < 5.25 crops no recurrent state (linear-attention layers cannot be rolled back)")
    _, s = student_of("llama", spec)
    _, draft = student_of("llama", spec, seed=7)
    for m in (s, draft):
        m.generation_config.eos_token_id, m.generation_config.pad_token_id = None, 0
    torch.manual_seed(0)
    x = torch.randint(3, 256, (2, 20))
    with torch.no_grad():
        for row in x.split(1):
            assert torch.equal(s.generate(row, max_new_tokens=24, do_sample=False),
                               s.generate(row, max_new_tokens=24, do_sample=False, assistant_model=draft))
        y = torch.randint(3, 256, (1, 5))
        cache = s(x[:1], use_cache=True).cache
        cache.activate_past_recording(recurrent_states_to_keep=5)
        s(y, cache=cache, position_ids=torch.arange(20, 25)[None])
        cache.crop(-3)  # keep 2 of the 5 verified tokens
        out = s(y[:, 2:3], cache=cache, position_ids=torch.tensor([[22]])).logits[0, -1]
        torch.testing.assert_close(out, s(torch.cat([x[:1], y[:, :3]], 1)).logits[0, -1], rtol=1e-4, atol=1e-5)
