"""The benchmark times the student on its linear mixers' weights joined once for the run
(gendistill.layers.base.joined_weights), as the fast generation engine runs it, and releases them after."""

from __future__ import annotations

from gendistill.bench import engine
from gendistill.bench.runner import Runner
from gendistill.bench.settings import BenchSettings
from gendistill.layers.base import TeacherShapedMixer


def test_student_prefills_run_on_weights_joined_once_and_released_after(tmp_path, monkeypatch):
    joined: list[bool] = []
    mixers: list = []
    teacher_calls = []
    real = engine.prefill

    def prefill(model, ids):
        if hasattr(model, "cache_bytes"):  # the hybrid tells its cache's size: the student
            mixers[:] = [m for m in model.modules() if isinstance(m, TeacherShapedMixer)]
            joined.append(all(m._joined is not None for m in mixers))
        else:
            teacher_calls.append(ids.shape[1])
        return real(model, ids)

    monkeypatch.setattr(engine, "prefill", prefill)
    settings = BenchSettings.tiny(out=str(tmp_path), skip=("throughput", "decode"), contexts=(32, 128), repeats=2)
    res = Runner(settings, log_sink=lambda s: None).run()
    assert all(not c[r].get("errors") for c in res["contexts"] for r in ("teacher", "student"))
    check = res["joined_weights_check"]
    assert check["accepted"] and check["context"] == 32 and check["decode_step_rel_diff"] <= 1e-2
    assert joined[0] is False  # the check's prefill on the live weights, before any timing
    assert mixers and joined[1:] and all(joined[1:])  # then every student prefill (warm-up and repeats) on joins
    assert all(m._joined is None for m in mixers)  # released at the end of the run
    assert teacher_calls  # the teacher was timed too (no linear mixer to join)


def test_a_wrong_join_is_caught_before_the_timings(tmp_path, monkeypatch):
    """The check compares the prefill on joined weights with the one on the live weights: a join that puts one
    projection's rows in another's place (here the output gate's rows scaled) is recorded as not accepted."""
    real = TeacherShapedMixer._join_input

    def wrong(self):
        weight, bias, widths, ids = real(self)
        return weight * 1.5, bias, widths, ids

    monkeypatch.setattr(TeacherShapedMixer, "_join_input", wrong)
    settings = BenchSettings.tiny(out=str(tmp_path), skip=("throughput", "decode"), contexts=(32,), repeats=2)
    lines: list[str] = []
    res = Runner(settings, log_sink=lines.append).run()
    check = res["joined_weights_check"]
    assert check["accepted"] is False and check["cache_rel_diff"] > 1e-2
    assert any("FAILED: the timed student is not the student" in line for line in lines)
