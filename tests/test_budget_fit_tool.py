"""tools/budget_fit.py: how many stage-3a tokens a fidelity target needs, fitted through committed records' ends of
stage 3a. The fit must recover a known trend exactly, read both record kinds, and refuse points that do not compare."""

from __future__ import annotations

import json
import math
import runpy
from pathlib import Path

import pytest

from gendistill.io import absolute_paths

ROOT = Path(__file__).resolve().parents[1]
TOOL = runpy.run_path(str(ROOT / "tools" / "budget_fit.py"))


def _kl(tokens: float) -> float:  # a known trend: KL = 2 * tokens^-0.25
    return 2.0 * tokens ** -0.25


def _top1(tokens: float) -> float:  # +3 points per doubling, 75 % at 16M
    return 0.75 + 0.03 * math.log2(tokens / 16e6)


def _e2e(path: Path, tokens: int, *, eval_tokens: int = 1000, end_step: int = 10, layers=(0, 3)) -> str:
    path.write_text(json.dumps({
        "recipe": "lease.yaml", "overrides": [], "student": {"attention_layers": list(layers)},
        "lease": {"commit": "abc1234", "card": "NVIDIA H200", "stages": {"stage3a": {
            "steps": 10, "tokens": tokens, "trainer_heldout_at_end": {
                "step": end_step, "eval_kl": _kl(tokens), "eval_top1": _top1(tokens), "eval_tokens": eval_tokens}}}},
    }))
    return str(path)


def _grid(path: Path, tokens: int) -> str:
    path.write_text(json.dumps({
        "meta": {"grid": "no-such-grid.yaml"}, "lease": {"commit": None, "card": "NVIDIA H100 80GB HBM3"},
        "cells": [{"cell": "layers=a", "assignment": {"layers": "a"}, "metrics": {"stage3a": {
            "steps": 5, "tokens": tokens, "eval_kl_last": _kl(tokens), "eval_top1_last": _top1(tokens),
            "eval_tokens_last": 1000, "eval_step_last": 5}}}],
    }))
    return f"{path}:layers=a"


def test_the_fit_recovers_a_known_trend_and_where_it_reaches_the_targets(tmp_path, capsys):
    points = [_e2e(tmp_path / "a.json", 16_000_000), _e2e(tmp_path / "b.json", 64_000_000),
              _grid(tmp_path / "g.json", 32_000_000)]
    out, png = tmp_path / "fit.json", tmp_path / "fit.png"
    assert TOOL["main"](["--series", "s", *points, "--target-kl", "0.02", "--target-top1", "0.90",
                         "--tokens-per-s", "100000", "--out", str(out), "--plot", str(png)]) == 0
    fit = json.loads(out.read_text())["series"]["s"]["fit"]
    assert fit["kl_exponent"] == pytest.approx(-0.25, abs=1e-9)
    assert fit["top1_per_doubling"] == pytest.approx(0.03, abs=1e-9)
    assert fit["tokens_at_target_kl"] == pytest.approx((0.02 / 2.0) ** -4, rel=1e-6)  # 1e8
    assert fit["tokens_at_target_top1"] == pytest.approx(16e6 * 2 ** 5, rel=1e-6)  # 15 points = 5 doublings
    assert fit["largest_residual_kl"] < 1e-9 and fit["largest_residual_top1"] < 1e-9
    text = capsys.readouterr().out
    assert "KL target at about 100M stage-3a tokens (extrapolated) = 0.3 h of stage 3a" in text
    assert "top-1 target at about 512M" in text
    assert png.stat().st_size > 10_000
    rec = json.loads(out.read_text())
    assert [p["tokens"] for p in rec["series"]["s"]["points"]] == [16_000_000, 32_000_000, 64_000_000]
    assert rec["series"]["s"]["mixed_layouts"] is True  # the grid cell's layout is unknown here: flagged
    assert absolute_paths(rec) == set()  # committed in docs/results: the sources by name, no machine paths


def test_a_trend_away_from_the_target_says_never(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    _e2e(a, 16_000_000)
    _e2e(b, 64_000_000)
    for p, kl in ((a, 0.1), (b, 0.2)):  # KL rising with tokens
        rec = json.loads(p.read_text())
        rec["lease"]["stages"]["stage3a"]["trainer_heldout_at_end"]["eval_kl"] = kl
        p.write_text(json.dumps(rec))
    TOOL["main"](["--series", "up", str(a), str(b)])
    assert "KL target at about never (no trend toward it)" in capsys.readouterr().out


@pytest.mark.parametrize("case, message", [
    ("one length", "needs runs of at least two different stage-3a lengths"),
    ("other rows", "evaluated on different held-out rows"),
    ("mid-run", "is not at its end"),
    ("no cell", "no cell 'layers=zzz'"),
    ("not a record", "no stage-3a held-out figures"),
])
def test_points_that_do_not_compare_are_refused_with_one_line(tmp_path, case, message):
    a = _e2e(tmp_path / "a.json", 16_000_000)
    other = {
        "one length": lambda: _e2e(tmp_path / "b.json", 16_000_000),
        "other rows": lambda: _e2e(tmp_path / "b.json", 64_000_000, eval_tokens=999),
        "mid-run": lambda: _e2e(tmp_path / "b.json", 64_000_000, end_step=9),
        "no cell": lambda: _grid(tmp_path / "g.json", 64_000_000).replace("layers=a", "layers=zzz"),
        "not a record": lambda: (tmp_path / "x.json").write_text("{}") and str(tmp_path / "x.json"),
    }[case]()
    with pytest.raises(SystemExit, match=message):
        TOOL["main"](["--series", "s", a, other])
