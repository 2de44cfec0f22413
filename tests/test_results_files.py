"""The committed result files: every ``docs/results/*.json`` parses and carries no machine path (where a file lay on
the machine that produced it means nothing to a reader; ``python tools/portable_results.py FILE`` cuts them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gendistill.io import absolute_paths

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.json")), ids=lambda p: p.name)
def test_a_committed_result_carries_no_machine_path(path):
    found = sorted(absolute_paths(json.loads(path.read_text())))
    assert not found, f"{path.name}: machine paths {found[:5]} (python tools/portable_results.py {path})"
