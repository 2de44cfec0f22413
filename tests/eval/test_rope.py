"""--rope-scaling: the rebuilt rotary embedding is exactly what transformers builds from the same rope_parameters;
only attention layers see it (a hybrid's KDA layers are untouched); bad specs fail with one line."""

from __future__ import annotations

import pytest
import torch

from gendistill.errors import ConfigError
from gendistill.eval.rope import RopeScaling, apply_rope_scaling, parse_rope_scaling
from tests.fixtures_teachers import tiny_model

VOCAB = 300


@pytest.mark.parametrize("kind", ["yarn", "linear", "dynamic"])
def test_scaled_model_equals_transformers_built_with_the_same_rope_parameters(kind):
    model = tiny_model("llama", VOCAB, seed=0, max_position_embeddings=64)
    x = torch.randint(3, VOCAB, (1, 200))  # past the trained length, where the scalings differ
    with torch.no_grad():
        before = model(x).logits
    info = apply_rope_scaling(model, RopeScaling(kind, 4.0))
    assert info["trained_length"] == 64 and info["rotary_modules"] == 1
    params = {"rope_type": kind, "factor": 4.0, "rope_theta": model.config.rope_parameters["rope_theta"]}
    if kind == "yarn":
        params["original_max_position_embeddings"] = 64
    ref = tiny_model("llama", VOCAB, seed=0, max_position_embeddings=64 if kind == "dynamic" else 256,
                     rope_parameters=params)
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        after, expected = model(x).logits, ref(x).logits
    torch.testing.assert_close(after, expected, rtol=0, atol=0)  # same modules, same config: bit-identical
    assert not torch.allclose(before, after)
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, ref.model.rotary_emb.inv_freq, rtol=0, atol=0)


def test_hybrid_student_scales_only_its_attention_positions():
    from gendistill.convert.convert import convert_teacher

    x = torch.randint(3, VOCAB, (1, 160))
    changed = {}
    for attention in ([0], []):  # layer 0 attention + layer 1 KDA; all KDA
        student = convert_teacher(tiny_model("llama", VOCAB, seed=0, max_position_embeddings=64), attention)
        with torch.no_grad():
            before = student(x).logits
        apply_rope_scaling(student, RopeScaling("yarn", 2.0))
        assert student.config.rope_parameters["rope_type"] == "yarn"
        assert student.config.max_position_embeddings == 128
        with torch.no_grad():
            changed[tuple(attention)] = not torch.equal(before, student(x).logits)
        with pytest.raises(ConfigError, match="already scaled"):
            apply_rope_scaling(student, RopeScaling("yarn", 2.0))
    assert changed == {(0,): True, (): False}  # KDA layers have no positions: an all-KDA student is unchanged


def test_parse_rope_scaling():
    assert parse_rope_scaling("yarn:4") == RopeScaling("yarn", 4.0)
    assert parse_rope_scaling("Linear:2.5") == RopeScaling("linear", 2.5)
    assert parse_rope_scaling(None) is None and parse_rope_scaling("none") is None
    for bad, match in (("ntk:4", "type must be one of"), ("yarn", "give the factor"), ("yarn:0.5", "must be > 1")):
        with pytest.raises(ConfigError, match=match):
            parse_rope_scaling(bad)


def test_lm_eval_model_args_take_rope_scaling(tmp_path):
    pytest.importorskip("lm_eval")
    from gendistill.eval.harness import gendistill_lm_class
    from tests.fixtures_teachers import make_tiny_folder

    make_tiny_folder(tmp_path / "m", "llama", max_position_embeddings=64)
    lm = gendistill_lm_class()(pretrained=str(tmp_path / "m"), device="cpu", batch_size=1, rope_scaling="yarn:4")
    assert lm.model.config.rope_parameters["rope_type"] == "yarn"
    assert lm.model.config.max_position_embeddings == 256 and lm.max_length == 256


@pytest.mark.parametrize("kind", ["yarn", "linear", "dynamic"])
def test_log_likelihood_scores_the_scaled_length_under_every_scaling(kind):
    """Log-likelihood left-truncates its inputs at the model's nominal length: after ``--rope-scaling KIND:4`` that
    is four times the trained length for every kind (dynamic NTK keeps max_position_embeddings at the trained length,
    so it is read from the scaling), as generation reads the whole prompt."""
    from gendistill.eval.loglik import model_max_length

    model = tiny_model("llama", VOCAB, seed=0, max_position_embeddings=64)
    assert model_max_length(model) == 64
    apply_rope_scaling(model, RopeScaling(kind, 4.0))
    assert model_max_length(model) == 256
