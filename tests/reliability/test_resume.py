"""Items 2, 4, 5 and debris/metrics of issue 11, end to end through the CLI: a run killed during a stage or during a
checkpoint write resumes to exactly the uninterrupted result; a damaged newest checkpoint is skipped with one warning
naming the file; nothing is loaded with pickle; a different teacher or student layout is refused."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from gendistill.distill.checkpoint import list_checkpoints
from tests.reliability.conftest import (assert_one_line_error, assert_same_student, cli, make_teacher_dir,
                                        metric_steps, write_recipe)

REPO = Path(__file__).resolve().parents[2]


def _killed(mode: str, n: int, recipe: Path) -> None:
    """Run ``gendistill distill recipe`` in a forked child (no second start-up of torch) that SIGKILLs itself."""
    pid = os.fork()
    if pid == 0:  # child: never returns
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
            from tests.reliability._kill import run_and_kill

            run_and_kill(mode, n, ["distill", str(recipe)])
        finally:
            os._exit(3)  # reached only if the kill point was never hit
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9, status


def _no_pickle(monkeypatch) -> None:
    def refuse(*a, **k):
        raise AssertionError("pickle used to load a checkpoint")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)


@pytest.mark.parametrize("mode,n", [("step", 5), ("checkpoint", 3)], ids=["during-a-stage", "during-a-checkpoint"])
def test_killed_run_resumes_to_exactly_the_uninterrupted_result(tmp_path, monkeypatch, teacher_dir, data_dir,
                                                                reference_run, mode, n):
    # step 5 = stage3a step 3 (after its checkpoint at 2); checkpoint 3 = stage3a step 4 (stage1 wrote the first),
    # killed with the weights written and the manifest not yet
    recipe = write_recipe(tmp_path / "r.yaml", teacher_dir, data_dir, tmp_path / "run")
    _killed(mode, n, recipe)
    run = tmp_path / "run"
    stage_dir = run / "checkpoints" / "stage3a"
    assert [s for s, _ in list_checkpoints(stage_dir)] == [2]
    if mode == "checkpoint":
        debris = stage_dir / ".tmp-step-00000004"
        assert (debris / "model.safetensors").is_file()  # the killed write's weights, no manifest
        (debris / "leftover.bin").write_bytes(b"junk")
    _no_pickle(monkeypatch)
    res = cli("distill", recipe, "--resume")
    assert res.code == 0, res.stderr
    assert_same_student(run / "stage3a", reference_run / "stage3a")
    assert metric_steps(run) == metric_steps(reference_run)  # each step logged once, none replayed twice
    assert not any(p.name.startswith(".tmp") for p in stage_dir.iterdir()) if stage_dir.exists() else True


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, teacher_dir, data_dir) -> Path:
    """A run stopped after stage1 and 4 steps of stage3a (checkpoints at 2 and 4); tests work on copies."""
    base = tmp_path_factory.mktemp("stopped")
    recipe = write_recipe(base / "r.yaml", teacher_dir, data_dir, base / "run")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli("distill", recipe, "--stop-after", "4").code == 0  # stage1 (2 steps, done) + stage3a steps 1-4
    finally:
        torch.set_num_threads(before)
    assert [s for s, _ in list_checkpoints(base / "run" / "checkpoints" / "stage3a")] == [2, 4]
    return base / "run"


def _copy_of(stopped: Path, tmp_path: Path, teacher_dir: Path, data_dir: Path) -> Path:
    shutil.copytree(stopped, tmp_path / "run")
    return write_recipe(tmp_path / "r.yaml", teacher_dir, data_dir, tmp_path / "run")


@pytest.mark.parametrize("damaged", ["model.safetensors", "optimizer.safetensors", "manifest.json"])
def test_damaged_newest_checkpoint_falls_back_with_one_warning(tmp_path, teacher_dir, data_dir, reference_run,
                                                               stopped_run, damaged):
    recipe = _copy_of(stopped_run, tmp_path, teacher_dir, data_dir)
    f = tmp_path / "run" / "checkpoints" / "stage3a" / "step-00000004" / damaged
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # truncated, as by a full disk or a bad copy
    res = cli("distill", recipe, "--resume")
    assert res.code == 0, res.stderr
    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(f) in warnings[0] and "falling back to step-00000002" in warnings[0], warnings
    assert_same_student(tmp_path / "run" / "stage3a", reference_run / "stage3a")


def test_checkpoints_hold_no_pickle(stopped_run):
    files = [p for p in stopped_run.rglob("*") if p.is_file()]
    assert files and not [p for p in files if p.suffix in (".pt", ".pth", ".bin", ".pkl", ".pickle")]
    for p in files:  # every file is JSON, YAML, text or safetensors: no pickle protocol header anywhere
        assert not p.read_bytes().startswith(b"\x80"), p
    src = (REPO / "src" / "gendistill").rglob("*.py")
    assert not [p for p in src if "weights_only=False" in p.read_text() or "import pickle" in p.read_text()]


def test_resume_with_another_teacher_or_layout_is_refused(tmp_path, teacher_dir, data_dir, stopped_run):
    recipe = _copy_of(stopped_run, tmp_path, teacher_dir, data_dir)
    other = make_teacher_dir(tmp_path / "other-teacher", seed=1)  # same architecture, other weights
    res = cli("distill", write_recipe(tmp_path / "o.yaml", other, data_dir, tmp_path / "run"), "--resume")
    assert_one_line_error(res, "teacher:", "not the teacher the run", "weights differ")
    res = cli("distill", recipe, "--resume", "--set", "student.attention_layers=[1,3]")
    assert_one_line_error(res, "student: the layout differs", "layer_types")
    res = cli("distill", recipe, "--resume", "--set", "student.kda_options={kda_gate_activation: sigmoid}")
    assert_one_line_error(res, "kda_gate_activation")
    assert cli("distill", recipe, "--resume").code == 0
    assert json.loads((tmp_path / "run" / "progress.json").read_text())["completed"] == ["stage1", "stage3a"]


def test_a_failed_checkpoint_write_is_one_line_and_keeps_the_older_ones(tmp_path, monkeypatch, stopped_run):
    import errno

    import gendistill.distill.checkpoint as ck
    from gendistill.ownership import OutputError

    shutil.copytree(stopped_run, tmp_path / "run")
    stage_dir = tmp_path / "run" / "checkpoints" / "stage3a"
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck, "save_file", full_disk)
    with pytest.raises(OutputError, match=r"cannot write checkpoint .*step-00000005: No space left on device"):
        ck.commit_checkpoint(stage_dir, 5, model, opt, {"step": 5}, keep=2)
    assert sorted(p.name for p in stage_dir.iterdir()) == ["step-00000002", "step-00000004"]
    assert ck.verify_checkpoint(stage_dir / "step-00000004") is None
