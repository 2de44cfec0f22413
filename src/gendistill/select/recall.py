"""Recall tasks generated from the tokenizer (no data files): multi-query associative recall and needle retrieval.

Both are sets of sequences with marked answer positions: at position ``p`` of row ``r`` the model has just read a
key that appeared earlier in the context, and must predict the value that followed it there. The score compares the
student's next-token distribution there with the teacher's (KL, what selection optimises: how much of the teacher's
recall survives) and reports both models' accuracy on the true value.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gendistill.errors import ConfigError
from gendistill.select.config import RecallConfig


@dataclass
class RecallSet:
    """``input_ids [N, T]``; ``rows, positions, answers [M]``: the prediction at ``input_ids[rows, positions]`` should
    be ``answers``."""

    input_ids: torch.Tensor
    rows: torch.Tensor
    positions: torch.Tensor
    answers: torch.Tensor

    @property
    def tokens(self) -> int:
        return int(self.input_ids.numel())


def token_pool(tokenizer: Any) -> np.ndarray:
    """Token ids usable as keys and values: the whole vocabulary minus special tokens."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    pool = np.array([i for i in range(len(tokenizer)) if i not in special], dtype=np.int64)
    return pool


def _prefix(tokenizer: Any) -> list[int]:
    bos = getattr(tokenizer, "bos_token_id", None)
    return [int(bos)] if bos is not None else []


def make_mqar(tokenizer: Any, cfg: RecallConfig, seed: int) -> RecallSet:
    """``[bos] k1 v1 ... kn vn  q1 a1 ... qm am``: the queries are keys drawn again (without repetition), each
    followed by its value, so later queries also see earlier answers (Zoology's multi-query associative recall)."""
    pool = token_pool(tokenizer)
    if cfg.queries > cfg.pairs:
        raise ConfigError(f"recall.queries ({cfg.queries}) must be at most recall.pairs ({cfg.pairs})")
    if len(pool) < 2 * cfg.pairs:
        raise ConfigError(f"recall.pairs {cfg.pairs}: the tokenizer has only {len(pool)} non-special tokens")
    rng = np.random.default_rng(seed)
    pre = _prefix(tokenizer)
    seqs, rows, pos, ans = [], [], [], []
    for r in range(cfg.prompts):
        kv = rng.choice(pool, size=2 * cfg.pairs, replace=False)
        keys, values = kv[: cfg.pairs], kv[cfg.pairs :]
        ids = list(pre)
        for k, v in zip(keys, values):
            ids += [int(k), int(v)]
        for j in rng.choice(cfg.pairs, size=cfg.queries, replace=False):
            ids.append(int(keys[j]))
            rows.append(r)
            pos.append(len(ids) - 1)
            ans.append(int(values[j]))
            ids.append(int(values[j]))
        seqs.append(ids)
    return _pack(seqs, rows, pos, ans)


def make_needle(tokenizer: Any, cfg: RecallConfig, seed: int, haystack: list[int]) -> RecallSet:
    """``queries`` key/value token pairs inserted at random depths of ``cfg.context`` tokens of held-out text, then
    the keys asked again at the end (in a shuffled order), each followed by its value. Keys and values are tokens
    that the text around them does not contain, so each key has one answer."""
    if len(haystack) < cfg.context:
        raise ConfigError(
            f"recall.context {cfg.context}: the held-out text has only {len(haystack)} tokens; lower recall.context"
        )
    pool = token_pool(tokenizer)
    rng = np.random.default_rng(seed)
    pre = _prefix(tokenizer)
    seqs, rows, pos, ans = [], [], [], []
    for r in range(cfg.prompts):
        start = int(rng.integers(0, len(haystack) - cfg.context + 1))
        text = [int(t) for t in haystack[start : start + cfg.context]]
        free = np.setdiff1d(pool, np.asarray(text))  # keys and values the text never shows: one answer per key
        if len(free) < 2 * cfg.queries:
            raise ConfigError(f"recall.queries {cfg.queries}: too few tokens absent from the held-out text")
        kv = rng.choice(free, size=2 * cfg.queries, replace=False)
        keys, values = kv[: cfg.queries], kv[cfg.queries :]
        depths = sorted(rng.choice(cfg.context, size=cfg.queries, replace=False).tolist(), reverse=True)
        for d, k, v in zip(depths, keys, values):
            text[d:d] = [int(k), int(v)]
        ids = pre + text
        for j in rng.permutation(cfg.queries):
            ids.append(int(keys[j]))
            rows.append(r)
            pos.append(len(ids) - 1)
            ans.append(int(values[j]))
            ids.append(int(values[j]))
        seqs.append(ids)
    return _pack(seqs, rows, pos, ans)


def _pack(seqs: list[list[int]], rows: list[int], pos: list[int], ans: list[int]) -> RecallSet:
    T = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), T, dtype=torch.long)  # right padding is never read: it comes after every answer
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
    return RecallSet(ids, torch.tensor(rows), torch.tensor(pos), torch.tensor(ans))


def make_recall(tokenizer: Any, cfg: RecallConfig, seed: int, haystack: list[int] | None = None) -> RecallSet:
    if cfg.kind == "mqar":
        return make_mqar(tokenizer, cfg, seed)
    return make_needle(tokenizer, cfg, seed, haystack or [])


@torch.no_grad()
def answer_logprobs(model: nn.Module, rs: RecallSet, batch_size: int, device: torch.device,
                    autocast: Any = contextlib.nullcontext) -> torch.Tensor:
    """Next-token log-probabilities ``[M, V]`` (float32) at the answer positions; only those rows go through the
    vocabulary projection."""
    was = model.training
    model.eval()
    out = []
    base = getattr(model, "model", model)
    for i in range(0, rs.input_ids.shape[0], batch_size):
        ids = rs.input_ids[i : i + batch_size].to(device)
        sel = (rs.rows >= i) & (rs.rows < i + batch_size)
        with autocast():
            h = base(input_ids=ids, use_cache=False).last_hidden_state
            h = h[(rs.rows[sel] - i).to(device), rs.positions[sel].to(device)]
            logits = model.lm_head(h)
        out.append(F.log_softmax(logits.float(), dim=-1))
    model.train(was)
    return torch.cat(out)


def recall_scores(student_lp: torch.Tensor, teacher_lp: torch.Tensor, answers: torch.Tensor) -> dict[str, float]:
    """``recall_kl``: mean KL(teacher || student) over the answer positions; ``recall_acc`` / ``teacher_recall_acc``:
    fraction of answers each model ranks first."""
    kl = (teacher_lp.exp() * (teacher_lp - student_lp)).sum(-1).mean()
    answers = answers.to(student_lp.device)
    return {
        "recall_kl": float(kl),
        "recall_acc": float((student_lp.argmax(-1) == answers).float().mean()),
        "teacher_recall_acc": float((teacher_lp.argmax(-1) == answers.to(teacher_lp.device)).float().mean()),
    }
