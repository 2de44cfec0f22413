"""benchmarks/mixer_throughput.py is a GPU script; its plumbing (every registered mixer built at a teacher shape,
timed forward, backward and decode step, JSON, table) runs on CPU through our PyTorch paths so it does not rot."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "mixer_throughput.py"


def test_mixer_throughput_cpu_plumbing(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("mixer_throughput", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rc = mod.main(["--device", "cpu", "--dtype", "float32", "--lengths", "24", "--batch", "1", "--hidden", "32",
                   "--heads", "2", "--kv-heads", "1", "--dim", "16", "--warmup", "0", "--repeats", "1",
                   "--out", str(tmp_path)])
    assert rc == 0
    data = json.loads(next(tmp_path.glob("mixer_throughput_*.json")).read_text())
    assert [r["mixer"] for r in data["mixers"]] == ["kda", "gated_deltanet", "gla", "mamba2"]
    # the command as run, without the machine's paths (--out's folder cut to its name)
    assert data["command"].startswith("python benchmarks/mixer_throughput.py --device cpu --dtype float32")
    assert data["command"].endswith(f"--out {tmp_path.name}") and str(tmp_path) not in data["command"]
    for r in data["mixers"]:
        assert r["prefill"][0]["fwd_ms"] > 0 and r["prefill"][0]["fwd_bwd_ms"] > 0 and r["step_ms"] > 0, r
        # fp32 state [1, 2, 16, 16] + float32 conv window [1, 32 + 16 + 16, 4]
        assert r["state_bytes"] == 2 * 16 * 16 * 4 + (32 + 16 + 16) * 4 * 4
    kda = data["mixers"][0]
    for r in data["mixers"]:  # every time also as a multiple of KDA's in the same run
        row, base = r["prefill"][0], kda["prefill"][0]
        assert row["fwd_bwd_vs_kda"] == row["fwd_bwd_ms"] / base["fwd_bwd_ms"]
        assert row["fwd_vs_kda"] == row["fwd_ms"] / base["fwd_ms"] and r["step_vs_kda"] == r["step_ms"] / kda["step_ms"]
    assert kda["prefill"][0]["fwd_vs_kda"] == 1.0
    assert "gated_deltanet" in capsys.readouterr().out
    assert mod.main(["--device", "cpu", "--mixers", "lstm", "--out", str(tmp_path)]) == 2


def test_a_backward_fla_refuses_is_recorded_not_fatal(tmp_path, monkeypatch):
    """On a card where fla refuses Gated DeltaNet's and Mamba2's backward (an H100 with Triton 3.6), their forward and
    decode are still timed, the backward is recorded as refused with the reason, and the other mixers run as usual."""
    from gendistill.layers import registry

    spec = importlib.util.spec_from_file_location("mixer_throughput", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(registry, "fla_gated_backward_refused", lambda **_: "fla refuses it here")
    rc = mod.main(["--device", "cpu", "--dtype", "float32", "--lengths", "24", "--batch", "1", "--hidden", "32",
                   "--heads", "2", "--kv-heads", "1", "--dim", "16", "--warmup", "0", "--repeats", "1",
                   "--out", str(tmp_path)])
    assert rc == 0
    rows = {r["mixer"]: r for r in json.loads(next(tmp_path.glob("mixer_throughput_*.json")).read_text())["mixers"]}
    for name in ("gated_deltanet", "mamba2"):
        p = rows[name]["prefill"][0]
        assert rows[name]["backward_refused"] == "fla refuses it here"
        assert p["fwd_bwd_ms"] is None and p["fwd_bwd_vs_kda"] is None and p["fwd_ms"] > 0 and rows[name]["step_ms"] > 0
    for name in ("kda", "gla"):
        assert rows[name]["backward_refused"] is None and rows[name]["prefill"][0]["fwd_bwd_ms"] > 0


def test_a_run_cut_short_keeps_the_mixers_it_timed(tmp_path, monkeypatch):
    """The JSON is written after every mixer: a run stopped in its third mixer (a timeout while fla autotunes on a
    fresh card) leaves the first two timed, their ratios to KDA and ``complete: false``."""
    spec = importlib.util.spec_from_file_location("mixer_throughput", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    real = mod.measure

    def measure(mixer, *a):
        if mixer == "gla":
            raise KeyboardInterrupt  # what the timeout's SIGTERM stands for here
        return real(mixer, *a)

    monkeypatch.setattr(mod, "measure", measure)
    args = ["--device", "cpu", "--dtype", "float32", "--lengths", "24", "--batch", "1", "--hidden", "32",
            "--heads", "2", "--kv-heads", "1", "--dim", "16", "--warmup", "0", "--repeats", "1", "--out", str(tmp_path)]
    try:
        mod.main(args)
        raise AssertionError("the stand-in cut did not stop the run")
    except KeyboardInterrupt:
        pass
    data = json.loads(next(tmp_path.glob("mixer_throughput_*.json")).read_text())
    assert [r["mixer"] for r in data["mixers"]] == ["kda", "gated_deltanet"] and data["complete"] is False
    gdn = data["mixers"][1]["prefill"][0]
    assert gdn["fwd_vs_kda"] == gdn["fwd_ms"] / data["mixers"][0]["prefill"][0]["fwd_ms"]
    assert data["gated_backward"].startswith("PyTorch reference")
    assert data["fla_configs"].startswith("fla kernel configurations: ")
    monkeypatch.setattr(mod, "measure", real)
    assert mod.main(args) == 0
    assert json.loads(next(tmp_path.glob("mixer_throughput_*.json")).read_text())["complete"] is True


def test_packed_layout_times_the_same_tokens_as_documents_in_one_row(tmp_path, monkeypatch):
    """``--layout packed``: each mixer gets B x T tokens in one row with ``cu_seqlens`` at every T (the trainer's
    layout), and the JSON says which layout it timed."""
    spec = importlib.util.spec_from_file_location("mixer_throughput", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from gendistill.layers.registry import LINEAR_MIXERS

    seen = []
    for cls in set(LINEAR_MIXERS.values()):
        real = cls.forward

        def spy(self, x, *a, _real=real, **kw):
            if kw.get("cu_seqlens") is not None:
                seen.append((type(self).__name__, tuple(x.shape), kw["cu_seqlens"].tolist()))
            return _real(self, x, *a, **kw)

        monkeypatch.setattr(cls, "forward", spy)
    rc = mod.main(["--device", "cpu", "--dtype", "float32", "--lengths", "24", "--batch", "3", "--hidden", "32",
                   "--heads", "2", "--kv-heads", "1", "--dim", "16", "--warmup", "0", "--repeats", "1",
                   "--layout", "packed", "--mixers", "kda,gla", "--out", str(tmp_path)])
    assert rc == 0
    data = json.loads(next(tmp_path.glob("mixer_throughput_*.json")).read_text())
    assert data["layout"] == "packed" and data["mixers"][1]["prefill"][0]["fwd_bwd_ms"] > 0
    assert {s[0] for s in seen} == {LINEAR_MIXERS["kda"].__name__, LINEAR_MIXERS["gla"].__name__}
    assert all(shape == (1, 72, 32) and cu == [0, 24, 48, 72] for _, shape, cu in seen)
