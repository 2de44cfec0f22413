"""Run tests (the GPU suite on a lease) under one time limit so that a failure cannot take the tests after it along.

A CUDA error such as ``misaligned address`` or ``illegal memory access`` loses the process's CUDA context: under a
plain ``pytest`` run every later test fails with the same error, which says nothing about them (docs/results.md
section 22: one failure in GLA's autotuning, eight cases after it failed the same way, all eight passed in a new
process). This runs the tests that ``pytest ARGS`` collects with ``-x`` and, after each failure or crash, the tests not
yet run in a new process, until none is left or the limit is reached. Each test's verdict is written the moment it is
known (``tools/pytest_verdicts.py``), so a run cut by the limit keeps what it finished and names the test it was in.

    python tools/gpu_pytest.py --limit SECONDS --out DIR [--] PYTEST_ARGS...

PYTEST_ARGS select the tests (paths, node ids, ``-k``, ``-m``); the runs are given the collected tests only (with
``-v -s -x -p no:cacheprovider``; each by its file's absolute path, so files outside pytest's root run too; verdicts
and the JSON name them by node id, run it where pytest's root is: the repository's). Written in
DIR, numbered so a second call keeps the first's files: ``gpu_test[_N].log`` (every run's output, in order; with
``TRITON_PRINT_AUTOTUNING=1`` it holds every kernel fla autotuned, for ``tools/fla_configs_from_log.py``) and
``gpu_test[_N].json`` (each test's verdict and the run that gave it: passed, failed, error (its setup or teardown
failed), skipped, crashed (the process died in it), cut (the limit came in it), not reached). Prints one line per
test and a summary line last. Exit 0 when every collected test passed or was skipped, 1 otherwise, 2 when nothing
was collected."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parent
RUN_FLAGS = ("-v", "-s", "-x", "-p", "no:cacheprovider", "-p", "pytest_verdicts")
MIN_RUN_S = 5.0  # no new process with less time than this left


def collect(pytest_args: list[str], timeout: float, env: dict[str, str], scratch: Path) -> tuple[dict[str, str], str]:
    """``{node id: the id a run is given}`` for the tests ``pytest PYTEST_ARGS`` selects, in its order (none when
    collecting outlasts ``timeout``), and pytest's last line on it (``16/50 tests collected (34 deselected) in
    2.51s``, or why nothing was). The run id names the test's file by its absolute path (tools/pytest_verdicts.py),
    so a file outside pytest's root is found too; the node id is what verdicts and the JSON use."""
    try:
        out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                              "-p", "pytest_verdicts", *pytest_args], capture_output=True, text=True, timeout=timeout,
                             env={**env, "PYTEST_COLLECTED": str(scratch)})
    except subprocess.TimeoutExpired:
        return {}, f"collecting took more than {timeout:.0f} s"
    lines = scratch.read_text(encoding="utf-8").splitlines() if scratch.is_file() else []
    ids = {rec["test"]: rec["run_id"] for rec in map(json.loads, lines)}
    said = [line.strip() for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    return ids, said[-1] if said else ""


def read_verdicts(path: Path) -> tuple[dict[str, str], str | None]:
    """``({node id: verdict}, the last test started without a verdict or None)`` from a run's JSON lines."""
    records: dict[str, list[dict[str, Any]]] = {}
    last_started = None
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:  # a line cut by a kill mid-write
                continue
            records.setdefault(rec["test"], []).append(rec)
            if rec.get("event") == "start":
                last_started = rec["test"]
    verdicts = {}
    for test, recs in records.items():
        outcomes = [(r["event"], r["outcome"]) for r in recs if "outcome" in r]
        if ("call", "failed") in outcomes:
            verdicts[test] = "failed"
        elif any(o == "failed" for _, o in outcomes):
            verdicts[test] = "error"
        elif any(o == "skipped" for _, o in outcomes):
            verdicts[test] = "skipped"
        elif ("call", "passed") in outcomes:
            verdicts[test] = "passed"
    unfinished = last_started if last_started is not None and last_started not in verdicts else None
    return verdicts, unfinished


def _numbered(out: Path, stem: str) -> tuple[Path, Path]:
    """``out/stem.log`` and ``.json``, or ``stem_2``, ``stem_3`` ... when an earlier call's files are there."""
    n = 1
    while True:
        name = stem if n == 1 else f"{stem}_{n}"
        log, js = out / f"{name}.log", out / f"{name}.json"
        if not log.exists() and not js.exists():
            return log, js
        n += 1


def run(pytest_args: list[str], limit: float, out: Path) -> dict[str, Any]:
    """Run the tests as the module says; returns what the JSON holds."""
    start = time.monotonic()
    deadline = start + limit
    out.mkdir(parents=True, exist_ok=True)
    log_path, json_path = _numbered(out, "gpu_test")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(TOOLS), os.environ.get("PYTHONPATH")) if p)}
    # the plugin's files in a private folder: nothing is written into, or removed from, --out but the log and JSON
    with tempfile.TemporaryDirectory(prefix="gpu_pytest_") as tmp:
        scratch = Path(tmp)
        run_ids, collection = collect(pytest_args, timeout=max(deadline - time.monotonic(), 1.0), env=env,
                                      scratch=scratch / "collected.jsonl")
        ids = list(run_ids)
        result: dict[str, Any] = {"pytest_args": pytest_args, "limit_s": limit, "collected": len(ids),
                                  "collection": collection, "runs": 0, "log": log_path.name, "cases": []}
        verdicts: dict[str, dict[str, Any]] = {}
        with open(log_path, "a", encoding="utf-8") as log:
            while True:
                remaining = [t for t in ids if t not in verdicts]
                left = deadline - time.monotonic()
                if not remaining or left < MIN_RUN_S:
                    break
                result["runs"] += 1
                n = result["runs"]
                vfile = scratch / f"run{n}.jsonl"
                log.write(f"==== gpu_pytest run {n}: {len(remaining)} test(s), {left:.0f} s left\n")
                log.flush()
                try:
                    command = [sys.executable, "-m", "pytest", *RUN_FLAGS, *(run_ids[t] for t in remaining)]
                    rc: int | None = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=left,
                                                    env={**env, "PYTEST_VERDICTS": str(vfile)}).returncode
                except subprocess.TimeoutExpired:
                    rc = None
                got, unfinished = read_verdicts(vfile)
                for test, verdict in got.items():
                    if test in remaining:
                        verdicts[test] = {"verdict": verdict, "run": n}
                if unfinished is not None and unfinished in remaining:
                    verdicts[unfinished] = {"verdict": "cut" if rc is None else f"crashed (exit code {rc})", "run": n}
                log.write(f"==== gpu_pytest run {n}: exit code {'killed at the limit' if rc is None else rc}\n")
                log.flush()
                if rc is None or not any(t in verdicts for t in remaining):  # the limit, or no progress: stop
                    break
    result["cases"] = [{"test": t, **verdicts.get(t, {"verdict": "not reached", "run": None})} for t in ids]
    result["counts"] = dict(Counter(case["verdict"].split(" (")[0] for case in result["cases"]))
    result["elapsed_s"] = round(time.monotonic() - start, 1)
    result["ok"] = bool(ids) and all(c["verdict"] in ("passed", "skipped") for c in result["cases"])
    json_path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


def summary_line(result: dict[str, Any]) -> str:
    counts = ", ".join(f"{n} {v}" for v, n in result["counts"].items()) or "nothing collected"
    return f"{counts} of {result['collected']} in {result['runs']} run(s), {result['elapsed_s']:.0f} s"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Run tests under one time limit; after a failure or crash, the rest in a new process (a lost "
                    "CUDA context fails every later test of the same process). Verdicts in DIR/gpu_test[_N].json.")
    ap.add_argument("--limit", type=float, required=True, help="seconds for everything, collection included")
    ap.add_argument("--out", type=Path, required=True, help="folder for gpu_test[_N].log and gpu_test[_N].json")
    ap.add_argument("pytest_args", nargs=argparse.REMAINDER,
                    help="what pytest selects: paths or node ids first, then -k / -m (or everything after --)")
    args = ap.parse_args(argv)
    pytest_args = args.pytest_args[1:] if args.pytest_args[:1] == ["--"] else args.pytest_args
    if not pytest_args:
        ap.error("name the tests to run (paths, node ids, -k ...)")
    if args.limit <= 0:
        ap.error(f"--limit: {args.limit:g} seconds is no time to run tests in")
    result = run(pytest_args, args.limit, args.out)
    for case in result["cases"]:
        print(f"{case['verdict']:<12} {case['test']}")
    print(summary_line(result))
    if not result["collected"]:
        print(f"error: pytest {' '.join(pytest_args)} collects no test ({result['collection']})", file=sys.stderr)
        return 2
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
