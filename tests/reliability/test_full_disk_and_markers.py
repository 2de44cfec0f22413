"""Issue 31, medium items on writing: a disk that fills during a save is one line with nothing half-written (the
write fails for real here: RLIMIT_FSIZE makes the kernel refuse writes past a size, as a full disk refuses them, and
safetensors reports that in its own exception type); the ownership marker is written atomically, and a 0-byte or
cut-off marker left by an older gendistill blocks neither --resume nor --overwrite; a resume refused by a fingerprint
check has written nothing (recipe.yaml included)."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
from pathlib import Path

import pytest
import torch

from gendistill.ownership import MARKER, marker_kind, write_marker
from tests.reliability.conftest import (assert_one_line_error, assert_same_student, cli, metric_steps, tree,
                                        write_recipe)


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """Writes past ``nbytes`` in any file fail with EFBIG ("File too large") while inside: a disk that fills up."""
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_a_disk_that_fills_during_a_checkpoint_is_one_line_and_the_run_resumes_exactly(
        tmp_path, teacher_dir, data_dir, reference_run):
    recipe = write_recipe(tmp_path / "r.yaml", teacher_dir, data_dir, tmp_path / "run")
    run = tmp_path / "run"
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the reference run
    try:
        with file_size_limit(100_000):  # the run's JSON files fit; stage1's checkpoint weights (~220 kB) do not
            res = cli("distill", recipe)
        assert_one_line_error(res, "cannot write checkpoint", "checkpoints/stage1/step-00000002", "File too large")
        stage_dir = run / "checkpoints" / "stage1"
        assert not [p for p in stage_dir.iterdir()] if stage_dir.exists() else True  # no half checkpoint
        res = cli("distill", recipe, "--resume")
    finally:
        torch.set_num_threads(before)
    assert res.code == 0, res.stderr
    assert_same_student(run / "stage3a", reference_run / "stage3a")
    assert metric_steps(run) == metric_steps(reference_run)


def test_a_disk_that_fills_while_a_student_is_saved_is_one_line_and_leaves_nothing(tmp_path, teacher_dir):
    out = tmp_path / "students" / "s"
    (tmp_path / "students").mkdir()
    with file_size_limit(100_000):
        res = cli("convert", "--teacher", teacher_dir, "-a", "0", "--out", out)
    assert_one_line_error(res, "--out: cannot write", "File too large", "is left as it was")
    assert list((tmp_path / "students").iterdir()) == []  # no student, no hidden temporary folder


def test_any_other_refused_write_is_one_line_too(tmp_path, monkeypatch, teacher_dir, data_dir):
    """A write outside the checkpoint and student savers (here the metrics log) that the storage refuses."""
    import errno

    import gendistill.distill.metrics as metrics

    def full(self, record):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path))

    monkeypatch.setattr(metrics.MetricsLogger, "log", full)
    res = cli("distill", write_recipe(tmp_path / "r.yaml", teacher_dir, data_dir, tmp_path / "run"))
    assert_one_line_error(res, "cannot write", "metrics.jsonl", "No space left on device")


def test_the_marker_is_written_atomically(tmp_path, monkeypatch):
    write_marker(tmp_path, "run")
    good = (tmp_path / MARKER).read_bytes()

    def killed(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(OSError):
        write_marker(tmp_path, "student")
    monkeypatch.undo()
    assert (tmp_path / MARKER).read_bytes() == good  # the old marker, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == [MARKER]  # no temporary left


@pytest.mark.parametrize("damage", [b"", b'{"written_by": "gendis'], ids=["empty", "cut-off"])
def test_a_damaged_marker_of_an_older_gendistill_blocks_neither_resume_nor_overwrite(
        tmp_path, teacher_dir, data_dir, damage):
    recipe = write_recipe(tmp_path / "r.yaml", teacher_dir, data_dir, tmp_path / "run",
                          **{"stages": [{"name": "stage1", "steps": 2, "seq_len": 32, "batch_size": 2,
                                         "optim": {"lr": 1e-3}}]})
    run = tmp_path / "run"
    assert cli("distill", recipe, "--stop-after", "1").code == 0
    (run / MARKER).write_bytes(damage)  # a kill during the old, non-atomic marker write
    assert marker_kind(run) == "run"  # judged from the run's own files
    res = cli("distill", recipe, "--resume")
    assert res.code == 0, res.stderr
    assert json.loads((run / MARKER).read_text())["kind"] == "run"  # rewritten whole
    (run / MARKER).write_bytes(damage)
    assert cli("distill", recipe, "--overwrite").code == 0
    # a file of that name that is not a cut-off marker is someone else's: not ours
    (run / MARKER).write_text("my notes")
    assert marker_kind(run) is None


def test_a_resume_refused_by_a_fingerprint_writes_nothing(tmp_path, teacher_dir, data_dir):
    recipe = write_recipe(tmp_path / "r.yaml", teacher_dir, data_dir, tmp_path / "run")
    run = tmp_path / "run"
    assert cli("distill", recipe, "--stop-after", "4").code == 0  # stage1 done, stage3a checkpoints 2 and 4
    before = tree(run)
    for override, fragment in (("stages[1].batch_size=4", "stage or data settings changed"),
                               ("stages[1].optim.lr=5e-4", "optimisation settings changed"),
                               ("data.heldout_documents=5", "stage or data settings changed")):
        res = cli("distill", recipe, "--resume", "--set", override)
        assert_one_line_error(res, "stages[1] (stage3a)", fragment)
        assert tree(run) == before, override  # recipe.yaml, progress.json, data.json, metrics: untouched
    shutil.rmtree(run)
