"""benchmarks/prefill_profile.py is a GPU script; its plumbing (model build, prefill timing, the layer and its parts,
JSON, table) runs on CPU with the tiny shape so it does not rot. CPU timings mean nothing."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "prefill_profile.py"


def test_prefill_profile_cpu_plumbing(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("prefill_profile", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--tiny", "--device", "cpu", "--contexts", "32", "--layer-contexts", "16,32",
                     "--label", "t", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "prefill_profile_t.json").read_text())
    row = data["model"]["32"]
    assert row["student"]["wall_ms"] > 0 and row["teacher"]["wall_ms"] > 0 and row["ttft_speedup"] > 0
    assert set(data["layer"]) == {"16", "32"}
    parts = data["layer"]["32"]["parts_ms"]
    assert {"qkv_proj", "conv_with_state", "gqa_repeat", "o_norm", "o_proj"} <= set(parts)
    assert all(v > 0 for v in parts.values())
    layer = data["layer"]["32"]
    assert all(layer[k] > 0 for k in ("layer_cached_prefill_joined_ms", "layer_decode_step_ms",
                                       "layer_decode_step_joined_ms"))
    assert "prefill profile [t]" in capsys.readouterr().out
