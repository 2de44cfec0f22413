"""Issue 31, "one 50 MB document is tokenised at once (10 GB)": text longer than a piece is tokenised in bounded
pieces cut where the pre-tokenizer splits anyway, so the tokens equal one call's; shorter documents go through the
one call they always did (bit-identical)."""

from __future__ import annotations

import pytest

import gendistill.distill.data.encoding as encoding
from gendistill.distill.config import DataConfig, SourceConfig
from gendistill.distill.data import Encoder

from _distill_helpers import sentences


def _long_text(run: int = 200) -> str:
    """Paragraphs, double spaces and a run of ``run`` characters without a space."""
    return "\n\n".join(sentences(400, 3)) + "  two  spaces " + "x" * run + " end"


class _Spy:
    """A tokenizer whose calls are recorded (the longest text it was given)."""

    def __init__(self, tok):
        self.tok, self.longest, self.calls = tok, 0, 0

    def __call__(self, text, **kw):
        self.calls += 1
        self.longest = max(self.longest, len(text))
        return self.tok(text, **kw)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def test_pieces_cover_the_text_and_are_cut_before_a_single_space():
    text = _long_text(run=700)  # longer than a piece: one hard cut
    pieces = encoding.split_for_tokenizer(text, 500)
    assert "".join(pieces) == text and len(pieces) > 10
    assert all(len(p) <= 500 for p in pieces)
    hard = 0
    for prev, nxt in zip(pieces, pieces[1:]):
        if set(prev[-250:]) == {"x"}:  # a window without a usable space is cut at the limit
            hard += 1
            continue
        assert nxt[0] == " " and not nxt[1].isspace() and not prev[-1].isspace(), (prev[-5:], nxt[:5])
    assert hard == 1
    assert encoding.split_for_tokenizer("short text", 500) == ["short text"]


@pytest.mark.parametrize("fmt", ["text", "prompt_response", "chat"])
def test_a_long_document_gives_one_call_s_tokens_with_every_call_bounded(tok, monkeypatch, fmt):
    text = _long_text()  # every window has a space to cut before
    rec = {"text": text, "prompt": "say it", "response": text,
           "messages": [{"role": "user", "content": "say it"}, {"role": "assistant", "content": text}]}
    data = DataConfig(sources=[SourceConfig(path="x.jsonl", format=fmt, chat_template=False)])
    src = data.sources[0]
    masking = "all_tokens" if fmt == "text" else "completion_only"
    whole = Encoder(tok, src, masking, data).encode(rec, "x.jsonl:1")  # the piece size (256k chars) exceeds it

    monkeypatch.setattr(encoding, "TOKENIZE_PIECE_CHARS", 500)
    spy = _Spy(tok)
    pieces = Encoder(spy, src, masking, data).encode(rec, "x.jsonl:1")
    assert pieces.input_ids == whole.input_ids and pieces.target_mask == whole.target_mask
    assert spy.longest <= 500 < len(text)  # the tokenizer never saw more than a piece


def test_a_normal_document_is_tokenised_in_the_one_call_it_always_was(tok):
    data = DataConfig(sources=[SourceConfig(path="x.jsonl", format="text")])
    spy = _Spy(tok)
    text = " ".join(sentences(20, 1))
    enc = Encoder(spy, data.sources[0], "all_tokens", data).encode({"text": text}, "x.jsonl:1")
    assert spy.calls == 1 and spy.longest == len(text)
    assert enc.input_ids[:-1] == list(tok(text, add_special_tokens=True)["input_ids"])  # + the appended EOS
