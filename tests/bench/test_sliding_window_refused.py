"""The benchmark decodes on a static cache and counts a full KV cache per attention layer; a teacher (or student) with
sliding-window attention would be timed and sized wrongly, so ``gendistill bench`` refuses it before writing anything,
with one line naming the setting."""

from __future__ import annotations

from typer.testing import CliRunner

from gendistill.cli import app
from tests.fixtures_teachers import make_tiny_folder


def test_bench_refuses_a_sliding_window_teacher_in_one_line(tmp_path):
    teacher = tmp_path / "teacher"
    make_tiny_folder(teacher, "qwen2", use_sliding_window=True, sliding_window=8, max_window_layers=0)
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["bench", "--teacher", str(teacher), "--tiny", "--attention-layers", "0",
                                 "--contexts", "16", "--out", str(out)])
    assert r.exit_code != 0
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.output
    assert "the bench teacher has sliding-window attention (use_sliding_window=True, sliding_window=8" in errors[0]
    assert not out.exists()
