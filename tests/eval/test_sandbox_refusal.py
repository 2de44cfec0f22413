"""Without a usable bubblewrap, model-written code is not executed: one line says what to install and names the
flag that allows it anyway; with that flag it runs, loudly, with the layers that remain, and the results say so.
These tests run on every machine (bubblewrap is pointed at a path that does not exist, or at one that fails)."""

from __future__ import annotations

import os
import stat
import tempfile

import pytest

from gendistill.eval import sandbox as S
from gendistill.eval.tasks import get_task


@pytest.fixture()
def no_bwrap(monkeypatch, tmp_path):
    monkeypatch.setattr(S, "BWRAP", str(tmp_path / "missing" / "bwrap"))
    S._warn_unsandboxed.cache_clear()
    return tmp_path


@pytest.fixture()
def broken_bwrap(monkeypatch, tmp_path):
    """A bwrap that cannot create namespaces (as in a container that forbids user namespaces)."""
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\n[ \"$1\" = --version ] && { echo 'bubblewrap 0.0.0'; exit 0; }\n"
                    "[ \"$1\" = --help ] && exit 0\n"
                    "echo 'bwrap: No permissions to create a new namespace' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(S, "BWRAP", str(fake))
    return tmp_path


def _refusal(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    assert "bubblewrap" in msg and "apt-get install bubblewrap" in msg and S.UNSAFE_FLAG in msg
    return msg


def test_missing_bwrap_refuses_to_execute(no_bwrap):
    target = no_bwrap / "ran"
    code = f"open({str(target)!r}, 'w').write('x')"
    for call in (lambda: S.run_python(code), lambda: S.run_many([code, code]),
                 lambda: S.run_check(S.CheckedProgram(code, "", "def check(c):\n    pass\n", "f"))):
        with pytest.raises(S.SandboxUnavailable) as e:
            call()
        assert "not found" in _refusal(e)
    assert not target.exists()  # nothing ran
    caps = S.capabilities()
    assert caps["isolation"] == "unavailable" and "not found" in caps["reason"]


def test_broken_bwrap_refuses_with_its_reason(broken_bwrap):
    with pytest.raises(S.SandboxUnavailable) as e:
        S.run_python("print(1)")
    assert "cannot create its sandbox here: bwrap: No permissions to create a new namespace" in _refusal(e)


def test_humaneval_task_refuses_before_running_anything(no_bwrap):
    task = get_task("humaneval")
    with pytest.raises(S.SandboxUnavailable) as e:
        task.score_generations([], [])
    assert _refusal(e).startswith("task humaneval: executing model-written code needs the bubblewrap sandbox")


def test_unsafe_flag_runs_with_the_remaining_layers_and_says_so(no_bwrap, capfd):
    r = S.run_python("import os, json; print(os.environ['GENDISTILL_SANDBOX_LAYERS'])",
                     unsafe_allow_unsandboxed=True)
    assert r.status == S.PASSED, r.stderr
    S.run_python("print(2)", unsafe_allow_unsandboxed=True)
    err = capfd.readouterr().err
    assert err.count(f"warning: {S.UNSAFE_FLAG}: model-written code runs WITHOUT the bubblewrap sandbox") == 1
    caps = S.capabilities(unsafe_allow_unsandboxed=True)
    assert caps["isolation"] == "none" and caps["unsafe_allow_unsandboxed"] is True and caps["rlimits"]
    ok = S.run_check(S.CheckedProgram("def f(x):\n    return x + 1\n", "", "def check(c):\n    assert c(1) == 2\n",
                                      "f"), unsafe_allow_unsandboxed=True)
    bad = S.run_check(S.CheckedProgram("def f(x):\n    return 0\nimport sys\nsys.exit(0)\n", "",
                                       "def check(c):\n    assert c(1) == 2\n", "f"), unsafe_allow_unsandboxed=True)
    assert (ok.status, bad.status) == (S.PASSED, S.FAILED), (ok, bad)


def test_unsafe_scratch_folders_are_removed(no_bwrap, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(no_bwrap))
    before = set(os.listdir(no_bwrap))
    S.run_python("open('x', 'w').write('y')", unsafe_allow_unsandboxed=True)
    assert set(os.listdir(no_bwrap)) == before
