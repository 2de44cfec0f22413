"""Teacher -> student conversion: what is copied, what is identity, what is random; layer specifications."""

from __future__ import annotations

import copy
import json
import re
import math

import pytest
import torch

from gendistill.convert import convert_teacher, parse_attention_layers
from gendistill.errors import LayerSpecError, UnsupportedModelError
from gendistill.layers.registry import LINEAR_MIXERS
from gendistill.ops.conv import causal_conv1d
from tests.conftest import make_teacher


def test_copied_and_kept_parameters_equal_the_teacher(family):
    teacher = make_teacher(family)
    student = convert_teacher(teacher, "1,3")
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    for name, tensor in t_sd.items():
        if name in s_sd:  # embeddings, MLPs, norms, kept attention, lm_head
            assert torch.equal(s_sd[name], tensor), name
    for i in (0, 2):  # replaced layers: q/k/v/o (and their biases) copied into the KDA mixer
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            for kind in ("weight", "bias"):
                key = f"model.layers.{i}.self_attn.{proj}.{kind}"
                if key in t_sd:
                    assert torch.equal(s_sd[key.replace("self_attn", "linear_attn")], t_sd[key]), key
    assert student.config.attention_layers == [1, 3] and student.config.linear_layers == [0, 2]


def test_kda_initialisation_facts():
    teacher = make_teacher("qwen3")
    student = convert_teacher(teacher, "none")
    for layer in student.model.layers:
        kda = layer.linear_attn
        # identity convolutions: the conv output equals its input
        x = torch.randn(2, kda.q_dim, 9)
        w = kda.q_conv1d.weight.squeeze(1)
        assert torch.equal(causal_conv1d(x, w, kda.q_conv1d.bias), x)
        # identity output gate: silu(g_proj(x)) == 1 for any x, and the norm weight is 1
        h = torch.randn(3, 64)
        assert torch.allclose(torch.nn.functional.silu(kda.g_proj(h)), torch.ones(3, kda.num_heads * kda.head_dim), atol=1e-5)
        assert torch.equal(kda.o_norm.weight, torch.ones_like(kda.o_norm.weight))
        # Mamba-style decay: A = exp(A_log) in [1, 16]; dt = softplus(dt_bias) in [1e-3, 1e-1]; both float32
        A = kda.A_log.exp()
        dt = torch.nn.functional.softplus(kda.dt_bias)
        assert ((A >= 1 - 1e-5) & (A <= 16 + 1e-4)).all()
        assert ((dt >= 1e-3 * (1 - 1e-4)) & (dt <= 1e-1 * (1 + 1e-4))).all()
        assert kda.A_log.dtype == torch.float32 and kda.dt_bias.dtype == torch.float32
        # small random gate projections
        for lin in (kda.f_proj[0], kda.f_proj[1], kda.b_proj, kda.g_proj[0]):
            assert 0.005 < lin.weight.std().item() < 0.05


def test_expand_mode_repeats_teacher_kv_heads_and_computes_the_same_function():
    teacher = make_teacher("llama")
    repeat = convert_teacher(teacher, "0")
    expand = convert_teacher(teacher, "0", kda_kv_mode="expand")
    k_teacher = teacher.model.layers[1].self_attn.k_proj.weight  # [2 kv heads * 16, 64]
    k_expand = expand.model.layers[1].linear_attn.k_proj.weight  # [4 heads * 16, 64]
    assert k_expand.shape == (64, 64)
    assert torch.equal(k_expand.view(4, 16, 64)[1], k_teacher.view(2, 16, 64)[0])
    assert torch.equal(k_expand.view(4, 16, 64)[2], k_teacher.view(2, 16, 64)[1])
    # with every other KDA parameter shared, the two layouts compute the same function
    with torch.no_grad():
        for i in (1, 2, 3):
            src, dst = repeat.model.layers[i].linear_attn, expand.model.layers[i].linear_attn
            for name, p in dst.named_parameters():
                q = src.get_parameter(name)
                if p.shape == q.shape:
                    p.copy_(q)
                else:  # convs of k/v: repeat per head like the projections
                    p.copy_(q.view(2, 16, *q.shape[1:]).repeat_interleave(2, 0).reshape(p.shape))
    x = torch.randint(0, 256, (2, 13))
    with torch.no_grad():
        assert (repeat(x).logits - expand(x).logits).abs().max().item() < 1e-5


def test_sigmoid_gate_and_silu_conv_options():
    student = convert_teacher(make_teacher("qwen2"), "0", kda_gate_activation="sigmoid", kda_conv_activation="silu")
    kda = student.model.layers[1].linear_attn
    assert kda.o_norm.activation == "sigmoid" and kda.conv_activation == "silu"
    gate = torch.sigmoid(kda.g_proj(torch.randn(2, 64)))
    assert torch.allclose(gate, torch.full_like(gate, 0.99), atol=1e-4)
    with torch.no_grad():
        assert torch.isfinite(student(torch.randint(0, 256, (1, 8))).logits).all()


def test_unsupported_teacher_is_refused_with_the_supported_list():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(UnsupportedModelError, match=r"'gpt2' is not supported.*qwen3.*llama.*qwen2"):
        convert_teacher(gpt2, "0")


@pytest.mark.parametrize("spec, expected", [
    ("0,2,6", [0, 2, 6]),
    ("6, 2,0", [0, 2, 6]),
    ("-1", [27]),
    ("every:4", [3, 7, 11, 15, 19, 23, 27]),
    ("ratio:0.25", [3, 7, 11, 15, 19, 23, 27]),
    ("0.25", [3, 7, 11, 15, 19, 23, 27]),
    ("none", []),
    ("all", list(range(28))),
    ([21, 0], [0, 21]),
])
def test_layer_specs(spec, expected):
    assert parse_attention_layers(spec, 28) == expected


@pytest.mark.parametrize("spec, message", [
    ("0,28", r"attention layer 28 .* out of range: the teacher has 28 layers \(0\.\.27\)"),
    ("1,1,3", r"\[1\] appear more than once"),
    ("0,two", r"cannot parse --attention-layers '0,two'"),
    ("every:0", r"interval must be >= 1"),
    ("ratio:1.5", r"ratio must be between 0 and 1"),
    ("", r"empty --attention-layers"),
    ("missing.json", r"missing.json does not exist"),
])
def test_bad_layer_specs(spec, message):
    with pytest.raises(LayerSpecError, match=message):
        parse_attention_layers(spec, 28)


def test_layer_spec_from_selection_json(tmp_path):
    f = tmp_path / "layers.json"
    f.write_text(json.dumps({"method": "beam_add", "attention_layers": [21, 0, 13]}))
    assert parse_attention_layers(str(f), 28) == [0, 13, 21]
    f.write_text("[0, 40]")
    with pytest.raises(LayerSpecError, match="out of range"):
        parse_attention_layers(str(f), 28)
    f.write_text("{not json")
    with pytest.raises(LayerSpecError, match="not valid JSON"):
        parse_attention_layers(str(f), 28)


def test_a_bare_word_is_never_read_as_a_layer_file(tmp_path, monkeypatch):
    """A stray file named ``1`` or ``all`` in the working folder (a ``2>1`` typo makes one) does not change what
    ``--attention-layers 1`` or ``all`` means; a path with a folder part or a .json name is still a file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "1").write_text("oops")
    (tmp_path / "all").write_text("[0]")
    assert parse_attention_layers("1", 4) == [1]
    assert parse_attention_layers("all", 4) == [0, 1, 2, 3]
    assert parse_attention_layers("./all", 4) == [0]
    run = tmp_path / "select-run"  # a select-layers run folder: its layers.json
    run.mkdir()
    (run / "layers.json").write_text(json.dumps({"attention_layers": [3, 1]}))
    assert parse_attention_layers(str(run), 4) == [1, 3]
    with pytest.raises(LayerSpecError, match="'1/4' is not a float"):
        parse_attention_layers("ratio:1/4", 4)


@pytest.mark.parametrize("layers", [7, 12, 30, 99])
def test_the_smallest_ratio_the_error_suggests_is_accepted(layers):
    with pytest.raises(LayerSpecError, match=r"at least ([0-9.e-]+)") as err:
        parse_attention_layers(f"ratio:{0.4 / layers}", layers)
    suggested = re.search(r"at least ([0-9.e-]+)", str(err.value)).group(1)
    assert len(parse_attention_layers(f"ratio:{suggested}", layers)) == 1


@pytest.mark.parametrize("layers", [[1.9], [True], [0, False]])
def test_layer_indices_that_are_not_integers_are_refused_not_truncated(layers, tmp_path):
    with pytest.raises(LayerSpecError, match="must be integers"):
        parse_attention_layers(layers, 12)
    f = tmp_path / "layers.json"
    f.write_text(json.dumps(layers))
    with pytest.raises(LayerSpecError, match="must be integers"):
        parse_attention_layers(str(f), 12)


def test_paper_layout_on_a_qwen3_0_6b_shaped_config_has_the_paper_cache_arithmetic():
    """Qwen3-0.6B shape (config only, no weights): 112 KiB/token KV for the teacher, 28 KiB for 7 kept layers."""
    from transformers import Qwen3Config

    from gendistill.convert import student_config_from_teacher
    from gendistill.convert.summary import kv_bytes_per_token

    teacher_cfg = Qwen3Config(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                              num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True)
    cfg = student_config_from_teacher(teacher_cfg, "0,2,6,11,13,18,21")
    assert cfg.layer_spec().startswith("attention:0,2,6,11,13,18,21;kda:1,3,4,5")
    assert kv_bytes_per_token(teacher_cfg, 28) == 112 * 1024
    assert kv_bytes_per_token(cfg, len(cfg.attention_layers)) == 28 * 1024
    # fixed fp32 KDA state of the 21 converted layers, as the mixer reports it: 21 MiB (paper: "about 21 MiB")
    from gendistill.layers.kda import KimiDeltaAttention

    with torch.device("meta"):  # shapes only, no memory
        kda = KimiDeltaAttention(cfg, cfg.linear_layers[0])
    assert len(cfg.linear_layers) == 21
    assert len(cfg.linear_layers) * kda.state_bytes()["recurrent"] == 21 * 1024 * 1024
    assert math.isclose(cfg.kda_num_heads * cfg.kda_head_dim, 2048)


def test_bounded_gate_student_starts_from_the_exact_students_decays():
    """Same teacher, same seed: the bounded student's A_log is 0 and its gate at f = 0 equals the exact student's
    initial decay channel for channel (|g0| <= 1.6 < 5); on real inputs (f small at init) the two gates stay close."""
    from gendistill.ops.kda import kda_gate

    teacher = make_teacher("qwen3")
    torch.manual_seed(3)
    exact = convert_teacher(teacher, "0")
    torch.manual_seed(3)
    bounded = convert_teacher(teacher, "0", kda_gate_lower_bound=-5.0)
    assert bounded.config.kda_gate_lower_bound == -5.0 and exact.config.kda_gate_lower_bound is None
    x = torch.randn(2, 11, 64)
    for le, lb in zip(exact.model.layers[1:], bounded.model.layers[1:]):
        e, b = le.linear_attn, lb.linear_attn
        assert torch.equal(b.A_log, torch.zeros_like(b.A_log)) and b.A_log.dtype == b.dt_bias.dtype == torch.float32
        H, K = e.num_heads, e.head_dim
        zero = torch.zeros(1, 1, H, K)
        assert torch.allclose(kda_gate(zero, b.A_log, b.dt_bias, lower_bound=-5.0), kda_gate(zero, e.A_log, e.dt_bias),
                              rtol=1e-5, atol=1e-7)
        with torch.no_grad():
            f = e.f_proj(x).view(2, 11, H, K)
            assert torch.equal(f, b.f_proj(x).view(2, 11, H, K))  # same draws for everything else
            ge, gb = kda_gate(f, e.A_log, e.dt_bias), kda_gate(f, b.A_log, b.dt_bias, lower_bound=-5.0)
        # different functions of f, equal at f = 0; at init |f| < 0.1 and they differ by <= 0.6 % (measured)
        assert ((gb - ge).abs() / ge.abs()).max().item() < 0.02
        assert (gb >= -5.0).all() and (gb < 0).all()


@pytest.mark.parametrize("options", [{"linear_attention_type": m} for m in LINEAR_MIXERS]
                         + [{"kda_gate_lower_bound": -5.0}], ids=[*LINEAR_MIXERS, "kda-bounded"])
def test_bf16_teacher_gives_the_fp32_teachers_student_with_float32_decay_parameters(options):
    """Same teacher and seed in float32 and in bfloat16 (the default on CUDA): the mixers' fp32 parameters (A_log,
    dt_bias, GLA's gk_bias, Mamba2's D) are bit-identical float32 in both students, and every other weight of the
    bf16 student is the fp32 student's rounded to bf16 (nothing else about the student depends on the dtype)."""
    teacher = make_teacher("qwen3")
    students = {}
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(5)
        students[dtype] = convert_teacher(copy.deepcopy(teacher).to(dtype), "0,2", **options)
    exact, rounded = students[torch.float32], students[torch.bfloat16]
    kept = set(exact.recurrence_parameters())
    assert kept and kept == set(rounded.recurrence_parameters())
    assert {k.rsplit(".", 1)[1] for k in kept} == set(LINEAR_MIXERS[exact.config.linear_attention_type].fp32_parameters)
    for name, p in rounded.state_dict().items():
        if name in kept:
            assert p.dtype == torch.float32 and torch.equal(p, exact.get_parameter(name)), name
        else:
            assert p.dtype == torch.bfloat16 and torch.equal(p, exact.state_dict()[name].to(torch.bfloat16)), name


@pytest.mark.parametrize("value", [0.0, 0.5, -5.5, float("nan"), True, "x"])
def test_gate_lower_bound_outside_fla_safe_range_is_one_clear_error(value):
    from gendistill.errors import GendistillError
    from gendistill.models.hybrid import HybridConfig

    with pytest.raises(ValueError, match=r"^kda_gate_lower_bound must be a number in fla's safe range \[-5, 0\)"):
        HybridConfig(base_model_type="llama", num_hidden_layers=2, kda_gate_lower_bound=value)
    with pytest.raises(GendistillError, match=r"^kda_gate_lower_bound must be .*got") as e:
        convert_teacher(make_teacher("llama"), "0", kda_gate_lower_bound=value)
    assert "\n" not in str(e.value)


def test_gate_lower_bound_is_refused_for_other_mixers():
    from gendistill.errors import GendistillError

    with pytest.raises(GendistillError, match=r"^kda_gate_lower_bound bounds the KDA decay gate; the 'gla' mixer"):
        convert_teacher(make_teacher("llama"), "0", linear_attention_type="gla", kda_gate_lower_bound=-5.0)
