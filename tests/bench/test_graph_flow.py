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


class FakeGraphedPrefill:
    """Stands in for engine.GraphedPrefill: replays the prefill eagerly."""

    def __init__(self, model, ids):
        self.model, self.ids = model, ids

    def __call__(self):
        return engine.prefill(self.model, self.ids)


def test_prefill_peak_is_read_before_the_graphed_prefill_resets_it(tmp_path, monkeypatch):
    """`peak_mem_bytes_prefill` is the peak of the eager prefill whether or not a graphed prefill follows: CUDA's
    free_memory() after the graphed prefill resets the peak counter, and reading it after that gave only the cache
    still held (the JSONs up to 32K). The CUDA counters are replaced by a fake one: a prefill peaks at 5000 bytes and
    holds 1000 (its cache); a reset leaves what is held."""
    from gendistill.bench import runner as runner_mod

    counter = {"peak": 0, "held": 0}
    real_prefill = engine.prefill

    def prefill(model, ids):
        counter["held"] = 1000
        counter["peak"] = max(counter["peak"], 5000)
        return real_prefill(model, ids)

    def reset(*_):
        counter["peak"] = counter["held"]

    monkeypatch.setattr(engine, "prefill", prefill)
    monkeypatch.setattr(engine, "GraphedPrefill", FakeGraphedPrefill)
    monkeypatch.setattr(engine, "validate_graphed_prefill", lambda m, g: {"accepted": True})
    monkeypatch.setattr(runner_mod, "peak_allocated", lambda device: counter["peak"])
    monkeypatch.setattr(runner_mod, "_reset_peak", reset)
    monkeypatch.setattr(runner_mod, "_mem_allocated", lambda device: 0)
    monkeypatch.setattr(runner_mod, "free_memory", reset)  # as torch.cuda.reset_peak_memory_stats() does
    for graphed in (True, False):
        settings = BenchSettings.tiny(out=str(tmp_path / str(graphed)), skip=("throughput", "decode"), contexts=(32,),
                                      repeats=2)
        runner = Runner(settings, log_sink=lambda s: None)
        runner.use_prefill_graph = graphed  # as on CUDA (or not)
        res = runner.run()
        for role in ("teacher", "student"):
            e = res["contexts"][0][role]
            assert not e.get("errors"), e.get("tracebacks")
            assert ("ttft_graph_ms" in e) == graphed
            assert e["peak_mem_bytes_prefill"] == 5000, (graphed, role)


def test_the_throughput_sweep_steps_through_graphs_when_they_validated(tmp_path, monkeypatch):
    """The peak-throughput figure is the card's, not the host's: with validated decode graphs every batch's decode
    step is captured (here the eager stand-in) and the entry says so; after a failed capture the sweep runs eager."""
    captured: list[int] = []

    class CountingGraph(FakeGraph):
        def __init__(self, step, warmup: int = 2):
            captured.append(1)
            super().__init__(step, warmup)

    monkeypatch.setattr(engine, "GraphStep", CountingGraph)
    settings = BenchSettings.tiny(out=str(tmp_path / "graphed"), skip=("decode",), contexts=(32,),
                                  throughput_contexts=(32,), max_batch=4, repeats=2)
    runner = Runner(settings, log_sink=lambda s: None)
    runner.use_graph = True  # as on CUDA
    res = runner.run()
    assert res["cuda_graph"]["used"]  # the pre-check ran for the throughput sweep alone
    n_precheck = 2  # one capture per model in the pre-check
    for role in ("teacher", "student"):
        e = res["contexts"][0][role]
        assert not e.get("errors"), e.get("tracebacks")
        assert e["throughput_mode"] == "cuda_graph" and e["throughput_tok_s"] > 0
    assert len(captured) > n_precheck

    monkeypatch.setattr(engine, "GraphStep", BrokenGraph)
    runner = Runner(BenchSettings.tiny(out=str(tmp_path / "eager"), skip=("decode",), contexts=(32,),
                                       throughput_contexts=(32,), max_batch=4, repeats=2), log_sink=lambda s: None)
    runner.use_graph = True
    res = runner.run()
    assert res["cuda_graph"]["used"] is False
    assert all(res["contexts"][0][r]["throughput_mode"] == "eager" for r in ("teacher", "student"))
