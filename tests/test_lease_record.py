"""tools/lease_record.py: what a device lease brought back becomes the committed result, with each stage's wall time,
first-step time and the trainer's own held-out figures, and no machine paths."""

from __future__ import annotations

import io
import json
import runpy
import tarfile
from pathlib import Path

import pytest

from gendistill.io import absolute_paths

ROOT = Path(__file__).resolve().parents[1]
TOOL = runpy.run_path(str(ROOT / "tools" / "lease_record.py"))


def _records() -> list[dict]:
    """Two stages as the trainer writes them: a held-out record before training, then steps (and a later eval)."""
    t = 1000.0
    recs = [{"time": t, "stage": "stage1", "step": 0, "tokens": 0, "eval_loss": 9.0},
            {"time": t + 190.0, "stage": "stage1", "step": 1, "tokens": 64, "loss": 8.0, "tokens_per_s": 1.0},
            {"time": t + 200.0, "stage": "stage1", "step": 2, "tokens": 128, "loss": 7.0, "tokens_per_s": 100.0},
            {"time": t + 210.0, "stage": "stage3a", "step": 0, "tokens": 0, "eval_loss": 3.0, "eval_kl": 2.9,
             "eval_top1": 0.25},
            {"time": t + 215.0, "stage": "stage3a", "step": 1, "tokens": 64, "loss": 2.0, "tokens_per_s": 50.0},
            {"time": t + 220.0, "stage": "stage3a", "step": 2, "tokens": 128, "loss": 1.0, "tokens_per_s": 60.0},
            {"time": t + 221.5, "stage": "stage3a", "step": 2, "tokens": 128, "eval_loss": 0.5, "eval_kl": 0.4,
             "eval_top1": 0.7, "eval_tokens": 640}]
    return recs


def _bundle(tmp_path: Path, *, complete: bool = True, metrics: bool = True, extra: str | None = None) -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir(parents=True)
    summary = {"recipe": "lease.yaml", "complete": complete, "command": "e2e.py lease --out /tmp/gendistill-e2e/run",
               "distill_metrics": {}}
    (bundle / "summary.json").write_text(json.dumps(summary))
    (bundle / "e2e.log").write_text("NVIDIA H100 80GB HBM3, 81559 MiB, 580.159.04\n45b5d80\n[e2e] convert: 22 s\n")
    with tarfile.open(bundle / "e2e_bundle.tgz", "w:gz") as tar:
        if metrics:
            data = "".join(json.dumps(r) + "\n" for r in _records()).encode()
            info = tarfile.TarInfo("./run/metrics.jsonl")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra:  # a member named by whoever made the archive
            info = tarfile.TarInfo(extra)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    return bundle


def test_a_lease_bundle_becomes_the_committed_result(tmp_path):
    rec = TOOL["lease_record"](_bundle(tmp_path), ["call 1", "call 2"], "torch 2.11", 1663.0, "2026-12-05")
    lease = rec["lease"]
    assert (lease["card"], lease["card_memory"], lease["driver"], lease["commit"]) == (
        "NVIDIA H100 80GB HBM3", "81559 MiB", "580.159.04", "45b5d80")
    assert lease["calls"] == ["call 1", "call 2"] and lease["device_seconds_session"] == 1663.0
    s1, s3a = lease["stages"]["stage1"], lease["stages"]["stage3a"]
    # wall time from the stage's first record to its last; the first step's time from the held-out loss before it
    assert (s1["seconds"], s1["first_step_seconds"]) == (200.0, 190.0)
    assert (s3a["seconds"], s3a["first_step_seconds"]) == (11.5, 5.0)
    assert "trainer_heldout_at_end" not in s1  # an MSE stage has no held-out KL
    assert s3a["trainer_heldout_at_end"] == {"step": 2, "eval_kl": 0.4, "eval_top1": 0.7, "eval_tokens": 640}
    assert rec["distill_metrics"]["stage3a"]["seconds"] == 11.5  # recomputed from the bundle, not the old summary
    assert absolute_paths(rec) == set() and "--out run" in rec["command"]


def test_the_tool_writes_the_file_and_refuses_an_unfinished_or_empty_bundle(tmp_path, monkeypatch, capsys):
    out = tmp_path / "docs" / "e2e.json"
    monkeypatch.setattr("sys.argv", ["lease_record.py", str(_bundle(tmp_path)), "--out", str(out), "--call", "c"])
    TOOL["main"]()
    assert json.loads(out.read_text())["lease"]["calls"] == ["c"]
    assert "stage1 200.0 s" in capsys.readouterr().out
    TOOL["main"]()  # an earlier result is rewritten
    mine = tmp_path / "notes.json"  # a file that is not an end-to-end result is the user's: refused, untouched
    for text in ('{"my": "notes"}', "not json", "[1, 2]", '"incomplete"'):
        mine.write_text(text)
        monkeypatch.setattr("sys.argv", ["lease_record.py", str(tmp_path / "bundle"), "--out", str(mine)])
        with pytest.raises(SystemExit, match="is not an end-to-end result file; refusing to replace it"):
            TOOL["main"]()
        assert mine.read_text() == text
    with pytest.raises(SystemExit, match="did not finish"):
        TOOL["lease_record"](_bundle(tmp_path / "a", complete=False), [], "", None, "2026-12-05")
    with pytest.raises(SystemExit, match="no run/metrics.jsonl inside"):
        TOOL["lease_record"](_bundle(tmp_path / "b", metrics=False), [], "", None, "2026-12-05")
    # a member that would land outside the folder it is unpacked into is refused; an absolute name lands inside it
    with pytest.raises(SystemExit, match="refused an unsafe member"):
        TOOL["lease_record"](_bundle(tmp_path / "c", extra="../escaped.txt"), [], "", None, "2026-12-05")
    assert not (tmp_path / "c" / "escaped.txt").exists()
    outside = Path("/tmp") / f"lease-record-{tmp_path.name}.txt"
    assert "lease" in TOOL["lease_record"](_bundle(tmp_path / "d", extra=str(outside)), [], "", None, "2026-12-05")
    assert not outside.exists()
