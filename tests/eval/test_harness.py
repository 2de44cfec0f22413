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
    from tests.fixtures_teachers import make_tiny_folder

    make_tiny_folder(tmp_path / "m", "llama")
    cls = gendistill_lm_class()
    lm = cls(pretrained=str(tmp_path / "m"), device="cpu", batch_size=2)
    out = lm.generate_until(
        [lm_eval.api.instance.Instance(request_type="generate_until", doc={},
                                       arguments=("Hello", {"until": ["\n\n"], "max_gen_toks": 4, "do_sample": False}),
                                       idx=0)],
        disable_tqdm=True,
    )
    assert isinstance(out[0], str)
