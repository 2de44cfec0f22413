"""benchmarks/eval_speed.py is a GPU benchmark; its plumbing (tasks read as the evaluator reads them, a student
converted on the fly, the fast / reference / lm-eval paths on the same examples, identical-answer counts, the timed
``gendistill eval`` command, JSON and table) runs on CPU with a tiny random teacher and two tiny .jsonl tasks so it does
not rot. CPU timings mean nothing.

The reference path is perturbed on purpose (one multiple-choice example's option scores rotated, one generated text
changed), so the identical-answer counts must find exactly those examples: they are computed, not assumed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from gendistill.io import absolute_paths
from tests.fixtures_teachers import make_tiny_folder

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "eval_speed.py"


def _load():
    spec = importlib.util.spec_from_file_location("eval_speed", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tasks(tmp_path: Path) -> tuple[Path, Path]:
    """Two YAML tasks over .jsonl data (multiple choice, short answer), 8 new tokens at most: seconds, not minutes."""
    mc = [{"id": f"q{i}", "question": f"Which word number {i}?", "choices": ["Paris", "Rome", "Berlin", "capital"],
           "answer_idx": i % 4} for i in range(5)]
    qa = [{"id": f"a{i}", "question": f"What is the capital number {i}?", "answer": "Paris", "aliases": ["paris"]}
          for i in range(5)]
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mc))
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in qa))
    mc_path, qa_path = tmp_path / "quiz_mc.yaml", tmp_path / "quiz_qa.yaml"
    mc_path.write_text("name: quiz_mc\ntype: multiple_choice\ndata: mc.jsonl\nmax_new_tokens: 8\n")
    qa_path.write_text("name: quiz_qa\ntype: short_answer\ndata: qa.jsonl\nmax_new_tokens: 8\n")
    return mc_path, qa_path


def _lm_eval_available() -> str | None:
    try:
        import lm_eval.models.huggingface  # noqa: F401
    except ImportError as exc:
        return f"lm-evaluation-harness not importable ({exc}); the lm-eval path is left out"
    return None


def test_eval_speed_cpu_plumbing(tmp_path, capsys, monkeypatch):
    mod = _load()
    make_tiny_folder(tmp_path / "teacher", "llama")
    mc_path, qa_path = _tasks(tmp_path)
    no_lm_eval = _lm_eval_available()
    paths = "fast,reference" if no_lm_eval else "fast,reference,lm-eval"

    real_loglik, real_generate = mod.run_loglik, mod.run_generate

    def rotated_loglik(path, model, tok, requests, *a, **kw):
        scores, info = real_loglik(path, model, tok, requests, *a, **kw)
        if path == "reference" and len(requests) >= 4 and requests[0][1] == " Paris":  # the MC task: 4 options each
            scores = scores[1:4] + scores[:1] + scores[4:]  # example 0's options rotated: another argmax
        return scores, info

    def changed_generate(path, model, tok, task, prompts, *a, **kw):
        texts, info = real_generate(path, model, tok, task, prompts, *a, **kw)
        if path == "reference":
            texts = [texts[0] + " (changed)", *texts[1:]]
        return texts, info

    monkeypatch.setattr(mod, "run_loglik", rotated_loglik)
    monkeypatch.setattr(mod, "run_generate", changed_generate)
    out = tmp_path / "speed.json"
    rc = mod.main(["--model", str(tmp_path / "teacher"), "--student", "convert", "--attention-layers", "0",
                   "--tasks", f"{mc_path},{qa_path}", "--limit", "3", "--reference-limit", "2",
                   "--lm-eval-limit", "1,loglik=2",
                   "--warmup", "1", "--paths", paths, "--device", "cpu", "--dtype", "float32", "--cli", "after",
                   "--out", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert not absolute_paths(data), "committed results carry no machine paths"
    assert data["card"] and data["versions"]["torch"] and data["command"].startswith("benchmarks/eval_speed.py")
    assert "quiz_mc.yaml,quiz_qa.yaml" in data["command"]  # both task files named, not only the last
    assert data["settings"]["models"] == ["teacher", "student-0"]
    rows = {(r["model"], r["task"], r["protocol"]): r for r in data["rows"]}
    assert set(rows) == {(m, t, p) for m in ("teacher", "student-0") for t in ("quiz_mc", "quiz_qa")
                         for p in ("loglik", "generate")}
    for (model, task, proto), r in rows.items():
        assert r["paths"]["fast"]["examples"] == 3 and r["paths"]["fast"]["examples_per_s"] > 0
        assert r["paths"]["reference"]["examples"] == 2 and r["paths"]["fast@2"]["examples"] == 2
        ident = r["identical_to_reference"]
        assert ident["n"] == 2 and 0 <= ident["answers_identical"] <= 2
        # generation: each timed call made twice in the model's pool of decode slots, the first call's time kept
        first = [r["paths"][k].get("first_call_seconds") for k in ("fast", "fast@2")]
        if proto == "generate":
            assert all(f is not None and f > 0 for f in first) and r["speedup_vs_reference_first_call"] > 0
        else:
            assert first == [None, None] and "speedup_vs_reference_first_call" not in r
        if proto == "generate":  # example 0's reference text was changed: found, and listed with both texts
            assert ident["texts_identical"] <= 1
            assert ident["mismatches"][0]["id"] in ("q0", "a0")
            assert ident["mismatches"][0]["text_b"].endswith("(changed)")
        elif task == "quiz_mc":  # example 0's option scores were rotated: another predicted option
            assert ident["answers_identical"] <= 1 and ident["mismatches"][0]["id"] == "q0"
            assert ident["max_abs_logprob_diff"] > 0
        if not no_lm_eval:  # per protocol: log-likelihood on 2, generation on 1 (and the fast path again on that 1)
            n_lm = 2 if proto == "loglik" else 1
            assert r["paths"]["lm-eval"]["examples"] == n_lm and r["paths"]["lm-eval"]["batch_size"] == 64
            assert r["speedup_vs_lm_eval"] > 0 and r["speedup_vs_reference"] > 0
            assert r["agreement_with_lm_eval"]["n"] == n_lm
            assert proto == "loglik" or r["paths"]["fast@1"]["examples"] == 1
    tot = data["totals"]
    gen_rows = [r for r in data["rows"] if r["protocol"] == "generate"]
    assert tot["generate"]["texts_identical_to_reference"] == [
        sum(r["identical_to_reference"]["texts_identical"] for r in gen_rows), 8]
    assert tot["generate"]["fast_examples"] == 12
    cli = data["cli"]
    assert len(cli) == 1 and cli[0]["rc"] == 0 and cli[0]["seconds"] > 0, cli
    assert cli[0]["examples"] == 2 * 2 * 2 * 3  # models x tasks x protocols x limit
    assert cli[0]["command"].startswith("gendistill eval -m teacher -m student-0 --tasks quiz_mc.yaml,quiz_qa.yaml")
    assert "same as ref" in capsys.readouterr().out
    if no_lm_eval:
        pytest.skip(no_lm_eval)


@pytest.mark.parametrize("text, expected", [("50", {"loglik": 50, "generate": 50}),
                                             ("50,loglik=500", {"loglik": 500, "generate": 50}),
                                             ("generate=7", {"loglik": 100, "generate": 7})])
def test_lm_eval_limit_per_protocol(text, expected):
    assert _load().per_protocol_limit(text) == expected


@pytest.mark.parametrize("text, message", [("0", "positive integer"), ("50,code=5", "unknown protocol 'code'"),
                                           ("loglik=x", "positive integer")])
def test_lm_eval_limit_bad_values_are_one_line(text, message, capsys):
    with pytest.raises(SystemExit) as e:
        _load().main(["--lm-eval-limit", text, "--paths", "fast", "--device", "cpu", "--cli", "off"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "--lm-eval-limit" in err


def test_eval_speed_bad_task_file(tmp_path, capsys):
    mod = _load()
    rc = mod.main(["--tasks", str(tmp_path / "missing.jsonl"), "--paths", "fast", "--device", "cpu", "--cli", "off",
                   "--out", str(tmp_path / "x.json")])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing.jsonl" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.json").exists()


def test_eval_speed_overhead_sweep_and_profile(tmp_path):
    """--overhead-sweep times the first model's fast path once per planner scale (the free-batch end plans at least
    as many batches as the costly end); --profile writes one table per task and protocol with the engines' ranges."""
    mod = _load()
    make_tiny_folder(tmp_path / "teacher", "llama")
    mc_path, qa_path = _tasks(tmp_path)
    out, prof = tmp_path / "speed.json", tmp_path / "prof"
    rc = mod.main(["--model", str(tmp_path / "teacher"), "--student", "none", "--tasks", f"{mc_path},{qa_path}",
                   "--limit", "5", "--warmup", "1", "--paths", "fast", "--device", "cpu", "--dtype", "float32",
                   "--cli", "off", "--overhead-sweep", "0,1e9", "--sweep-tasks", "quiz_mc", "--profile", str(prof),
                   "--profile-examples", "3", "--out", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    sweep = {(r["protocol"], r["overhead_scale"]): r for r in data["overhead_sweep"]}
    assert set(sweep) == {(p, s) for p in ("loglik", "generate") for s in (0.0, 1e9)}
    assert all(r["task"] == "quiz_mc" and r["model"] == "teacher" and r["examples"] == 5 for r in sweep.values())
    assert sweep[("generate", 0.0)]["batches"] >= sweep[("generate", 1e9)]["batches"] == 1
    assert sorted(data["profiles"]) == ["profile_quiz_mc_generate.txt", "profile_quiz_mc_loglik.txt"]
    gen_text = (prof / "profile_quiz_mc_generate.txt").read_text()
    assert "generate/prefill" in gen_text and "generate/check" in gen_text
    assert "loglik/batch" in (prof / "profile_quiz_mc_loglik.txt").read_text()


def test_eval_speed_bad_sweep(tmp_path, capsys):
    mod = _load()
    with pytest.raises(SystemExit) as exc:
        mod.main(["--overhead-sweep", "0,fast", "--out", str(tmp_path / "x.json")])
    assert exc.value.code == 2 and "--overhead-sweep" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_a_stopped_sweep_keeps_its_rows(tmp_path, monkeypatch):
    """Every sweep row is saved when it is timed: a run stopped mid-sweep (a lease's time limit) keeps them."""
    mod = _load()
    make_tiny_folder(tmp_path / "teacher", "llama")
    mc_path, _ = _tasks(tmp_path)
    real, calls = mod.fast_run, []

    def stopping(*a, **kw):
        calls.append(1)
        if len(calls) == 4:  # the warm-up of the second protocol, after both loglik scales
            raise RuntimeError("stopped")
        return real(*a, **kw)

    monkeypatch.setattr(mod, "fast_run", stopping)
    out = tmp_path / "speed.json"
    with pytest.raises(RuntimeError, match="stopped"):
        mod.main(["--model", str(tmp_path / "teacher"), "--student", "none", "--tasks", str(mc_path), "--limit", "3",
                  "--warmup", "1", "--paths", "fast", "--device", "cpu", "--dtype", "float32", "--cli", "off",
                  "--overhead-sweep", "0,1e9", "--sweep-tasks", "quiz_mc", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["complete"] is False
    assert [(r["protocol"], r["overhead_scale"]) for r in data["overhead_sweep"]] == [("loglik", 0.0), ("loglik", 1e9)]


def test_eval_speed_sweep_tasks_must_be_evaluated(tmp_path, capsys):
    mod = _load()
    mc_path, _ = _tasks(tmp_path)
    rc = mod.main(["--tasks", str(mc_path), "--overhead-sweep", "1", "--sweep-tasks", "quiz_mc,nope", "--paths",
                   "fast", "--device", "cpu", "--cli", "off", "--out", str(tmp_path / "x.json")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --sweep-tasks: nope not among --tasks") and len(err.splitlines()) == 1
    assert not (tmp_path / "x.json").exists()
    with pytest.raises(SystemExit) as exc:
        mod.main(["--overhead-sweep", "nan", "--out", str(tmp_path / "x.json")])
    assert exc.value.code == 2 and ">= 0" in capsys.readouterr().err
