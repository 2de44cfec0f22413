"""Teacher-forced fidelity on held-out rows: the one function behind every held-out top-1 agreement and KL that
gendistill reports (the trainer's held-out evaluation of stages 3a/3b, ``gendistill eval --fidelity-heldout`` and
``--fidelity-chat``, the demo, ``tools/e2e.py``), and the file the trainer writes its held-out rows to, so that the
evaluator reads exactly the rows the trainer scored.

Rows are ``[N, T]`` tensors as :func:`gendistill.distill.data.collate` makes them: ``input_ids``, ``position_ids``
(restarting at 0 where a packed document starts), ``loss_mask`` (True at ``t`` when token ``t + 1`` is scored) and
optionally ``labels`` (``input_ids[t + 1]`` where ``loss_mask``, -100 elsewhere).

Both models read every row **document by document**: ``use_cache=False`` (with a cache, transformers skips the
packed-sequence mask and a teacher would attend across the documents of a packed row while its positions restart)
and the documents' boundaries passed as transformers' flash-attention keyword arguments
(:func:`gendistill.models.packed_attention.packed_attention_kwargs`), exactly as the trainer's stage-3 forward does.
Logits are ``lm_head`` of the final hidden state, computed only at the scored positions (in chunks), in float32 whatever
the models' dtype and the caller's autocast (:func:`float32_logits`): the models' hidden states are their own (bf16 on
CUDA), the vocabulary projection and everything after it are float32, so a figure does not depend on the device.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save

from gendistill.errors import DataError, GendistillError
from gendistill.eval.progress import progress
from gendistill.io import atomic_write_bytes
from gendistill.models.packed_attention import packed_attention_kwargs

ROW_KEYS = ("input_ids", "position_ids", "loss_mask")
#: the figures :func:`heldout_fidelity` returns besides the counts
FIGURES = ("top1_agreement", "kl_teacher_student", "teacher_nll", "student_nll")


def _head(model: torch.nn.Module) -> torch.nn.Module:
    """The vocabulary projection of ``model``; refuses models whose logits are not ``lm_head(hidden)`` (soft-capped
    or scaled logits), which the held-out figures would misstate."""
    cfg = getattr(model, "config", None)
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", 1.0) not in (None, 1.0):
        raise GendistillError(f"{type(model).__name__}: soft-capped or scaled logits are not supported by held-out "
                              "fidelity (its logits would not be lm_head of the hidden state)")
    return model.get_output_embeddings()


def float32_logits(head: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``head(hidden)`` in float32: ``hidden`` ``[n, D]`` and the head's weight ``[V, D]`` (and bias) upcast, autocast
    off, so a bf16 model or a bf16 autocast does not round the logits ``[n, V]``."""
    bias = None if getattr(head, "bias", None) is None else head.bias.float()
    with torch.autocast(hidden.device.type, enabled=False):
        return F.linear(hidden.float(), head.weight.float(), bias)


def document_hidden(model: torch.nn.Module, rows: dict[str, torch.Tensor], packed: dict[str, Any]) -> torch.Tensor:
    """The final normed hidden state ``[B, T, D]`` of ``model`` on ``rows`` (CPU or device tensors ``[B, T]``), each
    packed document read on its own (``packed``: :func:`packed_attention_kwargs` of the rows' position ids)."""
    dev = next(model.parameters()).device
    base = getattr(model, "model", model)
    kw = {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in packed.items()}
    return base(input_ids=rows["input_ids"].to(dev), position_ids=rows["position_ids"].to(dev), use_cache=False,
                **kw).last_hidden_state


def fidelity_sums(lt: torch.Tensor, ls: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Sums over ``n`` scored positions of the teacher's and the student's logits ``lt``, ``ls`` ``[n, V]``:
    ``[top-1 agreements, KL(teacher ‖ student), teacher NLL, student NLL]`` (float32, nats; the NLLs are 0 without
    ``labels`` ``[n]``)."""
    lt, ls = lt.float().log_softmax(-1), ls.float().log_softmax(-1)
    agree = (lt.argmax(-1) == ls.argmax(-1)).sum().float()
    kl = (lt.exp() * (lt - ls)).sum()
    if labels is None:
        zero = kl.new_zeros(())
        return torch.stack([agree, kl, zero, zero])
    idx = labels[:, None]
    return torch.stack([agree, kl, -lt.gather(-1, idx).sum(), -ls.gather(-1, idx).sum()])


@torch.no_grad()
def heldout_fidelity(teacher: torch.nn.Module, student: torch.nn.Module, rows: dict[str, torch.Tensor], *,
                     batch_rows: int = 8, chunk_tokens: int = 4096, show_progress: bool = False,
                     desc: str = "fidelity (held-out)",
                     loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                     ) -> dict[str, Any]:
    """Top-1 agreement (share of scored positions where the student's argmax equals the teacher's), mean
    KL(teacher ‖ student) and both models' mean next-token NLL (nats per scored token; NLL only with ``labels``) over
    the ``loss_mask`` positions of ``rows`` (``[N, T]``; see the module docstring), ``batch_rows`` rows per forward.
    Runs under whatever autocast and eval/train mode the caller set (the trainer: bf16 autocast, eval mode).

    ``loss_fn(h_s, h_t, labels)`` (the trainer's stage loss: student and teacher final hidden states ``[n, D]`` at
    the ``n`` scored positions of a batch, their labels ``[n]``; returns the loss summed over them) adds ``loss``,
    its mean per scored token, from the same forwards: the trainer's held-out loss and fidelity in one pass."""
    for k in ROW_KEYS:
        if k not in rows:
            raise DataError(f"held-out rows: no '{k}' tensor")
    if loss_fn is not None and "labels" not in rows:
        raise DataError("held-out rows: a stage loss needs the 'labels' tensor")
    head_t, head_s = _head(teacher), _head(student)
    if head_t.weight.shape[0] != head_s.weight.shape[0]:
        raise GendistillError(f"teacher and student vocabularies differ ({head_t.weight.shape[0]} vs "
                              f"{head_s.weight.shape[0]}); teacher-forced fidelity needs a shared tokenizer")
    vocab = head_t.weight.shape[0]
    if rows["input_ids"].numel() and not 0 <= int(rows["input_ids"].min()) <= int(rows["input_ids"].max()) < vocab:
        raise DataError(f"held-out rows: token ids outside the models' vocabulary (0..{vocab - 1}); the rows were "
                        "made with another tokenizer")
    n_rows = int(rows["input_ids"].shape[0])
    sums = None
    loss_sum = 0.0
    n_tok = 0
    has_labels = "labels" in rows
    bar = progress(total=n_rows, desc=desc, enabled=show_progress)
    for i in range(0, n_rows, max(1, batch_rows)):
        b = {k: v[i : i + batch_rows] for k, v in rows.items() if isinstance(v, torch.Tensor)}
        bar.update(len(b["input_ids"]))
        sel = b["loss_mask"].bool().reshape(-1).nonzero().squeeze(-1)
        if sel.numel() == 0:
            continue
        packed = packed_attention_kwargs(b["position_ids"].cpu())
        h_t = document_hidden(teacher, b, packed)
        h_s = document_hidden(student, b, packed)
        h_t = h_t.reshape(-1, h_t.shape[-1]).index_select(0, sel.to(h_t.device))
        h_s = h_s.reshape(-1, h_s.shape[-1]).index_select(0, sel.to(h_s.device))
        labels = b["labels"].reshape(-1)[sel] if has_labels else None
        if loss_fn is not None:
            loss_sum += float(loss_fn(h_s, h_t.to(h_s.device), labels.to(h_s.device)))
        for j in range(0, sel.numel(), chunk_tokens):
            lt = float32_logits(head_t, h_t[j : j + chunk_tokens])
            ls = float32_logits(head_s, h_s[j : j + chunk_tokens]).to(lt.device)
            part = fidelity_sums(lt, ls, labels[j : j + chunk_tokens].to(lt.device) if labels is not None else None)
            sums = part if sums is None else sums + part.to(sums.device)
        n_tok += int(sel.numel())
    bar.close()
    out: dict[str, Any] = {"n_sequences": n_rows, "n_tokens": n_tok}
    if n_tok == 0 or sums is None:
        return out
    agree, kl, t_nll, s_nll = (float(x) / n_tok for x in sums.cpu())
    out.update(top1_agreement=agree, kl_teacher_student=kl)
    if loss_fn is not None:
        out["loss"] = loss_sum / n_tok
    if has_labels:
        out.update(teacher_nll=t_nll, student_nll=s_nll)
    return out


def save_heldout_rows(path: str | Path, rows: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> Path:
    """Write ``rows`` (``[N, T]`` tensors) as a safetensors file (written atomically), ``meta`` (JSON-able) in its
    header: what :func:`load_heldout_rows` and ``gendistill eval --fidelity-heldout`` read."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in rows.items() if isinstance(v, torch.Tensor)}
    tensors = {k: v.to(torch.uint8) if v.dtype == torch.bool else v for k, v in tensors.items()}
    header = {"format": "gendistill-heldout-rows", "version": "1", "meta": json.dumps(meta or {}, sort_keys=True)}
    atomic_write_bytes(path, save(tensors, metadata=header))
    return path


def load_heldout_rows(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(rows, meta)`` of a file :func:`save_heldout_rows` wrote; a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such held-out rows file")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        rows = load_file(str(path))
    except Exception as e:  # noqa: BLE001 — any unreadable file is one message
        raise DataError(f"{path}: not a held-out rows file ({type(e).__name__}: {e})") from None
    if header.get("format") != "gendistill-heldout-rows":
        raise DataError(f"{path}: not a held-out rows file written by gendistill (no format marker)")
    missing = [k for k in ROW_KEYS if k not in rows]
    shapes = {tuple(v.shape) for v in rows.values()}
    if missing or len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise DataError(f"{path}: held-out rows need {', '.join(ROW_KEYS)} of one [N, T] shape "
                        f"(missing {missing or 'none'}, shapes {sorted(shapes)})")
    rows["loss_mask"] = rows["loss_mask"].bool()
    for k in ("input_ids", "position_ids", "labels"):
        if k in rows:
            rows[k] = rows[k].long()
    return rows, json.loads(header.get("meta") or "{}")
