"""Fixtures of the reliability suite: a tiny teacher saved as a folder (built once), a recipe writer, a CLI runner
that returns (exit code, stdout, stderr), and the end-to-end reference run every resume is compared against."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from tests.distill._distill_helpers import _train_tokenizer, chat_records, text_records, tiny_llama, write_jsonl

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_teacher_dir(path: Path, seed: int) -> Path:
    tok = _train_tokenizer()
    tiny_llama(len(tok), seed=seed, layers=4, hidden=32).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory) -> Path:
    return make_teacher_dir(tmp_path_factory.mktemp("teacher") / "tiny-llama", seed=0)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    write_jsonl(d / "text.jsonl", text_records(40))
    write_jsonl(d / "chat.jsonl", chat_records(20))
    return d


def recipe_dict(teacher: Path, data: Path, out: Path, **over) -> dict:
    """stage1 (2 steps) then stage3a (6 steps, a checkpoint every 2, the newest 2 kept) on a 4-layer, 32-wide
    Llama; seconds on one CPU thread."""
    r = {
        "teacher": {"spec": str(teacher)},
        "student": {"attention_layers": [0, 2]},
        "data": {"sources": [{"path": str(data / "text.jsonl"), "format": "text"}], "heldout_documents": 4},
        "stages": [
            {"name": "stage1", "steps": 2, "seq_len": 32, "batch_size": 2, "optim": {"lr": 1e-3}},
            {"name": "stage3a", "steps": 6, "seq_len": 32, "batch_size": 2, "checkpoint_every": 2,
             "optim": {"lr": 1e-3, "schedule": "constant"}},
        ],
        "run": {"output_dir": str(out), "keep_checkpoints": 2, "progress": "none", "tensorboard": False},
    }
    for dotted, value in over.items():
        cur = r
        keys = dotted.split(".")
        for k in keys[:-1]:
            cur = cur[int(k)] if isinstance(cur, list) else cur[k]
        last = keys[-1]
        if isinstance(cur, list):
            cur[int(last)] = value
        else:
            cur[last] = value
    return r


def write_recipe(path: Path, teacher: Path, data: Path, out: Path, **over) -> Path:
    path.write_text(yaml.safe_dump(recipe_dict(teacher, data, out, **over)))
    return path


_TQDM = re.compile(r"\d+/\d+ \[[\d:<?]+")


class Result:
    def __init__(self, code: int, stdout: str, stderr: str):
        self.code, self.stdout, self.stderr = code, stdout, stderr

    @property
    def error_lines(self) -> list[str]:
        # transformers' own progress bars ("Loading weights: 100%|...| 38/38 [...]") are not messages
        return [line for line in self.stderr.splitlines() if line.strip() and not _TQDM.search(line)]


def cli(*args: str) -> Result:
    res = CliRunner().invoke(__import__("gendistill.cli", fromlist=["app"]).app, [str(a) for a in args])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return Result(res.exit_code, res.stdout, res.stderr)


def assert_one_line_error(res: Result, *fragments: str) -> str:
    """Exit status 2, exactly one non-empty line on stderr starting with ``error:``, no traceback."""
    assert res.code == 2, (res.code, res.stdout, res.stderr)
    lines = res.error_lines
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its bytes (to show that nothing changed)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def student_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def assert_same_student(a: Path, b: Path) -> None:
    ta, tb = student_tensors(a), student_tensors(b)
    assert ta.keys() == tb.keys()
    differ = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not differ, f"{len(differ)} of {len(ta)} tensors differ, e.g. {differ[:3]}"


def metric_steps(run: Path) -> list[tuple[str, int]]:
    import json

    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["stage"], r["step"]) for r in recs if "loss" in r]


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, teacher_dir, data_dir) -> Path:
    """The uninterrupted run every interrupted-and-resumed run must equal bit for bit."""
    base = tmp_path_factory.mktemp("reference")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = cli("distill", write_recipe(base / "r.yaml", teacher_dir, data_dir, base / "run"))
    finally:
        torch.set_num_threads(before)
    assert res.code == 0, res.stderr
    return base / "run"
