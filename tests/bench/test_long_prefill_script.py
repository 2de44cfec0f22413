"""benchmarks/long_prefill.py on CPU with the 4-layer models: the left-padded batch and one prefill a row give the
same last logits in float32 (the padding costs nothing in exactness), and below float32 every row carries the
precision's own noise beside the padded-vs-per-row difference, so a reader can tell the two apart."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "long_prefill.py"), "--device", "cpu", "--tiny",
                           "--lengths", "256", "--rows", "2", "--jitter", "32", "--repeats", "1", "--out", str(out),
                           *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| per row vs fp32 |" in proc.stdout
    return json.loads((out / "long_prefill_cpu.json").read_text())


def test_float32_padded_batch_matches_one_prefill_a_row_and_bf16_records_its_floor(tmp_path):
    fp32 = _run(tmp_path, "--dtype", "float32")
    assert fp32["dtype"] == "torch.float32" and {r["model"] for r in fp32["rows"]} == {"teacher", "student"}
    for r in fp32["rows"]:
        # float32 reductions in another order (a batch against one row): well below 1e-4 of a logit scale near 1
        assert r["max_logit_diff"] < 1e-4 * max(1.0, r["logit_scale"]) and "per_row_vs_fp32" not in r
    bf16 = _run(tmp_path, "--dtype", "bfloat16", "--models", "student")
    (r,) = bf16["rows"]
    assert bf16["dtype"] == "torch.bfloat16"
    # bf16 is noisier than float32 by far, and both paths' distance from float32 is recorded
    assert r["per_row_vs_fp32"] > 1e-3 and r["padded_vs_fp32"] > 1e-3
    assert r["max_logit_diff"] <= r["per_row_vs_fp32"] + r["padded_vs_fp32"] + 1e-6  # the triangle: one yardstick


def test_models_must_be_named(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "long_prefill.py"), "--device", "cpu", "--tiny",
                           "--models", "both", "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "--models both: teacher, student or teacher,student" in proc.stderr
