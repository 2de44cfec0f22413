"""tools/lease_record.py: what a device lease brought back becomes the committed result, with each stage's wall time,
first-step time and the trainer's own held-out figures, and no machine paths."""

from __future__ import annotations

import io
import json
import runpy
import tarfile
from pathlib import Path

import pytest

from gendistill.ablate.report import build_report
from gendistill.io import absolute_paths

ROOT = Path(__file__).resolve().parents[1]
TOOL = runpy.run_path(str(ROOT / "tools" / "lease_record.py"))


def _records() -> list[dict]:
    """Two stages as the trainer writes them: a held-out record before training, then steps (and a later eval)."""
    t = 1000.0
    recs = [{"time": t, "stage": "stage1", "step": 0, "tokens": 0, "eval_loss": 9.0},
            {"time": t + 190.0, "stage": "stage1", "step": 1, "tokens": 64, "loss": 8.0, "tokens_per_s": 1.0,
             "process_seconds": 251.5},
            {"time": t + 200.0, "stage": "stage1", "step": 2, "tokens": 128, "loss": 7.0, "tokens_per_s": 100.0},
            {"time": t + 210.0, "stage": "stage3a", "step": 0, "tokens": 0, "eval_loss": 3.0, "eval_kl": 2.9,
             "eval_top1": 0.25},
            {"time": t + 215.0, "stage": "stage3a", "step": 1, "tokens": 64, "loss": 2.0, "tokens_per_s": 50.0},
            {"time": t + 220.0, "stage": "stage3a", "step": 2, "tokens": 128, "loss": 1.0, "tokens_per_s": 60.0},
            {"time": t + 221.5, "stage": "stage3a", "step": 2, "tokens": 128, "eval_loss": 0.5, "eval_kl": 0.4,
             "eval_top1": 0.7, "eval_tokens": 640}]
    return recs


def _bundle(tmp_path: Path, *, complete: bool = True, metrics: bool = True, extra: str | None = None,
            suites: dict | None = None, members: dict[str, str] | None = None) -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir(parents=True)
    summary = {"recipe": "lease.yaml", "complete": complete, "command": "e2e.py lease --out /tmp/gendistill-e2e/run",
               "distill_metrics": {}, **(suites or {})}
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
        for name, text in (members or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    return bundle


def test_a_lease_bundle_becomes_the_committed_result(tmp_path):
    rec = TOOL["lease_record"](_bundle(tmp_path), ["call 1", "call 2"], "torch 2.11", 1663.0, "2026-12-05")
    lease = rec["lease"]
    assert (lease["card"], lease["card_memory"], lease["driver"], lease["commit"]) == (
        "NVIDIA H100 80GB HBM3", "81559 MiB", "580.159.04", "45b5d80")
    assert lease["calls"] == ["call 1", "call 2"] and lease["device_seconds_session"] == 1663.0
    s1, s3a = lease["stages"]["stage1"], lease["stages"]["stage3a"]
    # wall time from the stage's first record to its last; the first step's time from the held-out loss before it
    assert (s1["seconds"], s1["first_step_seconds"], s1["first_step_process_seconds"]) == (200.0, 190.0, 251.5)
    assert (s3a["seconds"], s3a["first_step_seconds"]) == (11.5, 5.0)
    assert "trainer_heldout_at_end" not in s1  # an MSE stage has no held-out KL
    assert s3a["trainer_heldout_at_end"] == {"step": 2, "eval_kl": 0.4, "eval_top1": 0.7, "eval_tokens": 640}
    assert rec["distill_metrics"]["stage3a"]["seconds"] == 11.5  # recomputed from the bundle, not the old summary
    assert absolute_paths(rec) == set() and "--out run" in rec["command"]
    assert "student" not in rec  # neither the summary nor the bundle says which layers kept attention


def test_a_bundle_from_before_e2e_wrote_the_layout_gets_it_from_the_jobs_recipe(tmp_path):
    bundle = _bundle(tmp_path, members={"./recipe.yaml": _repeat_recipe("[0,3,7]")})
    rec = TOOL["lease_record"](bundle, ["call 1"], "torch 2.11", None, "2026-12-07")
    assert rec["student"] == {"attention_layers": [0, 3, 7]}
    bad = _bundle(tmp_path / "bad", members={"./recipe.yaml": "nonsense: 1\n"})
    with pytest.raises(SystemExit, match="the job's recipe.yaml: "):
        TOOL["lease_record"](bad, ["call 1"], "torch 2.11", None, "2026-12-07")


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
        with pytest.raises(SystemExit, match="is not an end-to-end or grid result file; refusing to replace it"):
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


def _long_rows(model: str, accs: list[float]) -> list[dict]:
    """One long-context task's generation row as the merged report keeps it: by length and by length × depth."""
    return [{"task": "ruler_vt", "model": model, "protocol": "generate", "acc": sum(accs) / len(accs),
             "by_length": [{"length": n, "acc": a} for n, a in zip((1024, 2048), accs)],
             "by_length_depth": [{"length": n, "depth": d, "acc": a} for n, a in zip((1024, 2048), accs)
                                 for d in (0.0, 1.0)]}]


def test_suites_become_their_own_records_and_plots(tmp_path, monkeypatch, capsys):
    """Issue 29: an e2e job's long-context suites go to longctx_<rest>.json (with the rope-scaled one), HumanEval to
    humaneval_<rest>.json, each with the lease's facts, and every long-context suite gets its plot."""
    suites = {"longctx": {"models": ["T", "S"], "rows": _long_rows("T", [1.0, 0.5]) + _long_rows("S", [0.5, 0.0]),
                          "mean_by_length": {"T": {"generate": {"1024": 1.0, "2048": 0.5}}}},
              "longctx_scaled": {"error": {"eval_longctx_scaled_final": "CUDA out of memory"}},
              "code": {"models": ["T"], "rows": [{"task": "humaneval", "model": "T", "acc": 0.25}],
                       "pass@1": {"T": 0.25}}}
    # the teacher's scaled evaluation failed after one task: its rows come along, marked by the evaluation's name
    partial = {"rows": _long_rows("T", [0.75, 0.25])}
    members = {"./eval_extra/longctx_scaled/base/results.partial.json": json.dumps(partial),
               "./eval_extra/longctx/base/results.partial.json": json.dumps(partial),  # superseded: not taken
               "./eval_extra/longctx/base/results.json": "{}"}
    docs = tmp_path / "docs"
    out = docs / "e2e_smollm2-135m_h100.json"
    monkeypatch.setattr("sys.argv", ["lease_record.py", str(_bundle(tmp_path, suites=suites, members=members)),
                                     "--out", str(out), "--call", "c", "--suites"])
    TOOL["main"]()
    lc = json.loads((docs / "longctx_smollm2-135m_h100.json").read_text())
    he = json.loads((docs / "humaneval_smollm2-135m_h100.json").read_text())
    assert lc["longctx"] == suites["longctx"]
    assert lc["longctx_scaled"] == {**suites["longctx_scaled"],
                                    "partial_rows": {"eval_longctx_scaled_base": partial["rows"]}}
    assert "code" not in lc and he["code"]["pass@1"] == {"T": 0.25} and "longctx" not in he
    assert lc["lease"]["calls"] == he["lease"]["calls"] == ["c"] and lc["lease"]["commit"] == "45b5d80"
    assert absolute_paths(lc) == set() and "--out run" in lc["command"]
    png = docs / "longctx_smollm2-135m_h100.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (docs / "longctx_scaled_smollm2-135m_h100.png").exists()  # it has no rows: no plot
    TOOL["main"]()  # its own records are rewritten
    # a job without suites: --suites is refused before anything is written
    monkeypatch.setattr("sys.argv", ["lease_record.py", str(_bundle(tmp_path / "plain")), "--out",
                                     str(tmp_path / "plain.json"), "--suites"])
    with pytest.raises(SystemExit, match="ran no long-context or code suite"):
        TOOL["main"]()
    assert not (tmp_path / "plain.json").exists()


def _grid_bundle(tmp_path: Path, *, extra: str | None = None,
                 smi: str | None = "NVIDIA H100 80GB HBM3, 81559 MiB, 580.159.04\n", timeout: str = "1180 s",
                 members_more: dict[str, str] | None = None, steps_more: str = "") -> Path:
    """What ``device_sweep.sh collect`` returns: the device's report.json (two cells sharing a stage-3a run's
    ancestors; the second cut by the job's timeout), summary.txt, and sweep_results.tgz with res/ and the stage runs."""
    bundle = tmp_path / "collected"
    bundle.mkdir(parents=True)
    t = 5000.0
    runs = {  # stage run folder -> records (the second stage-3a run starts later and stops early)
        "stage1-aaa": [{"time": t, "stage": "stage1", "step": 0, "tokens": 0, "eval_loss": 9.0},
                       {"time": t + 20, "stage": "stage1", "step": 1, "tokens": 64, "loss": 8.0, "tokens_per_s": 5.0},
                       {"time": t + 22, "stage": "stage1", "step": 2, "tokens": 128, "loss": 7.0,
                        "tokens_per_s": 50.0},
                       {"time": t + 22, "stage": "stage1", "step": 2, "tokens": 128, "eval_loss": 6.5}],
        "stage3a-bbb": [{"time": t + 30, "stage": "stage3a", "step": 0, "tokens": 0, "eval_loss": 3.0,
                         "eval_kl": 3.0, "eval_top1": 0.2},
                        {"time": t + 35, "stage": "stage3a", "step": 1, "tokens": 100, "loss": 2.0,
                         "tokens_per_s": 20.0},
                        {"time": t + 37, "stage": "stage3a", "step": 2, "tokens": 200, "loss": 1.0,
                         "tokens_per_s": 50.0},
                        {"time": t + 38, "stage": "stage3a", "step": 2, "tokens": 200, "eval_loss": 0.5,
                         "eval_kl": 0.5, "eval_top1": 0.6}],
        "stage3a-ccc": [{"time": t + 60, "stage": "stage3a", "step": 0, "tokens": 0, "eval_loss": 3.0,
                         "eval_kl": 3.0, "eval_top1": 0.2},
                        {"time": t + 61, "stage": "stage3a", "step": 1, "tokens": 50, "loss": 2.0,
                         "tokens_per_s": 40.0},
                        {"time": t + 62, "stage": "stage3a", "step": 2, "tokens": 100, "loss": 1.5,
                         "tokens_per_s": 40.0},
                        {"time": t + 63, "stage": "stage3a", "step": 2, "tokens": 100, "eval_loss": 0.7,
                         "eval_kl": 0.7, "eval_top1": 0.5},
                        {"time": t + 64, "stage": "stage3a", "step": 3, "tokens": 150, "loss": 1.4,
                         "tokens_per_s": 40.0}, "{\"time\": 50"]}  # the job killed mid-line
    cells = [{"cell": "batch=32", "assignment": {"batch": "32"}, "tokens": {"stage1": 128, "stage3a": 200},
              "nodes": ["aaa", "bbb"], "metrics": {"stage3a": {"steps": 2, "eval_step_last": 2,
                                                               "eval_at_tokens_last": 200}}},
             {"cell": "batch=16", "assignment": {"batch": "16"}, "tokens": {"stage1": 128, "stage3a": 200},
              "nodes": ["aaa", "ccc"], "metrics": {"stage3a": {"steps": 3, "eval_step_last": 2,
                                                               "eval_at_tokens_last": 100}}}]
    rows = [{"task": "t1", "model": who, "protocol": proto, "acc": acc, "stderr": 0.02, "chance": 0.25, "n": 100}
            for who, proto, acc in (("teach", "loglik", 0.8), ("teach", "generate", 0.7), ("stud", "loglik", 0.6),
                                    ("stud", "generate", 0.5))]
    cells[0]["eval"] = {"meta": {"models": ["teach", "stud"], "complete": True}, "rows": rows, "fidelity": []}
    cells[1]["eval"] = None  # the cut cell: not evaluated
    report = build_report({"grid": "/work/main/src/gendistill/recipes/g.yaml", "teacher": "/tmp/job/teacher/t.gguf",
                           "axes": {"batch": ["32", "16"]}, "mode": "one_at_a_time"}, cells)
    (bundle / "report.json").write_text(json.dumps(report))
    steps = ("device: NVIDIA H100 80GB HBM3 | torch 2.11.0+cu130 | triton 3.6.0 | fla 0.6.0\n"
             f"{steps_more}18:51:10 ablate start (timeout {timeout}) \n19:10:50 ablate rc=124\n")
    members = {"./res/steps.txt": steps, "./res/commit.txt": "b6419b3\n"}
    if smi is not None:
        members["./res/nvidia-smi.txt"] = smi
    for name, recs in runs.items():
        members[f"./runs/g/stages/{name}/metrics.jsonl"] = "".join(
            (r if isinstance(r, str) else json.dumps(r)) + "\n" for r in recs)
    # the cut cell's evaluation, stopped after its first task (the teacher's rows came from the cache)
    members["./runs/g/evals/stage3a-ccc-e1/results.partial.json"] = json.dumps(
        {"meta": {"models": ["teach", "stud"], "complete": False, "wall_seconds": 42.0},
         "rows": rows + [{"task": "t2", "model": "stud", "protocol": "loglik", "acc": 0.4, "stderr": 0.05,
                          "chance": 0.5, "n": 100}]})
    if extra:
        members[extra] = "x"
    members.update(members_more or {})
    with tarfile.open(bundle / "sweep_results.tgz", "w:gz") as tar:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return bundle


def test_a_grid_lease_becomes_its_report_with_curves_and_the_lease(tmp_path):
    rec = TOOL["grid_record"](_grid_bundle(tmp_path), ["setup", "watch"], 1732.0, "2026-12-05")
    lease = rec["lease"]
    assert (lease["card"], lease["commit"], lease["job_timeout_s"], lease["job_exit"]) == (
        "NVIDIA H100 80GB HBM3", "b6419b3", 1180, 124)
    assert lease["versions"] == "torch 2.11.0+cu130 | triton 3.6.0 | fla 0.6.0"
    assert [n["node"] for n in lease["node_timeline"]] == ["stage1-aaa", "stage3a-bbb", "stage3a-ccc"]
    assert lease["node_timeline"][1] == {"node": "stage3a-bbb", "steps": 2, "median_tokens_per_s": 50,
                                         "start_s": 30.0, "end_s": 38.0}
    assert lease["node_timeline"][2]["steps"] == 3 and lease["node_timeline"][2]["end_s"] == 64.0
    assert lease["cut"] == ["batch=16: stage3a stopped after 3 steps; its last held-out evaluation at step 2 "
                            "(100 of 200 tokens)"]
    # each cell's curves come from its own stage runs: the shared stage 1 and its own stage 3a
    small = rec["cells"][1]["curves"]
    assert list(small) == ["stage1", "stage3a"]
    assert [(p["tokens"], p["eval_kl"], p["seconds"]) for p in small["stage3a"]] == [(0, 3.0, 0.0), (100, 0.7, 2.0)]
    assert [p["tokens"] for p in rec["cells"][0]["curves"]["stage3a"]] == [0, 200]
    # the device wrote its report before the cut cell's held-out evaluations (its metrics there hold none): the
    # record takes each cell's figures from its stage runs, as the report would have after the cell
    assert rec["cells"][1]["metrics"]["stage3a"]["eval_kl_last"] == 0.7
    assert (rec["cells"][1]["heldout_stage"], rec["cells"][1]["heldout_kl"], rec["cells"][1]["heldout_top1"]) == (
        "stage3a", 0.7, 0.5)
    assert (rec["cells"][1]["final_eval_loss"], rec["cells"][1]["final_eval_loss_stage"]) == (0.7, "stage3a")
    # its evaluation was cut: what finished is kept apart from the report's scores (the cell stays unevaluated)
    part = rec["cells"][1]["partial_scores"]
    assert rec["cells"][1]["scores"] is None and rec["evaluated"] == 1 and part["complete"] is False
    assert part["student"]["t1"]["generate"]["acc"] == 0.5 and part["teacher"]["t1"]["loglik"]["acc"] == 0.8
    assert part["tasks_both_protocols"] == ["t1"] and part["wall_seconds"] == 42.0
    assert "partial_scores" not in rec["cells"][0]
    text = TOOL["report_markdown"](rec)
    assert "batch=16: its evaluation was cut; the tasks it finished, log-likelihood / generation (%): t1 60.0 / 50.0 " \
           "(teacher 80.0 / 70.0)." in text
    assert absolute_paths(rec) == set() and rec["meta"]["teacher"] == "t.gguf"
    # no nvidia-smi line: no card (never the next line of a summary); a timeout given as timeout(1) takes it
    other = TOOL["grid_record"](_grid_bundle(tmp_path / "o", smi=None, timeout="20m"), [], None, "2026-12-05")
    assert (other["lease"]["card"], other["lease"]["job_timeout_s"]) == (None, "20m")


def _select_members() -> dict[str, str]:
    """A layer-selection lease's select/ folder: greedy-learned finished, beam-add cut after sizes 1 and 2."""
    def settings(method: str) -> str:
        return json.dumps({"fingerprint": "f", "settings": {
            "teacher": "/tmp/job/teacher/t.gguf", "method": method, "budget": 2, "seq_len": 1024, "beam_width": 2,
            "recall": {"kind": "needle", "weight": 0.5}}})

    def rec(layers: list[int], kl: float, recall: float, seconds: float = 2.0) -> dict:
        return {"attention_layers": layers, "heldout_kl": kl, "recall_kl": recall,
                "cost": {"seconds": seconds, "train_tokens": 0, "eval_tokens": 10}}

    beam = {"aligned": {"cost": {"seconds": 100.0, "train_tokens": 4096, "eval_tokens": 0}},
            "attn:0": rec([0], 1.0, 4.0), "attn:1": rec([1], 1.5, 2.0), "attn:2": rec([2], 1.2, 3.0),
            "attn:0,1": rec([0, 1], 0.9, 1.0), "attn:0,2": rec([0, 2], 0.8, 2.0)}
    return {
        "./select/greedy-learned/select.json": settings("greedy-learned"),
        "./select/greedy-learned/layers.json": json.dumps({
            "attention_layers": [0, 3], "ranked": [0, 3, 1, 2], "method": "greedy-learned",
            "cost": {"device": "cuda", "gpu_minutes": 1.5}, "scores": {"alpha": {"0": 0.9, "3": 0.8}}}),
        "./select/greedy-learned/scores.json": json.dumps({"fingerprint": "f", "scores": {
            "aligned": {"cost": {"seconds": 60.0, "train_tokens": 4096, "eval_tokens": 0}}}}),
        "./select/beam-add/select.json": settings("beam-add"),
        "./select/beam-add/scores.json": json.dumps({"fingerprint": "f", "scores": beam}),
    }


def test_a_resumed_grid_names_the_stage_runs_an_earlier_lease_trained(tmp_path):
    # batch=32's results came from an earlier lease (device_sweep.sh start: "carried results: CELL ..."): its own
    # stage 3a is that lease's, timed from its own start; the shared stage 1 was trained again here for batch=16
    bundle = _grid_bundle(tmp_path, steps_more="18:50:58 carried results: batch=32 \n")
    lease = TOOL["grid_record"](bundle, [], None, "2026-12-06")["lease"]
    assert lease["carried_cells"] == ["batch=32"]
    assert [(n["node"], n.get("carried", False), n["start_s"]) for n in lease["node_timeline"]] == [
        ("stage3a-bbb", True, 0.0), ("stage1-aaa", False, 0.0), ("stage3a-ccc", False, 60.0)]
    plain = TOOL["grid_record"](_grid_bundle(tmp_path / "plain"), [], None, "2026-12-06")["lease"]
    assert "carried_cells" not in plain and not any("carried" in n for n in plain["node_timeline"])
    # the job's start time, where the job wrote it, decides by the records' own times: the stage runs recorded before
    # it (stage 1 and the first stage 3a) came from the earlier lease, whatever cells the carried folder named
    timed = _grid_bundle(tmp_path / "timed", members_more={"./res/job_start_epoch": "5050\n"})
    lease = TOOL["grid_record"](timed, [], None, "2026-12-06")["lease"]
    assert [(n["node"], n.get("carried", False), n["start_s"]) for n in lease["node_timeline"]] == [
        ("stage1-aaa", True, 0.0), ("stage3a-bbb", True, 30.0), ("stage3a-ccc", False, 0.0)]


def test_a_selection_lease_records_each_method_finished_or_cut(tmp_path):
    """Issue 27: each select-layers folder of the job becomes its settings, its result if it finished, and what its
    score cache holds (best set per size by held-out KL + recall weight x recall KL); a later call's cache, copied
    into the bundle as select_<method>_scores.json, is read instead of the job's."""
    bundle = _grid_bundle(tmp_path, members_more=_select_members())
    sel = TOOL["grid_record"](bundle, [], None, "2026-12-06")["selection"]
    assert list(sel) == ["beam-add", "greedy-learned"]
    greedy, beam = sel["greedy-learned"], sel["beam-add"]
    assert greedy["finished"] and greedy["attention_layers"] == [0, 3] and greedy["ranked"][:2] == [0, 3]
    assert greedy["cache"]["aligned_seconds"] == 60.0 and greedy["cache"]["candidates_scored"] == 0
    assert not beam["finished"] and "attention_layers" not in beam
    cache = beam["cache"]
    assert cache["candidates_scored"] == 5 and cache["seconds"] == 110.0 and cache["source"].endswith("of the job")
    # recall weight 0.5: [1] scores 1.5 + 1.0 = 2.5, [2] 1.2 + 1.5 = 2.7, [0] 1.0 + 2.0 = 3.0 (by KL alone: [0])
    assert cache["best_by_size"]["1"] == {"scored": 3, "layers": [1], "heldout_kl": 1.5, "recall_kl": 2.0}
    assert cache["best_by_size"]["2"]["layers"] == [0, 1]  # 0.9 + 0.5 = 1.4 < 0.8 + 1.0 = 1.8
    assert [r["layers"] for r in cache["singles"]] == [[0], [1], [2]]
    assert beam["settings"]["recall"]["weight"] == 0.5 and "teacher" not in beam["settings"]
    later = {"fingerprint": "f", "scores": {"attn:5": {"attention_layers": [5], "heldout_kl": 0.1, "recall_kl": 0.1,
                                                        "cost": {"seconds": 1.0}}}}
    (bundle / "select_beam-add_scores.json").write_text(json.dumps(later))
    again = TOOL["grid_record"](bundle, [], None, "2026-12-06")["selection"]["beam-add"]["cache"]
    assert again["candidates_scored"] == 1 and again["source"].startswith("scores.json of a later call")
    # the selection driver names the job's timeout in its first line; its ablate lines give what was left then
    facts = TOOL["_job_facts"]("03:42:34 selection: uniform, then ... (timeout 900 s each; job timeout 1300 s)\n"
                               "03:43:08 ablate start (kept: uniform; timeout 1266 s) \n03:53:00 ablate rc=0\n")
    assert (facts["job_timeout_s"], facts["job_exit"]) == (1300, 0)


def test_the_tool_writes_a_grid_record_and_its_figure_and_refuses_an_unsafe_archive(tmp_path, monkeypatch, capsys):
    out = tmp_path / "docs" / "sched.json"
    monkeypatch.setattr("sys.argv", ["lease_record.py", str(_grid_bundle(tmp_path)), "--out", str(out),
                                     "--call", "c", "--figures"])
    TOOL["main"]()
    assert json.loads(out.read_text())["lease"]["calls"] == ["c"]
    assert "3 stage runs, 1 of 2 cells evaluated" in capsys.readouterr().out
    assert (tmp_path / "docs" / "sched_curves.png").read_bytes()[:4] == b"\x89PNG"
    # the grid's report as gendistill ablate writes it, without the machine's paths
    md = (tmp_path / "docs" / "sched_report.md").read_text()
    assert md.startswith("# Ablation report — g.yaml") and "Teacher: `t.gguf`" in md and "/tmp/" not in md
    assert "| 32 | 60.0" in md and (tmp_path / "docs" / "sched_report.png").read_bytes()[:4] == b"\x89PNG"
    TOOL["main"]()  # a grid result may be rewritten
    bad = _grid_bundle(tmp_path / "bad", extra="../outside.txt")
    monkeypatch.setattr("sys.argv", ["lease_record.py", str(bad), "--out", str(tmp_path / "b.json")])
    with pytest.raises(SystemExit, match="unsafe member"):
        TOOL["main"]()
    assert not (tmp_path / "b.json").exists() and not (tmp_path / "bad" / "outside.txt").exists()


def _tgz(path: Path, members: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, text in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    return path


def _repeat_recipe(layers: str, evals: bool = True) -> str:
    from gendistill.distill.config import dump_recipe
    from gendistill.distill.recipe_files import load_recipe

    sets = [f"student.attention_layers={layers}", "stages[stage3a].tokens=400", "stages[stage3a].seq_len=10",
            "stages[stage3a].batch_size=10", "stages[stage3a].micro_batch_size=10", "stages[stage3a].data.seed=1"]
    return dump_recipe(load_recipe("smollm2-135m-lease", sets + ([] if evals else ["stages[stage3a].eval_every=null"])))


def _repeat_rows(steps: int, evals: bool = True) -> str:
    """Stage 3a of a repeat: 100 tokens a step, a held-out evaluation before training and after steps 2 and 4."""
    t = 7000.0
    recs = [{"time": t, "stage": "stage3a", "step": 0, "tokens": 0, "eval_loss": 3.0, "eval_kl": 3.0,
             "eval_top1": 0.2}] if evals else []
    for step in range(1, steps + 1):
        recs.append({"time": t + step, "stage": "stage3a", "step": step, "tokens": 100 * step, "loss": 2.0 / step,
                     "tokens_per_s": 20.0})
        if evals and step % 2 == 0:
            recs.append({"time": t + step + 0.5, "stage": "stage3a", "step": step, "tokens": 100 * step,
                         "eval_loss": 0.9 / step, "eval_kl": 0.8 / step, "eval_top1": 0.5})
    return "".join(json.dumps(r) + "\n" for r in recs)


def _repeat_archive(tmp_path: Path) -> Path:
    """A later call's tarball of three plain distill runs (as `gendistill distill` writes recipe.yaml and
    metrics.jsonl, stage 3a of 4 steps): 'b' finished stage 3a and stopped (stage 3b never ran); 'a' was cut after
    step 3, its last held-out evaluation at step 2; 'c' finished with no held-out evaluation at all."""
    return _tgz(tmp_path / "later" / "seed1.tgz", {
        "./runs/b/recipe.yaml": _repeat_recipe("[0,3]"), "./runs/b/metrics.jsonl": _repeat_rows(4),
        "./runs/a/recipe.yaml": _repeat_recipe("every:4"), "./runs/a/metrics.jsonl": _repeat_rows(3),
        "./runs/c/recipe.yaml": _repeat_recipe("every:4", evals=False),
        "./runs/c/metrics.jsonl": _repeat_rows(4, evals=False),
        "./seed1.sh": "for c in ...; do gendistill distill ...; done\n"})


def test_repeats_of_a_grid_are_recorded_with_their_seeds_curves_and_cuts(tmp_path, monkeypatch, capsys):
    """Issue 25: runs a later call made outside the grid (stage 3a under another data order) go into the record
    under 'repeats', each with its layers, seeds, per-stage plan, what it trained (from its training records, not
    its evaluations) and its curve; --repeat-of names the cell a run repeats; the figure draws them beside the
    grid's cells; a bundle that is not a grid, a run without metrics and a recipe that does not parse are refused."""
    runs = TOOL["repeat_runs"](_repeat_archive(tmp_path), {"b": "16"})
    assert list(runs) == ["a", "b", "c"]
    a, b, c = runs["a"], runs["b"], runs["c"]
    assert (a["attention_layers"], b["attention_layers"]) == ("every:4", [0, 3])
    assert b["stage_data_seeds"]["stage3a"] == 1 and b["data_seed"] == 0 and b["repeats_cell"] == "16"
    assert "repeats_cell" not in a
    b3a, a3a = b["stages"]["stage3a"], a["stages"]["stage3a"]
    assert (b3a["state"], b3a["steps"], b3a["trained_tokens"], b3a["planned_steps"]) == ("finished", 4, 400, 4)
    assert (a3a["state"], a3a["steps"], a3a["trained_tokens"]) == ("cut", 3, 300)
    assert a3a["curve"][-1]["step"] == 2 and a["stages"]["stage3b"]["state"] == "not started"
    assert c["stages"]["stage3a"]["state"] == "finished" and c["stages"]["stage3a"]["curve"] == []
    assert [(p["tokens"], p["eval_kl"]) for p in b3a["curve"]] == [(0, 3.0), (200, 0.4), (400, 0.2)]
    out = tmp_path / "docs" / "layers.json"
    monkeypatch.setattr("sys.argv", ["lease_record.py", str(_grid_bundle(tmp_path)), "--out", str(out),
                                     "--repeats", str(_repeat_archive(tmp_path / "x")), "--repeat-of", "b=16",
                                     "--figures"])
    TOOL["main"]()
    rec = json.loads(out.read_text())
    assert list(rec["repeats"]) == ["a", "b", "c"] and absolute_paths(rec) == set()
    assert rec["repeats"]["b"]["repeats_cell"] == "16"
    assert (tmp_path / "docs" / "layers_curves.png").read_bytes()[:4] == b"\x89PNG"
    for argv, message in (
            (["--repeats", str(_repeat_archive(tmp_path / "y")), "--repeat-of", "zz=16"], "no such run"),
            (["--repeat-of", "b"], "RUN=VARIANT")):
        monkeypatch.setattr("sys.argv", ["lease_record.py", str(_grid_bundle(tmp_path / "g" / message)), "--out",
                                         str(tmp_path / "g.json"), *argv])
        with pytest.raises(SystemExit, match=message):
            TOOL["main"]()
    monkeypatch.setattr("sys.argv", ["lease_record.py", str(_bundle(tmp_path / "e2e")), "--out",
                                     str(tmp_path / "e.json"), "--repeats", str(_repeat_archive(tmp_path / "z"))])
    with pytest.raises(SystemExit, match="not a grid lease"):
        TOOL["main"]()
    assert not (tmp_path / "e.json").exists() and not (tmp_path / "g.json").exists()
    for members, message in (({"./runs/readme.txt": "x"}, "no runs/<name>/ inside"),
                             ({"./runs/a/recipe.yaml": _repeat_recipe("[0]")}, "runs/a: no metrics.jsonl"),
                             ({"./runs/a/recipe.yaml": "student: [", "./runs/a/metrics.jsonl": ""},
                              "runs/a/recipe.yaml: "),
                             ({"./runs/a/recipe.yaml": "nonsense: 1\n", "./runs/a/metrics.jsonl": ""},
                              "runs/a/recipe.yaml: ")):
        with pytest.raises(SystemExit, match=message):
            TOOL["repeat_runs"](_tgz(tmp_path / "bad" / f"{len(message)}{len(members)}.tgz", members))
