"""lm-evaluation-harness integration: our HFLM subclass is registered, loads our models, and lm-eval's
log-likelihoods equal ours on the same requests."""

from __future__ import annotations

import pytest

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval not installed (pip install 'gendistill[lm-eval]')")

from gendistill.eval.harness import gendistill_lm_class, make_lm  # noqa: E402
from gendistill.eval.loglik import score_requests  # noqa: E402
from tests.eval.test_loglik import REQUESTS  # noqa: E402


def test_registered_with_lm_eval():
    from lm_eval.api.registry import get_model

    cls = gendistill_lm_class()
    assert get_model("gendistill") is cls


def test_lm_eval_loglik_matches_ours(model_factory, tok):
    from lm_eval.api.instance import Instance

    model = model_factory(tok)
    reqs = [r for r in REQUESTS if r[0]]  # lm-eval and we treat an empty context the same; keep it simple
    ours = score_requests(model, tok, reqs, show_progress=False)
    lm = make_lm(model, tok, batch_size=3)
    theirs = lm.loglikelihood(
        [Instance(request_type="loglikelihood", doc={}, arguments=r, idx=i) for i, r in enumerate(reqs)],
        disable_tqdm=True,
    )
    for o, (lp, greedy) in zip(ours, theirs):
        assert o.logprob == pytest.approx(float(lp), abs=1e-4)
        assert o.is_greedy == bool(greedy)


def test_loads_a_model_folder(tmp_path):
    """lm-eval's generate_until on a model folder loaded through our class is the model's own greedy continuation
    of the same tokens (decoded as lm-eval decodes, cut at the stop string)."""
    import torch
    from lm_eval.api.instance import Instance

    from tests.fixtures_teachers import make_tiny_folder

    model, tok = make_tiny_folder(tmp_path / "m", "llama")
    cls = gendistill_lm_class()
    lm = cls(pretrained=str(tmp_path / "m"), device="cpu", batch_size=2)
    contexts = ["Hello", "The capital of France is"]
    out = lm.generate_until(
        [Instance(request_type="generate_until", doc={}, idx=0,
                  arguments=(c, {"until": ["\n\n"], "max_gen_toks": 6, "do_sample": False})) for c in contexts],
        disable_tqdm=True,
    )
    for context, got in zip(contexts, out):
        ids = torch.tensor([lm.tok_encode(context)])
        with torch.no_grad():
            ref = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
        expected = tok.decode(ref[0, ids.shape[1]:], skip_special_tokens=True).split("\n\n")[0]
        assert got == expected and expected.strip(), (context, got, expected)


def test_lm_eval_task_run_agrees_with_gendistill_eval(model_factory, tok, tmp_path):
    """A whole lm-eval multiple-choice task (local JSON, lm-eval's own prompt/metric code) on our model equals our
    ``run_loglik`` on the same file, for acc and acc_norm."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from gendistill.eval.config import EvalConfig
    from gendistill.eval.runner import run_loglik
    from gendistill.eval.tasks import get_task
    from tests.eval.conftest import write_jsonl

    rows = [{"question": f"What is the capital of country {i}?", "choices": ["Paris", "Rome", "Berlin is it", "123"],
             "answer_idx": i % 4} for i in range(8)]
    data = write_jsonl(tmp_path / "quiz.jsonl", rows)
    (tmp_path / "quiz_mc.yaml").write_text(
        "task: quiz_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: answer_idx\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
    model = model_factory(tok)
    lm = make_lm(model, tok, batch_size=4)
    res = simple_evaluate(model=lm, tasks=["quiz_mc"], task_manager=TaskManager(include_path=str(tmp_path)))
    theirs = res["results"]["quiz_mc"]

    task = get_task(str(data))
    exs = task.load()
    row, _ = run_loglik(model, tok, task, exs, exs, EvalConfig(models=["x"], show_progress=False), "x")
    assert row["acc_raw"] == pytest.approx(theirs["acc,none"])
    assert row["acc_norm"] == pytest.approx(theirs["acc_norm,none"])
