"""Gated DeltaNet, GLA and Mamba2 students as a user drives them: teacher initialisation, cached decode vs full
recompute, left padding, packed documents, save/load, generate, cache accounting, training, ``convert --mixer``."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import gendistill  # noqa: F401  (registers the Auto classes)
from gendistill.convert import convert_teacher, save_student
from gendistill.layers.registry import LINEAR_MIXERS
from tests.conftest import make_teacher

NEW_MIXERS = ["gated_deltanet", "gla", "mamba2"]
# fp32 logits are O(1); chunked and step-by-step forms round differently, so 1e-4 absolute is ~1e-5 relative
TOL = 1e-4


@pytest.fixture(params=NEW_MIXERS)
def mixer(request) -> str:
    return request.param


def student_of(mixer: str, family: str = "llama", spec: str = "0,2", seed: int = 0):
    """A tiny student whose replaced layers' non-teacher parameters are moved off their identity initialisation, so
    convs, output gate and decay all matter in the checks."""
    teacher = make_teacher(family, seed=seed)
    torch.manual_seed(seed + 1)
    student = convert_teacher(teacher, spec, linear_attention_type=mixer)
    with torch.no_grad():
        for layer in student.model.layers:
            if layer.layer_type == "linear_attention":
                for name, p in layer.linear_attn.named_parameters():
                    if "conv1d." in name or name.startswith("g_proj.1"):
                        p.add_(0.3 * torch.randn_like(p))
                    elif name in ("dt_bias", "gk_bias"):  # stronger decay than at initialisation
                        p.add_(2.0)
    return teacher, student


def test_registry_builds_each_mixer_from_the_teacher(mixer):
    teacher, student = student_of(mixer, family="qwen2")  # qwen2: q/k/v biases are copied too
    assert student.config.linear_attention_type == mixer
    layer = student.model.layers[1].linear_attn
    assert type(layer) is LINEAR_MIXERS[mixer]
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        for kind in ("weight", "bias"):
            key = f"model.layers.1.self_attn.{proj}.{kind}"
            if key in t_sd:
                assert torch.equal(s_sd[key.replace("self_attn", "linear_attn")], t_sd[key]), key
    for name in getattr(layer, "fp32_parameters", ()):
        assert layer.get_parameter(name).dtype == torch.float32


def test_fresh_student_has_identity_convs_and_gate(mixer):
    student = convert_teacher(make_teacher("llama"), "0", linear_attention_type=mixer)
    layer = student.model.layers[1].linear_attn
    x = torch.randn(3, layer.hidden_size)
    assert torch.allclose(torch.nn.functional.silu(layer.g_proj(x)), torch.ones(3, layer.q_dim), atol=1e-5)
    assert torch.equal(layer.k_conv1d.weight[..., -1], torch.ones_like(layer.k_conv1d.weight[..., -1]))
    assert not layer.k_conv1d.weight[..., :-1].any()


@pytest.mark.parametrize("prefill", [29, 7])
def test_cached_decode_equals_full_recompute(mixer, prefill):
    _, student = student_of(mixer, family="qwen3")
    x = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        full = student(x).logits
        out = student(x[:, :prefill], use_cache=True)  # chunked prefill (not a multiple of the chunk)
        logits, cache = [out.logits], out.cache
        for t in range(prefill, 40):  # then token by token through the recurrent path
            out = student(x[:, t:t + 1], cache=cache, use_cache=True)
            logits.append(out.logits)
            cache = out.cache
    assert (torch.cat(logits, 1) - full).abs().max().item() < TOL


def test_long_continuation_from_cache_uses_the_chunked_path_with_state(mixer):
    """More than 64 new tokens on top of a cache go through the chunked kernel with an initial state."""
    _, student = student_of(mixer)
    x = torch.randint(0, 256, (1, 110))
    with torch.no_grad():
        full = student(x).logits
        out = student(x[:, :23], use_cache=True)
        long = student(x[:, 23:110], cache=out.cache, use_cache=True)  # 87 tokens > 64
        out = student(x[:, :23], use_cache=True)
        short = student(x[:, 23:60], cache=out.cache, use_cache=True)  # 37 tokens: the recurrent kernel
    assert (long.logits - full[:, 23:]).abs().max().item() < TOL
    assert (short.logits - full[:, 23:60]).abs().max().item() < TOL


def test_left_padded_batch_equals_each_sequence_alone(mixer):
    _, student = student_of(mixer)
    seqs = [torch.randint(1, 256, (n,)) for n in (9, 14, 5)]
    T = 14
    ids = torch.zeros(3, T, dtype=torch.long)
    mask = torch.zeros(3, T, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, T - len(s):], mask[i, T - len(s):] = s, 1
    with torch.no_grad():
        batched = student.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                                   pad_token_id=0)
        batched_logits = student(ids, attention_mask=mask).logits[:, -1]
        for i, s in enumerate(seqs):
            alone = student.generate(input_ids=s[None], max_new_tokens=6, do_sample=False, pad_token_id=0)
            assert torch.equal(batched[i, T:], alone[0, len(s):]), f"row {i} differs"
            assert (student(s[None]).logits[0, -1] - batched_logits[i]).abs().max().item() < TOL


def test_padding_never_enters_the_state(mixer):
    """Left-padded rows end with the same recurrent state and next-token logits as the sequence alone, whatever the
    padded positions hold."""
    _, student = student_of(mixer, spec="none")
    s = torch.randint(1, 256, (6,))
    mask = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1, 1, 1]] * 2)
    ids = torch.stack([torch.cat([torch.zeros(4, dtype=torch.long), s]), torch.cat([torch.randint(1, 256, (4,)), s])])
    with torch.no_grad():
        padded = student(ids, attention_mask=mask, use_cache=True)
        alone = student(s[None], use_cache=True)
    for layer_p, layer_a in zip(padded.cache.layers, alone.cache.layers):
        state_p, state_a = (next(iter(x.recurrent_states.values())) for x in (layer_p, layer_a))
        assert (state_p - state_a).abs().max().item() < 1e-5
    assert (padded.logits[:, -1] - alone.logits[:, -1]).abs().max().item() < TOL


def test_packed_documents_are_isolated(mixer):
    _, student = student_of(mixer)
    docs = [torch.randint(0, 256, (n,)) for n in (11, 7, 13)]
    ids = torch.cat(docs)[None]
    position_ids = torch.cat([torch.arange(len(d)) for d in docs])[None]
    with torch.no_grad():
        packed = student(ids, position_ids=position_ids).logits[0]
        start = 0
        for d in docs:
            assert (packed[start:start + len(d)] - student(d[None]).logits[0]).abs().max().item() < TOL
            start += len(d)


def test_save_load_roundtrip_and_generate(tmp_path, mixer):
    _, student = student_of(mixer)
    out = save_student(student, None, tmp_path / "student")
    assert json.loads((out / "config.json").read_text())["linear_attention_type"] == mixer
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(loaded.model.layers[1].linear_attn) is LINEAR_MIXERS[mixer]
    x = torch.randint(1, 256, (2, 12))
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, student(x).logits)
        a = loaded.generate(x, max_new_tokens=8, do_sample=False, pad_token_id=0)
        b = student.generate(x, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert a.shape == (2, 20) and torch.equal(a, b)


def test_cache_bytes_matches_the_measured_cache(mixer):
    _, student = student_of(mixer)
    x = torch.randint(0, 256, (3, 17))
    with torch.no_grad():
        cache = student(x, use_cache=True).cache
    measured = {"full_attention": 0, "linear_attention": 0}
    for layer, kind in zip(cache.layers, student.config.layer_types):
        if kind == "linear_attention":
            measured[kind] += sum(t.numel() * t.element_size()
                                  for t in (*layer.conv_states.values(), *layer.recurrent_states.values())
                                  if t is not None)
        else:
            measured[kind] += layer.keys.numel() * layer.keys.element_size() * 2
    predicted = student.cache_bytes(17, batch=3, dtype=torch.float32)
    assert predicted["full_attention"] == measured["full_attention"]
    assert predicted["linear_attention"] == measured["linear_attention"]


def test_training_reaches_every_mixer_parameter(mixer):
    _, student = student_of(mixer, family="qwen3")
    student.train()
    x = torch.randint(0, 256, (2, 24))
    student(x, labels=x, use_cache=False).loss.backward()
    for name, p in student.model.layers[1].linear_attn.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_bfloat16_keeps_decay_parameters_in_float32(mixer):
    _, student = student_of(mixer)
    student = student.to(torch.bfloat16)
    student.upcast_recurrence_parameters()
    layer = student.model.layers[1].linear_attn
    assert all(layer.get_parameter(n).dtype == torch.float32 for n in getattr(layer, "fp32_parameters", ()))
    with torch.no_grad():
        logits = student(torch.randint(0, 256, (1, 10))).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


@pytest.mark.parametrize("mixer", ["gla", "mamba2"])
def test_from_pretrained_in_bf16_keeps_every_fp32_parameter_in_float32(mixer, tmp_path):
    """GLA's gk_bias and Mamba2's D as well as A_log / dt_bias: loaded with ``dtype=bfloat16`` by transformers'
    own from_pretrained, they stay float32 with the saved values while the rest of the model is bf16."""
    _, student = student_of(mixer)  # dt_bias / gk_bias moved off their init, so they are not bf16-exact
    out = save_student(student, None, tmp_path / "student")
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    assert loaded.get_input_embeddings().weight.dtype == torch.bfloat16
    kept = loaded.recurrence_parameters()
    names = set(LINEAR_MIXERS[mixer].fp32_parameters)
    assert {k.rsplit(".", 1)[1] for k in kept} == names and len(kept) == 2 * len(names)
    for name, p in kept.items():
        assert p.dtype == torch.float32 and torch.equal(p, student.get_parameter(name)), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(LINEAR_MIXERS))
def test_transformers_dtype_plan_keeps_exactly_the_mixers_fp32_parameters(name, dtype):
    """The parameters from_pretrained loads in float32 (its dtype plan, matched against the parameter names the way
    transformers' loader matches it) are every mixer's ``fp32_parameters`` and nothing else."""
    from transformers.core_model_loading import build_glob_alternation

    student = convert_teacher(make_teacher("llama"), "0", linear_attention_type=name)
    plan = student._get_dtype_plan(dtype)
    assert set(plan.values()) == {torch.float32}
    pattern, _, _ = build_glob_alternation(list(plan))
    assert {k for k in student.state_dict() if pattern.search(k)} == set(student.recurrence_parameters())


def test_convert_cli_builds_a_student_with_the_chosen_mixer(tmp_path):
    from typer.testing import CliRunner

    from gendistill.cli import app
    from tests.fixtures_teachers import make_tiny_folder

    teacher = tmp_path / "teacher"
    make_tiny_folder(teacher, "qwen3")
    runner = CliRunner()
    out = tmp_path / "student"
    result = runner.invoke(app, ["convert", "-t", str(teacher), "-a", "1", "-o", str(out), "--mixer", "gla"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert AutoModelForCausalLM.from_pretrained(out).config.linear_attention_type == "gla"
    bad = runner.invoke(app, ["convert", "-t", str(teacher), "-a", "1", "-o", str(tmp_path / "x"), "--mixer", "lstm"])
    assert bad.exit_code == 2 and "unknown --mixer 'lstm'" in bad.output and not (tmp_path / "x").exists()
