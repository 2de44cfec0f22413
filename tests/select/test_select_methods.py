"""Each method must find the layers that matter in a teacher built so that only some layers' attention does
anything (tests/select/_synthetic.py): replacing any other layer by KDA costs nothing. The important layers differ
per test and differ from the uniform choice, so a method that ignored the model could not pass."""

from __future__ import annotations

import json

import pytest

from gendistill.convert.layer_spec import parse_attention_layers
from gendistill.select import select_layers
from gendistill.select.methods import plan
from tests.select._synthetic import NUM_LAYERS, synthetic_teacher


def _run(make_cfg, tok, method, important, budget=2, **kw):
    teacher = synthetic_teacher(tok, recall_layers=important)
    res = select_layers(make_cfg(method, budget, **kw), teacher=teacher, tokenizer=tok, progress="none")
    return res, teacher


def test_uniform_is_evenly_spaced_and_model_blind(make_cfg, tok):
    res, _ = _run(make_cfg, tok, "uniform", important=(0, 1))
    assert res["attention_layers"] == [2, 5]  # every:3
    assert res["scores"]["rule"] == "every:3"
    assert res["ranked"][:2] == [2, 5] and sorted(res["ranked"]) == list(range(NUM_LAYERS))
    assert res["cost"]["train_tokens"] == 0 and res["cost"]["candidates_scored"] == 0
    res, _ = _run(make_cfg, tok, "uniform", important=(0, 1), budget=4, out="u4")
    assert res["attention_layers"] == [0, 2, 3, 5] and res["scores"]["rule"].startswith("ratio:")  # every:1 is 6


def test_kl_guided_ranks_the_important_layers_first(make_cfg, tok):
    res, _ = _run(make_cfg, tok, "kl-guided", important=(1, 4))
    assert set(res["ranked"][:2]) == {1, 4}
    assert res["attention_layers"] == [1, 4]
    imp = {int(i): v["kl_improvement"] for i, v in res["scores"]["per_layer"].items()}
    # restoring an important layer removes a large share of the all-KDA student's KL; the others do not help
    assert min(imp[1], imp[4]) > 0.2 * res["scores"]["all_kda_heldout_kl"]
    assert max(v for i, v in imp.items() if i not in (1, 4)) < 0.2 * min(imp[1], imp[4])
    assert res["cost"]["candidates_scored"] == NUM_LAYERS + 1
    assert res["cost"]["train_tokens"] == plan(make_cfg("kl-guided"), NUM_LAYERS)["train_tokens"] > 0  # as planned


def test_greedy_learned_gates_keep_the_important_layers(make_cfg, tok):
    res, _ = _run(make_cfg, tok, "greedy-learned", important=(0, 3))
    assert res["attention_layers"] == [0, 3]
    alpha = {int(i): a for i, a in res["scores"]["alpha"].items()}
    # the sparsity pressure closed every gate whose attention did nothing, the KL kept the others open
    assert min(alpha[0], alpha[3]) > 0.5 > max(a for i, a in alpha.items() if i not in (0, 3))


def test_beam_add_grows_the_important_set(make_cfg, tok):
    # candidates scored as converted (candidate_steps=0); the brief distillation is exercised by the kl-guided test
    res, _ = _run(make_cfg, tok, "beam-add", important=(1, 3), candidate_steps=0)
    assert res["attention_layers"] == [1, 3]
    assert set(res["ranked"][:2]) == {1, 3}
    rounds = res["scores"]["beams_per_size"]
    assert [len(r) for r in rounds] == [2, 2]  # beam width 2 at each size
    assert {b["attention_layers"][0] for b in rounds[0]} == {1, 3}  # the best singletons are the important layers
    # 6 singletons, then the 2 beams' extensions without the duplicate {1, 3}: 5 + 5 - 1
    assert res["cost"]["candidates_scored"] == 6 + 9
    assert plan(make_cfg("beam-add"), NUM_LAYERS)["candidate_sets"] == 6 + 10  # the plan's bound counts {1, 3} twice


def test_layers_json_is_what_convert_and_recipes_accept(make_cfg, tok, tmp_path):
    from gendistill.convert import convert_teacher
    from gendistill.distill.config import StudentConfig

    res, teacher = _run(make_cfg, tok, "kl-guided", important=(2, 5), budget=2, candidate_steps=0, align_steps=0)
    path = tmp_path / "kl-guided" / "layers.json"
    data = json.loads(path.read_text())
    assert data["attention_layers"] == res["attention_layers"] == [2, 5]
    assert parse_attention_layers(str(path), NUM_LAYERS) == [2, 5]
    StudentConfig(attention_layers=str(path))  # a recipe's student.attention_layers takes the file
    student = convert_teacher(teacher, str(path))
    assert [i for i, layer in enumerate(student.model.layers) if hasattr(layer, "self_attn")] == [2, 5]


def test_budget_larger_than_the_teacher_is_one_clear_error(make_cfg, tok):
    from gendistill.errors import ConfigError

    with pytest.raises(ConfigError, match="--budget 7: the teacher has only 6 layers"):
        _run(make_cfg, tok, "uniform", important=(0,), budget=7)
