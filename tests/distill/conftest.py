"""Fixtures for the distillation tests: a tiny byte-level BPE tokenizer with a ChatML chat template (trained in
milliseconds on a synthetic corpus), tiny random Llama teachers, hybrid students converted from them, and data files
written into tmp folders."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _distill_helpers import _train_tokenizer, chat_records, text_records, tiny_llama, write_jsonl  # noqa: E402



@pytest.fixture(scope="session")
def tok():
    return _train_tokenizer()


@pytest.fixture()
def tok_no_template():
    t = _train_tokenizer()
    t.chat_template = None
    return t


@pytest.fixture()
def teacher(tok):
    return tiny_llama(len(tok))


@pytest.fixture()
def student(teacher):
    from gendistill.convert import convert_teacher

    from tests._trained_like import make_trained_like

    torch.manual_seed(1)  # trained-like KDA parameters: identity convs would hide a conv that leaks across documents
    return make_trained_like(convert_teacher(teacher, [0, 2]).float(), seed=1).train()


@pytest.fixture()
def text_file(tmp_path):
    return write_jsonl(tmp_path / "text.jsonl.gz", text_records(60), gz=True)


@pytest.fixture()
def chat_file(tmp_path):
    return write_jsonl(tmp_path / "chat.jsonl", chat_records(60))
