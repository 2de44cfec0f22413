"""The benchmark's intra-card measurement (the student's eager prefill under fla's intra-card context parallelism,
checked against the serial prefill) exercised on CPU: fla's split runs on CUDA only, so here the switch is observed,
not its kernels. The kernels themselves are compared with the serial pass in tests/gpu/test_kda_gpu.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gendistill.bench import engine
from gendistill.bench.ratios import ratios, summary
from gendistill.bench.runner import Runner
from gendistill.bench.settings import BenchSettings, settings_from_options
from gendistill.errors import ConfigError
from gendistill.layers.base import TeacherShapedMixer
from gendistill.ops.backend import FLA_INTRACARD_ENV, fla_intracard


class SwitchLog(list):
    def __init__(self):
        super().__init__()
        self.teacher: list[tuple[int, str | None]] = []
        self.joined: list[bool] = []
        self.mixers: list = []


@pytest.fixture
def switch_seen(monkeypatch):
    """Every prefill the benchmark runs, with fla's switch as it was during the call: ``[(length, switch), ...]``
    (the student's; the teacher's in ``seen.teacher``)."""
    monkeypatch.delenv(FLA_INTRACARD_ENV, raising=False)
    seen = SwitchLog()
    real = engine.prefill

    def prefill(model, ids):
        log = seen if hasattr(model, "cache_bytes") else seen.teacher  # the hybrid tells its cache's size
        log.append((ids.shape[1], os.environ.get(FLA_INTRACARD_ENV)))
        if log is seen:  # the student's mixers: on weights joined once for the run (joined_weights)
            seen.mixers = [m for m in model.modules() if isinstance(m, TeacherShapedMixer)]
            seen.joined.append(all(m._joined is not None for m in seen.mixers))
        return real(model, ids)

    monkeypatch.setattr(engine, "prefill", prefill)
    return seen


def _run(tmp_path, intracard=True, **overrides):
    settings = BenchSettings.tiny(out=str(tmp_path), skip=("throughput", "decode"), contexts=(32, 128), repeats=2,
                                  intracard_min_context=128, **overrides)
    runner = Runner(settings, log_sink=lambda s: None)
    runner.use_intracard = intracard  # as on CUDA
    return runner.run()


def test_split_prefill_is_timed_for_the_student_from_its_context_on(tmp_path, switch_seen):
    res = _run(tmp_path)
    short, long = res["contexts"]
    for role in ("teacher", "student"):
        assert not short[role].get("errors") and not long[role].get("errors"), long[role].get("tracebacks")
        assert "ttft_intracard_ms" not in short[role]
    assert "ttft_intracard_ms" not in long["teacher"]  # no KDA layer: nothing to split
    s = long["student"]
    assert s["ttft_intracard_ms"] > 0 and len(s["ttft_intracard_ms_all"]) >= 1
    # on CPU the split is never taken (fla runs on CUDA only), so the two prefills are one function: no difference
    assert s["ttft_intracard_check"]["accepted"] and s["ttft_intracard_check"]["cache_rel_diff"] == 0.0
    speedup = long["teacher"]["ttft_ms"] / s["ttft_intracard_ms"]
    assert long["ratios"]["ttft_intracard_speedup"] == pytest.approx(speedup)
    gain = s["ttft_ms"] / s["ttft_intracard_ms"]
    assert long["ratios"]["student_split_over_serial"] == pytest.approx(gain)
    # fla's switch was on for the split prefills (the check's and the timed ones: warm-up + repeats) and only for
    # them; the serial ones ran with it off, and the check compared the split with the last timed serial prefill
    on = [n for n, v in switch_seen if v == "1"]
    assert on and set(on) == {128} and len(on) >= 1 + 1 + 2
    assert all(v == "0" for n, v in switch_seen if v != "1") and os.environ.get(FLA_INTRACARD_ENV) is None
    assert switch_seen.count((128, "0")) == 1 + 2  # the serial TTFT's warm-up and repeats, no extra prefill
    assert switch_seen.teacher and all(v == "0" for _, v in switch_seen.teacher)
    # every student prefill ran on the weights joined once for the run, released at its end
    assert switch_seen.joined and all(switch_seen.joined)
    assert switch_seen.mixers and all(m._joined is None for m in switch_seen.mixers)
    # the table and the TTFT panel show it
    from rich.console import Console

    from gendistill.bench.report import make_plots, print_table

    console = Console(width=300, record=True)
    print_table(res, console=console)
    assert "split TTFT S ms" in console.export_text()
    assert all(Path(f).stat().st_size > 0 for f in make_plots(res, tmp_path / "plots"))


def test_a_split_prefill_that_disagrees_is_timed_but_not_counted(tmp_path, switch_seen, monkeypatch):
    monkeypatch.setattr(engine, "compare_prefills", lambda a, b, **kw: {"accepted": False, "cache_rel_diff": 0.06})
    s = _run(tmp_path)["contexts"][1]
    assert s["student"]["ttft_intracard_ms"] > 0 and not s["student"]["ttft_intracard_check"]["accepted"]
    assert s["ratios"]["ttft_intracard_speedup"] is None


def test_a_users_switch_does_not_reach_the_serial_measurements(tmp_path, switch_seen, monkeypatch):
    monkeypatch.setenv(FLA_INTRACARD_ENV, "1")  # exported by the user: the serial TTFT must stay serial
    res = _run(tmp_path, intracard=False)
    assert all("ttft_intracard_ms" not in c["student"] for c in res["contexts"])
    assert switch_seen and all(v == "0" for _, v in switch_seen)
    assert os.environ[FLA_INTRACARD_ENV] == "1"  # and it is the user's again after the run


def test_off_by_option_or_off_the_card(tmp_path, switch_seen):
    res = _run(tmp_path / "off", intracard=False)
    assert all("ttft_intracard_ms" not in c["student"] for c in res["contexts"])
    assert all(v != "1" for _, v in switch_seen)
    cpu = Runner(BenchSettings.tiny(out=str(tmp_path / "cpu")), log_sink=lambda s: None)
    assert cpu.use_intracard is False  # only CUDA runs fla's kernels
    assert settings_from_options(tiny=True, intracard=False).intracard is False
    assert settings_from_options(tiny=True).intracard is True


def test_min_context_is_checked():
    from gendistill.bench.settings import check_numbers

    with pytest.raises(ConfigError, match="intracard_min_context"):
        check_numbers(BenchSettings.tiny(intracard_min_context=0))


def test_ratio_needs_the_check():
    entry = {"teacher": {"ttft_ms": 300.0}, "student": {"ttft_ms": 200.0, "ttft_intracard_ms": 100.0}}
    r = ratios(entry)
    assert r["ttft_intracard_speedup"] is None and r["student_split_over_serial"] is None  # never checked
    entry["student"]["ttft_intracard_check"] = {"accepted": True}
    r = ratios(entry)
    assert r["ttft_intracard_speedup"] == pytest.approx(3.0) and r["student_split_over_serial"] == pytest.approx(2.0)
    # not one of the targets: the split counts for them once it is the student's own prefill
    targets = summary({"contexts": [{"context": 131072, "ratios": r}]})["targets"]
    assert targets and all("intracard" not in t["metric"] for t in targets)


def test_switch_is_restored(monkeypatch):
    monkeypatch.setenv(FLA_INTRACARD_ENV, "0")
    with fla_intracard():
        assert os.environ[FLA_INTRACARD_ENV] == "1"
        with fla_intracard(False):
            assert os.environ[FLA_INTRACARD_ENV] == "0"
        assert os.environ[FLA_INTRACARD_ENV] == "1"
    assert os.environ[FLA_INTRACARD_ENV] == "0"
    monkeypatch.delenv(FLA_INTRACARD_ENV)
    with pytest.raises(RuntimeError), fla_intracard():
        raise RuntimeError("a failed prefill")
    assert FLA_INTRACARD_ENV not in os.environ


def test_compare_prefills_rejects_a_cache_off_by_more_than_bf16_rounding():
    import torch
    from transformers import DynamicCache

    def pair(scale: float):
        c = DynamicCache()
        c.update(torch.ones(1, 2, 4, 8) * scale, torch.ones(1, 2, 4, 8), 0)
        return c, torch.tensor([[3]])

    assert engine.compare_prefills(pair(1.0), pair(1.005))["accepted"]
    off = engine.compare_prefills(pair(1.0), pair(1.05))
    assert not off["accepted"] and off["cache_rel_diff"] == pytest.approx(0.05, rel=1e-3)
    other_token = (pair(1.0)[0], torch.tensor([[4]]))
    assert not engine.compare_prefills(pair(1.0), other_token)["accepted"]
    loose = engine.compare_prefills(pair(1.0), other_token, require_next_token=False)
    assert loose["accepted"] and not loose["next_token_match"]
