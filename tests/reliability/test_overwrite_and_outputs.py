"""Items 1, 8, 9, 10 and debris of issue 11: --overwrite deletes only what gendistill wrote; outputs are checked
(writable, not someone else's) before anything is loaded; an early error writes nothing; publishing is exclusive;
temporary folders of killed writers are cleaned."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from gendistill.errors import GendistillError
from gendistill.ownership import MARKER, OutputError, check_replaceable, clean_stale_temps, write_marker
from tests.reliability.conftest import assert_one_line_error, cli, recipe_dict, tree, write_recipe


def _user_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("my thesis")
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    return path


def test_distill_overwrite_of_the_working_folder_is_refused_and_nothing_is_touched(
        tmp_path, monkeypatch, teacher_dir, data_dir):
    home = _user_folder(tmp_path / "project")
    recipe = write_recipe(tmp_path / "r.yaml", teacher_dir, data_dir, Path("."))
    monkeypatch.chdir(home)
    before = tree(home)
    res = cli("distill", recipe, "--overwrite")
    assert_one_line_error(res, "run.output_dir", "refusing to overwrite", "current working folder")
    assert tree(home) == before


@pytest.mark.parametrize("flags", [[], ["--overwrite"], ["--resume"]])
def test_distill_into_a_folder_of_user_files_is_refused(tmp_path, teacher_dir, data_dir, flags):
    user = tmp_path / "results"
    user.mkdir()
    (user / "paper.tex").write_text("\\documentclass{article}")
    before = tree(user)
    res = cli("distill", write_recipe(tmp_path / "r.yaml", teacher_dir, data_dir, user), *flags)
    assert_one_line_error(res, str(user), "gendistill")
    assert tree(user) == before


def test_protected_locations_are_refused_even_with_our_marker(tmp_path, monkeypatch):
    repo = _user_folder(tmp_path / "repo")
    write_marker(repo, "run")
    with pytest.raises(OutputError, match="git repository"):
        check_replaceable(repo, "run", "run.output_dir")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    write_marker(tmp_path / "home", "run")
    with pytest.raises(OutputError, match="home folder"):
        check_replaceable(tmp_path / "home", "run", "run.output_dir")
    monkeypatch.chdir(tmp_path / "home")
    write_marker(tmp_path, "run")
    with pytest.raises(OutputError, match="contains the current working folder"):
        check_replaceable(tmp_path, "run", "run.output_dir")
    student = tmp_path / "student"
    student.mkdir()
    write_marker(student, "student")
    with pytest.raises(OutputError, match="holds a gendistill student, not a run"):
        check_replaceable(student, "run", "run.output_dir")


def test_convert_overwrite_of_a_user_folder_is_refused_before_loading(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "data.csv").write_text("1,2,3")
    res = cli("convert", "--teacher", tmp_path / "no-such-teacher", "-a", "0", "--out", user, "--overwrite")
    assert_one_line_error(res, "--out", "not written by gendistill")
    assert (user / "data.csv").read_text() == "1,2,3"


@pytest.mark.parametrize("where", ["under-a-file", "procfs"])
def test_unwritable_outputs_are_one_line_before_the_teacher_loads(tmp_path, teacher_dir, data_dir, where):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = blocker / "run" if where == "under-a-file" else Path("/proc/gendistill-test-run")
    # a teacher that does not exist: the output error must come first
    res = cli("distill", write_recipe(tmp_path / "r.yaml", tmp_path / "no-teacher", data_dir, out))
    assert_one_line_error(res, "run.output_dir", "cannot write")
    res = cli("convert", "--teacher", tmp_path / "no-teacher", "-a", "0", "--out", out / "student")
    assert_one_line_error(res, "--out", "cannot write")


def test_an_early_configuration_error_writes_nothing_and_the_fixed_rerun_needs_no_overwrite(
        tmp_path, teacher_dir, data_dir):
    out = tmp_path / "run"
    bad = write_recipe(tmp_path / "bad.yaml", teacher_dir, data_dir, out,
                       **{"stages": [{**recipe_dict(teacher_dir, data_dir, out)["stages"][1],
                                      "trainable": {"include": ["no_such_parameter"]}}]})
    res = cli("distill", bad)
    assert_one_line_error(res, "stages[0].trainable", "matches no parameter")
    assert not out.exists()
    fixed = write_recipe(tmp_path / "fixed.yaml", teacher_dir, data_dir, out,
                         **{"stages": [{**recipe_dict(teacher_dir, data_dir, out)["stages"][0], "layers": [0]}]})
    res = cli("distill", fixed)
    assert_one_line_error(res, "stage1.layers", "not KDA layers")
    assert not out.exists()
    ok = write_recipe(tmp_path / "ok.yaml", teacher_dir, data_dir, out,
                      **{"stages": [recipe_dict(teacher_dir, data_dir, out)["stages"][0]]})
    res = cli("distill", ok)
    assert res.code == 0, res.stderr
    assert (out / MARKER).is_file() and (out / "stage1" / MARKER).is_file()
    # a finished run is ours: --overwrite replaces it, and only it
    res = cli("distill", ok, "--overwrite")
    assert res.code == 0, res.stderr


def test_publishing_is_exclusive_when_the_target_appears_meanwhile(tmp_path, teacher_dir):
    from transformers import AutoModelForCausalLM

    from gendistill.convert.convert import save_student

    model = AutoModelForCausalLM.from_pretrained(teacher_dir)
    out = tmp_path / "student"
    real = model.save_pretrained

    def racing_save(folder, **kw):  # a second convert publishes into --out while this one writes
        out.mkdir()
        (out / "theirs.txt").write_text("the other run")
        return real(folder, **kw)

    model.save_pretrained = racing_save
    with pytest.raises(GendistillError, match="appeared while the student was being written"):
        save_student(model, None, out)
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["student"]  # no temporary folder left


def test_stale_temporaries_of_killed_writers_are_removed_but_live_ones_kept(tmp_path):
    final = tmp_path / "student"
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".student.tmp-{dead.pid}-abcd0123"
    live = tmp_path / f".student.tmp-{os.getppid()}-beef4567"
    # a user's own hidden backups that merely look alike: never ours to delete
    backups = [tmp_path / ".student.old-2023", tmp_path / f".student.old-{dead.pid}-mine",
               tmp_path / f".student.tmp-{dead.pid}"]
    for p in (stale, live, *backups):
        p.mkdir()
        (p / "model.safetensors").write_bytes(b"0" * 1024)
    assert clean_stale_temps(final) == [stale]
    assert live.exists() and not stale.exists() and all(b.exists() for b in backups)


def test_a_full_disk_is_one_line_before_the_student_is_written(tmp_path, monkeypatch, teacher_dir):
    import shutil as sh

    from transformers import AutoModelForCausalLM

    from gendistill.convert.convert import save_student

    model = AutoModelForCausalLM.from_pretrained(teacher_dir)
    monkeypatch.setattr(sh, "disk_usage", lambda p: sh._ntuple_diskusage(10**9, 10**9 - 1024, 1024))
    with pytest.raises(OutputError, match=r"--out: .*student needs about .* KiB but only 1.0 KiB are free"):
        save_student(model, None, tmp_path / "student")
    assert list(tmp_path.iterdir()) == []


def test_every_file_of_a_run_and_of_a_converted_student_has_the_umask_s_mode(tmp_path, teacher_dir, data_dir):
    """Section 6 for whole folders: under umask 002 (not the usual 022, so a fixed 0644 fails too) every file of a
    finished run -- the kept checkpoints of both stages (weights, optimizer, RNG state, JSON), each stage's student,
    metrics, progress, marker, lock file -- is 0664 and every folder at least 0775; the same for a converted
    student. safetensors writes 0600 files whatever the umask, so every .safetensors was 0600 before."""
    recipe = write_recipe(tmp_path / "r.yaml", teacher_dir, data_dir, tmp_path / "run",
                          **{"run.keep_finished_checkpoints": True})
    old = os.umask(0o002)
    try:
        assert cli("distill", recipe).code == 0
        assert cli("convert", "--teacher", teacher_dir, "-a", "0", "--out", tmp_path / "student").code == 0
    finally:
        os.umask(old)
    wrong, names = [], set()
    for root in (tmp_path / "run", tmp_path / "student"):
        for p in [root, *root.rglob("*")]:
            mode = stat.S_IMODE(p.lstat().st_mode)
            names.add(p.name)
            if (mode & 0o775 != 0o775) if p.is_dir() else (mode != 0o664):
                wrong.append(f"{oct(mode)} {p.relative_to(tmp_path)}")
    assert not wrong, wrong
    assert {"model.safetensors", "optimizer.safetensors", "rng-0.safetensors", "manifest.json", "metrics.jsonl",
            ".gendistill.lock", MARKER} <= names
    assert len(list((tmp_path / "run" / "checkpoints").rglob("step-*"))) == 3  # stage1's and stage3a's newest 2
