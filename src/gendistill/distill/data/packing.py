"""Packing encoded documents into fixed-length sequences (position ids restarting at every document) and stacking
them into the trainer's batch tensors."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from gendistill.distill.data.encoding import Encoded


@dataclass(frozen=True)
class StreamState:
    """Where the next packed sequence starts: document ``draw`` of the mixture, at its token ``offset``."""

    draw: int = 0
    offset: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"draw": self.draw, "offset": self.offset}

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> "StreamState":
        return cls(int(d["draw"]), int(d["offset"]))


@dataclass
class PackedSequence:
    """One sequence of exactly ``seq_len`` tokens: ``input_ids`` and ``position_ids`` int64 ``[seq_len]``,
    ``target_mask`` and ``valid`` (False on padding) bool ``[seq_len]`` — numpy arrays, so that stacking a batch
    (:func:`collate`) is one copy, not a Python loop over tokens that would hold the GIL against the training
    thread's kernel launches. (:func:`collate` also takes lists.)"""

    input_ids: np.ndarray
    position_ids: np.ndarray
    target_mask: np.ndarray
    valid: np.ndarray


def pack_documents(
    docs: Iterator[tuple[int, Encoded]],
    seq_len: int,
    *,
    pad_id: int,
    split_documents: bool = True,
    min_document_tokens: int = 1,
    start_offset: int = 0,
    flush: bool = False,
) -> Iterator[tuple[PackedSequence, StreamState]]:
    """Pack ``(draw, Encoded)`` documents into sequences of exactly ``seq_len`` tokens.

    Position ids restart at 0 at every document (and at every piece of a split document, and at the padding), so
    attention layers see no other document and KDA layers reset their state there. Yields each sequence with the
    state at which the *next* sequence starts. ``start_offset`` skips that many tokens of the first document.
    ``flush``: when the documents run out, the last, partly filled sequence is yielded too, padded (a finite set such
    as the held-out documents; the endless training stream never runs out, and a resumed one must not pad).
    """
    arange = np.arange(seq_len, dtype=np.int64)

    def empty() -> PackedSequence:
        return PackedSequence(np.empty(seq_len, np.int64), np.empty(seq_len, np.int64), np.zeros(seq_len, bool),
                              np.zeros(seq_len, bool))

    cur, n = empty(), 0

    def emit() -> PackedSequence:
        nonlocal cur, n
        seq = cur
        if n < seq_len:  # padding: its own "document" (positions from 0), no targets, not valid
            seq.input_ids[n:] = pad_id
            seq.position_ids[n:] = arange[: seq_len - n]
        cur, n = empty(), 0
        return seq

    first, draw = True, -1
    for draw, enc in docs:
        d_ids, d_tm = enc.input_ids, enc.target_mask
        i = start_offset if first else 0
        first = False
        if len(d_ids) < min_document_tokens:
            continue
        while i < len(d_ids):
            space = seq_len - n
            rem = len(d_ids) - i
            if rem > space and not split_documents and n and rem <= seq_len:
                yield emit(), StreamState(draw, i)
                continue
            take = min(rem, space)
            cur.input_ids[n : n + take] = d_ids[i : i + take]
            cur.target_mask[n : n + take] = d_tm[i : i + take]
            cur.position_ids[n : n + take] = arange[:take]
            cur.valid[n : n + take] = True
            n += take
            i += take
            if n == seq_len:
                yield emit(), (StreamState(draw, i) if i < len(d_ids) else StreamState(draw + 1, 0))
    if flush and n:
        yield emit(), StreamState(draw + 1, 0)


def _stack(rows: list, dtype) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(r, dtype=dtype) for r in rows]))


def collate(seqs: list[PackedSequence]) -> dict[str, torch.Tensor]:
    """Stack ``N`` packed sequences of length ``T`` into a batch of ``[N, T]`` tensors.

    ``loss_mask[t]`` (logit losses, next-token aligned) is 1 when token ``t+1`` is a training target of the same
    document; ``labels[t] = input_ids[t+1]`` there and -100 elsewhere. ``token_mask[t]`` (hidden-state losses) is 1 on
    real tokens that are training targets -- with ``all_tokens`` masking every real token is one (the encoder
    decided which tokens are targets; nothing here looks at the masking mode again).
    """
    input_ids = _stack([s.input_ids for s in seqs], np.int64)
    position_ids = _stack([s.position_ids for s in seqs], np.int64)
    target = _stack([s.target_mask for s in seqs], np.bool_)
    valid = _stack([s.valid for s in seqs], np.bool_)
    loss_mask = torch.zeros_like(target)
    loss_mask[:, :-1] = target[:, 1:] & valid[:, 1:] & (position_ids[:, 1:] != 0)
    labels = torch.full_like(input_ids, -100)
    labels[:, :-1] = torch.where(loss_mask[:, :-1], input_ids[:, 1:], -100)
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "loss_mask": loss_mask,
        "labels": labels,
        "token_mask": valid & target,
    }
