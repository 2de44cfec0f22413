"""The generated recall tasks: the answer positions are right (an induction oracle solves them perfectly), and the
scores are the stated formulas."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gendistill.select.config import RecallConfig
from gendistill.select.recall import answer_logprobs, make_recall, recall_scores


class _Out:
    def __init__(self, h):
        self.last_hidden_state = h


class _Induction(nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids, use_cache=False):
        B, T = input_ids.shape
        h = torch.zeros(B, T, self.vocab)
        for b in range(B):
            for t in range(T):
                prev = (input_ids[b, :t] == input_ids[b, t]).nonzero()
                if len(prev):
                    h[b, t, input_ids[b, int(prev[-1]) + 1]] = 1.0
        return _Out(h)


class InductionOracle(nn.Module):
    """Predicts, at each position, the token that followed the previous occurrence of the current token
    (one-hot "hidden state" = that token; lm_head = identity scaled up)."""

    def __init__(self, vocab: int):
        super().__init__()
        self.model = _Induction(vocab)
        self.lm_head = nn.Linear(vocab, vocab, bias=False)
        with torch.no_grad():
            self.lm_head.weight.copy_(20 * torch.eye(vocab))


def _check_structure(rs, tok):
    special = set(tok.all_special_ids)
    for r, p, a in zip(rs.rows.tolist(), rs.positions.tolist(), rs.answers.tolist()):
        ids = rs.input_ids[r].tolist()
        key = ids[p]
        assert ids[p + 1] == a and key not in special and a not in special
        earlier = [j for j in range(p) if ids[j] == key]
        assert earlier and ids[earlier[0] + 1] == a  # the key was shown with its value before it is asked


@pytest.mark.parametrize("kind", ["mqar", "needle"])
def test_recall_answers_follow_their_keys_and_an_oracle_solves_them(tok, kind):
    cfg = RecallConfig(kind=kind, prompts=3, pairs=6, queries=3, context=40)
    hay = list(range(5, 200)) * 2
    rs = make_recall(tok, cfg, seed=1, haystack=hay)
    assert len(rs.answers) == cfg.prompts * cfg.queries
    _check_structure(rs, tok)
    if kind == "needle":
        assert rs.input_ids.shape[1] >= cfg.context + 4 * cfg.queries
    oracle = InductionOracle(len(tok))
    lp = answer_logprobs(oracle, rs, batch_size=2, device=torch.device("cpu"))
    flat = answer_logprobs(oracle, rs, batch_size=3, device=torch.device("cpu"))  # batching does not matter
    torch.testing.assert_close(lp, flat)
    sc = recall_scores(lp, lp, rs.answers)
    assert sc["recall_acc"] == 1.0 and sc["teacher_recall_acc"] == 1.0 and abs(sc["recall_kl"]) < 1e-6


def test_recall_scores_match_the_formulas():
    torch.manual_seed(0)
    s = torch.log_softmax(torch.randn(5, 7, dtype=torch.float64), -1)
    t = torch.log_softmax(3 * torch.randn(5, 7, dtype=torch.float64), -1)
    ans = t.argmax(-1)
    sc = recall_scores(s, t, ans)
    kl = sum(float((t[i].exp() * (t[i] - s[i])).sum()) for i in range(5)) / 5
    assert sc["recall_kl"] == pytest.approx(kl, rel=1e-12)
    assert sc["teacher_recall_acc"] == 1.0
    assert sc["recall_acc"] == pytest.approx(float((s.argmax(-1) == ans).double().mean()))


def test_recall_settings_that_cannot_work_are_one_clear_error(tok):
    from gendistill.errors import ConfigError

    with pytest.raises(ConfigError, match=r"recall.queries \(9\) must be at most recall.pairs \(4\)"):
        make_recall(tok, RecallConfig(pairs=4, queries=9), seed=0)
    with pytest.raises(ConfigError, match="recall.context 100: the held-out text has only 10 tokens"):
        make_recall(tok, RecallConfig(kind="needle", context=100), seed=0, haystack=list(range(10)))


def test_a_session_builds_the_needle_task_from_held_out_text(make_cfg, tok):
    from gendistill.select.session import Session, prepare_output
    from tests.select._synthetic import synthetic_teacher

    cfg = make_cfg("kl-guided", 1, recall=dict(kind="needle", prompts=2, queries=3, context=48))
    teacher = synthetic_teacher(tok, num_layers=2)
    session = Session(cfg, prepare_output(cfg, False, False), teacher=teacher, tokenizer=tok, progress="none")
    rs, t_lp = session.recall_task()
    _check_structure(rs, tok)
    assert t_lp.shape == (6, len(tok))
    text = {t for seq in session._eval_seqs for t, v in zip(seq.input_ids, seq.valid) if v}
    assert set(rs.input_ids[0, 1:10].tolist()) <= text  # the haystack is the held-out text
