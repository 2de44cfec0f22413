"""Every recipe key is explained from the schema: each field has a description, `gendistill distill --help-recipe`
prints every key, docs/recipe.md is what the committed command generates; the loss kinds a recipe accepts are the
registered losses; the stage defaults a recipe gets are the stage table's."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gendistill.cli import app
from gendistill.distill import recipe_help
from gendistill.distill.config import LossConfig, parse_recipe
from gendistill.distill.losses import HIDDEN_LOSSES, LOGIT_LOSSES
from gendistill.distill.stage_facts import STAGES
from gendistill.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_every_recipe_key_has_a_description():
    keys = recipe_help.recipe_keys()
    assert len(keys) > 60
    missing = [k.key for k in keys if not k.description.strip()]
    assert missing == []
    for key in ("teacher.spec", "stages[].optim.lr", "stages[].loss.kind", "stages[].trainable.groups",
                "data.sources[].format", "stages[].data.sources[].path", "run.compile"):
        assert key in {k.key for k in keys}, key


def test_help_recipe_prints_every_key_without_a_recipe():
    r = CliRunner().invoke(app, ["distill", "--help-recipe"])
    assert r.exit_code == 0, r.output
    for k in recipe_help.recipe_keys():
        assert f"\n{k.key}  [" in r.output, k.key
    assert "optimizer steps" in r.output and "required" in r.output


def test_docs_recipe_page_is_up_to_date():
    page = (ROOT / "docs" / "recipe.md").read_text(encoding="utf-8")
    assert page == recipe_help.markdown(), ("docs/recipe.md is out of date: "
                                            "python -m gendistill.distill.recipe_help --markdown > docs/recipe.md")


def test_loss_kinds_are_the_registered_losses():
    kinds = typing.get_args(LossConfig.model_fields["kind"].annotation)
    assert list(kinds) == [*LOGIT_LOSSES, *HIDDEN_LOSSES]
    with pytest.raises(ValueError, match="'forward_kl', 'reverse_kl', 'jsd', 'topk_kl', 'mse', 'l2' or 'cosine'"):
        LossConfig(kind="kl")


def _recipe(**stage):
    base = {"name": "stage3a", "steps": 2, "seq_len": 16, "batch_size": 4, "micro_batch_size": 2,
            "optim": {"lr": 1e-3}, **stage}
    return {"teacher": {"spec": "t"}, "student": {"attention_layers": [0]},
            "data": {"sources": [{"path": "x.jsonl", "format": "chat"}]}, "stages": [base],
            "run": {"output_dir": "runs/x"}}


@pytest.mark.parametrize("name", list(STAGES))
def test_stage_defaults_come_from_the_stage_table(name):
    st = parse_recipe(_recipe(name=name)).stages[0]
    facts = STAGES[name]
    assert st.loss.kind == facts.loss and st.masking == facts.masking
    assert tuple(st.trainable.groups) == facts.trainable
    other = "forward_kl" if facts.hidden_state else "mse"
    with pytest.raises(ConfigError, match="logit loss" if facts.hidden_state else "hidden-state loss"):
        parse_recipe(_recipe(name=name, loss={"kind": other}))


def test_the_batch_rule_is_one_rule_with_one_message():
    """micro_batch_size must divide batch_size (and micro_batch_size x ranks): the recipe, select-layers and the
    batch stream say it the same way."""
    from gendistill.distill.data.streaming import BatchStream
    from gendistill.select.config import SelectConfig

    with pytest.raises(ConfigError, match="batch_size 6 is not a multiple of micro_batch_size 4"):
        parse_recipe(_recipe(batch_size=6, micro_batch_size=4))
    with pytest.raises(ConfigError, match="micro_batch_size is larger than batch_size"):
        parse_recipe(_recipe(batch_size=2, micro_batch_size=4))
    with pytest.raises(ValueError, match="batch_size 6 is not a multiple of micro_batch_size 4"):
        SelectConfig(teacher="t", method="uniform", budget=1, output_dir="o", batch_size=6, micro_batch_size=4)
    with pytest.raises(ValueError, match="batch_size 4 is not a multiple of micro_batch_size 2 x world size 3"):
        BatchStream(None, 4, 2, 0, 3)  # type: ignore[arg-type]
    st = parse_recipe(_recipe(batch_size=8, micro_batch_size=2)).stages[0]
    assert st.grad_accum_for(1) == 4 and st.grad_accum_for(2) == 2
    with pytest.raises(ConfigError, match="stage stage3a: batch_size 8 is not a multiple of micro_batch_size 2 x "
                                          "world size 3"):
        st.grad_accum_for(3)
