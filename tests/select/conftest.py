"""Fixtures for the layer-selection tests: the tiny tokenizer, a text file, and a settings factory."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tok():
    from tests.select._synthetic import tokenizer

    return tokenizer()


@pytest.fixture()
def text_path(tmp_path):
    from tests.select._synthetic import text_file

    return text_file(tmp_path / "text.jsonl")


@pytest.fixture()
def make_cfg(tmp_path, text_path):
    """``make_cfg(method, budget, **overrides)``: tiny, fast settings (seq 32, batch 2, one or a few steps)."""
    from gendistill.distill.config import DataConfig, SourceConfig
    from gendistill.select import SelectConfig

    def make(method: str, budget: int = 2, out: str | None = None, **overrides):
        base = dict(
            teacher="synthetic", method=method, budget=budget, output_dir=str(tmp_path / (out or method)),
            data=DataConfig(sources=[SourceConfig(path=str(text_path), format="text")], heldout_documents=8),
            seq_len=32, batch_size=2, micro_batch_size=2, eval_sequences=4, align_steps=2, candidate_steps=1,
            candidate_lr=1e-3, mix_steps=8, mix_lr=1e-3, mix_gate_lr=0.15, sparsity=0.05, device="cpu",
            recall=dict(prompts=4, pairs=8, queries=4),
        )
        return SelectConfig(**{**base, **overrides})

    return make
