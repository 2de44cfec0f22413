"""Report arithmetic: standard errors, chance, retention, the protocol gap, position distributions, merging."""

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


# issue 24's `make demo` run, on the 32-question 4-option quiz: teacher 23/32 LL, 10/32 gen; undistilled 6/32, 0/32
ISSUE_24 = {"t_ll": 23 / 32, "t_gen": 10 / 32, "s_ll": 6 / 32, "s_gen": 0.0, "chance": 0.25}


def test_protocol_gap_sign_and_edges():
    # the student that fails under generation: log-likelihood keeps 26.1 % of the teacher, generation none → +26.1
    # points, positive = generation reveals the loss (the old points formula said −21.9 here)
    assert R.protocol_gap(**ISSUE_24) == pytest.approx((6 / 23) - 0.0)
    assert R.protocol_gap(**ISSUE_24) > 0
    # a student as good as its teacher keeps everything under both: no gap, whatever the teacher's own protocol gap
    assert R.protocol_gap(t_gen=0.3125, s_gen=0.3125, t_ll=0.71875, s_ll=0.71875, chance=0.25) == 0
    # the teacher at (or below) chance under either protocol has no skill to keep: undefined, not a ratio of noise
    assert R.protocol_gap(t_gen=0.25, s_gen=0.0, t_ll=0.7, s_ll=0.5, chance=0.25) is None
    assert R.protocol_gap(t_gen=0.5, s_gen=0.4, t_ll=0.24, s_ll=0.3, chance=0.25) is None
    assert R.protocol_gap(t_gen=0.0, s_gen=0.0, t_ll=0.0, s_ll=0.0, chance=0.0) is None  # open answers, teacher at 0
    # a student that keeps more under generation (0.45 / 0.5) than under log-likelihood (0.5 / 0.8): negative
    assert R.protocol_gap(t_gen=0.5, s_gen=0.45, t_ll=0.8, s_ll=0.5, chance=0.25) == pytest.approx(0.625 - 0.9)
    # open answers (chance 0): the same ratios
    assert R.protocol_gap(t_gen=0.2, s_gen=0.05, t_ll=0.4, s_ll=0.3, chance=0.0) == pytest.approx(0.75 - 0.25)
    assert [R.signed_points(x) for x in (0.2609, -0.275, 0.0, None)] == ["+26.1", "-27.5", "+0.0", "–"]


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
    assert arc["protocol_gap"] == pytest.approx(0.58 / 0.60 - 0.30 / 0.50)
    assert arc["retention_generate"]["raw"] == pytest.approx(0.6)
    assert arc["retention_generate"]["above_chance"] == pytest.approx(0.05 / 0.25)
    gsm = next(c for c in comps if c["task"] == "gsm")
    assert "protocol_gap" not in gsm and gsm["retention_generate"]["raw"] == pytest.approx(0.25)


def test_comparisons_gap_on_the_issue_example_and_teacher_at_chance():
    rows = [_row("quiz", "T", "loglik", 23 / 32, n=32), _row("quiz", "T", "generate", 10 / 32, n=32),
            _row("quiz", "U", "loglik", 6 / 32, n=32), _row("quiz", "U", "generate", 0.0, n=32),
            _row("flat", "T", "loglik", 0.6), _row("flat", "T", "generate", 0.25),
            _row("flat", "U", "loglik", 0.3), _row("flat", "U", "generate", 0.0)]
    comps = {c["task"]: c for c in R.comparisons(rows, "T")}
    assert comps["quiz"]["protocol_gap"] == pytest.approx(R.protocol_gap(**ISSUE_24))
    assert comps["quiz"]["protocol_gap"] > 0
    assert comps["flat"]["protocol_gap"] is None  # the teacher guesses under generation
    md = R.markdown({"meta": {"models": ["T", "U"]}, "rows": rows, "comparisons": list(comps.values())})
    assert "| quiz | U | 26.1 | -13.3 | 0.0 | -400.0 | 53.1 | 31.2 | +26.1 |" in md
    assert "| flat | U |" in md and md.split("| flat | U |")[1].split("\n")[0].rstrip().endswith("| – |")


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
    assert "| arc | S | 96.7 | 94.3 | 60.0 | 20.0 | 2.0 | 20.0 | +36.7 |" in md
    assert "positive = generation reveals a loss that log-likelihood hides" in md
    assert "gsm/loglik (generation only)" in md
    paths = R.write_report(res, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "results.json").read_text())["rows"][0]["acc"] == 0.60
    assert (tmp_path / "out" / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert set(paths) == {"json", "markdown", "plot"}
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def test_markdown_states_each_tasks_generation_budget():
    rows = [{**r, "max_new_tokens": 64 if r["task"] == "arc" else 256} if r["protocol"] == "generate" else r
            for r in ROWS]
    md = R.markdown({"meta": {"models": ["T", "S"]}, "rows": rows})
    assert "Max new tokens per generated reply: arc 64, gsm 256 (" in md
    assert "Max new tokens" not in R.markdown({"meta": {"models": ["T"]}, "rows": ROWS[:1]})  # log-likelihood only


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
    # parts scored on other examples are not merged (retention would compare different questions)
    for key, value in (("limit", 20), ("seed", 7), ("smoke", True), ("data_source", "hub")):
        other = {**d, "meta": {**d["meta"], key: value}}
        with pytest.raises(DataError, match=f"part 3 selected other examples: {key} "):
            R.merge_results([a, b, other])


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
