"""The memory planner (``gendistill distill RECIPE --plan``): its parameter counts are those of the real models, its
per-stage trainable counts those of the trainer's own selection, the CLI prints it, and docs/distill.md holds the
Qwen3 table it generates. (The sharded terms are checked against a real 2-rank FSDP2 run in test_distill_fsdp.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gendistill.cli import app

ROOT = Path(__file__).resolve().parents[2]


def test_meta_models_count_what_the_real_models_hold(teacher, tok):
    from test_distill_trainer import make_recipe

    from gendistill.convert import convert_teacher
    from gendistill.distill.memory import GIB, meta_models, plan_models
    from gendistill.distill.pipeline import describe_plan

    recipe = make_recipe(Path("/nonexistent"), ["stage1", "stage3a"], steps=1)
    student = convert_teacher(teacher, [0, 2]).float()
    m_teacher, m_student = meta_models(teacher.config, student.config)
    assert sum(p.numel() for p in m_student.parameters()) == sum(p.numel() for p in student.parameters())
    plans = plan_models(recipe.stages, m_teacher, m_student, gpus=1, gpu_bytes=80 * GIB, modes=("ddp",),
                        teacher_bytes_per_param=4)
    real = describe_plan(recipe, student, 1)
    for p, r in zip(plans, real):
        assert p.stage == r["stage"]
        assert p.params == 4 * sum(x.numel() for x in student.parameters())
        assert p.optimizer == 8 * r["trainable_params"]  # AdamW: two fp32 moments per trainable parameter
        assert p.grads == 4 * r["trainable_params"]
        assert p.teacher == sum(x.numel() * x.element_size() for x in teacher.parameters())
        assert p.activations > 0 and p.fits


def test_cli_plan_prints_both_modes_and_refuses_a_missing_card_size(tmp_path, teacher, tok):
    from test_distill_cli import _recipe

    recipe = _recipe(tmp_path, teacher, tok)
    r = CliRunner().invoke(app, ["distill", recipe, "--plan", "--gpus", "8", "--gpu-memory", "80GB"])
    assert r.exit_code == 0, r.output
    assert "8 GPU(s) of 80 GiB" in r.output and "ddp*" in r.output and "fsdp" in r.output
    assert not (tmp_path / "run").exists()  # --plan trains and writes nothing
    r = CliRunner().invoke(app, ["distill", recipe, "--plan", "--gpu-memory", "lots"])
    assert r.exit_code == 2 and "--gpu-memory" in r.output
    r = CliRunner().invoke(app, ["distill", recipe, "--gpus", "2"])
    assert r.exit_code == 2 and "only apply with --plan" in r.output


def test_fsdp_needs_less_per_gpu_than_ddp_and_shrinks_with_gpus():
    from gendistill.distill.recipe_files import load_recipe
    from gendistill.distill.memory import GIB, meta_models, plan_models, qwen3_config
    from gendistill.convert.convert import student_config_from_teacher

    stage = load_recipe("qwen3-0.6b-paper", []).stages[2]
    cfg = qwen3_config("Qwen3-8B")
    teacher, student = meta_models(cfg, student_config_from_teacher(cfg, "every:4"))
    one = plan_models([stage], teacher, student, 1, 80 * GIB, ("ddp",))[0]
    two, eight = (plan_models([stage], teacher, student, n, 80 * GIB, ("fsdp",))[0] for n in (2, 8))
    assert one.total > two.total > eight.total
    assert eight.optimizer * 8 == pytest.approx(one.optimizer, rel=1e-6)
    assert not one.fits and eight.fits  # the point: 8B needs sharding, 8 x 80 GB is enough


def test_docs_hold_the_generated_qwen3_table():
    from gendistill.distill.recipe_files import load_recipe
    from gendistill.distill.memory import qwen3_table

    stage = load_recipe("qwen3-0.6b-paper", []).stages[2]
    table = qwen3_table(stage)
    assert table in (ROOT / "docs" / "distill.md").read_text(), (
        "docs/distill.md: regenerate the planner table with python -m gendistill.distill.memory\n" + table)
