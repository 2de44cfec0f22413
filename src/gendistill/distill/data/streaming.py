"""The seeded training stream: each source's held-out head and endless per-epoch shuffle, the weighted mixture of
sources, one stage's packed stream (resumable at any :class:`StreamState`) and this rank's micro-batches."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from gendistill.distill.config import DataConfig, SourceConfig
from gendistill.distill.data.encoding import Encoded, Encoder, NothingToDistillError
from gendistill.distill.data.packing import PackedSequence, StreamState, collate, pack_documents
from gendistill.distill.data.sources import RecordTable, Source
from gendistill.distill.stage_facts import micro_batches_per_step
from gendistill.errors import DataError

_MIX_BLOCK = 4096
#: a stage's stream keeps the encodings of the documents it read, up to this many tokens (about 5 bytes a token:
#: 320 MB), so a later pass over the same documents does not tokenise them again
ENCODE_CACHE_TOKENS = 1 << 26


class SourceReader:
    """One source: its held-out head (the first ``heldout_documents`` in file order) and an endless, per-epoch
    shuffled stream of the rest. Table sources (the default) shuffle with a full permutation per epoch;
    ``streaming`` sources are re-read each epoch through a seeded shuffle buffer."""

    def __init__(self, cfg: SourceConfig, index: int, data: DataConfig):
        self.cfg, self.index, self.data = cfg, index, data
        self.source = Source(cfg)
        self.heldout_n = data.heldout_documents
        self._records: RecordTable | None = None
        self._heldout: list[tuple[str, Any]] | None = None

    def open(self) -> None:
        """Open the source; DataError on an empty or unreadable one, or one with too few documents."""
        if self._heldout is not None:
            return
        cfg = self.cfg
        if cfg.streaming:
            it = self.source.iter_records()
            heldout = [x for _, x in zip(range(self.heldout_n), it)]
            if len(heldout) < self.heldout_n or next(it, None) is None:
                raise DataError(
                    f"{cfg.path}: fewer documents than heldout_documents={self.heldout_n} plus one for training"
                )
            self._heldout = heldout
            return
        table = self.source.table()
        heldout, records = table.slice(0, self.heldout_n), table.slice(self.heldout_n)
        if len(records) == 0:
            raise DataError(
                f"{cfg.path}: only {len(heldout)} documents, all taken by heldout_documents={self.heldout_n}"
            )
        self._heldout, self._records = list(heldout), records

    def heldout(self) -> list[tuple[str, Any]]:
        self.open()
        assert self._heldout is not None
        return self._heldout

    def _training_records(self) -> Iterator[tuple[str, Any]]:
        """A streaming source's records after the held-out head, in file order."""
        it = self.source.iter_records()
        for _ in range(self.heldout_n):
            next(it, None)
        return it

    def records_for_validation(self, max_streaming: int = 200) -> Iterator[tuple[str, Any]]:
        """Every record of a table source (held-out head first); the first ``max_streaming`` training records of a
        streaming one after its head."""
        self.open()
        yield from self._heldout or []
        if self._records is not None:
            yield from self._records
        else:
            for _, item in zip(range(max_streaming), self._training_records()):
                yield item

    def iter_from(self, count: int) -> Iterator[tuple[str, Any]]:
        """Endless stream of training documents (held-out head excluded), starting at the ``count``-th."""
        self.open()
        seed = self.data.seed
        if self._records is not None:
            records = self._records
            n = len(records)
            epoch, idx = divmod(count, n)
            while True:
                order = (
                    np.random.default_rng([seed, self.index, epoch]).permutation(n)
                    if self.data.shuffle
                    else np.arange(n)
                )
                for j in order[idx:]:
                    yield records[int(j)]
                epoch, idx = epoch + 1, 0
        else:
            epoch, skip = 0, count
            while True:
                it = self._training_records()
                if self.data.shuffle:
                    it = _shuffle_buffer(it, self.data.shuffle_buffer, np.random.default_rng([seed, self.index, epoch]))
                for item in it:
                    if skip:
                        skip -= 1
                        continue
                    yield item
                epoch += 1


def _shuffle_buffer(it: Iterator[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    buf: list[Any] = []
    for x in it:
        if len(buf) < size:
            buf.append(x)
            continue
        j = int(rng.integers(size))
        yield buf[j]
        buf[j] = x
    order = rng.permutation(len(buf))
    for j in order:
        yield buf[int(j)]


class DocumentStream:
    """Weighted mixture of sources. Draw ``d`` comes from source ``choice(d)``; choices are fixed blocks of a seeded
    RNG, so skipping to any draw is cheap and exact."""

    def __init__(self, readers: list[SourceReader], seed: int):
        self.readers = readers
        w = np.array([r.cfg.weight for r in readers], dtype=np.float64)
        self.p = w / w.sum()
        self.seed = seed

    def _choices(self, block: int) -> np.ndarray:
        if len(self.readers) == 1:
            return np.zeros(_MIX_BLOCK, dtype=np.int64)
        return np.random.default_rng([self.seed, 7919, block]).choice(len(self.readers), size=_MIX_BLOCK, p=self.p)

    def iter_from(self, draw: int) -> Iterator[tuple[int, int, str, Any]]:
        """``(draw, source index, origin, record)`` from draw ``draw`` on, endlessly."""
        counts = np.zeros(len(self.readers), dtype=np.int64)
        full, rest = divmod(draw, _MIX_BLOCK)
        for b in range(full):
            counts += np.bincount(self._choices(b), minlength=len(self.readers))
        if rest:
            counts += np.bincount(self._choices(full)[:rest], minlength=len(self.readers))
        its = [r.iter_from(int(c)) for r, c in zip(self.readers, counts)]
        d = draw
        while True:
            block, off = divmod(d, _MIX_BLOCK)
            ch = self._choices(block)
            for k in ch[off:]:
                origin, rec = next(its[int(k)])
                yield d, int(k), origin, rec
                d += 1


class PackedStream:
    """Source readers + encoders + packer for one stage; resumable at any sequence boundary."""

    def __init__(self, data: DataConfig, tokenizer: Any, seq_len: int, masking: str):
        self.data, self.tok, self.seq_len, self.masking = data, tokenizer, seq_len, masking
        self.readers = [SourceReader(s, i, data) for i, s in enumerate(data.sources)]
        self.encoders = [Encoder(tokenizer, s, masking, data) for s in data.sources]
        # held-out rows score the same tokens whatever the stage trains on: the responses / assistant turns of chat
        # and prompt-response sources, every token of text (so cells of a masking ablation compare like with like)
        self.heldout_encoders = [Encoder(tokenizer, s, "all_tokens" if s.format == "text" else "completion_only", data)
                                 for s in data.sources]
        self.docs = DocumentStream(self.readers, data.seed)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)
        self.skipped: dict[str, int] = {}
        self._encoded: dict[tuple[int, str], Encoded | None] = {}  # (source, origin) -> encoding: see _encode
        self._encoded_tokens = 0

    def validate(self) -> dict[str, int]:
        """Open every source and check every record (streaming sources: the first few hundred) before training:
        empty files, malformed lines, missing fields, conversations without an assistant turn, missing chat template.
        Encodes the first records of each source too, and every record until one has ``min_document_tokens``
        tokens (packing skips shorter documents: a source with none would give the endless training stream nothing,
        and it would wait forever). Returns usable documents per source; with ``skip_empty`` the records with nothing
        to distill are counted in ``self.skipped`` instead of raising."""
        counts: dict[str, int] = {}
        self.skipped = {}
        shortest = self.data.min_document_tokens
        for reader, enc in zip(self.readers, self.encoders):
            n = skipped = longest = 0
            for i, (origin, rec) in enumerate(reader.records_for_validation()):
                try:
                    if n < 8 or longest < shortest:
                        tokens = len(enc.encode(rec, origin).input_ids)
                        if i >= reader.heldout_n:  # a training document (the held-out head comes first)
                            longest = max(longest, tokens)
                    else:
                        enc.fields(rec, origin)
                except NothingToDistillError:
                    if not self.data.skip_empty:
                        raise
                    skipped += 1
                    continue
                n += 1
            if n == 0:
                raise DataError(f"{reader.cfg.path}: no usable documents ({skipped} with nothing to distill)")
            if longest < shortest:
                raise DataError(f"{reader.cfg.path}: no training document has min_document_tokens={shortest} "
                                f"tokens (the longest read: {longest}); lower data.min_document_tokens or check the "
                                "source")
            counts[reader.cfg.path] = n
            self.skipped[reader.cfg.path] = skipped
        return counts

    def _encode(self, k: int, rec: Any, origin: str) -> Encoded | None:
        """``rec`` (source ``k``, at ``origin``) encoded, or None for a record with nothing to distill under
        ``skip_empty``. A record read again on a later pass is not tokenised again: its encoding is kept (ids as
        int32, the mask as bool numpy arrays) while the kept documents hold at most :data:`ENCODE_CACHE_TOKENS`
        tokens; encoding is deterministic, so the kept copy is what encoding again would give."""
        key = (k, origin)
        if key in self._encoded:
            return self._encoded[key]
        enc = self._encode_with(self.encoders[k], rec, origin)
        if enc is not None:
            if self._encoded_tokens + len(enc.input_ids) > ENCODE_CACHE_TOKENS:
                return enc
            enc = Encoded(np.asarray(enc.input_ids, dtype=np.int32), np.asarray(enc.target_mask, dtype=np.bool_))
            self._encoded_tokens += len(enc.input_ids)
        self._encoded[key] = enc
        return enc

    def _encode_with(self, encoder: Encoder, rec: Any, origin: str) -> Encoded | None:
        """``encoder.encode(rec, origin)``, or None for a record with nothing to distill under ``skip_empty``."""
        try:
            return encoder.encode(rec, origin)
        except NothingToDistillError:
            if not self.data.skip_empty:
                raise
            return None

    def _documents(self, draw: int) -> Iterator[tuple[int, Encoded]]:
        for d, k, origin, rec in self.docs.iter_from(draw):
            enc = self._encode(k, rec, origin)
            if enc is not None:  # a skipped record still uses up its draw, so resume positions stay exact
                yield d, enc

    def sequences(self, start: StreamState = StreamState()) -> Iterator[tuple[PackedSequence, StreamState]]:
        """Packed sequences from ``start`` on, each with the state at which the next one starts."""
        return pack_documents(
            self._documents(start.draw),
            self.seq_len,
            pad_id=self.pad_id,
            split_documents=self.data.split_documents,
            min_document_tokens=self.data.min_document_tokens,
            start_offset=start.offset,
        )

    def heldout_sequences(self, max_sequences: int) -> list[PackedSequence]:
        """Up to ``max_sequences`` packed sequences of the sources' held-out heads (in source order), the last one
        padded when the documents run out before it is full (so held-out documents shorter than ``seq_len`` in all
        still give one sequence). Their target mask does not follow the stage's masking: chat and prompt-response
        documents are scored on their responses (``completion_only``), text on every token, so that held-out
        figures of stages that train with different maskings count the same tokens."""
        if max_sequences <= 0:
            return []
        docs: list[tuple[int, Encoded]] = []
        d = 0
        for enc_k, reader in zip(self.heldout_encoders, self.readers):
            for origin, rec in reader.heldout():
                enc = self._encode_with(enc_k, rec, origin)
                if enc is not None:
                    docs.append((d, enc))
                    d += 1
        out = []
        for seq, _ in pack_documents(
            iter(docs), self.seq_len, pad_id=self.pad_id, split_documents=True, min_document_tokens=2, flush=True
        ):
            out.append(seq)
            if len(out) >= max_sequences:
                break
        return out


class BatchStream:
    """Global batches of ``batch_size`` packed sequences, cut into this rank's micro-batches.

    Every rank reads the same packed stream and keeps its contiguous share of each global batch (rank r gets
    sequences ``[r*B/W, (r+1)*B/W)``), so the union over ranks is exactly what one process would train on."""

    def __init__(
        self,
        packed: PackedStream,
        batch_size: int,
        micro_batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        start: StreamState = StreamState(),
    ):
        micro_batches_per_step(batch_size, micro_batch_size, world_size)  # ValueError: the batch rule
        self.packed, self.B, self.mb, self.rank, self.W = packed, batch_size, micro_batch_size, rank, world_size
        self.state = start
        self._it = packed.sequences(start)

    def next_step(self) -> tuple[list[dict[str, torch.Tensor]], StreamState]:
        """The micro-batches of this rank for one optimizer step, and the stream state after the global batch."""
        seqs: list[PackedSequence] = []
        state = self.state
        for _ in range(self.B):
            seq, state = next(self._it)
            seqs.append(seq)
        per_rank = self.B // self.W
        mine = seqs[self.rank * per_rank : (self.rank + 1) * per_rank]
        micro = [collate(mine[i : i + self.mb]) for i in range(0, per_rank, self.mb)]
        self.state = state
        return micro, state
