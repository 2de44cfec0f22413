"""The CUDA-graph control flow (pre-check, validation, eager fallback, cache-length budget) exercised on CPU with a
stand-in for ``GraphStep`` that replays the step eagerly. The real capture is tested on GPU in test_engine.py."""

from __future__ import annotations

import pytest

from gendistill.bench import engine
from gendistill.bench.runner import Runner
from gendistill.bench.settings import BenchSettings


class FakeGraph:
    def __init__(self, step, warmup: int = 2):
        for _ in range(warmup):  # the real capture's side-stream warm-up advances the cache too
            step()
        self.step = step

    def __call__(self):
        self.step()


class BrokenGraph:
    def __init__(self, step, warmup: int = 2):
        raise RuntimeError("operation not permitted when stream is capturing")


def _run(tmp_path, monkeypatch, graph_cls):
    monkeypatch.setattr(engine, "GraphStep", graph_cls)
    settings = BenchSettings.tiny(out=str(tmp_path), skip=("throughput",), contexts=(32,), decode_tokens=3, repeats=2)
    runner = Runner(settings, log_sink=lambda s: None)
    runner.use_graph = True  # as on CUDA
    return runner.run()


def test_graph_path_used_when_both_models_validate(tmp_path, monkeypatch):
    res = _run(tmp_path, monkeypatch, FakeGraph)
    info = res["cuda_graph"]
    assert info["used"] and all(info["validation"][r]["accepted"] for r in ("teacher", "student"))
    assert all(info["validation"][r]["max_abs_diff"] == 0.0 for r in ("teacher", "student"))
    c = res["contexts"][0]
    for role in ("teacher", "student"):
        e = c[role]
        assert not e.get("errors"), e.get("tracebacks")
        assert e["decode_mode"] == "cuda_graph" and e["decode_tok_s"] == e["decode_tok_s_graph"] > 0
        assert e["decode_tok_s_eager"] > 0
    assert c["ratios"]["decode_speedup"] == pytest.approx(c["ratios"]["decode_speedup_graph"])


def test_capture_failure_falls_back_to_eager_for_both(tmp_path, monkeypatch):
    res = _run(tmp_path, monkeypatch, BrokenGraph)
    info = res["cuda_graph"]
    assert info["used"] is False
    assert "stream is capturing" in info["validation"]["teacher"]["error"]
    c = res["contexts"][0]
    for role in ("teacher", "student"):
        assert c[role]["decode_mode"] == "eager" and "decode_tok_s_graph" not in c[role]
    assert c["ratios"]["decode_speedup"] == pytest.approx(c["ratios"]["decode_speedup_eager"])
