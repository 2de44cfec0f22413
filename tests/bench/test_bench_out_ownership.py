"""``bench --out`` never overwrites or deletes files gendistill did not write: a user's ``profiles.txt`` (which
``--profile`` would delete) or a git repository is refused with one line, before anything is measured."""

from __future__ import annotations

import pytest

from gendistill import ownership
from gendistill.bench.runner import run_benchmark
from gendistill.bench.settings import BenchSettings


@pytest.mark.parametrize("setup, needle", [
    ("profiles", "profiles.txt: "),
    ("bench_json", "bench_mine.json: "),
    ("git", "it is a git repository"),
])
def test_bench_refuses_a_folder_holding_files_it_did_not_write(tmp_path, setup, needle):
    out = tmp_path / "out"
    out.mkdir()
    if setup == "profiles":
        (out / "profiles.txt").write_text("my profile notes")
    elif setup == "bench_json":
        (out / "bench_mine.json").write_text("{}")
    else:
        (out / ".git").mkdir()
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(ownership.OutputError) as err:
        run_benchmark(BenchSettings.tiny(out=str(out), profile_contexts=(128,)), log_sink=lambda s: None, table=False)
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert sorted(p.name for p in out.iterdir()) == before
    if setup == "profiles":
        assert (out / "profiles.txt").read_text() == "my profile notes"


def test_bench_marks_its_folder_and_writes_it_again(tmp_path):
    out = tmp_path / "out"
    settings = BenchSettings.tiny(out=str(out), skip=("ttft", "decode", "throughput"))
    run_benchmark(settings, log_sink=lambda s: None, plots=False, table=False)
    assert ownership.marker_kind(out) == "report" and list(out.glob("bench_*.json"))
    run_benchmark(settings, log_sink=lambda s: None, plots=False, table=False)  # ours now: written again


def test_bench_keeps_a_users_file_in_a_folder_eval_marked(tmp_path):
    # the marker lists the files each command claimed; a user's profiles.txt is none of eval's: refused
    out = tmp_path / "out"
    out.mkdir()
    (out / "profiles.txt").write_text("my profile notes")
    ownership.claim_report_folder(out, ("results.json", "results.md"), "--out")
    with pytest.raises(ownership.OutputError, match="profiles.txt: gendistill did not write it"):
        run_benchmark(BenchSettings.tiny(out=str(out), profile_contexts=(128,)), log_sink=lambda s: None, table=False)
    assert (out / "profiles.txt").read_text() == "my profile notes"
