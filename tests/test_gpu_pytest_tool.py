"""tools/gpu_pytest.py: a failure that poisons its process (as a lost CUDA context does) cannot fail the tests after
it; a run cut by the time limit keeps the verdicts it reached and names the test it was in; a crash is a verdict."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "gpu_pytest.py"

# a module-level flag stands for the CUDA context: once a test "loses" it, every later test of the process fails
POISON = '''
import os, time
import pytest

LOST = []

def test_a():
    assert not LOST

def test_b_loses_the_context():
    LOST.append(1)
    raise RuntimeError("CUDA error: misaligned address")

def test_c():
    assert not LOST, "CUDA error: misaligned address"

def test_d():
    pytest.skip("needs something else")

@pytest.fixture
def broken():
    raise RuntimeError("setup failed")

def test_e(broken):
    pass

def test_f():
    assert not LOST
'''


def _run(tmp_path: Path, body: str, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_sim.py").write_text(body)
    proc = subprocess.run([sys.executable, str(TOOL), *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    files = sorted((tmp_path / "out").glob("gpu_test*.json"))
    return proc, json.loads(files[-1].read_text()) if files else {}


def test_tests_after_a_poisoning_failure_run_in_a_new_process(tmp_path):
    proc, res = _run(tmp_path, POISON, "--limit", "240", "--out", "out", "test_sim.py")
    verdicts = {c["test"].split("::")[1]: (c["verdict"], c["run"]) for c in res["cases"]}
    assert verdicts == {"test_a": ("passed", 1), "test_b_loses_the_context": ("failed", 1), "test_c": ("passed", 2),
                        "test_d": ("skipped", 2), "test_e": ("error", 2), "test_f": ("passed", 3)}
    assert res["runs"] == 3 and res["ok"] is False and proc.returncode == 1
    assert res["counts"] == {"passed": 3, "failed": 1, "skipped": 1, "error": 1}
    assert proc.stdout.splitlines()[-1].startswith("3 passed, 1 failed, 1 skipped, 1 error of 6 in 3 run(s)")
    log = (tmp_path / "out" / res["log"]).read_text()
    assert log.count("==== gpu_pytest run") == 6 and "misaligned address" in log
    # a second call keeps the first's files; -k and node ids select as pytest does
    proc2, res2 = _run(tmp_path, POISON, "--limit", "240", "--out", "out", "test_sim.py", "-k", "test_a or test_f")
    assert res2["log"] == "gpu_test_2.log" and (tmp_path / "out" / "gpu_test.json").is_file()
    assert [c["verdict"] for c in res2["cases"]] == ["passed", "passed"] and res2["runs"] == 1
    assert res2["ok"] is True and proc2.returncode == 0


def test_the_limit_keeps_what_finished_and_names_the_test_it_cut(tmp_path):
    body = ("import time\n\ndef test_a():\n    pass\n\ndef test_slow():\n    time.sleep(600)\n\n"
            "def test_z():\n    pass\n")
    proc, res = _run(tmp_path, body, "--limit", "12", "--out", "out", "--", "test_sim.py")
    assert [(c["test"].split("::")[1], c["verdict"]) for c in res["cases"]] == [
        ("test_a", "passed"), ("test_slow", "cut"), ("test_z", "not reached")]
    assert proc.returncode == 1 and res["elapsed_s"] < 60


def test_a_crash_is_the_verdict_of_the_test_it_happened_in(tmp_path):
    body = "import os\n\ndef test_a():\n    pass\n\ndef test_dies():\n    os._exit(9)\n\ndef test_z():\n    pass\n"
    proc, res = _run(tmp_path, body, "--limit", "240", "--out", "out", "test_sim.py")
    assert [(c["test"].split("::")[1], c["verdict"], c["run"]) for c in res["cases"]] == [
        ("test_a", "passed", 1), ("test_dies", "crashed (exit code 9)", 1), ("test_z", "passed", 2)]


def test_nothing_collected_is_an_error(tmp_path):
    proc, res = _run(tmp_path, "def test_a():\n    pass\n", "--limit", "60", "--out", "out", "test_sim.py",
                     "-k", "nothing_matches")
    assert proc.returncode == 2 and "collects no test" in proc.stderr and res["collected"] == 0
    assert "deselected" in proc.stderr and res["collection"] in proc.stderr  # pytest's own reason, in the one line
