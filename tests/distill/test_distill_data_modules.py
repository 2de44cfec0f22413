"""The data modules after the split (sources / encoding / packing / streaming): a local corpus is read once into
datasets' memory-mapped cache and not again by later stages, a changed file is read afresh, the table gives the file's
records in file order, and the target mask is decided by the encoder alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gendistill.distill.config import DataConfig, SourceConfig
from gendistill.distill.data import Encoder, PackedStream, Source, collate, pack_documents, sources
from gendistill.errors import DataError

from _distill_helpers import chat_records, text_records, write_jsonl


def _data(*srcs: SourceConfig, **kw) -> DataConfig:
    return DataConfig(sources=list(srcs), heldout_documents=kw.pop("heldout_documents", 2), **kw)


def _first(ps: PackedStream, n: int = 6) -> list[list[int]]:
    return [s.input_ids.tolist() for _, (s, _) in zip(range(n), ps.sequences())]


def test_a_local_corpus_is_parsed_once_across_stages(tmp_path, tok, monkeypatch):
    path = write_jsonl(tmp_path / "c.jsonl", chat_records(30))
    calls = []
    real = sources.iter_file
    monkeypatch.setattr(sources, "iter_file", lambda p: calls.append(p) or real(p))
    data = _data(SourceConfig(path=str(path), format="chat"))
    first = PackedStream(data, tok, 64, "completion_only")  # the pipeline's check before training
    assert first.validate() == {str(path): 30}
    assert len(calls) == 1
    second = PackedStream(data, tok, 64, "completion_only")  # the trainer's stream of the same stage, a later stage
    second.validate()
    assert _first(second) == _first(first) and len(calls) == 1  # same documents, no second parse
    # the records are not held in a Python list: the reader indexes the memory-mapped table
    assert second.readers[0]._records is not None and not isinstance(second.readers[0]._records, list)


def test_a_changed_file_is_read_again(tmp_path, tok):
    path = write_jsonl(tmp_path / "t.jsonl", text_records(10))
    data = _data(SourceConfig(path=str(path), format="text"), shuffle=False)
    before = PackedStream(data, tok, 512, "all_tokens")
    assert before.validate() == {str(path): 10}
    write_jsonl(path, [{"text": f"fresh words {i} " * 3} for i in range(7)])
    after = PackedStream(data, tok, 512, "all_tokens")
    assert after.validate() == {str(path): 7}
    assert "fresh words" in tok.decode(_first(after, 1)[0])


@pytest.mark.parametrize("limit", [None, 4])
def test_table_and_stream_give_the_file_records_in_order(tmp_path, limit):
    import pyarrow as pa
    import pyarrow.parquet as pq

    recs = text_records(9)
    (tmp_path / "folder").mkdir()
    write_jsonl(tmp_path / "folder" / "a.jsonl", recs[:5])
    pq.write_table(pa.Table.from_pylist(recs[5:]), tmp_path / "folder" / "b.parquet")
    src = Source(SourceConfig(path=str(tmp_path / "folder"), format="text", limit=limit))
    streamed = list(src.iter_records())
    table = src.table()
    assert list(table) == streamed == [table[i] for i in range(len(table))]
    assert [r["text"] for _, r in streamed] == [r["text"] for r in recs[: limit or 9]]
    assert streamed[1][0].endswith("a.jsonl:2") and (limit or streamed[5][0].endswith("b.parquet[0]"))
    assert [r for _, r in table.slice(2, 4)] == [r for _, r in streamed[2:4]]


def test_errors_inside_the_cache_build_stay_one_line(tmp_path):
    p = write_jsonl(tmp_path / "bad.jsonl", [{"text": "a"}, '{"text": "broken'])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: malformed JSON") as e:
        Source(SourceConfig(path=str(p), format="text")).table()
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("masking", ["all_tokens", "completion_only"])
def test_token_mask_is_the_encoder_target_mask(tok, masking):
    """collate does not decide masking again: its token mask is the encoder's target mask on real tokens, which for
    all_tokens is every real token (the rule the trainer applied before the split)."""
    src = SourceConfig(path="mem", format="chat")
    enc = Encoder(tok, src, masking, _data(src))
    docs = [(d, enc.encode(r, f"m:{d}")) for d, r in enumerate(chat_records(6))]
    seqs = [s for s, _ in pack_documents(iter(docs), 48, pad_id=0)]
    b = collate(seqs)
    valid = torch.from_numpy(np.stack([s.valid for s in seqs]))
    target = torch.from_numpy(np.stack([s.target_mask for s in seqs]))
    expected = valid & (target if masking == "completion_only" else torch.ones_like(target))
    assert torch.equal(b["token_mask"], expected)
    assert (masking == "completion_only") == bool((valid & ~target).any())
