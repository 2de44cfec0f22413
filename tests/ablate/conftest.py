"""Fixtures for the ablation tests: a small base recipe (stage1 + stage3a + stage3b) and grid files written into tmp
folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml


def base_recipe(teacher: str = "teacher", stages=("stage1", "stage3a", "stage3b"), steps: int = 2) -> dict:
    spec = {
        "stage1": {"name": "stage1", "steps": steps, "seq_len": 32, "batch_size": 2, "optim": {"lr": 1e-3},
                   "eval_every": steps, "eval_sequences": 2},
        "stage3a": {"name": "stage3a", "steps": steps, "seq_len": 32, "batch_size": 2, "optim": {"lr": 1e-4},
                    "eval_every": steps, "eval_sequences": 2},
        "stage3b": {"name": "stage3b", "steps": steps, "seq_len": 48, "batch_size": 2, "optim": {"lr": 1e-4},
                    "eval_every": steps, "eval_sequences": 2,
                    "data": {"sources": [{"path": "chat.jsonl", "format": "chat"}], "heldout_documents": 4}},
    }
    return {
        "teacher": {"spec": teacher},
        "student": {"attention_layers": [0]},
        "data": {"sources": [{"path": "text.jsonl", "format": "text"}], "heldout_documents": 4},
        "stages": [spec[s] for s in stages],
        "run": {"output_dir": "unused", "checkpoint_every": 1, "progress": "none", "tensorboard": False},
    }


@pytest.fixture()
def write_grid(tmp_path):
    """``write_grid(axes, **grid_keys)`` -> path of a grid file whose base recipe is ``base_recipe()`` (overridable
    with ``base=...``), output under tmp_path/out."""

    def _write(axes: dict, base: dict | None = None, **keys) -> Path:
        (tmp_path / "base.yaml").write_text(yaml.safe_dump(base or base_recipe()))
        grid = {"base": "base.yaml", "output_dir": str(tmp_path / "out"), "axes": axes, **keys}
        p = tmp_path / "grid.yaml"
        p.write_text(yaml.safe_dump(grid, sort_keys=False))
        return p

    return _write
