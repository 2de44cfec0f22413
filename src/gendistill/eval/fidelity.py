"""Teacher–student fidelity, beyond benchmark accuracy.

* :func:`greedy_agreement` — over the same prompts, how often the student's greedy reply is token-for-token the
  teacher's (exact match), and where they first diverge (mean first-divergence position, and the share of pairs that
  agree on at least the first 8/32 tokens).
* :func:`heldout_fidelity` (in :mod:`gendistill.eval.heldout`) — teacher-forced top-1 agreement and KL on held-out
  rows: the one function behind every such figure (the trainer's held-out evaluation, ``gendistill eval``, the demo,
  ``tools/e2e.py``).
* :func:`teacher_forced` — the same on held-out chat conversations (one row each, assistant tokens only;
  :func:`load_chat_heldout` reads them: the first N of a file, as the trainer holds out). Both models need the same
  tokenizer (students converted from the teacher share it).
* :func:`answer_agreement` — how often the student's extracted answer equals the teacher's.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch

from gendistill.errors import ConfigError, DataError, GendistillError
from gendistill.io import data_dir, iter_jsonl
from gendistill.eval.heldout import heldout_fidelity
from gendistill.eval.prompts import apply_chat


def first_divergence(a: list[int], b: list[int]) -> int:
    """Index of the first position where ``a`` and ``b`` differ (``len`` of the shorter if one is a prefix of the
    other and they differ in length; ``len(a)`` if identical)."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def greedy_agreement(teacher: list[list[int]], student: list[list[int]]) -> dict[str, Any]:
    if len(teacher) != len(student):
        raise ValueError("teacher and student must have the same number of generations")
    if not teacher:
        return {"n": 0}
    div = [first_divergence(t, s) for t, s in zip(teacher, student)]
    exact = [t == s for t, s in zip(teacher, student)]
    return {
        "n": len(teacher),
        "exact_match": sum(exact) / len(exact),
        "mean_first_divergence": sum(div) / len(div),
        "agree_first_8": sum(d >= 8 or e for d, e in zip(div, exact)) / len(div),
        "agree_first_32": sum(d >= 32 or e for d, e in zip(div, exact)) / len(div),
        "mean_teacher_tokens": sum(len(t) for t in teacher) / len(teacher),
    }


def answer_agreement(teacher: list[Any], student: list[Any]) -> dict[str, Any]:
    """How often the student's extracted answer (letter index, number, alias match ...) equals the teacher's, over
    the same questions in the same order. ``None`` (no valid answer) counts as an answer: two invalid replies agree.
    For a weak teacher that collapses to one option this, not accuracy, shows whether the student copies it.

    ``answer_agreement_chance`` is the agreement two models would reach answering independently with the same answer
    shares (sum over answers of teacher share x student share): a teacher that answers A on 90 % of questions and a
    student on 60 % agree on at least 54 % of questions by chance alone (0.9 x 0.6 on A, plus the other answers).
    ``answer_kappa`` is Cohen's kappa, (observed - chance) / (1 - chance): 0 when the student's answers say nothing
    about the teacher's beyond those shares, 1 when they are the teacher's; ``None`` when both always give the same
    one answer (chance is 1)."""
    if len(teacher) != len(student):
        raise ValueError("teacher and student must answer the same questions")
    if not teacher:
        return {}
    n = len(teacher)
    same = [a == b for a, b in zip(teacher, student)]
    both_valid = [(a == b) for a, b in zip(teacher, student) if a is not None and b is not None]
    t_share, s_share = Counter(map(_answer_key, teacher)), Counter(map(_answer_key, student))
    chance = sum(c * s_share[k] for k, c in t_share.items()) / (n * n)
    observed = sum(same) / n
    return {"answer_agreement": observed,
            "answer_agreement_valid": (sum(both_valid) / len(both_valid)) if both_valid else None,
            "answer_agreement_chance": chance,
            "answer_kappa": (observed - chance) / (1.0 - chance) if chance < 1.0 else None}


def _answer_key(answer: Any) -> Any:
    """A hashable stand-in for an extracted answer: itself, or an unhashable one (an alias list) as a tagged
    ``repr`` that no hashable answer can equal."""
    try:
        hash(answer)
        return answer
    except TypeError:
        return ("unhashable answer", repr(answer))


#: The default ``--fidelity-chat`` data: the data folder's ``sft_mix``, which shipped recipes distill on in stage 3b.
DEFAULT_CHAT_FILE = "sft_mix.jsonl.gz"
#: How many of its first conversations (file order) no shipped recipe trains on. The trainer holds out the first
#: ``heldout_documents`` records of each source and trains on the rest (``distill.data.streaming.SourceReader``);
#: among the shipped recipes that read sft_mix the smallest is tiny-cpu's 4 (smollm2-135m and smollm2-135m-lease, and
#: the grids built on the lease recipe, hold out 64). tests/eval/test_fidelity_default.py keeps this in step with them.
DEFAULT_CHAT_HELDOUT = 4


def check_chat_count(n: int, path: str | Path | None) -> None:
    """Refuse ``n`` default conversations when the recipes train on some of them (ConfigError, one line)."""
    if path is None and n > DEFAULT_CHAT_HELDOUT:
        raise ConfigError(
            f"--fidelity-chat: {n:,} > {DEFAULT_CHAT_HELDOUT}: only the first {DEFAULT_CHAT_HELDOUT} conversations of "
            f"{DEFAULT_CHAT_FILE} are held out by every shipped recipe (the rest are trained on); pass --fidelity-data "
            f"FILE with unseen conversations, or score the trainer's held-out rows with --fidelity-heldout "
            f"RUN/heldout/stage3b.safetensors")


def load_chat_heldout(path: str | Path | None, n: int) -> list[list[dict[str, str]]]:
    """The first ``n`` conversations (``messages`` lists, file order) of a JSONL file — the trainer's held-out rule.
    By default the data folder's ``sft_mix``, of which at most :data:`DEFAULT_CHAT_HELDOUT` are held out by every
    shipped recipe (more is refused: :func:`check_chat_count`). A file with fewer gives all it has."""
    check_chat_count(n, path)
    if path is None:
        d = data_dir()
        if d is None:
            raise DataError("no held-out chat data: pass --fidelity-data or set GENDISTILL_DATA_DIR")
        path = d / DEFAULT_CHAT_FILE
    rows = []
    for lineno, obj in iter_jsonl(path):
        if len(rows) == n:
            break
        msgs = obj.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in msgs
        ):
            raise DataError(f"{path}:{lineno}: field 'messages' must be a list of {{role, content}} objects")
        rows.append(msgs)
    if not rows:
        raise DataError(f"{path}: no conversations")
    return rows


def _assistant_mask(tokenizer, messages: list[dict[str, str]], max_tokens: int) -> tuple[list[int], list[bool]]:
    """Token ids of the whole templated conversation and a mask that is True on assistant-content tokens."""
    ids: list[int] = []
    mask: list[bool] = []
    prev = ""
    for k in range(len(messages)):
        text = apply_chat(tokenizer, messages[: k + 1], add_generation_prompt=False)
        if not text.startswith(prev):  # template not prefix-stable: restart (earlier tokens stay as they were)
            prev = ""
        pieces = [(text[len(prev) :], messages[k]["role"] == "assistant")]
        if messages[k]["role"] == "assistant":
            # the assistant header ("<|im_start|>assistant\n") is template, not content: leave it out of the mask
            head = apply_chat(tokenizer, messages[:k], add_generation_prompt=True) if k else ""
            if head.startswith(prev) and text.startswith(head):
                pieces = [(head[len(prev) :], False), (text[len(head) :], True)]
        for piece, is_assistant in pieces:
            toks = list(tokenizer(piece, add_special_tokens=False)["input_ids"]) if piece else []
            ids.extend(toks)
            mask.extend([is_assistant] * len(toks))
        prev = text
    return ids[:max_tokens], mask[:max_tokens]


def conversation_rows(tokenizer, conversations: list[list[dict[str, str]]], *,
                      max_tokens: int = 512) -> dict[str, torch.Tensor]:
    """One row per conversation, in the rows format :func:`heldout_fidelity` reads: ``input_ids``, ``position_ids``
    (``0..T-1``, the padding at the end continuing them), ``loss_mask`` (True at ``t`` when token ``t + 1`` is
    assistant content) and ``labels`` (the next token there, -100 elsewhere), all ``[N, T]`` with ``T`` the longest
    templated conversation (at most ``max_tokens``). Padding sits after a row's last token, where causal attention and
    the KDA state never look back at it."""
    encoded = [_assistant_mask(tokenizer, msgs, max_tokens) for msgs in conversations]
    T = max((len(ids) for ids, _ in encoded), default=0)
    n = len(encoded)
    input_ids = torch.zeros(n, max(T, 1), dtype=torch.long)
    loss_mask = torch.zeros(n, max(T, 1), dtype=torch.bool)
    for r, (ids, mask) in enumerate(encoded):
        input_ids[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        if len(ids) > 1:
            loss_mask[r, : len(ids) - 1] = torch.tensor(mask[1:], dtype=torch.bool)
    labels = torch.full_like(input_ids, -100)
    labels[:, :-1] = torch.where(loss_mask[:, :-1], input_ids[:, 1:], -100)
    position_ids = torch.arange(input_ids.shape[1]).expand(n, -1).contiguous()
    return {"input_ids": input_ids, "position_ids": position_ids, "loss_mask": loss_mask, "labels": labels}


def teacher_forced(
    teacher, student, tokenizer, conversations: list[list[dict[str, str]]], *, max_tokens: int = 512,
    batch_rows: int = 8, show_progress: bool = True,
) -> dict[str, Any]:
    """Top-1 agreement and mean KL(teacher ‖ student) per assistant token (nats) on held-out conversations: their
    :func:`conversation_rows` through :func:`heldout_fidelity`."""
    rows = conversation_rows(tokenizer, conversations, max_tokens=max_tokens)
    res = heldout_fidelity(teacher, student, rows, batch_rows=batch_rows, show_progress=show_progress,
                           desc="fidelity (chat)")
    res.pop("n_sequences", None)
    return {"n_conversations": len(conversations), **res}
