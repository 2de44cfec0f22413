"""End to end: the tiny benchmark on CPU writes a JSON with every field and sane values, plus the plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gendistill.bench.runner import run_benchmark
from gendistill.bench.settings import BenchSettings, check_numbers, settings_from_options
from gendistill.errors import ConfigError


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    res = run_benchmark(BenchSettings.tiny(out=str(out), command="pytest tiny"), log_sink=lambda s: None, table=False)
    return res, json.loads(Path(res["json_path"]).read_text())


def test_the_json_records_the_commit_the_lease_scripts_name(tmp_path, monkeypatch):
    """``COMMIT`` (set by tools/device_*.sh, whose device copy's git metadata may be stale) goes to the JSON's
    ``commit``; without it the field is None."""
    for commit in ("5c46f35", None):
        if commit:
            monkeypatch.setenv("COMMIT", commit)
        else:
            monkeypatch.delenv("COMMIT", raising=False)
        s = BenchSettings.tiny(out=str(tmp_path / str(commit)), contexts=(32,), skip=("decode", "throughput"))
        res = run_benchmark(s, log_sink=lambda line: None, table=False)
        assert json.loads(Path(res["json_path"]).read_text())["commit"] == commit


def test_json_has_every_field(tiny_results):
    res, data = tiny_results
    assert Path(res["json_path"]).name == "bench_tiny_cpu-" + Path(res["json_path"]).name.split("cpu-")[1]
    stem = Path(res["json_path"]).stem.removeprefix("bench_")  # the figures carry the JSON's name
    assert sorted(Path(p).name for p in data["plots"]) == [f"fig2_{stem}.png", f"fig5_{stem}.png"]
    for key in ("schema_version", "model", "card", "device", "dtype", "versions", "command", "settings", "models",
                "theoretical_cache_curve", "contexts", "summary", "cuda_graph"):
        assert key in data, key
    assert data["command"] == "pytest tiny" and data["card"].startswith("cpu")
    assert {"torch", "transformers", "fla"} <= set(data["versions"])
    assert not data["student_is_standin"]
    assert data["models"]["student"]["layer_types"] == {"full_attention": 2, "linear_attention": 6}
    ctxs = {c["context"]: c for c in data["contexts"]}
    assert sorted(ctxs) == [32, 128]
    for L, c in ctxs.items():
        for role in ("teacher", "student"):
            e = c[role]
            assert not e.get("errors"), (L, role, e.get("errors"), e.get("tracebacks"))
            assert e["ttft_ms"] > 0 and len(e["ttft_ms_all"]) >= 1
            assert e["decode_tok_s"] > 0 and e["decode_mode"] == "eager"
            assert e["kv_theory_matches_measured"], (e["cache_bytes_theoretical"], e["cache_bytes_measured"])
            assert e["throughput_tok_s"] > 0 and e["throughput_batch"] == 4 and e["throughput_capped"]
        assert c["student"]["cache_theory_matches_model_api"]
        assert c["student"]["cache_bytes_model_api"] == c["student"]["cache_bytes_measured"]
        r = c["ratios"]
        for k in ("cache_theoretical_student_over_teacher", "cache_measured_student_over_teacher", "ttft_speedup",
                  "decode_speedup", "throughput_ratio"):
            assert r[k] is not None and r[k] > 0, k
    # O(1) state: the student's cache grows only with its 2 attention layers, the teacher's with all 8
    t = [ctxs[L]["teacher"]["cache_bytes_measured"]["total"] for L in (32, 128)]
    s = [ctxs[L]["student"]["cache_bytes_measured"]["total"] for L in (32, 128)]
    assert t[1] == 4 * t[0]
    assert s[1] - s[0] == (t[1] - t[0]) // 4
    assert s[1] < t[1]
    curve = data["theoretical_cache_curve"]
    assert curve["student"][-1] < curve["teacher"][-1] and len(curve["lengths"]) == len(curve["teacher"])


def test_plots_written(tiny_results):
    res, _ = tiny_results
    assert len(res["plots"]) == 2
    for p in res["plots"]:
        assert Path(p).stat().st_size > 10_000 and Path(p).read_bytes()[:4] == b"\x89PNG"


def test_table_renders(tiny_results, capsys):
    from rich.console import Console

    from gendistill.bench.report import print_table

    res, data = tiny_results
    print_table(data, console=Console(width=220, file=None))
    out = capsys.readouterr().out
    assert "gendistill bench" in out and "targets (student vs teacher)" in out and "graphed x" in out


def test_cli_cache_only(tmp_path):
    import typer
    from typer.testing import CliRunner

    from gendistill.bench.cli import register, settings_from_options

    app = typer.Typer()
    app.callback()(lambda: None)  # keep `bench` a sub-command even when it is the only one
    register(app)
    r = CliRunner().invoke(app, ["bench", "--tiny", "--skip", "ttft,decode,throughput", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    data = json.loads(next(tmp_path.glob("bench_*.json")).read_text())
    assert data["contexts"][0]["teacher"]["cache_bytes_measured"]["total"] > 0
    assert "ttft_ms" not in data["contexts"][0]["teacher"]
    s = settings_from_options(contexts="1k,4K,128k", skip="throughput", config="qwen3-0.6b")
    assert s.contexts == (1024, 4096, 131072) and s.skip == ("throughput",) and s.config == "qwen3-0.6b"
    with pytest.raises(ConfigError):
        settings_from_options(skip="nonsense")


def _bench_app():
    import typer

    from gendistill.bench.cli import register

    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    return app


def test_bounded_gate_student_is_timed_against_the_exact_run(tiny_results, tmp_path):
    """--kda-gate-lower-bound converts the student with fla's bounded gate: its config carries it, the JSON records it
    under its own file name, and --compare prints its timings beside the exact student's run."""
    from typer.testing import CliRunner

    exact_json = tiny_results[0]["json_path"]
    r = CliRunner().invoke(_bench_app(), ["bench", "--tiny", "--skip", "decode,throughput", "--out", str(tmp_path),
                                          "--kda-gate-lower-bound", "-5", "--compare", exact_json])
    assert r.exit_code == 0, r.output
    path = next(tmp_path.glob("bench_*.json"))
    assert path.name.startswith("bench_tiny-gate-5_")
    data = json.loads(path.read_text())
    assert data["settings"]["kda_gate_lower_bound"] == -5.0
    assert data["models"]["student"]["kda_gate_lower_bound"] == -5.0
    assert json.loads(Path(exact_json).read_text())["models"]["student"]["kda_gate_lower_bound"] is None
    assert all(c["student"]["ttft_ms"] > 0 for c in data["contexts"])
    assert "vs baseline" in r.output and "ttft_ms" in r.output


@pytest.mark.parametrize("options, message", [
    (dict(kda_gate_lower_bound=0.0), "--kda-gate-lower-bound must be a number in fla's safe range [-5, 0)"),
    (dict(kda_gate_lower_bound=-7.5), "--kda-gate-lower-bound must be a number in fla's safe range [-5, 0)"),
    (dict(kda_gate_lower_bound=-5.0, teacher="smollm2-135m-instruct", student="hub-org/some-student"),
     "--kda-gate-lower-bound: applies to the student the benchmark converts"),
])
def test_bounded_gate_option_errors_are_one_line(tmp_path, options, message):
    from gendistill.bench.api import bench

    with pytest.raises(ConfigError) as e:
        bench(tiny=True, out=str(tmp_path / "b"), **options)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
    assert not (tmp_path / "b").exists()


def test_comparison_against_itself(tiny_results, capsys):
    from rich.console import Console

    from gendistill.bench.report import print_comparison

    _, data = tiny_results
    print_comparison(data, data, console=Console(width=220))
    out = capsys.readouterr().out
    assert "1.000x" in out and "DIFFERENT CARD" not in out


def test_roles_option():
    import typer

    from gendistill.bench.cli import settings_from_options

    assert settings_from_options(roles="student", tiny=True).roles == ("student",)
    with pytest.raises(ConfigError):
        settings_from_options(roles="teacher,nobody")


def test_time_limit_skips_but_still_writes(tmp_path):
    res = run_benchmark(BenchSettings.tiny(out=str(tmp_path), time_limit_s=1e-9, contexts=(32,), throughput_contexts=(32,)),
                        log_sink=lambda s: None, plots=False, table=False)
    e = res["contexts"][0]["teacher"]
    assert e["errors"]["ttft"] == "skipped: time limit" and e["errors"]["throughput"] == "skipped: time limit"
    assert e["cache_bytes_theoretical"]["total"] > 0
    assert json.loads(Path(res["json_path"]).read_text())["finished"]


def test_teacher_folder(tmp_path):
    from transformers import Qwen3ForCausalLM

    from gendistill.bench.models import qwen3_config

    torch.manual_seed(0)
    Qwen3ForCausalLM(qwen3_config("tiny")).save_pretrained(tmp_path / "teacher")
    s = BenchSettings.tiny(config=None, teacher=str(tmp_path / "teacher"), out=str(tmp_path / "out"), contexts=(16,),
                           skip=("throughput",))
    res = run_benchmark(s, log_sink=lambda s: None, plots=False, table=False)
    assert res["model"] == "teacher" and not res["student_is_standin"]
    c = res["contexts"][0]
    assert c["student"]["ttft_ms"] > 0 and res["models"]["student"]["layer_types"]["linear_attention"] == 6
    assert not c["teacher"].get("errors") and not c["student"].get("errors")

    # a saved student folder too
    from gendistill.convert import convert_teacher
    from gendistill.convert.convert import save_student

    teacher = Qwen3ForCausalLM.from_pretrained(tmp_path / "teacher")
    save_student(convert_teacher(teacher, attention_layers=[0, 4]), None, tmp_path / "student")
    s2 = BenchSettings.tiny(config=None, teacher=str(tmp_path / "teacher"), student=str(tmp_path / "student"),
                            out=str(tmp_path / "out2"), contexts=(16,), skip=("throughput",))
    res2 = run_benchmark(s2, log_sink=lambda s: None, plots=False, table=False)
    c2 = res2["contexts"][0]
    assert not c2["student"].get("errors") and c2["student"]["cache_theory_matches_model_api"]


def test_dynamic_decode_cache(tmp_path):
    res = run_benchmark(BenchSettings.tiny(out=str(tmp_path), contexts=(32,), skip=("throughput",),
                                           decode_cache="dynamic"), log_sink=lambda s: None, plots=False, table=False)
    for role in ("teacher", "student"):
        e = res["contexts"][0][role]
        assert not e.get("errors"), e.get("tracebacks")
        assert e["decode_cache"] == "dynamic" and e["decode_tok_s"] > 0


def test_oom_in_a_measurement_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    from gendistill.bench import engine

    real = engine.prefill

    def prefill(model, ids):
        if ids.shape[1] > 64 and model.__class__.__name__.startswith("Qwen3"):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 14.00 GiB")
        return real(model, ids)

    monkeypatch.setattr(engine, "prefill", prefill)
    res = run_benchmark(BenchSettings.tiny(out=str(tmp_path), contexts=(32, 128), skip=("throughput",)),
                        log_sink=lambda s: None, plots=True, table=False)
    big = res["contexts"][1]
    assert big["teacher"]["errors"]["ttft"].startswith("oom") and "ttft_ms" not in big["teacher"]
    # decode never ran on the teacher (its prefill ran out of memory): the table's decode cells say why, not "-"
    assert big["teacher"]["errors"]["decode"].startswith("oom") and big["student"]["decode_tok_s"] > 0
    assert "decode" not in (res["contexts"][0]["teacher"].get("errors") or {})
    assert big["student"]["ttft_ms"] > 0 and big["ratios"]["ttft_speedup"] is None
    assert res["contexts"][0]["ratios"]["ttft_speedup"] > 0 and len(res["plots"]) == 2


def test_attention_layers_take_the_convert_grammar(tmp_path):
    """``bench --attention-layers`` reads every form ``convert --attention-layers`` reads: ``every:4`` on the tiny
    shape's 8 layers keeps layers 3 and 7 (it was refused before: bench had a grammar of its own)."""
    from typer.testing import CliRunner

    from gendistill.bench.settings import check_settings, settings_from_options
    from gendistill.cli import app

    r = CliRunner().invoke(app, ["bench", "--tiny", "--attention-layers", "every:4", "--skip", "ttft,decode,throughput",
                                 "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    data = json.loads(next((tmp_path / "b").glob("bench_*.json")).read_text())
    assert data["settings"]["attention_layers"] == [3, 7]
    assert data["models"]["student"]["layer_types"] == {"full_attention": 2, "linear_attention": 6}
    for spec, want in (("ratio:0.25", (3, 7)), ("0,-1", (0, 7)), ("none", ()), ("attention:1;kda:0,2,3,4,5,6,7", (1,))):
        s = settings_from_options(tiny=True, attention_layers=spec, out=str(tmp_path / "c"))
        check_settings(s)
        assert s.attention_layers == want, spec
    with pytest.raises(ConfigError, match="--attention-layers: 'every:9': the teacher has only 8 layers"):
        check_settings(settings_from_options(tiny=True, attention_layers="every:9", out=str(tmp_path / "c")))


def test_bf16_benchmark_student_has_the_fp32_runs_float32_decay_parameters():
    """The benchmark casts only the teacher; the student it converts in bf16 keeps its mixers' fp32 parameters in
    float32, with the values the fp32 run's student has (same seed)."""
    from gendistill.bench.models import build_models

    students = {dtype: build_models(BenchSettings.tiny(), torch.device("cpu"), dtype).student
                for dtype in (torch.float32, torch.bfloat16)}
    exact, rounded = students[torch.float32], students[torch.bfloat16]
    assert rounded.get_input_embeddings().weight.dtype == torch.bfloat16
    kept = rounded.recurrence_parameters()
    assert len(kept) == 2 * 6  # A_log and dt_bias of the tiny student's 6 KDA layers
    for name, p in kept.items():
        assert p.dtype == torch.float32 and torch.equal(p, exact.get_parameter(name)), name


def test_cpu_throughput_sweep_stays_within_the_available_ram(tmp_path, monkeypatch):
    """On CPU a batch that does not fit is the OOM killer, not an exception: the sweep stops at the batch whose
    caches fit half the available RAM (here pretended to be 400 kB: 1 teacher row of ~98 KiB, 3 student rows of
    ~62 KiB at 32 tokens), and a context where not one row fits is skipped with the reason."""
    from gendistill.bench import throughput

    monkeypatch.setattr(throughput, "available_ram_bytes", lambda: 400_000)
    settings = BenchSettings.tiny(out=str(tmp_path / "a"), contexts=(32,), throughput_contexts=(32,),
                                  skip=("cache", "ttft", "decode"))
    res = run_benchmark(settings, log_sink=lambda s: None, plots=False, table=False)
    c = res["contexts"][0]
    for role in ("teacher", "student"):
        e = c[role]
        assert not e.get("errors"), e.get("errors")
        cap = e["throughput_ram_batch_cap"]
        assert 1 <= cap < settings.max_batch
        assert e["throughput_batch"] == cap and max(b for b, _ in e["throughput_trials"]) == cap
    assert c["student"]["throughput_ram_batch_cap"] > c["teacher"]["throughput_ram_batch_cap"]
    assert c["ratios"]["throughput_ratio"] > 0

    monkeypatch.setattr(throughput, "available_ram_bytes", lambda: 1000)
    res = run_benchmark(BenchSettings.tiny(out=str(tmp_path / "b"), contexts=(32,), throughput_contexts=(32,),
                                           skip=("cache", "ttft", "decode")),
                        log_sink=lambda s: None, plots=False, table=False)
    e = res["contexts"][0]["teacher"]
    assert e["errors"]["throughput"].startswith("skipped: one sequence's cache") and "throughput_trials" not in e


# a value other than the default for every option `gendistill.bench(**options)` takes, as a Python caller gives it,
# and what the settings field then holds (None: the value itself)
NON_DEFAULTS = {
    "attention_layers": ("0,3", None), "attn_implementation": ("eager", None), "compare": ("prev.json", None),
    "config": ("qwen3-0.6b", None), "contexts": ((64, 256), None), "cuda_graph": (False, None),
    "decode_cache": ("dynamic", None), "decode_tokens": (5, None), "decode_warmup_tokens": (2, None),
    "device": ("cpu", None), "dtype": ("bf16", None), "kda_gate_lower_bound": (-5.0, None), "max_batch": (8, None),
    "measure_budget_s": (1.5, None), "model_name": ("mine", None), "out": ("runs/elsewhere", None),
    "prefill_graph": (False, None), "prefill_graph_max_context": (4096, None), "profile_contexts": ("1k", (1024,)),
    "profile_decode_steps": (3, None), "repeats": (5, None), "roles": (("student",), None),
    "seed": (11, None), "skip": ("throughput", ("throughput",)), "student": (None, None), "sweep_rel_tol": (0.25, None),
    "teacher": (None, None), "throughput_contexts": ("2k", (2048,)), "throughput_tokens": (4, None),
    "time_limit_s": (60.0, None), "validate_graph": (False, None), "warmup": (2, None),
}


def test_every_setting_can_be_passed_and_nothing_else():
    """Each BenchSettings field (but the run's bookkeeping) reaches the settings from a keyword; a new field without
    a way in fails here."""
    from gendistill.bench.settings import option_names

    assert set(NON_DEFAULTS) | {"tiny", "time_limit"} == set(option_names())
    given = {k: v for k, (v, _) in NON_DEFAULTS.items() if v is not None}
    s = settings_from_options(**given)
    for k, (v, held) in NON_DEFAULTS.items():
        if v is not None:
            assert getattr(s, k) == (v if held is None else held), k
    assert settings_from_options(time_limit=30).time_limit_s == 30  # the command's name
    with pytest.raises(ConfigError, match="give one of them"):
        settings_from_options(time_limit=30, time_limit_s=60)
    with pytest.raises(ConfigError, match=r"^unknown option max_batches \(did you mean max_batch\?\); valid: "):
        settings_from_options(max_batches=4)
    with pytest.raises(ConfigError, match="attn_implementation: unknown 'fast'"):
        check_numbers(settings_from_options(attn_implementation="fast"))
    with pytest.raises(ConfigError, match="measure_budget_s"):
        check_numbers(settings_from_options(measure_budget_s=0))


@pytest.mark.parametrize("argv, expected", [
    (["/opt/venv/bin/gendistill", "bench", "--tiny", "--out", "/tmp/run7/bench"],
     "gendistill bench --tiny --out /tmp/run7/bench"),
    (["/work/src/gendistill/__main__.py", "bench", "--time-limit", "540"], "gendistill bench --time-limit 540"),
    (["benchmarks/bench_inference.py", "--model-name", "a b"], "python benchmarks/bench_inference.py --model-name 'a b'"),
    (["/work/tools/__main__.py", "bench"], "python /work/tools/__main__.py bench"),  # another package's __main__
])
def test_the_recorded_command_names_the_tool_as_the_user_typed_it(argv, expected):
    """``python -m gendistill bench`` is recorded as ``gendistill bench`` (its argv[0] is the package's
    ``__main__.py``; the 2026-12-05 lease's JSONs said ``python __main__.py bench``); arguments stay as given, so the
    command can be run again where it ran (committed results go through tools/portable_results.py)."""
    from gendistill.bench.settings import _command_line

    assert _command_line(argv) == expected
