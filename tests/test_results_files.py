"""The committed result files: every ``docs/results/*.json`` parses and carries no machine path (where a file lay on
the machine that produced it means nothing to a reader; ``python tools/portable_results.py FILE`` cuts them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gendistill.io import ABSOLUTE_PATH

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def _strings(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.json")), ids=lambda p: p.name)
def test_a_committed_result_carries_no_machine_path(path):
    found = sorted({m.group(0) for s in _strings(json.loads(path.read_text())) for m in ABSOLUTE_PATH.finditer(s)})
    assert not found, f"{path.name}: machine paths {found[:5]} (python tools/portable_results.py {path})"
