"""benchmarks/kda_kernels.py is a GPU script; its plumbing (inputs, numerics, timing loop, JSON, table) is run on CPU
with gendistill's pure-PyTorch KDA standing in for fla's kernels, so it does not rot before the next GPU session and
its numerics section compares two independent implementations (ours against fla's naive recurrence)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "kda_kernels.py"


def test_kda_kernels_cpu_plumbing(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("kda_kernels", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rc = mod.main(["--device", "cpu", "--lengths", "32", "--decode-batches", "1", "--repeats", "1", "--warmup", "0",
                   "--numerics-len", "32", "--heads", "2", "--kv-heads", "1", "--dim", "16", "--out", str(tmp_path)])
    assert rc == 0
    data = json.loads(next(tmp_path.glob("kda_kernels_*.json")).read_text())
    row = data["prefill"][0]
    for op in ("chunk_kda[pre]", "chunk_kda[fused]", "fused,packed", "fused,split", "fused_recurrent", "sdpa_causal"):
        assert row[op] > 0, (op, row)
    assert row["split_speedup"] > 0 and row["split_rel_o"] < 1e-6  # on CPU no split is taken: one function
    assert data["decode"][0]["recurrent_step"] > 0 and data["decode"][0]["sdpa_decode"] > 0
    numerics = data["numerics"]
    assert "error" not in numerics, numerics["error"]
    ops = {"chunk_kda[pre]", "chunk_kda[fused]", "fused_recurrent[pre]", "fused_recurrent[fused]",
           "chunk_kda[pre,state_v_first]"}
    assert ops <= set(numerics), sorted(numerics)
    for name in ops:
        v = numerics[name]
        assert v["ref_o_absmax"] > 0.1, (name, v)  # a real output, not zeros compared with zeros
        # bf16 inputs and outputs against fla's fp32 reference; the states are fp32 computed from the same inputs
        assert v["rel_o"] < 2e-2 and v["max_abs_state"] < 1e-2, (name, v)
    assert "chunk_kda[fused]" in capsys.readouterr().out  # brackets survive rich markup
