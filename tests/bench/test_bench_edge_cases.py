"""Edge cases of a benchmark run that a review reproduced: no context length at all, a ``--compare`` file that is not a
bench JSON, runs that differ in more than the card, decode cells of a prefill that never ran."""

from __future__ import annotations

import io
import json
import re

import pytest

from gendistill.bench.api import bench
from gendistill.bench.runner import JOINS_CHECK_FALLBACK_CONTEXT, run_benchmark
from gendistill.bench.settings import BenchSettings
from gendistill.errors import ConfigError


@pytest.mark.parametrize("options, checked_at", [
    (dict(skip="cache,ttft,decode", throughput_contexts="32"), 32),  # --contexts empty: allowed, the sweep's length
    (dict(skip="ttft,decode,cache,throughput"), 32),  # nothing measured: the throughput contexts are still lengths
    (dict(skip="ttft,decode,cache,throughput", throughput_contexts=""), JOINS_CHECK_FALLBACK_CONTEXT),
])
def test_empty_contexts_the_settings_allow_run_the_joins_check(tmp_path, options, checked_at):
    """``--contexts ""`` passes ``check_numbers`` when cache, ttft and decode are skipped; the joined-weights check then
    ran ``min()`` of the empty list (ValueError before any measurement). It takes the lengths that exist."""
    res = bench(tiny=True, out=str(tmp_path / "b"), plots=False, table=False, contexts="", **options)
    check = res.data["joined_weights_check"]
    assert check["context"] == checked_at and check["accepted"], check
    assert res.data["finished"]


def _baseline_files(tmp_path):
    """Files ``--compare`` must refuse, each with what its one line says."""
    (tmp_path / "notjson.json").write_text("{ not json")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "other.json").write_text(json.dumps({"card": "cpu", "metrics": {}}))  # another tool's JSON
    (tmp_path / "badctx.json").write_text(json.dumps({"card": "cpu", "contexts": [{"ttft": 1}]}))
    (tmp_path / "folder").mkdir()
    return [("missing.json", "no such file"), ("folder", "a folder, not a bench JSON file"),
            ("notjson.json", "not a JSON file"), ("binary.json", "not a JSON file"),
            ("list.json", "not a bench JSON"), ("other.json", "not a bench JSON"), ("badctx.json", "not a bench JSON")]


def test_compare_file_that_is_not_a_bench_json_is_refused_up_front(tmp_path, monkeypatch):
    """A missing or foreign ``--compare`` file was read only after the whole benchmark, its error logged and the exit
    status 0. It is one ConfigError line naming the flag and the file before anything is measured or written, from
    ``gendistill.bench``, from ``run_benchmark`` and from the command (exit status != 0)."""
    from typer.testing import CliRunner

    from gendistill.bench import runner
    from gendistill.cli import app

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured despite a bad --compare")

    monkeypatch.setattr(runner, "build_models", no_measuring)
    for name, reason in _baseline_files(tmp_path):
        path = str(tmp_path / name)
        with pytest.raises(ConfigError) as e:
            bench(tiny=True, out=str(tmp_path / "out"), plots=False, table=False, compare=path)
        assert str(e.value).startswith(f"--compare {path}: {reason}") and "\n" not in str(e.value), str(e.value)
        with pytest.raises(ConfigError, match=f"^--compare {re.escape(path)}: {reason}"):
            run_benchmark(BenchSettings.tiny(out=str(tmp_path / "out"), compare=path), log_sink=lambda s: None)
        assert not (tmp_path / "out").exists()
        r = CliRunner().invoke(app, ["bench", "--tiny", "--out", str(tmp_path / "out"), "--compare", path])
        assert r.exit_code not in (0, None) and f"--compare {path}: {reason}" in r.output, r.output
        assert not (tmp_path / "out").exists()


def test_compare_accepts_a_bench_json(tmp_path):
    """What the bench writes is what --compare reads (including a run's own JSON, read before the run rewrites it)."""
    from gendistill.bench.report import load_baseline

    s = BenchSettings.tiny(out=str(tmp_path / "b"), contexts=(32,), skip=("decode", "throughput"))
    first = run_benchmark(s, log_sink=lambda line: None, plots=False, table=False)
    assert load_baseline(first["json_path"])["contexts"][0]["context"] == 32
    s.compare = first["json_path"]
    again = run_benchmark(s, log_sink=lambda line: None, plots=False, table=True)
    assert again["json_path"] == first["json_path"]


def _run(model="tiny", dtype="float32", decode_cache="static", params=1000, layer_types=None, ttft=2.0) -> dict:
    """The parts of a bench JSON a comparison reads."""
    return {"model": model, "card": "cpu-x86_64", "dtype": dtype, "started": "2026-01-01T00:00:00",
            "settings": {"decode_cache": decode_cache},
            "models": {"teacher": {"params": params, "layer_types": layer_types or {"full_attention": 8}},
                       "student": {"params": 900, "layer_types": {"full_attention": 2, "linear_attention": 6}}},
            "contexts": [{"context": 32, "teacher": {"ttft_ms": ttft}, "student": {"ttft_ms": ttft / 2}}]}


@pytest.mark.parametrize("now, flagged", [
    (_run(dtype="bfloat16"), "[NOT COMPARABLE: dtype float32 vs bfloat16]"),
    (_run(decode_cache="dynamic"), "[NOT COMPARABLE: decode_cache static vs dynamic]"),
    (_run(params=2000), "[NOT COMPARABLE: teacher params 1000 vs 2000]"),
    (_run(layer_types={"full_attention": 4}),
     "[NOT COMPARABLE: teacher layer_types {'full_attention': 8} vs {'full_attention': 4}]"),
    (_run(dtype="bfloat16", params=2000), "[NOT COMPARABLE: dtype float32 vs bfloat16; teacher params 1000 vs 2000]"),
    (_run(model="tiny-gate-5", ttft=1.0), None),  # the bounded-gate run against the exact one: comparable
    (_run(), None),
])
def test_comparison_flags_runs_that_differ_in_more_than_the_card(capsys, now, flagged):
    """Only the card was checked: a bf16 run against an fp32 baseline, a dynamic against a static decode cache, or
    another teacher printed ratios as if comparable. The title flags what differs, as it flags a different card; the
    ratios are still printed."""
    from rich.console import Console

    from gendistill.bench.report import print_comparison

    print_comparison(now, _run(), console=Console(width=400))
    out = " ".join(capsys.readouterr().out.split())  # the title wraps at the table's width
    assert "vs baseline" in out and "ttft_ms" in out and "DIFFERENT CARD" not in out
    if flagged is None:
        assert "NOT COMPARABLE" not in out, out
    else:
        assert flagged in out, out


def _table(results: dict) -> str:
    from rich.console import Console

    from gendistill.bench.report import print_table

    console = Console(width=300, record=True, file=io.StringIO())
    print_table(results, console=console)
    return console.export_text()


def _decode_cells(table: str, context: str) -> list[str]:
    """The row of ``context``'s two decode cells (columns 10 and 11 of the table)."""
    rows = [[c.strip() for c in line.split("│")] for line in table.splitlines()]
    return next(r for r in rows if len(r) > 12 and r[1] == context)[10:12]


def test_decode_cells_of_a_prefill_skipped_by_the_time_limit_say_skip(tmp_path):
    """The prefill's reason was stored under ``errors['prefill']`` only, so the decode cells read "-" (as if decode
    had been skipped by the user, or measured nothing) instead of "skip"."""
    res = bench(tiny=True, out=str(tmp_path / "b"), plots=False, table=False, time_limit=0.001, skip="throughput")
    for c in res.data["contexts"]:
        for role in ("teacher", "student"):
            errors = c[role]["errors"]
            assert errors["prefill"] == "skipped: time limit" and errors["decode"].startswith("skipped: time limit")
    table = _table(res.data)
    assert _decode_cells(table, "32") == ["skip", "skip"] and _decode_cells(table, "128") == ["skip", "skip"], table


def test_decode_cells_stay_blank_when_decode_is_skipped(tmp_path):
    """``--skip decode`` is the user's choice: no decode error recorded, the cells stay "-"."""
    res = bench(tiny=True, out=str(tmp_path / "b"), plots=False, table=False, time_limit=0.001,
                skip="decode,throughput", contexts="32")
    assert "decode" not in res.data["contexts"][0]["teacher"]["errors"]
    assert _decode_cells(_table(res.data), "32") == ["-", "-"]
