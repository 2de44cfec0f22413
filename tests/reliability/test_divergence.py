"""Item 3 of issue 11 and "last good checkpoint" of issue 31: a diverged run never writes a checkpoint with non-finite
state; the checkpoint it names is one whose weights gave a sane loss (finite weights of 1e30 do not count: the
loss of the step after a checkpoint is computed with exactly its weights); newer checkpoints already diverging are
renamed aside so that --resume skips them; and the documented recovery (lower the learning rate, --resume
--allow-optim-change) works."""

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
                          **{"stages.1.checkpoint_every": 1, "stages.1.optim": {"lr": 1e-3, "schedule": "constant"}})
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
    res = cli("distill", recipe, "--resume", "--set", "stages[1].optim.lr=1e-4")
    assert_one_line_error(res, "optimisation settings changed", "optim.lr: 0.001 -> 0.0001", "--allow-optim-change")
    res = cli("distill", recipe, "--resume", "--allow-optim-change", "--set", "stages[1].optim.lr=1e-4")
    assert res.code == 0, res.stderr
    assert "optim.lr: 0.001 -> 0.0001" in res.stderr
    events = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("--allow-optim-change" in e.get("event", "") for e in events)  # the override is in the run's log
    final = load_file(str(tmp_path / "run" / "stage3a" / "model.safetensors"))
    assert all(bool(torch.isfinite(t).all()) for t in final.values())
    steps = [e["step"] for e in events if e.get("stage") == "stage3a" and "loss" in e]
    assert steps == list(range(1, 7)) and all(math.isfinite(e["loss"]) for e in events if "loss" in e)


def _poisoning_step(at: int, value: float):
    """AdamW.step that, at its ``at``-th call, sets one trained weight to ``value`` after the update (the loss of
    that step was finite)."""
    orig, calls = torch.optim.AdamW.step, []

    def step(self, *a, **k):
        out = orig(self, *a, **k)
        calls.append(1)
        if len(calls) == at:
            p = next(p for g in self.param_groups for p in g["params"] if self.state.get(p))
            p.data.view(-1)[0] = value
        return out

    return step


def _spiking_step(at: int, factor: float):
    """AdamW.step whose ``at``-th call uses ``factor`` times the learning rate: the update leaves enormous but finite
    weights, as a loss spike under a too-high learning rate does."""
    orig, calls = torch.optim.AdamW.step, []

    def step(self, *a, **k):
        calls.append(1)
        if len(calls) != at:
            return orig(self, *a, **k)
        lrs = [g["lr"] for g in self.param_groups]
        for g in self.param_groups:
            g["lr"] *= factor
        try:
            return orig(self, *a, **k)
        finally:
            for g, lr in zip(self.param_groups, lrs):
                g["lr"] = lr

    return step


def test_a_finite_but_diverged_checkpoint_is_not_named_and_the_advice_avoids_the_same_nan(
        tmp_path, monkeypatch, teacher_dir, data_dir):
    """A learning-rate spike at stage3a step 3 leaves weights of about 1e20: finite, so checkpoint 3 is written;
    step 4's loss, computed with exactly those weights, is not finite. Resuming from checkpoint 3 -- whatever the
    learning rate -- would repeat that loss: it is renamed aside and checkpoint 2 is named."""
    recipe = write_recipe(tmp_path / "r.yaml", teacher_dir, data_dir, tmp_path / "run",
                          **{"stages.1.checkpoint_every": 1, "stages.1.optim": {"lr": 1e-3, "schedule": "constant"}})
    monkeypatch.setattr(torch.optim.AdamW, "step", _spiking_step(5, 1e23))  # 5th step = stage3a step 3
    stage_dir = tmp_path / "run" / "checkpoints" / "stage3a"
    line = assert_one_line_error(cli("distill", recipe), "stage3a step 4", "stopped before the optimizer",
                                 "diverged-step", "step-00000003 (its weights gave a non-finite loss or gradient at "
                                 "step 4)", f"last good checkpoint: {stage_dir / 'step-00000002'}",
                                 "--allow-optim-change")
    assert "last good checkpoint: " + str(stage_dir / "step-00000003") not in line
    assert [s for s, _ in list_checkpoints(stage_dir)] == [2]  # keep_checkpoints: 2 pruned step 1 at step 3
    spiked = load_file(str(stage_dir / "diverged-step-00000003" / "model.safetensors"))  # kept, not deleted
    assert all(bool(torch.isfinite(t).all()) for t in spiked.values())  # finite: the old advice named it
    assert max(float(t.abs().max()) for t in spiked.values()) > 1e15
    monkeypatch.undo()

    res = cli("distill", recipe, "--resume", "--allow-optim-change", "--set", "stages[1].optim.lr=1e-4")
    assert res.code == 0, res.stderr
    events = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(f"resuming from {stage_dir / 'step-00000002'}" in e.get("event", "") for e in events)
    steps = [e["step"] for e in events if e.get("stage") == "stage3a" and "loss" in e]
    assert steps == list(range(1, 7)) and all(math.isfinite(e["loss"]) for e in events if "loss" in e)
    final = load_file(str(tmp_path / "run" / "stage3a" / "model.safetensors"))
    assert all(bool(torch.isfinite(t).all()) and float(t.abs().max()) < 1e6 for t in final.values())


def test_when_every_kept_checkpoint_is_diverging_the_advice_restarts_the_stage(
        tmp_path, monkeypatch, teacher_dir, data_dir):
    """A learning rate of 1.0 wrecks the model at stage3a's first step (loss 0.02 -> 12): checkpoints 1 and 2 are
    finite but their weights' losses are far above where the stage started, so none is named; --resume with a lower
    learning rate starts the stage over from stage1's student."""
    recipe = write_recipe(tmp_path / "r.yaml", teacher_dir, data_dir, tmp_path / "run",
                          **{"stages.1.checkpoint_every": 1, "stages.1.optim": {"lr": 1.0, "schedule": "constant"}})
    monkeypatch.setattr(torch.optim.AdamW, "step", _poisoning_step(5, float("inf")))
    line = assert_one_line_error(cli("distill", recipe), "stage3a step 3", "no kept checkpoint of stage3a comes before "
                                 "the divergence", "the stage started at", "--resume (the stage starts over")
    assert "last good checkpoint" not in line
    assert list_checkpoints(tmp_path / "run" / "checkpoints" / "stage3a") == []
    monkeypatch.undo()
    res = cli("distill", recipe, "--resume", "--set", "stages[1].optim.lr=1e-3")
    assert res.code == 0, res.stderr
    events = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e.get("stage") == "stage3a" and "loss" in e] == list(range(1, 7))
    assert all(e["loss"] < 1 for e in events if e.get("stage") == "stage3a" and "loss" in e)


def test_first_non_finite_names_parameters_and_optimizer_state():
    from gendistill.distill.divergence import first_non_finite

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    assert first_non_finite(model, opt) is None
    opt.state[model[1].weight]["exp_avg_sq"][0, 0] = float("inf")
    assert first_non_finite(model, opt) == "optimizer state exp_avg_sq of 1.weight"
    model[0].bias.data[1] = float("nan")
    assert first_non_finite(model, opt) == "0.bias"


def test_a_checkpoint_is_judged_only_by_a_loss_its_own_weights_gave(tmp_path):
    """With ``log_every`` > 1 the loss logged after a checkpoint may come several steps later, from weights trained
    further: a blow-up there says nothing about the checkpoint, which keeps its name and is advised. A loss logged at
    the very next step (computed with exactly its weights) still condemns it."""
    from gendistill.distill.checkpoint import write_manifest
    from gendistill.distill.divergence import recovery_hint

    def run(records):
        root = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        stage = root / "checkpoints" / "stage3a"
        for s in (10, 20):
            d = stage / f"step-{s:08d}"
            d.mkdir(parents=True)
            (d / "state.json").write_text(json.dumps({"step": s}))
            write_manifest(d)
        (root / "metrics.jsonl").write_text("".join(json.dumps({"stage": "stage3a", **r}) + "\n" for r in records))
        return stage, recovery_hint(stage / "step-00000020", diverged_at=33)

    logged = [{"step": 1, "loss": 2.0}, {"step": 10, "loss": 1.9}, {"step": 20, "loss": 1.8}]
    stage, hint = run([*logged, {"step": 30, "loss": 40.0}])  # log_every 10: step 30's weights blew up
    assert sorted(p.name for p in stage.iterdir()) == ["step-00000010", "step-00000020"]
    assert "last good checkpoint" in hint and hint.split("last good checkpoint: ")[1].startswith(
        str(stage / "step-00000020")) and "renamed" not in hint
    stage, hint = run([*logged, {"step": 21, "loss": 40.0}])  # the step right after it: its own weights
    assert sorted(p.name for p in stage.iterdir()) == ["diverged-step-00000020", "step-00000010"]
    assert "loss 40 at step 21" in hint
