"""tools/bench_figures.py: a recorded benchmark's figures drawn again from its JSON (the command that makes the
figures committed beside docs/results/bench_*.json)."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = runpy.run_path(str(ROOT / "tools" / "bench_figures.py"))
RECORDED = sorted((ROOT / "docs" / "results").glob("bench_qwen3-0.6b_*.json"))


@pytest.mark.skipif(not RECORDED, reason="no recorded bench JSON in docs/results")
def test_a_recorded_run_gets_both_figures_named_for_its_model_and_card(tmp_path, capsys):
    src = RECORDED[0]
    data = json.loads(src.read_text())
    assert TOOL["main"]([str(src), "--out", str(tmp_path)]) == 0
    stem = src.stem.removeprefix("bench_")
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == [f"fig2_{stem}.png", f"fig5_{stem}.png"], (written, data["card"])
    assert all((tmp_path / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in written)
    assert capsys.readouterr().out.split() == [str(tmp_path / n) for n in written]


@pytest.mark.parametrize("content, says", [("{not json", "cannot read a JSON file"),
                                           ('{"runs": []}', "not a gendistill bench result (no model, card, dtype")])
def test_a_file_that_is_not_a_bench_result_is_one_line_and_writes_nothing(tmp_path, capsys, content, says):
    bad = tmp_path / "in" / "x.json"
    bad.parent.mkdir()
    bad.write_text(content)
    out = tmp_path / "out"
    assert TOOL["main"]([str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err and str(bad) in err
    assert not out.exists() and sorted(p.name for p in bad.parent.iterdir()) == ["x.json"]
