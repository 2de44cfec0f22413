"""benchmarks/select_candidate.py is a GPU script; its plumbing (the two builds of a candidate student, their
bit-for-bit check, the score's forward passes, the table and JSON) runs on CPU on a tiny teacher, so it does not rot
before the lease that times it on the card."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "select_candidate.py"


def test_select_candidate_cpu_plumbing(tmp_path, capsys):
    out = tmp_path / "sc.json"
    rc = runpy.run_path(str(SCRIPT), run_name="bench")["main"](
        ["--tiny", "--sets", "2", "--seq", "32", "--eval-seqs", "2", "--device", "cpu", "--out", str(out)])
    assert rc == 0  # the two builds gave the same student
    data = json.loads(out.read_text())
    assert data["identical"] is True and data["sets"] == 2 and data["eval_tokens"] == 64
    assert set(data["median_ms"]) == {"build_host", "build_device", "score_forward"}
    assert all(len(v) == 2 and min(v) > 0 for v in data["all_ms"].values())  # the warm-up set is not counted
    assert "build on the device vs on the host" in capsys.readouterr().out
