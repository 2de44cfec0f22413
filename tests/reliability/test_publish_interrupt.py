"""Ctrl-C (or a kill) while ``--overwrite`` publishes a folder never loses the previous one: publishing renames the old
folder aside and the new one into place; an interrupt between the two renames puts the old one back, and a kill there
leaves it aside under a name the next save renames back to ``final`` instead of deleting it."""

from __future__ import annotations

import os
import subprocess

import pytest

from gendistill import io as gio
from gendistill.io import publish_dir
from gendistill.ownership import clean_stale_temps


def _folder(path, text):
    path.mkdir()
    (path / "model.safetensors").write_text(text)
    return path


def test_ctrl_c_between_the_two_renames_puts_the_previous_folder_back(tmp_path, monkeypatch):
    final = _folder(tmp_path / "student", "previous")
    tmp = _folder(tmp_path / ".student.tmp-1-00000000", "new")
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the new folder's rename: the user pressed Ctrl-C
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(gio.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        publish_dir(tmp, final)
    monkeypatch.setattr(gio.os, "replace", real)
    assert (final / "model.safetensors").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".student.tmp-1-00000000", "student"]


def test_a_killed_publish_s_previous_folder_is_renamed_back_not_deleted(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    final = tmp_path / "student"
    old = _folder(tmp_path / f".student.old-{dead.pid}-0123abcd", "previous")
    tmp = _folder(tmp_path / f".student.tmp-{dead.pid}-4567cdef", "half written")
    assert clean_stale_temps(final) == [tmp]
    assert (final / "model.safetensors").read_text() == "previous" and not old.exists()
    # with the folder in place, a dead writer's set-aside copy is stale and removed as before
    old2 = _folder(tmp_path / f".student.old-{dead.pid}-89abcdef", "older")
    assert clean_stale_temps(final) == [old2] and (final / "model.safetensors").read_text() == "previous"


def test_convert_after_a_killed_publish_finds_the_previous_student_back_in_place(tmp_path):
    """The next save puts the set-aside student back before it looks at --out: without --overwrite it says the folder
    exists (the old student), not that one 'appeared while the student was being written'."""
    import torch

    from gendistill.convert import convert_teacher, save_student
    from gendistill.errors import GendistillError
    from tests.fixtures_teachers import tiny_model

    teacher = tiny_model("llama", 300)
    torch.manual_seed(0)
    student = convert_teacher(teacher, [0])
    final = tmp_path / "student"
    save_student(student, None, final)
    dead = subprocess.Popen(["true"])
    dead.wait()
    os.replace(final, tmp_path / f".student.old-{dead.pid}-0123abcd")  # killed between publish_dir's two renames
    with pytest.raises(GendistillError, match="already exists"):
        save_student(student, None, final)
    assert (final / "model.safetensors").is_file()
