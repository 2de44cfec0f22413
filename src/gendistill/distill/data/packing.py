"""Packing encoded documents into fixed-length sequences (position ids restarting at every document) and stacking
them into the trainer's batch tensors."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

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
    """One sequence of exactly ``seq_len`` tokens; every field is a list of length ``seq_len``."""

    input_ids: list[int]
    position_ids: list[int]
    target_mask: list[int]
    valid: list[int]  # 0 on padding


def pack_documents(
    docs: Iterator[tuple[int, Encoded]],
    seq_len: int,
    *,
    pad_id: int,
    split_documents: bool = True,
    min_document_tokens: int = 1,
    start_offset: int = 0,
) -> Iterator[tuple[PackedSequence, StreamState]]:
    """Pack ``(draw, Encoded)`` documents into sequences of exactly ``seq_len`` tokens.

    Position ids restart at 0 at every document (and at every piece of a split document, and at the padding), so
    attention layers see no other document and KDA layers reset their state there. Yields each sequence with the
    state at which the *next* sequence starts. ``start_offset`` skips that many tokens of the first document.
    """
    ids: list[int] = []
    pos: list[int] = []
    tm: list[int] = []
    valid: list[int] = []

    def emit() -> PackedSequence:
        nonlocal ids, pos, tm, valid
        if len(ids) < seq_len:
            n = seq_len - len(ids)
            ids += [pad_id] * n
            pos += list(range(n))
            tm += [0] * n
            valid += [0] * n
        seq = PackedSequence(ids, pos, tm, valid)
        ids, pos, tm, valid = [], [], [], []
        return seq

    first = True
    for draw, enc in docs:
        d_ids, d_tm = enc.input_ids, enc.target_mask
        i = start_offset if first else 0
        first = False
        if len(d_ids) < min_document_tokens:
            continue
        while i < len(d_ids):
            space = seq_len - len(ids)
            rem = len(d_ids) - i
            if rem > space and not split_documents and ids and rem <= seq_len:
                yield emit(), StreamState(draw, i)
                continue
            take = min(rem, space)
            ids += d_ids[i : i + take]
            tm += d_tm[i : i + take]
            pos += list(range(take))
            valid += [1] * take
            i += take
            if len(ids) == seq_len:
                yield emit(), (StreamState(draw, i) if i < len(d_ids) else StreamState(draw + 1, 0))


def collate(seqs: list[PackedSequence]) -> dict[str, torch.Tensor]:
    """Stack ``N`` packed sequences of length ``T`` into a batch of ``[N, T]`` tensors.

    ``loss_mask[t]`` (logit losses, next-token aligned) is 1 when token ``t+1`` is a training target of the same
    document; ``labels[t] = input_ids[t+1]`` there and -100 elsewhere. ``token_mask[t]`` (hidden-state losses) is 1 on
    real tokens that are training targets -- with ``all_tokens`` masking every real token is one (the encoder
    decided which tokens are targets; nothing here looks at the masking mode again).
    """
    input_ids = torch.tensor([s.input_ids for s in seqs], dtype=torch.long)
    position_ids = torch.tensor([s.position_ids for s in seqs], dtype=torch.long)
    target = torch.tensor([s.target_mask for s in seqs], dtype=torch.bool)
    valid = torch.tensor([s.valid for s in seqs], dtype=torch.bool)
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
