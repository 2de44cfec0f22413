"""Training data: reading sources, turning documents into tokens with a target mask, packing them into fixed-length
sequences, and a resumable, shardable stream of batches.

Pipeline (all deterministic given the seed)::

    SourceReader (file / folder / hub)  ->  DocumentStream (weighted mixture, per-source epochs + shuffles)
      -> Encoder (text | chat template + assistant mask | prompt/response)  ->  pack_sequences (fixed length,
      position ids restart at 0 at every document start)  ->  BatchStream (global batch -> this rank's micro-batches)

A position in the stream is ``StreamState(draw, offset)``: the next packed sequence starts with the ``draw``-th
document of the mixture, at token ``offset``. Restoring it re-reads (but does not tokenize) the skipped documents, so
``--resume`` continues with exactly the sequences a straight run would have seen.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gendistill.distill.config import DataConfig, SourceConfig
from gendistill.errors import DataError
from gendistill.io import iter_jsonl, open_text

FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet", ".txt", ".txt.gz")
_MIX_BLOCK = 4096


class NothingToDistillError(DataError):
    """A well-formed record with nothing to train on (no assistant turn, empty response or text). Skipped instead of
    raised when the data's ``skip_empty`` is on."""


# ------------------------------------------------------------------------------------------------------------ reading
def iter_file(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(origin, record)`` for one local file; ``origin`` is ``file:line`` (or ``file[row]``)."""
    name = path.name
    try:
        if name.endswith((".jsonl", ".jsonl.gz")):
            for lineno, rec in iter_jsonl(path):
                yield f"{path}:{lineno}", rec
        elif name.endswith((".json", ".json.gz")):
            with open_text(path) as f:
                try:
                    data = json.load(f)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
            if not isinstance(data, list):
                raise DataError(f"{path}: a .json data file must hold a list of records")
            for i, rec in enumerate(data):
                yield f"{path}[{i}]", rec
        elif name.endswith(".parquet"):
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(path)
            row = 0
            for batch in pf.iter_batches(batch_size=1024):
                for rec in batch.to_pylist():
                    yield f"{path}[{row}]", rec
                    row += 1
        elif name.endswith((".txt", ".txt.gz")):
            with open_text(path) as f:
                text = f.read()
            if text.strip():
                yield str(path), {"text": text}
        else:
            raise DataError(f"{path}: unsupported data file type (expected one of {', '.join(FILE_SUFFIXES)})")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason})") from None
    except (OSError, EOFError) as e:
        if isinstance(e, FileNotFoundError):
            raise DataError(f"{path}: file not found") from None
        raise DataError(f"{path}: cannot read ({e})") from None


def _is_saved_dataset(p: Path) -> bool:
    return (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists() or (p / "state.json").exists()


class _HFRecords(Sequence):
    """Index into a ``datasets.Dataset`` lazily (records are read on access, not all at once)."""

    def __init__(self, ds: Any, name: str, start: int = 0, stop: int | None = None):
        self.ds, self.name, self.start = ds, name, start
        self.stop = len(ds) if stop is None else min(stop, len(ds))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __getitem__(self, i: int) -> tuple[str, Any]:  # type: ignore[override]
        if not 0 <= i < len(self):
            raise IndexError(i)
        j = self.start + i
        return f"{self.name}[{j}]", self.ds[j]


class SourceReader:
    """One source: its held-out head (the first ``heldout`` documents in file order) and an endless, per-epoch
    shuffled stream of the rest."""

    def __init__(self, cfg: SourceConfig, index: int, data: DataConfig):
        self.cfg, self.index, self.data = cfg, index, data
        self.heldout_n = data.heldout_documents
        self._records: Sequence[tuple[str, Any]] | None = None
        self._heldout: list[tuple[str, Any]] | None = None
        self._stream_factory = None

    # -- opening -------------------------------------------------------------------------------------------------
    def _hub_or_disk_dataset(self) -> Any:
        cfg = self.cfg
        try:
            import datasets
        except ImportError:  # pragma: no cover - datasets is a dependency
            raise DataError(f"{cfg.path}: the 'datasets' package is needed to read it") from None
        p = Path(cfg.path)
        if not cfg.hub and p.is_dir() and _is_saved_dataset(p):
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                if cfg.split not in ds:
                    raise DataError(f"{cfg.path}: no split {cfg.split!r} (has {', '.join(ds)})")
                ds = ds[cfg.split]
            return ds
        name = cfg.path.removeprefix("hf://")
        try:
            return datasets.load_dataset(name, cfg.subset, split=cfg.split, streaming=cfg.streaming)
        except Exception as e:  # noqa: BLE001 - every failure becomes one clear line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(
                f"{cfg.path}: cannot load hub dataset (no network or no such dataset?): {type(e).__name__}: {first}"
            ) from None

    def _local_files(self) -> list[Path] | None:
        p = Path(self.cfg.path)
        if self.cfg.hub or self.cfg.path.startswith("hf://"):
            return None
        if p.is_file():
            return [p]
        if p.is_dir():
            if _is_saved_dataset(p):
                return None
            files = sorted(q for q in p.rglob("*") if q.is_file() and q.name.endswith(FILE_SUFFIXES))
            if not files:
                raise DataError(f"{p}: folder holds no data files ({', '.join(FILE_SUFFIXES)})")
            return files
        if "/" in self.cfg.path and not p.exists() and (self.cfg.path.startswith((".", "/")) or p.suffix):
            raise DataError(f"{p}: file not found")
        return None  # a hub id such as "org/name"

    def _iter_raw(self) -> Iterator[tuple[str, Any]]:
        """All records in file order (the held-out head included), lazily."""
        files = self._local_files()
        n = 0
        if files is not None:
            for f in files:
                for item in iter_file(f):
                    yield item
                    n += 1
                    if self.cfg.limit and n >= self.cfg.limit:
                        return
        else:
            ds = self._hub_or_disk_dataset()
            for i, rec in enumerate(ds):
                yield f"{self.cfg.path}[{i}]", rec
                n += 1
                if self.cfg.limit and n >= self.cfg.limit:
                    return
        if n == 0:
            raise DataError(f"{self.cfg.path}: no documents (empty file or dataset)")

    def open(self) -> None:
        """Read the source (all of it unless ``streaming``); raises DataError on an empty or unreadable source."""
        if self._records is not None or self._heldout is not None:
            return
        cfg = self.cfg
        files = self._local_files()
        if cfg.streaming:
            it = self._iter_raw()
            self._heldout = [x for _, x in zip(range(self.heldout_n), it)]
            if len(self._heldout) < self.heldout_n or next(it, None) is None:
                raise DataError(
                    f"{cfg.path}: fewer documents than heldout_documents={self.heldout_n} plus one for training"
                )
            return
        if files is None:
            ds = self._hub_or_disk_dataset()
            total = len(ds) if cfg.limit is None else min(cfg.limit, len(ds))
            if total == 0:
                raise DataError(f"{cfg.path}: no documents (empty dataset)")
            self._heldout = list(_HFRecords(ds, cfg.path, 0, min(self.heldout_n, total)))
            self._records = _HFRecords(ds, cfg.path, self.heldout_n, total)
        else:
            allrec = list(self._iter_raw())
            self._heldout = allrec[: self.heldout_n]
            self._records = allrec[self.heldout_n :]
        if len(self._records) == 0:
            raise DataError(
                f"{cfg.path}: only {len(self._heldout)} documents, all taken by heldout_documents={self.heldout_n}"
            )

    def heldout(self) -> list[tuple[str, Any]]:
        self.open()
        assert self._heldout is not None
        return self._heldout

    def records_for_validation(self, max_streaming: int = 200) -> Iterator[tuple[str, Any]]:
        self.open()
        yield from self._heldout or []
        if self._records is not None:
            yield from self._records
        else:
            it = self._iter_raw()
            for _ in range(self.heldout_n):
                next(it, None)
            for _, item in zip(range(max_streaming), it):
                yield item

    # -- the endless training stream -----------------------------------------------------------------------------
    def iter_from(self, count: int) -> Iterator[tuple[str, Any]]:
        """Endless stream of training documents (held-out head excluded), starting at the ``count``-th."""
        self.open()
        seed = self.data.seed
        if self._records is not None:
            n = len(self._records)
            epoch, idx = divmod(count, n)
            while True:
                order = (
                    np.random.default_rng([seed, self.index, epoch]).permutation(n)
                    if self.data.shuffle
                    else np.arange(n)
                )
                for j in order[idx:]:
                    yield self._records[int(j)]
                epoch, idx = epoch + 1, 0
        else:
            epoch, skip = 0, count
            while True:
                it = self._iter_raw()
                for _ in range(self.heldout_n):
                    next(it, None)
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

    def iter_from(self, draw: int) -> Iterator[tuple[int, str, Any]]:
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
                yield d, origin, rec
                d += 1


# ----------------------------------------------------------------------------------------------------------- encoding
@dataclass
class Encoded:
    input_ids: list[int]
    target_mask: list[int]  # 1 where the token is a training target (predicted from the tokens before it)


def _get_field(rec: Any, field: str, origin: str, kind: type | tuple[type, ...] = str) -> Any:
    if not isinstance(rec, dict):
        raise DataError(f"{origin}: a record must be a JSON object, got {type(rec).__name__}")
    if field not in rec or rec[field] is None:
        raise DataError(f"{origin}: missing field {field!r} (has: {', '.join(sorted(map(str, rec))) or 'nothing'})")
    v = rec[field]
    if not isinstance(v, kind):
        raise DataError(f"{origin}: field {field!r} should be {getattr(kind, '__name__', kind)}, got {type(v).__name__}")
    return v


def check_messages(messages: Any, origin: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{origin}: 'messages' must be a non-empty list of {{role, content}} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f"{origin}: messages[{i}] must be an object with string 'role' and 'content'")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise NothingToDistillError(f"{origin}: conversation has no assistant turn (nothing to distill)")
    return messages


class Encoder:
    """Turns a record into tokens + a target mask for one source format and masking mode."""

    def __init__(self, tokenizer: Any, source: SourceConfig, masking: str, data: DataConfig):
        self.tok, self.src, self.masking, self.data = tokenizer, source, masking, data
        self.eos = tokenizer.eos_token_id
        self.uses_template = source.format == "chat" or (source.format == "prompt_response" and source.chat_template)
        self._turn_end: str | None = None
        if self.uses_template:
            if not getattr(tokenizer, "chat_template", None):
                raise DataError(
                    f"{source.path}: format {source.format!r} needs a chat template but the teacher tokenizer has "
                    "none (use format 'text', or prompt_response with chat_template: false)"
                )
            self._turn_end = self._probe_turn_end()
        if source.format == "text" and masking == "completion_only":
            raise DataError(f"{source.path}: masking completion_only needs chat or prompt_response data, not text")

    def _render(self, messages: list[dict[str, str]], **kw: Any) -> str:
        return self.tok.apply_chat_template(messages, tokenize=False, **self.data.chat_template_kwargs, **kw)

    def _probe_turn_end(self) -> str:
        sentinel = "GENDISTILL_SENTINEL_7f3a"
        try:
            text = self._render([{"role": "user", "content": "hi"}, {"role": "assistant", "content": sentinel}])
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{self.src.path}: the tokenizer's chat template failed to render: {e}") from None
        if sentinel not in text:
            raise DataError(f"{self.src.path}: the chat template does not render assistant content verbatim")
        return text[text.index(sentinel) + len(sentinel) :].rstrip()

    def _ids(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def encode(self, rec: Any, origin: str) -> Encoded:
        f = self.src.format
        if f == "text":
            text = _get_field(rec, self.src.text_field, origin)
            if not text.strip():
                raise NothingToDistillError(f"{origin}: empty {self.src.text_field!r} (nothing to distill)")
            ids = list(self.tok(text, add_special_tokens=True)["input_ids"])
            if self.data.add_eos and self.eos is not None and (not ids or ids[-1] != self.eos):
                ids.append(self.eos)
            return Encoded(ids, [1] * len(ids))
        if f == "prompt_response":
            prompt = _get_field(rec, self.src.prompt_field, origin)
            response = _get_field(rec, self.src.response_field, origin)
            if not response.strip():
                raise NothingToDistillError(f"{origin}: empty {self.src.response_field!r} (nothing to distill)")
            if self.src.chat_template:
                return self._encode_chat(
                    [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], origin
                )
            p = list(self.tok(prompt, add_special_tokens=True)["input_ids"])
            r = self._ids(response)
            if self.data.add_eos and self.eos is not None:
                r.append(self.eos)
            m = [0 if self.masking == "completion_only" else 1] * len(p) + [1] * len(r)
            return Encoded(p + r, m)
        messages = check_messages(_get_field(rec, self.src.messages_field, origin, list), origin)
        return self._encode_chat(messages, origin)

    def _encode_chat(self, messages: list[dict[str, str]], origin: str) -> Encoded:
        """Render the whole conversation once, find each assistant turn's content (and the template's end-of-turn
        marker after it) in the rendered text, and tokenize the pieces separately so the assistant tokens are exactly
        the ones the model would generate after the rendered prompt."""
        check_messages(messages, origin)
        try:
            text = self._render(messages)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{origin}: the chat template failed on this conversation: {e}") from None
        spans: list[tuple[int, int]] = []
        cursor = 0
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                # advance past user/system content so an assistant reply that repeats it is found at the right place
                c = m["content"].strip()
                if c:
                    k = text.find(c, cursor)
                    if k >= 0:
                        cursor = k + len(c)
                continue
            # The reply starts after the rendered prompt up to this turn: search from there, so a short reply cannot be
            # "found" inside the template's own markup (e.g. an "a" inside "<|im_start|>assistant").
            try:
                prefix = self._render(messages[:i], add_generation_prompt=True) if i else ""
            except Exception:  # noqa: BLE001 - some templates refuse partial conversations; keep the running cursor
                prefix = ""
            if prefix and text.startswith(prefix):
                cursor = max(cursor, len(prefix))
            content = m["content"]
            k = text.find(content, cursor) if content else -1
            if k < 0:
                content = content.strip()
                k = text.find(content, cursor) if content else -1
            if k < 0:
                if not m["content"].strip():
                    continue
                raise DataError(
                    f"{origin}: messages[{i}]: the chat template changes the assistant text, so its tokens cannot "
                    "be located for the completion mask"
                )
            end = k + len(content)
            if self._turn_end and text.startswith(self._turn_end, end):
                end += len(self._turn_end)
            spans.append((k, end))
            cursor = end
        ids: list[int] = []
        mask: list[int] = []
        pos = 0
        all_tokens = self.masking == "all_tokens"
        for a, b in spans:
            if a > pos:
                piece = self._ids(text[pos:a])
                ids += piece
                mask += [1 if all_tokens else 0] * len(piece)
            piece = self._ids(text[a:b])
            ids += piece
            mask += [1] * len(piece)
            pos = b
        if pos < len(text):
            piece = self._ids(text[pos:])
            ids += piece
            mask += [1 if all_tokens else 0] * len(piece)
        return Encoded(ids, mask)


# ------------------------------------------------------------------------------------------------------------ packing
@dataclass(frozen=True)
class StreamState:
    draw: int = 0
    offset: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"draw": self.draw, "offset": self.offset}

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> "StreamState":
        return cls(int(d["draw"]), int(d["offset"]))


@dataclass
class PackedSequence:
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


def collate(seqs: list[PackedSequence], masking: str) -> dict[str, torch.Tensor]:
    """Stack packed sequences into a batch.

    ``loss_mask[t]`` (logit losses, next-token aligned) is 1 when token ``t+1`` is a training target of the same
    document; ``labels[t] = input_ids[t+1]``. ``token_mask[t]`` (hidden-state losses) is 1 on real tokens (and, with
    completion-only masking, only on target tokens).
    """
    input_ids = torch.tensor([s.input_ids for s in seqs], dtype=torch.long)
    position_ids = torch.tensor([s.position_ids for s in seqs], dtype=torch.long)
    target = torch.tensor([s.target_mask for s in seqs], dtype=torch.bool)
    valid = torch.tensor([s.valid for s in seqs], dtype=torch.bool)
    loss_mask = torch.zeros_like(target)
    loss_mask[:, :-1] = target[:, 1:] & valid[:, 1:] & (position_ids[:, 1:] != 0)
    labels = torch.full_like(input_ids, -100)
    labels[:, :-1] = torch.where(loss_mask[:, :-1], input_ids[:, 1:], -100)
    token_mask = valid & (target if masking == "completion_only" else torch.ones_like(target))
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "loss_mask": loss_mask,
        "labels": labels,
        "token_mask": token_mask,
    }


# ------------------------------------------------------------------------------------------------------------- stream
class PackedStream:
    """Source readers + encoders + packer for one stage; resumable at any sequence boundary."""

    def __init__(self, data: DataConfig, tokenizer: Any, seq_len: int, masking: str):
        self.data, self.tok, self.seq_len, self.masking = data, tokenizer, seq_len, masking
        self.readers = [SourceReader(s, i, data) for i, s in enumerate(data.sources)]
        self.encoders = [Encoder(tokenizer, s, masking, data) for s in data.sources]
        self.docs = DocumentStream(self.readers, data.seed)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)

    def validate(self) -> dict[str, int]:
        """Open every source and check every record (streaming sources: the first few hundred) before training:
        empty files, malformed lines, missing fields, conversations without an assistant turn, missing chat template.
        Encodes the first records of each source too. Returns usable documents per source; with ``skip_empty`` the
        records with nothing to distill are counted in ``self.skipped`` instead of raising."""
        counts: dict[str, int] = {}
        self.skipped: dict[str, int] = {}
        for reader, enc in zip(self.readers, self.encoders):
            n = skipped = 0
            fmt = reader.cfg.format
            for origin, rec in reader.records_for_validation():
                try:
                    if fmt == "text":
                        if not _get_field(rec, reader.cfg.text_field, origin).strip():
                            raise NothingToDistillError(f"{origin}: empty {reader.cfg.text_field!r} (nothing to distill)")
                    elif fmt == "prompt_response":
                        _get_field(rec, reader.cfg.prompt_field, origin)
                        if not _get_field(rec, reader.cfg.response_field, origin).strip():
                            raise NothingToDistillError(
                                f"{origin}: empty {reader.cfg.response_field!r} (nothing to distill)"
                            )
                    else:
                        check_messages(_get_field(rec, reader.cfg.messages_field, origin, list), origin)
                    if n < 8:
                        enc.encode(rec, origin)
                except NothingToDistillError:
                    if not self.data.skip_empty:
                        raise
                    skipped += 1
                    continue
                n += 1
            if n == 0:
                raise DataError(f"{reader.cfg.path}: no usable documents ({skipped} with nothing to distill)")
            counts[reader.cfg.path] = n
            self.skipped[reader.cfg.path] = skipped
        return counts

    def _encode(self, k: int, rec: Any, origin: str) -> Encoded | None:
        try:
            return self.encoders[k].encode(rec, origin)
        except NothingToDistillError:
            if self.data.skip_empty:
                return None
            raise

    def _iter_with_source(self, draw: int) -> Iterator[tuple[int, str, Encoded]]:
        # the source index is recovered from the mixture choice so each document gets its source's encoder
        stream = self.docs
        it = stream.iter_from(draw)
        for d, origin, rec in it:
            k = 0 if len(stream.readers) == 1 else int(stream._choices(d // _MIX_BLOCK)[d % _MIX_BLOCK])
            enc = self._encode(k, rec, origin)
            if enc is not None:  # a skipped record still uses up its draw, so resume positions stay exact
                yield d, origin, enc

    def sequences(self, start: StreamState = StreamState()) -> Iterator[tuple[PackedSequence, StreamState]]:
        docs = ((d, enc) for d, _, enc in self._iter_with_source(start.draw))
        return pack_documents(
            docs,
            self.seq_len,
            pad_id=self.pad_id,
            split_documents=self.data.split_documents,
            min_document_tokens=self.data.min_document_tokens,
            start_offset=start.offset,
        )

    def heldout_sequences(self, max_sequences: int) -> list[PackedSequence]:
        if max_sequences <= 0:
            return []
        docs: list[tuple[int, Encoded]] = []
        d = 0
        for k, reader in enumerate(self.readers):
            for origin, rec in reader.heldout():
                enc = self._encode(k, rec, origin)
                if enc is not None:
                    docs.append((d, enc))
                    d += 1
        out = []
        for seq, _ in pack_documents(
            iter(docs), self.seq_len, pad_id=self.pad_id, split_documents=True, min_document_tokens=2
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
        if batch_size % (micro_batch_size * world_size):
            raise ValueError("batch_size must be a multiple of micro_batch_size * world_size")
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
        micro = [collate(mine[i : i + self.mb], self.packed.masking) for i in range(0, per_rank, self.mb)]
        self.state = state
        return micro, state


__all__ = [
    "BatchStream",
    "DocumentStream",
    "Encoded",
    "Encoder",
    "PackedSequence",
    "PackedStream",
    "SourceReader",
    "StreamState",
    "collate",
    "iter_file",
    "pack_documents",
]
