"""The teacher cache (gendistill.teacher_cache): a GGUF teacher read back from its entry is the de-quantised teacher —
every parameter and buffer bitwise, in float32 and bfloat16, the same config and tokenizer — and the cache's failures
(damaged entry, unwritable folder, cache off) never fail a load."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from gendistill import teacher_cache
from gendistill.teachers import load_teacher
from tests.fixtures_teachers import tiny_model, tiny_tokenizer, write_tiny_gguf


@pytest.fixture()
def gguf(tmp_path):
    tok = tiny_tokenizer()
    return write_tiny_gguf(tmp_path / "teacher.gguf", tiny_model("llama", len(tok), seed=3), tok)


def _entries(root):
    return sorted(p.parent for p in root.rglob(teacher_cache.ENTRY_FILE))


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    assert {n: bf.dtype for n, bf in a.named_buffers()} == {n: bf.dtype for n, bf in b.named_buffers()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_cached_teacher_is_the_dequantised_teacher(gguf, tmp_path, monkeypatch, dtype):
    monkeypatch.setenv(teacher_cache.ENV, "off")
    fresh, fresh_tok = load_teacher(str(gguf), dtype=dtype)
    monkeypatch.setenv(teacher_cache.ENV, str(tmp_path / "cache"))
    first, _ = load_teacher(str(gguf), dtype=dtype)  # a miss: de-quantised, stored
    [entry] = _entries(tmp_path / "cache")
    assert json.loads((entry / teacher_cache.ENTRY_FILE).read_text())["gguf_sha256"]
    hit, hit_tok = load_teacher(str(gguf), dtype=dtype)  # a hit: read from the entry
    for m in (first, hit):
        _same(fresh, m)
        assert not m.training and "quantization_config" not in m.config.to_dict()
    assert hit.config.to_dict()["num_hidden_layers"] == fresh.config.num_hidden_layers
    text = "Hello there, <|im_start|>assistant\nfine"
    assert hit_tok(text)["input_ids"] == fresh_tok(text)["input_ids"]
    assert hit_tok.chat_template == fresh_tok.chat_template and hit_tok.pad_token == fresh_tok.pad_token
    x = torch.tensor([[1, 5, 9, 2]])
    assert torch.equal(fresh(input_ids=x).logits, hit(input_ids=x).logits)


def test_the_same_file_elsewhere_hits_and_another_file_misses(gguf, tmp_path, monkeypatch):
    monkeypatch.setenv(teacher_cache.ENV, str(tmp_path / "cache"))
    load_teacher(str(gguf))
    moved = tmp_path / "elsewhere" / "renamed.gguf"
    moved.parent.mkdir()
    moved.write_bytes(gguf.read_bytes())
    assert teacher_cache.lookup(moved)[0] is not None  # keyed by content, not by path
    tok = tiny_tokenizer()
    other = write_tiny_gguf(tmp_path / "other.gguf", tiny_model("llama", len(tok), seed=4), tok)
    assert teacher_cache.lookup(other)[0] is None


def test_a_damaged_entry_is_a_miss_and_is_replaced(gguf, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(teacher_cache.ENV, str(tmp_path / "cache"))
    good, _ = load_teacher(str(gguf))
    [entry] = _entries(tmp_path / "cache")
    (entry / "model.safetensors").write_bytes(b"truncated")
    with caplog.at_level(logging.WARNING):
        again, _ = load_teacher(str(gguf))
    assert "cannot be read" in caplog.text
    _same(good, again)
    assert teacher_cache.lookup(gguf)[0] == entry and load_teacher(str(gguf))[0] is not None
    (entry / teacher_cache.ENTRY_FILE).unlink()  # an entry whose marker is missing: written part-way
    assert teacher_cache.lookup(gguf)[0] is None
    load_teacher(str(gguf))
    assert teacher_cache.lookup(gguf)[0] == entry


def test_an_unwritable_cache_is_a_warning_and_off_writes_nothing(gguf, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv(teacher_cache.ENV, str(blocker / "cache"))
    with caplog.at_level(logging.WARNING):
        model, tok = load_teacher(str(gguf))
    assert model is not None and tok is not None and "cannot write" in caplog.text
    monkeypatch.setenv(teacher_cache.ENV, "off")
    assert teacher_cache.cache_root() is None
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    load_teacher(str(gguf))
    assert not (tmp_path / "xdg").exists()
