"""benchmarks/train_throughput.py --tiny runs on CPU and writes its JSON (the GPU numbers come from the same code)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_train_throughput_tiny(tmp_path):
    out = tmp_path / "tt.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--tiny", "--steps", "2", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=240,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["status"] == "ok" and r["tokens_per_s"] > 0 and r["loss_impl"] == "chunked"
    assert r["flops_per_step"]["total"] > r["flops_per_step"]["teacher_forward"] > 0
    assert r["batch"] == 2 and r["seq_len"] == 128
    assert "tokens/s" in res.stdout
