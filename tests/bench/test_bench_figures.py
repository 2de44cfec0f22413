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


BASE = '"model": "x", "card": "y", "dtype": "bf16"'


@pytest.mark.parametrize("content, says", [
    ("{not json", "cannot read a JSON file"),
    ('{"runs": []}', "not a gendistill bench result (no model, card, dtype, contexts)"),
    ("[1, 2]", "not a JSON object"),
    ("{" + BASE + ', "contexts": "abc"}', "'contexts' is not a list"),
    ("{" + BASE + ', "contexts": [{}]}', "contexts[0] has no integer 'context'"),
    ("{" + BASE + ', "contexts": [], "theoretical_cache_curve": {"teacher": [1]}}', "has values but no 'lengths'"),
])
def test_a_file_that_is_not_a_bench_result_is_one_line_and_writes_nothing(tmp_path, capsys, content, says):
    bad = tmp_path / "in" / "x.json"
    bad.parent.mkdir()
    bad.write_text(content)
    out = tmp_path / "out"
    assert TOOL["main"]([str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err and str(bad) in err, err
    assert not out.exists() and sorted(p.name for p in bad.parent.iterdir()) == ["x.json"]


@pytest.mark.skipif(not RECORDED, reason="no recorded bench JSON in docs/results")
def test_an_out_that_is_a_file_is_one_line_and_left_alone(tmp_path, capsys):
    out = tmp_path / "taken"
    out.write_text("mine")
    assert TOOL["main"]([str(RECORDED[0]), "--out", str(out)]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err and out.read_text() == "mine"


@pytest.mark.skipif(not RECORDED, reason="no recorded bench JSON in docs/results")
def test_the_ttft_panel_is_logarithmic_with_the_graphed_prefill_dashed(tmp_path, monkeypatch):
    """Figure 2's TTFT panel spans 8 ms to 4 s: a log scale, and the CUDA-graphed prefill of both models beside the
    eager one (what the 1K-4K targets are read on)."""
    from matplotlib.figure import Figure

    from gendistill.bench.report import make_plots

    seen = {}
    real = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, path, **kw: (seen.setdefault(Path(path).name, fig),
                                                                       real(fig, path, **kw)))
    data = json.loads(RECORDED[0].read_text())
    make_plots(data, tmp_path)
    ttft = next(f for n, f in seen.items() if n.startswith("fig2_")).axes[1]
    assert ttft.get_yscale() == "log"
    lines = {line.get_label(): line for line in ttft.get_lines()}
    graphed = [c["context"] for c in data["contexts"] if c["student"].get("ttft_graph_ms")]
    for role in ("teacher", "student"):
        line = next(v for k, v in lines.items() if k.endswith(f"({role}), CUDA graph"))
        assert line.get_linestyle() == "--" and list(line.get_xdata()) == graphed
