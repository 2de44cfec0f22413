"""Item 3 of issue 11: a diverged run never writes a checkpoint with non-finite state, names the truly last good
one, and the documented recovery (lower the learning rate, --resume --allow-optim-change) works."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from gendistill.distill.checkpoint import list_checkpoints
from tests.reliability.conftest import assert_one_line_error, cli, write_recipe


@pytest.mark.parametrize("lr", [".inf", ".nan", "-1e-3", "0"])
def test_a_non_finite_or_non_positive_learning_rate_is_refused_at_validation(tmp_path, teacher_dir, data_dir, lr):
    recipe = write_recipe(tmp_path / "r.yaml", teacher_dir, data_dir, tmp_path / "run")
    res = cli("distill", recipe, "--set", f"stages[1].optim.lr={lr}")
    assert_one_line_error(res, "stages[1].optim.lr")
    assert not (tmp_path / "run").exists()


def test_divergence_names_the_last_finite_checkpoint_and_lowering_the_lr_recovers(
        tmp_path, monkeypatch, teacher_dir, data_dir):
    recipe = write_recipe(tmp_path / "r.yaml", teacher_dir, data_dir, tmp_path / "run",
                          **{"stages.1.checkpoint_every": 1, "stages.1.optim": {"lr": 1.0, "schedule": "constant"}})
    orig, calls = torch.optim.AdamW.step, []

    def overflowing_step(self, *a, **k):  # the 5th step (stage3a step 3) overflows one weight, loss still finite
        out = orig(self, *a, **k)
        calls.append(1)
        if len(calls) == 5:
            p = next(p for g in self.param_groups for p in g["params"] if self.state.get(p))
            p.data.view(-1)[0] = float("inf")
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", overflowing_step)
    res = cli("distill", recipe)
    line = assert_one_line_error(res, "stage3a step 3", "not finite", "last good checkpoint:", "step-00000002",
                                 "--allow-optim-change")
    stage_dir = tmp_path / "run" / "checkpoints" / "stage3a"
    assert [s for s, _ in list_checkpoints(stage_dir)] == [1, 2]  # nothing written for the bad step
    good = stage_dir / "step-00000002"
    assert str(good) in line
    for name in ("model.safetensors", "optimizer.safetensors"):
        assert all(bool(torch.isfinite(t).all()) for t in load_file(str(good / name)).values()), name
    monkeypatch.setattr(torch.optim.AdamW, "step", orig)

    # the recovery the message gives: a lower learning rate, --resume; the changed setting must be allowed explicitly
    res = cli("distill", recipe, "--resume", "--set", "stages[1].optim.lr=1e-3")
    assert_one_line_error(res, "optimisation settings changed", "optim.lr: 1.0 -> 0.001", "--allow-optim-change")
    res = cli("distill", recipe, "--resume", "--allow-optim-change", "--set", "stages[1].optim.lr=1e-3")
    assert res.code == 0, res.stderr
    assert "optim.lr: 1.0 -> 0.001" in res.stderr
    events = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("--allow-optim-change" in e.get("event", "") for e in events)  # the override is in the run's log
    final = load_file(str(tmp_path / "run" / "stage3a" / "model.safetensors"))
    assert all(bool(torch.isfinite(t).all()) for t in final.values())
    steps = [e["step"] for e in events if e.get("stage") == "stage3a" and "loss" in e]
    assert steps == list(range(1, 7)) and all(math.isfinite(e["loss"]) for e in events if "loss" in e)


def test_first_non_finite_names_parameters_and_optimizer_state():
    from gendistill.distill.checkpoint import first_non_finite

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    assert first_non_finite(model, opt) is None
    opt.state[model[1].weight]["exp_avg_sq"][0, 0] = float("inf")
    assert first_non_finite(model, opt) == "optimizer state exp_avg_sq of 1.weight"
    model[0].bias.data[1] = float("nan")
    assert first_non_finite(model, opt) == "0.bias"
