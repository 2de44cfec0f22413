"""Report arithmetic: standard errors, chance, retention, the perplexity gap, position distributions, merging."""

from __future__ import annotations

import json
import math

import pytest

from gendistill.errors import DataError
from gendistill.eval import report as R


def test_mean_stderr():
    mu, se = R.mean_stderr([1, 0, 1, 1])
    assert mu == 0.75
    # sample variance (n-1): ((0.25^2)*3 + 0.75^2) / 3 = 0.25 ; se = sqrt(0.25 / 4)
    assert se == pytest.approx(math.sqrt(0.25 / 4))
    assert R.mean_stderr([1.0])[1] != R.mean_stderr([1.0])[1]  # NaN for n = 1
    # identical to lm-eval's sample stderr for a proportion: sqrt(p (1 - p) / (n - 1))
    p, n = 0.3, 10
    _, se2 = R.mean_stderr([1.0] * 3 + [0.0] * 7)
    assert se2 == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)))


def test_retention_and_gap():
    r = R.retention(teacher=0.60, student=0.45, chance=0.25)
    assert r["raw"] == pytest.approx(0.75)
    assert r["above_chance"] == pytest.approx((0.45 - 0.25) / (0.60 - 0.25))
    assert R.retention(0.25, 0.3, 0.25)["above_chance"] is None  # teacher at chance: undefined
    assert R.retention(0.0, 0.0, 0.0)["raw"] is None
    # the paper's example: within 0.2 pp under log-likelihood, 20.8 pp behind under generation → gap 20.6 pp
    assert R.perplexity_gap(t_gen=0.700, s_gen=0.492, t_ll=0.600, s_ll=0.598) == pytest.approx(0.206)


def _row(task, model, proto, acc, chance=0.25, n=100):
    return {"task": task, "model": model, "protocol": proto, "metric": "acc", "acc": acc,
            "stderr": math.sqrt(acc * (1 - acc) / (n - 1)), "n": n, "chance": chance}


ROWS = [
    _row("arc", "T", "loglik", 0.60), _row("arc", "T", "generate", 0.50),
    _row("arc", "S", "loglik", 0.58), _row("arc", "S", "generate", 0.30),
    _row("gsm", "T", "generate", 0.20, chance=0.0), _row("gsm", "S", "generate", 0.05, chance=0.0),
]


def test_comparisons():
    comps = R.comparisons(ROWS, "T")
    arc = next(c for c in comps if c["task"] == "arc")
    assert arc["delta_loglik"] == pytest.approx(0.02) and arc["delta_generate"] == pytest.approx(0.20)
    assert arc["perplexity_gap"] == pytest.approx(0.18)
    assert arc["retention_generate"]["raw"] == pytest.approx(0.6)
    assert arc["retention_generate"]["above_chance"] == pytest.approx(0.05 / 0.25)
    gsm = next(c for c in comps if c["task"] == "gsm")
    assert "perplexity_gap" not in gsm and gsm["retention_generate"]["raw"] == pytest.approx(0.25)


def test_position_distribution_flags_collapse():
    d = R.position_distribution([0, 0, 0, 1, None], [4] * 5)
    assert d == {"A": 0.75, "B": 0.25, "C": 0.0, "D": 0.0}
    assert R.position_distribution([None, None], [4, 4]) == {}


def test_markdown_json_plot(tmp_path):
    res = {"meta": {"models": ["T", "S"], "limit": 100, "seed": 0, "device": "cpu", "command": "x"},
           "rows": ROWS, "comparisons": R.comparisons(ROWS, "T"),
           "fidelity": [{"student": "S", "task": "arc", "exact_match": 0.5, "mean_first_divergence": 3.25}],
           "skipped": [{"task": "gsm", "protocol": "loglik", "reason": "generation only"}]}
    md = R.markdown(res)
    assert "| arc | S | generate | acc | 30.0 |" in md
    assert "| arc | S | 96.7 | 94.3 | 60.0 | 20.0 | 2.0 | 20.0 | 18.0 |" in md
    assert "gsm/loglik (generation only)" in md
    paths = R.write_report(res, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "results.json").read_text())["rows"][0]["acc"] == 0.60
    assert (tmp_path / "out" / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert set(paths) == {"json", "markdown", "plot"}
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def test_merge():
    a = {"meta": {"models": ["T", "S"], "tasks": ["arc"], "command": "a", "wall_seconds": 1}, "rows": ROWS[:4]}
    b = {"meta": {"models": ["T", "S"], "tasks": ["gsm"], "command": "b", "wall_seconds": 2}, "rows": ROWS[4:]}
    m = R.merge_results([a, b])
    assert m["meta"]["tasks"] == ["arc", "gsm"] and len(m["rows"]) == 6 and m["meta"]["wall_seconds"] == 3
    assert len(m["comparisons"]) == 2
    with pytest.raises(DataError, match="more than one part"):
        R.merge_results([a, a])
    c = {"meta": {"models": ["T"], "tasks": ["x"]}, "rows": []}
    with pytest.raises(DataError, match="evaluated models"):
        R.merge_results([a, c])
    # students scored later on the same tasks: compared against part 1's teacher
    later = [dict(r, model="S2") for r in ROWS if r["model"] == "S"]
    d = {"meta": {"models": ["S2"], "tasks": ["arc", "gsm"], "command": "d", "wall_seconds": 1}, "rows": later}
    m = R.merge_results([a, b, d])
    assert m["meta"]["models"] == ["T", "S", "S2"]
    assert {c["student"] for c in m["comparisons"]} == {"S", "S2"}
    assert [c for c in m["comparisons"] if c["student"] == "S2"] == [
        dict(c, student="S2") for c in m["comparisons"] if c["student"] == "S"]


def test_fidelity_helpers(tok):
    from gendistill.eval.fidelity import _assistant_mask, first_divergence, greedy_agreement

    assert first_divergence([1, 2, 3], [1, 2, 4]) == 2
    assert first_divergence([1, 2], [1, 2, 5]) == 2
    assert first_divergence([7], [7]) == 1
    g = greedy_agreement([[1, 2, 3], [4, 5]], [[1, 2, 3], [4, 6]])
    assert g["exact_match"] == 0.5 and g["mean_first_divergence"] == 2.0
    msgs = [{"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris is the capital."}]
    ids, mask = _assistant_mask(tok, msgs, 512)
    assert len(ids) == len(mask)
    masked = tok.decode([t for t, m in zip(ids, mask) if m])
    assert masked.startswith("Paris is the capital.") and "assistant" not in masked and "France" not in masked
