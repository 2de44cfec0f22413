"""Teacher–student fidelity, beyond benchmark accuracy.

* :func:`greedy_agreement` — over the same prompts, how often the student's greedy reply is token-for-token the
  teacher's (exact match), and where they first diverge (mean first-divergence position, and the share of pairs that
  agree on at least the first 8/32 tokens).
* :func:`teacher_forced` — on held-out chat data, both models read the same token sequence; on the assistant tokens
  we measure top-1 agreement (the student's argmax equals the teacher's) and the mean per-token
  KL(teacher ‖ student) in nats. Both need the same tokenizer (students converted from the teacher share it).
* :func:`teacher_forced_batches` — the same two figures on batches the distillation pipeline built (its held-out
  slice, packed, with the trainer's own loss mask), so "held out" means what the trainer held out.
* :func:`answer_agreement` — how often the student's extracted answer equals the teacher's.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from gendistill.errors import DataError, GendistillError
from gendistill.io import data_dir, iter_jsonl
from gendistill.eval.progress import progress
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
    For a weak teacher that collapses to one option this, not accuracy, shows whether the student copies it."""
    if len(teacher) != len(student):
        raise ValueError("teacher and student must answer the same questions")
    if not teacher:
        return {}
    same = [a == b for a, b in zip(teacher, student)]
    both_valid = [(a == b) for a, b in zip(teacher, student) if a is not None and b is not None]
    return {"answer_agreement": sum(same) / len(same),
            "answer_agreement_valid": (sum(both_valid) / len(both_valid)) if both_valid else None}


def load_chat_heldout(path: str | Path | None, n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """``n`` conversations (``messages`` lists) from a JSONL file; by default the tail of ``shared/data/sft_mix`` —
    the last 5 % of rows, which the distillation recipes hold out — sampled deterministically."""
    if path is None:
        d = data_dir()
        if d is None:
            raise DataError("no held-out chat data: pass --fidelity-data or set GENDISTILL_DATA_DIR")
        path = d / "sft_mix.jsonl.gz"
    rows = []
    for lineno, obj in iter_jsonl(path):
        msgs = obj.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in msgs
        ):
            raise DataError(f"{path}:{lineno}: field 'messages' must be a list of {{role, content}} objects")
        rows.append(msgs)
    if not rows:
        raise DataError(f"{path}: no conversations")
    tail = rows[int(len(rows) * 0.95) :] or rows
    rng = random.Random(seed)
    return rng.sample(tail, min(n, len(tail)))


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


@torch.no_grad()
def teacher_forced(
    teacher, student, tokenizer, conversations: list[list[dict[str, str]]], *, max_tokens: int = 512,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Top-1 agreement and mean KL(teacher ‖ student) per assistant token (nats)."""
    vt = teacher.get_output_embeddings().weight.shape[0]
    vs = student.get_output_embeddings().weight.shape[0]
    if vt != vs:
        raise GendistillError(f"teacher and student vocabularies differ ({vt} vs {vs}); teacher-forced fidelity "
                              "needs a shared tokenizer")
    agree = kl_sum = n_tok = 0.0
    bar = progress(total=len(conversations), desc="fidelity", enabled=show_progress)
    dev_t = next(teacher.parameters()).device
    dev_s = next(student.parameters()).device
    for msgs in conversations:
        ids, mask = _assistant_mask(tokenizer, msgs, max_tokens)
        bar.update(1)
        if len(ids) < 2 or not any(mask[1:]):
            continue
        x = torch.tensor([ids])
        lt = teacher(input_ids=x.to(dev_t)).logits[0, :-1].float().log_softmax(-1).cpu()
        ls = student(input_ids=x.to(dev_s)).logits[0, :-1].float().log_softmax(-1).cpu()
        m = torch.tensor(mask[1:])  # position i predicts token i+1
        lt, ls = lt[m], ls[m]
        agree += float((lt.argmax(-1) == ls.argmax(-1)).sum())
        kl_sum += float((lt.exp() * (lt - ls)).sum())
        n_tok += int(m.sum())
    bar.close()
    if n_tok == 0:
        return {"n_conversations": len(conversations), "n_tokens": 0}
    return {
        "n_conversations": len(conversations),
        "n_tokens": int(n_tok),
        "top1_agreement": agree / n_tok,
        "kl_teacher_student": kl_sum / n_tok,
    }


@torch.no_grad()
def teacher_forced_batches(teacher, student, batches: list[dict[str, torch.Tensor]], *, mask_key: str = "loss_mask",
                           show_progress: bool = True) -> dict[str, Any]:
    """Top-1 agreement and mean KL(teacher ‖ student) (nats per token) over the masked-in positions of ``batches``:
    dicts of ``input_ids``, ``position_ids`` ``[B, T]`` and ``mask_key`` ``[B, T]`` (True where the next token is
    trained on), as :func:`gendistill.distill.data.collate` makes them. Position ids that restart mark packed
    documents for both models, as in training."""
    dev_t = next(teacher.parameters()).device
    dev_s = next(student.parameters()).device
    agree = kl_sum = 0.0
    n_tok = 0
    bar = progress(total=len(batches), desc="fidelity (held-out)", enabled=show_progress)
    for b in batches:
        m = b[mask_key].bool()
        bar.update(1)
        if not m.any():
            continue
        lt = teacher(input_ids=b["input_ids"].to(dev_t), position_ids=b["position_ids"].to(dev_t)).logits
        lt = lt[m.to(dev_t)].float().log_softmax(-1)
        ls = student(input_ids=b["input_ids"].to(dev_s), position_ids=b["position_ids"].to(dev_s)).logits
        ls = ls[m.to(dev_s)].float().log_softmax(-1).to(lt.device)
        agree += float((lt.argmax(-1) == ls.argmax(-1)).sum())
        kl_sum += float((lt.exp() * (lt - ls)).sum())
        n_tok += int(m.sum())
    bar.close()
    if n_tok == 0:
        return {"n_sequences": sum(len(b["input_ids"]) for b in batches), "n_tokens": 0}
    return {"n_sequences": sum(len(b["input_ids"]) for b in batches), "n_tokens": n_tok,
            "top1_agreement": agree / n_tok, "kl_teacher_student": kl_sum / n_tok}
