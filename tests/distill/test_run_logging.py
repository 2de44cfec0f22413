"""Run logging: TensorBoard on by default and, without its package, one note instead of silence; Weights & Biases
off by default, refused in one line without its package, and given every numeric metric when on."""

from __future__ import annotations

import json
import sys
import types

import pytest

from gendistill.distill.config import RunConfig
from gendistill.distill.metrics import TENSORBOARD_MISSING, MetricsLogger, check_wandb
from gendistill.errors import ConfigError


def test_defaults_tensorboard_on_wandb_off():
    run = RunConfig(output_dir="x")
    assert run.tensorboard is True and run.wandb is False


def test_a_missing_tensorboard_is_one_note_not_silence(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    log = MetricsLogger(tmp_path, enabled=True, tensorboard=True)
    log.log({"stage": "stage1", "step": 1, "loss": 0.25})
    log.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"note: {TENSORBOARD_MISSING}"] and "gendistill[tensorboard]" in err[0]
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["loss"] == 0.25
    MetricsLogger(tmp_path / "quiet", enabled=True, tensorboard=False).close()
    assert capsys.readouterr().err == ""


def test_wandb_without_its_package_is_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "wandb" else object())
    check_wandb(False)
    with pytest.raises(ConfigError, match=r"run.wandb: the wandb package is not installed \(pip install 'gendistill\[wandb\]'\)"):
        check_wandb(True)


def test_wandb_gets_every_numeric_metric(tmp_path, monkeypatch):
    calls = []

    class Run:
        def log(self, data):
            calls.append(("log", data))

        def finish(self):
            calls.append(("finish",))

    fake = types.SimpleNamespace(init=lambda **kw: calls.append(("init", kw)) or Run())
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object())
    log = MetricsLogger(tmp_path, enabled=True, tensorboard=False, wandb=True,
                        wandb_init={"project": "p", "name": "run"})
    log.log({"stage": "stage3a", "step": 4, "loss": 0.5, "lr": 1e-4, "note": "text", "done": True})
    log.close()
    assert calls[0] == ("init", {"dir": str(tmp_path), "project": "p", "name": "run"})
    assert calls[1] == ("log", {"stage3a/loss": 0.5, "stage3a/lr": 1e-4, "stage3a/step": 4})
    assert calls[2] == ("finish",)



def test_a_stages_first_step_says_when_it_came_in_either_display(capsys):
    """Plain lines come every ``every`` steps, but a stage's first step in this process (also after a resume) always
    gets one, with the seconds since the process started; the bar says it too, on stderr beside the bar itself."""
    from gendistill.distill.metrics import Progress

    lines = Progress("stage3a", 100, 40, True, "lines", every=10)  # resumed at step 40
    for step in (41, 42, 50):
        lines.update(step, 0.5, 1000.0)
    out = capsys.readouterr()
    printed = out.err.splitlines()
    assert [ln.split()[2] for ln in printed] == ["41/100", "50/100"], printed
    assert "s after the process started)" in printed[0] and "first step" not in printed[1] and out.out == ""
    bar = Progress("stage1", 3, 0, True, "bar")
    bar.update(1, 0.5, 1000.0)
    bar.update(2, 0.4, 1000.0)
    bar.close()
    out = capsys.readouterr()
    assert out.err.count("[stage1] first step ") == 1 and out.out == ""
