"""A pytest plugin for ``tools/gpu_pytest.py``: every test's start and verdict as one JSON line in the file
``$PYTEST_VERDICTS``, written the moment pytest knows it, so a run killed by a time limit still leaves the verdicts of
the tests it finished and the name of the test it was in. Loaded with ``-p pytest_verdicts`` (``tools/`` on
``PYTHONPATH``); without ``$PYTEST_VERDICTS`` it writes nothing. With ``$PYTEST_COLLECTED`` (a collect-only run), each
selected test's node id and the id that finds it from any folder (its file's absolute path, then the rest of the node
id) as one JSON line ``{"test": NODEID, "run_id": ID}`` in that file: a test file outside pytest's root gets a node id
relative to its argument's folder, which a later run could not resolve.

Lines: ``{"test": NODEID, "event": "start"}``, then one per phase that decides the verdict:
``{"test": NODEID, "event": "setup"|"call"|"teardown", "outcome": "passed"|"failed"|"skipped"}`` (a setup or
teardown that passed is not written)."""

from __future__ import annotations

import json
import os
from typing import Any


def _write(record: dict[str, Any]) -> None:
    path = os.environ.get("PYTEST_VERDICTS")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def pytest_runtest_logstart(nodeid: str, location: Any) -> None:
    _write({"test": nodeid, "event": "start"})


def pytest_runtest_logreport(report: Any) -> None:
    if report.when == "call" or report.outcome != "passed":
        _write({"test": report.nodeid, "event": report.when, "outcome": report.outcome})


def pytest_collection_finish(session: Any) -> None:
    path = os.environ.get("PYTEST_COLLECTED")
    if path:
        with open(path, "w", encoding="utf-8") as f:
            for item in session.items:
                rest = item.nodeid.split("::", 1)[1] if "::" in item.nodeid else ""
                run_id = f"{item.path}::{rest}" if rest else str(item.path)
                f.write(json.dumps({"test": item.nodeid, "run_id": run_id}) + "\n")
