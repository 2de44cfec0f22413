"""Turn what a device lease of ``tools/device_e2e.sh`` or ``tools/device_sweep.sh`` brought back into the committed
result of ``docs/results``.

    python tools/lease_record.py BUNDLE --out docs/results/e2e_smollm2-135m_h100.json \\
        --call "COMMIT=45b5d80 bash tools/device_e2e.sh setup  (carry .whl .device/carry1)" --call ... \\
        --versions "torch 2.11.0+cu130 | triton 3.6.0 | transformers 5.24.0 | fla 0.6.0" --device-seconds 1663
    python tools/lease_record.py COLLECTED --out docs/results/sched_smollm2-135m_h100.json --call ... \\
        --device-seconds 1732 --figures       (a grid: what device_sweep.sh collect returned)

BUNDLE is the folder a ``watch``/``collect`` call returned: ``summary.json``, ``e2e.log`` (its first two lines are
the card as nvidia-smi names it and the commit) and ``e2e_bundle.tgz`` (the run's ``run/metrics.jsonl`` inside). The
output is the job's summary with three changes: ``distill_metrics``, ``evaluation`` and ``targets_met`` recomputed
from the bundled metrics and evaluation records by tools/e2e.py's own functions (so a record written by an older
e2e.py gains what the current one adds, such as each stage's seconds or the chance level of answer agreement), and a
``lease`` key: the
card, its memory and driver, the commit, versions, the device calls, the session's device seconds, and per stage the
seconds, the first step's seconds, the median tokens/s and the trainer's own held-out KL / top-1 at its end. Every
absolute path is cut to its last part (committed JSON carries no machine paths); the file is written atomically.

A grid lease (``device_sweep.sh collect``: ``report.json`` and ``sweep_results.tgz`` with the job's ``res/`` (the
card as nvidia-smi named it, the commit, the steps) and every stage run's ``metrics.jsonl``) becomes the grid's
report as the device wrote it, each cell given its held-out curves
(:func:`gendistill.ablate.heldout_curves.stage_curves` on its stage runs' records, so a report written by an older
commit gains them) and its stage summaries and held-out figures from those records (the device may have written the
report before a cell's stages trained: a job cut in the cell's evaluation), a cut evaluation's finished tasks as
``partial_scores`` (:func:`partial_scores`; the cell stays unevaluated), and a ``lease`` key: the card, the commit,
the versions line, the calls, the device seconds, the job's timeout and exit status, the stage runs in the order they
ran (steps, median tokens/s, start and end seconds from the first one's first record; a resumed grid's carried runs
apart) and every stage a timeout cut short.
``--figures`` also writes ``<out stem>_curves.png`` (:func:`gendistill.ablate.heldout_curves.plot_heldout_curves`)
and the grid's report as ``gendistill ablate`` writes it, from the record: ``<out stem>_report.md`` and
``_report.png`` (:func:`gendistill.ablate.report.markdown`, :func:`~gendistill.ablate.report.plot_png`). A
layer-selection lease (issue 27: the archive holds ``select/<method>/``) adds ``selection``: per method its
settings, its result if it finished and what its score cache holds (:func:`selection_record`); a
``select_<method>_scores.json`` in BUNDLE (the cache as a later ``--resume`` call left it, copied there) is read
instead of the job's copy.

An e2e job with long-context or code suites (issue 29): ``--suites`` also writes, beside ``--out``,
``longctx_<rest>.json`` and ``humaneval_<rest>.json`` and each long-context suite's plot (``<rest>``: the ``--out``
name after its ``e2e_``).
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
import tarfile
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gendistill.ablate.curve import CURVE_STAGE, trained_when_cut  # noqa: E402
from gendistill.ablate.heldout_curves import plot_heldout_curves, stage_curves  # noqa: E402
from gendistill.ablate.report import cell_scores  # noqa: E402
from gendistill.ablate.report import markdown as report_markdown  # noqa: E402
from gendistill.ablate.report import plot_png as report_png  # noqa: E402
from gendistill.ablate.report import training_fields  # noqa: E402
from gendistill.ablate.runner import metrics_records, stage_summary  # noqa: E402
from gendistill.distill.config import parse_recipe  # noqa: E402
from gendistill.errors import ConfigError, first_line  # noqa: E402
from gendistill.eval.report import plot_long_context_png  # noqa: E402
from gendistill.io import atomic_write_bytes, atomic_write_json, portable_paths  # noqa: E402
from gendistill.select.methods import beam_score  # noqa: E402

E2E = runpy.run_path(str(Path(__file__).with_name("e2e.py")))
METRICS_MEMBER = "run/metrics.jsonl"


GRID_ARCHIVE = "sweep_results.tgz"


def unpack_bundle(bundle: Path, dest: Path, archive_name: str = "e2e_bundle.tgz",
                  required: str = METRICS_MEMBER) -> Path:
    """``BUNDLE/<archive_name>`` unpacked into ``dest`` (tarfile's ``data`` filter: no links out, no absolute
    names); refused without ``required`` inside."""
    archive = bundle / archive_name
    if not hasattr(tarfile, "data_filter"):  # Python 3.10.12 / 3.11.4 and later
        raise SystemExit("error: tools/lease_record.py needs a Python with tarfile's data filter (3.10.12, 3.11.4 or "
                         "later)")
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(dest, filter="data")
    except tarfile.FilterError as e:
        raise SystemExit(f"error: {archive}: refused an unsafe member ({e}); nothing of it is used") from None
    except (OSError, tarfile.TarError) as e:
        raise SystemExit(f"error: {archive}: not a readable .tgz ({e})") from None
    if not (dest / required).exists():
        raise SystemExit(f"error: {archive}: no {required} inside (was the job started?)")
    return dest


def stage_record(metrics: dict[str, Any]) -> dict[str, Any]:
    """Per stage: seconds, first step's seconds (after the held-out loss before it, and after the process started),
    median tokens/s and the trainer's last held-out figures."""
    out: dict[str, Any] = {}
    for stage, m in metrics.items():
        rec = {k: m[k] for k in ("seconds", "first_step_seconds", "first_step_process_seconds", "median_tokens_per_s",
                                 "steps", "tokens") if k in m}
        if m.get("eval_fidelity"):
            step, kl, top1 = m["eval_fidelity"][-1]
            rec["trainer_heldout_at_end"] = {"step": step, "eval_kl": kl, "eval_top1": top1}
            if m.get("eval_tokens"):
                rec["trainer_heldout_at_end"]["eval_tokens"] = m["eval_tokens"]
        out[stage] = rec
    return out


def read_recipe(path: Path, where: str) -> Any:
    """The recipe a job wrote (``recipe.yaml``), or one line naming ``where`` and what is wrong with it."""
    try:
        return parse_recipe(yaml.safe_load(path.read_text()), "recipe.yaml")
    except (OSError, yaml.YAMLError, ConfigError) as e:
        raise SystemExit(f"error: {where}: {first_line(e)}") from None


def lease_record(bundle: Path, calls: list[str], versions: str, device_seconds: float | None,
                 day: str, notes: list[str] | None = None) -> dict[str, Any]:
    """The committed result: the bundle's summary, its stage metrics recomputed, and the ``lease`` key."""
    try:
        summary = json.loads((bundle / "summary.json").read_text())
        head = (bundle / "e2e.log").read_text().splitlines()[:2]
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {bundle}: no readable summary.json and e2e.log ({e})") from None
    if not summary.get("complete"):
        raise SystemExit(f"error: {bundle / 'summary.json'}: the job did not finish (complete is not true)")
    with tempfile.TemporaryDirectory() as tmp:
        job = unpack_bundle(bundle, Path(tmp))
        summary["distill_metrics"] = E2E["_stage_metrics"](job / METRICS_MEMBER)
        if "student" not in summary and (job / "recipe.yaml").is_file():  # a job from before e2e.py wrote it
            recipe = read_recipe(job / "recipe.yaml", f"{bundle}: the job's recipe.yaml")
            summary["student"] = {"attention_layers": recipe.student.attention_layers}
        if (job / "eval" / "base" / "results.json").is_file():
            summary["evaluation"] = E2E["_evaluation_summary"](job / "eval")
            summary["targets_met"] = E2E["_targets"](summary, summary["budgets"][-1]["stage"])
        for suite in SUITE_RECORDS:
            if suite in summary:
                partial = suite_partial_rows(job / "eval_extra" / suite)
                if partial:
                    summary[suite]["partial_rows"] = partial
    summary["lease"] = {
        **_card_fields(head[0] if head else ""),
        "commit": head[1].strip() if len(head) > 1 else None,
        "versions": versions,
        "date": day,
        "calls": calls,
        "device_seconds_session": device_seconds,
        "stages": stage_record(summary["distill_metrics"]),
        **({"notes": notes} if notes else {}),
        "source": "tools/lease_record.py: the bundle's summary.json, run/metrics.jsonl and the head of e2e.log",
    }
    return portable_paths(summary)


#: the suites of an e2e job (tools/e2e.py --long-context / --scaled-context / --code) and the record each goes to
SUITE_RECORDS = {"longctx": "longctx", "longctx_scaled": "longctx", "code": "humaneval"}


def suite_partial_rows(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """The rows a suite's evaluation wrote before it failed (``<who>/results.partial.json``, kept after every
    finished task) where it wrote no ``results.json``, by the evaluation's phase name (``eval_<suite>_<who>``)."""
    out = {}
    for who in ("base", "final"):
        part = folder / who / "results.partial.json"
        if part.is_file() and not (folder / who / "results.json").is_file():
            rows = json.loads(part.read_text()).get("rows", [])
            if rows:
                out[f"eval_{folder.name}_{who}"] = rows
    return out


def suite_records(record: dict[str, Any], stem: str) -> dict[str, dict[str, Any]]:
    """The e2e record's long-context and HumanEval suites as their own results (issue 29): ``longctx_<stem>`` holds
    ``longctx`` and ``longctx_scaled``, ``humaneval_<stem>`` holds ``code``; each with the job's recipe, budgets,
    command, held-out fidelity of the students evaluated and the ``lease`` facts. Suites the job did not run are
    left out, and so is a record none of whose suites ran."""
    common = {k: record[k] for k in ("recipe", "overrides", "command", "budgets", "heldout_fidelity", "lease")
              if k in record}
    out: dict[str, dict[str, Any]] = {}
    for suite, prefix in SUITE_RECORDS.items():
        if suite in record:
            out.setdefault(f"{prefix}_{stem}", dict(common))[suite] = record[suite]
    return out


def suite_figures(record: dict[str, Any]) -> dict[str, bytes]:
    """Per long-context suite its plot (:func:`gendistill.eval.report.plot_long_context_png`: accuracy against
    context length per task and model, and the length × depth map), from the rows the record keeps."""
    figs = {}
    for suite in ("longctx", "longctx_scaled"):
        rows = record.get(suite, {}).get("rows")
        png = plot_long_context_png({"rows": rows}) if rows else None
        if png is not None:
            figs[suite] = png
    return figs


def _card_fields(line: str | None) -> dict[str, str | None]:
    """``card``, ``card_memory`` and ``driver`` from nvidia-smi's CSV line (``name, memory, driver``); all None for
    None."""
    parts = [part.strip() for part in line.split(",")] if line is not None else []
    return {key: parts[i] if len(parts) > i else None for i, key in enumerate(("card", "card_memory", "driver"))}


def _timed_records(stages: Path) -> dict[str, list[dict[str, Any]]]:
    """Each stage run folder under ``stages`` (by name) with its records that carry a time; runs without any left
    out."""
    runs = {}
    for d in sorted(p for p in stages.iterdir() if (p / "metrics.jsonl").is_file()):
        rows = [r for r in metrics_records(d / "metrics.jsonl") if r.get("time") is not None]
        if rows:
            runs[d.name] = rows
    return runs


def _node_id(run_folder: str) -> str:
    """The node id in a stage run's folder name (``<stage>-<id>``)."""
    return run_folder.rsplit("-", 1)[-1]


def _node_timeline(runs: dict[str, list[dict[str, Any]]],
                   carried: set[str] | frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """Every stage run (:func:`_timed_records`) in the order it ran: its folder name, steps, median tokens/s, and its
    first and last record's time in seconds from the first stage run's first record. ``carried``: the node ids of
    stage runs an earlier lease trained (a grid resumed from its collected results): listed first with
    ``"carried": true`` and their seconds from the first carried run's start, so this lease's seconds count from its
    own first stage run, not from a run hours earlier on another machine."""
    flagged = sorted(((_node_id(name) in carried, name, rows) for name, rows in runs.items()),
                     key=lambda r: (not r[0], r[2][0]["time"]))
    t0 = {flag: min((rows[0]["time"] for c, _, rows in flagged if c == flag), default=0.0) for flag in (True, False)}
    out = []
    for was_carried, name, rows in flagged:
        s = stage_summary(rows)
        out.append({"node": name, "steps": s["steps"],
                    "median_tokens_per_s": round(s["tokens_per_s"]) if s["tokens_per_s"] else None,
                    "start_s": round(rows[0]["time"] - t0[was_carried], 1),
                    "end_s": round(rows[-1]["time"] - t0[was_carried], 1),
                    **({"carried": True} if was_carried else {})})
    return out


def _carried_nodes(runs: dict[str, list[dict[str, Any]]], epoch_file: Path, cells: list[dict[str, Any]],
                   carried_cells: list[str]) -> set[str]:
    """The node ids of the stage runs (:func:`_timed_records`) an earlier lease trained (a grid resumed from collected
    results). With the job's start time (``res/job_start_epoch``, written by device_sweep.sh's job): every stage run
    whose first record is older (a carried run trained again here was cleared first, so its records are new).
    Without it: the carried cells' nodes that no cell evaluated here shares (a shared one was trained again: a
    carried result holds no student)."""
    if epoch_file.is_file():
        start = float(epoch_file.read_text().split()[0])
        return {_node_id(name) for name, rows in runs.items() if rows[0]["time"] < start}
    return ({n for c in cells if c["cell"] in carried_cells for n in c.get("nodes", [])}
            - {n for c in cells if c["cell"] not in carried_cells for n in c.get("nodes", [])})


def _job_facts(steps_txt: str) -> dict[str, Any]:
    """The versions line, the job's timeout and its exit status from the job's ``steps.txt``, and the cells whose
    results an earlier lease carried in (``carried results: CELL ...``)."""
    facts: dict[str, Any] = {"versions": None, "job_timeout_s": None, "job_exit": None, "carried_cells": []}
    for line in steps_txt.splitlines():
        if " carried results: " in line:  # tools/device_sweep.sh start: an earlier lease's cells, not retrained here
            facts["carried_cells"] = line.split(" carried results: ", 1)[1].split()
        elif line.startswith("device: "):
            facts["versions"] = line.split("|", 1)[1].strip() if "|" in line else None
        elif "ablate start (timeout " in line or "job timeout " in line:  # as JOB_TIMEOUT was given: seconds,
            # or timeout's own "20m"; a selection lease (issue 27) names it in its first line
            key = "job timeout " if "job timeout " in line else "(timeout "
            given = line.split(key, 1)[1].split(")")[0].strip().removesuffix(" s")
            facts["job_timeout_s"] = int(given) if given.isdigit() else given
        elif " ablate rc=" in line:
            facts["job_exit"] = int(line.rsplit("rc=", 1)[1])
    return facts


SELECT_FIELDS = ("method", "budget", "seq_len", "batch_size", "micro_batch_size", "eval_sequences", "align_steps",
                 "candidate_steps", "candidate_lr", "beam_width", "mix_steps", "sparsity", "recall")


def _scored(rec: dict[str, Any]) -> dict[str, Any]:
    return {"layers": rec["attention_layers"], **{k: round(rec[k], 4) for k in ("heldout_kl", "recall_kl") if k in rec}}


def selection_record(folder: Path, later_scores: Path | None = None) -> dict[str, Any]:
    """One ``select-layers`` run folder as it came back (issue 27's lease): its settings, its result when it finished
    (``layers.json``: the chosen set, the ranking, the cost, the method's scores), and, finished or not, what its
    score cache holds: how many candidate sets were scored, their seconds and tokens, and the best set of each size
    (:func:`gendistill.select.methods.beam_score`). ``later_scores``: the same run's ``scores.json``
    as a later call left it (a ``--resume`` after the job), used instead of the job's copy."""
    settings = json.loads((folder / "select.json").read_text())["settings"]
    out: dict[str, Any] = {"settings": {k: settings.get(k) for k in SELECT_FIELDS}}
    layers = folder / "layers.json"
    if layers.is_file():
        res = json.loads(layers.read_text())
        out.update(finished=True, attention_layers=res["attention_layers"], ranked=res.get("ranked"),
                   cost=res.get("cost"), scores=res.get("scores"))
    else:
        out["finished"] = False
    cache_file = later_scores if later_scores is not None else folder / "scores.json"
    cache = json.loads(cache_file.read_text())["scores"] if cache_file.is_file() else {}
    sets = {k: v for k, v in cache.items() if k.startswith("attn:")}
    weight = float((settings.get("recall") or {}).get("weight", 1.0))
    by_size: dict[int, list[dict[str, Any]]] = {}
    for rec in sets.values():
        by_size.setdefault(len(rec["attention_layers"]), []).append(rec)
    out["cache"] = {
        "source": "scores.json of a later call (--resume)" if later_scores is not None else "scores.json of the job",
        "candidates_scored": len(sets),
        "seconds": round(sum(float(v.get("cost", {}).get("seconds", 0)) for v in cache.values()), 1),
        "train_tokens": sum(int(v.get("cost", {}).get("train_tokens", 0)) for v in cache.values()),
        "aligned_seconds": (cache.get("aligned") or {}).get("cost", {}).get("seconds"),
        "best_by_size": {str(n): {"scored": len(recs), **_scored(min(recs, key=lambda r: beam_score(r, weight)))}
                         for n, recs in sorted(by_size.items())},
        "singles": sorted((_scored(r) for r in by_size.get(1, [])), key=lambda r: r["layers"]),
    }
    return out


def partial_scores(evals: Path, cell: dict[str, Any]) -> dict[str, Any] | None:
    """A cell whose evaluation the job's timeout cut: what its ``results.partial.json`` (the evaluation of the cell's
    last stage run, ``evals/<stage>-<node>-<eval id>/``) holds, in the report's form
    (:func:`gendistill.ablate.report.cell_scores`: per task and protocol, student and teacher), with the tasks the
    student finished under both protocols and the seconds it ran. Kept apart from the report's scores: the cell is not
    evaluated, and a mean over fewer tasks compares with no other cell's. None for an evaluated cell or none cut."""
    if cell.get("scores") is not None or not cell.get("nodes"):
        return None
    files = sorted(evals.glob(f"*-{cell['nodes'][-1]}-*/results.partial.json"))
    if not files:
        return None
    res = json.loads(files[-1].read_text())
    scores = cell_scores(res)
    both = [t for t, by in scores["student"].items() if {"loglik", "generate"} <= set(by)]
    return {**scores, "tasks_both_protocols": both, "wall_seconds": res.get("meta", {}).get("wall_seconds"),
            "complete": False}


def grid_record(bundle: Path, calls: list[str], device_seconds: float | None, day: str,
                notes: list[str] | None = None) -> dict[str, Any]:
    """The committed result of a grid lease: the device's report.json, each cell with its held-out curves, and the
    ``lease`` key."""
    try:
        rep = json.loads((bundle / "report.json").read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {bundle}: no readable report.json ({e})") from None
    with tempfile.TemporaryDirectory() as tmp:
        job = unpack_bundle(bundle, Path(tmp), GRID_ARCHIVE, "res/steps.txt")
        stage_dirs = [d for d in (job / "runs").glob("*/stages")]
        if len(stage_dirs) != 1:
            raise SystemExit(f"error: {bundle / GRID_ARCHIVE}: expected one runs/<grid>/stages folder, found "
                             f"{len(stage_dirs)}")
        stages = stage_dirs[0]
        for c in rep["cells"]:
            records, fresh = [], {}
            for node in c.get("nodes", []):
                for d in stages.glob(f"*-{node}"):
                    recs = metrics_records(d / "metrics.jsonl")
                    records += recs
                    if recs:
                        fresh[d.name.rsplit("-", 1)[0]] = {"node": node, **stage_summary(recs)}
            c["curves"] = stage_curves(records)
            # each stage's summary from its own records, in stage order: the device may have written its report
            # before a stage trained (a job cut during the cell's evaluation); the cell's figures follow
            c["metrics"] = {**fresh, **{st: m for st, m in (c.get("metrics") or {}).items() if st not in fresh}}
            c.update(training_fields(c["metrics"], c.get("losses")))
            partial = partial_scores(stages.parent / "evals", c)
            if partial is not None:
                c["partial_scores"] = partial
        facts = _job_facts((job / "res" / "steps.txt").read_text())
        commit = (job / "res" / "commit.txt").read_text().strip() if (job / "res" / "commit.txt").is_file() else None
        runs = _timed_records(stages)
        timeline = _node_timeline(runs, _carried_nodes(runs, job / "res" / "job_start_epoch", rep["cells"],
                                                       facts["carried_cells"]))
        selection = {d.name: selection_record(d, bundle / f"select_{d.name}_scores.json"
                                              if (bundle / f"select_{d.name}_scores.json").is_file() else None)
                     for d in sorted((job / "select").glob("*")) if (d / "select.json").is_file()}
        smi = job / "res" / "nvidia-smi.txt"
        smi_lines = smi.read_text().strip().splitlines() if smi.is_file() else []
        card_line = smi_lines[0] if smi_lines else ""
    cut = []
    for c in rep["cells"]:
        for st, m in (c.get("metrics") or {}).items():
            at = trained_when_cut(m, (c.get("tokens") or {}).get(st))
            if at is not None:
                cut.append(f"{c['cell']}: {st} stopped after {m.get('steps')} steps; its last held-out evaluation at "
                           f"step {m.get('eval_step_last')} ({at:,} of {c['tokens'][st]:,} tokens)")
    if selection:
        rep["selection"] = selection
    rep["lease"] = {
        **_card_fields(card_line if "," in card_line else None), "commit": commit, "versions": facts["versions"],
        "date": day,
        "calls": calls, "device_seconds_session": device_seconds, "job_timeout_s": facts["job_timeout_s"],
        "job_exit": facts["job_exit"], "cut": cut, "node_timeline": timeline,
        **({"carried_cells": facts["carried_cells"]} if facts["carried_cells"] else {}),
        **({"notes": notes} if notes else {}),
        "source": "tools/lease_record.py: the collected report.json and sweep_results.tgz (res/, the stage runs' "
                  "metrics.jsonl)",
    }
    return portable_paths(rep)


def repeat_runs(archive: Path, repeat_of: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Plain ``gendistill distill`` runs that a later call of a grid lease made (a repeat of some cells under another
    setting, e.g. stage 3a's data order) and brought back as a tarball of ``runs/<name>/``, each with the
    ``recipe.yaml`` and ``metrics.jsonl`` the trainer wrote (students and checkpoints left out). Per run, in name
    order: the grid cell it repeats where ``repeat_of`` names one (``run name -> variant``), its attention layers, the
    data seed of the run and of each stage that sets its own, and per stage its planned steps, the steps and tokens it
    trained (its training records: a stage that never logged a step is ``"not started"``), whether it stopped short of
    its plan (the call's time limit) and its held-out curve (:func:`stage_curves`). A run without its recipe or
    metrics, or with a recipe this gendistill cannot read, is refused with one line."""
    with tempfile.TemporaryDirectory() as tmp:
        job = unpack_bundle(archive.parent, Path(tmp), archive.name, "runs")
        out: dict[str, dict[str, Any]] = {}
        for run in sorted(d for d in (job / "runs").iterdir() if d.is_dir()):
            where = f"{archive}: runs/{run.name}"
            if not (run / "metrics.jsonl").is_file():
                raise SystemExit(f"error: {where}: no metrics.jsonl (not a distill run, or it never started)")
            recipe = read_recipe(run / "recipe.yaml", f"{where}/recipe.yaml")
            records = metrics_records(run / "metrics.jsonl")
            curves = stage_curves(records)
            stages: dict[str, Any] = {}
            for st in recipe.stages:
                trained = stage_summary([r for r in records if r.get("stage") == st.name])
                state = ("not started" if not trained["steps"] else
                         "finished" if trained["steps"] >= st.total_steps() else "cut")
                stages[st.name] = {"planned_steps": st.total_steps(), "planned_tokens": st.tokens, "state": state,
                                   "steps": trained["steps"], "trained_tokens": trained["tokens"],
                                   "curve": curves.get(st.name, [])}
            out[run.name] = {
                **({"repeats_cell": repeat_of[run.name]} if run.name in (repeat_of or {}) else {}),
                "attention_layers": recipe.student.attention_layers,
                "data_seed": recipe.data.seed if recipe.data is not None else None,
                "stage_data_seeds": {st.name: st.data.seed for st in recipe.stages if st.data is not None},
                "stages": stages}
    if not out:
        raise SystemExit(f"error: {archive}: no runs/<name>/ inside")
    unknown = sorted(set(repeat_of or {}) - set(out))
    if unknown:
        raise SystemExit(f"error: --repeat-of {', '.join(unknown)}: no such run in {archive} (runs: {', '.join(out)})")
    return out


def check_replaceable(out: Path) -> None:
    """``out`` may be written: it does not exist, or it is a result this tool writes: an end-to-end result (a JSON
    object with ``complete``, as tools/e2e.py writes), a grid's report (``axes`` and ``cells``) or a suite record
    (``lease`` and a suite). Any other file is the user's, and is refused, untouched."""
    if not out.exists():
        return
    try:
        data = json.loads(out.read_text()) if out.is_file() else None
    except (OSError, ValueError):
        data = None
    ok = isinstance(data, dict) and ("complete" in data or {"axes", "cells"} <= set(data)
                                     or ("lease" in data and bool(set(SUITE_RECORDS) & set(data))))
    if not ok:
        raise SystemExit(f"error: --out {out}: exists and is not an end-to-end or grid result file; refusing to "
                         "replace it")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path, help="the folder a device_e2e.sh watch/collect call brought back, or a "
                                              "device_sweep.sh collect call (a grid: it holds sweep_results.tgz)")
    ap.add_argument("--out", type=Path, required=True, help="the JSON to write (docs/results/e2e_<recipe>_<card>.json)")
    ap.add_argument("--call", action="append", default=[], help="one device call as run (repeatable, in order)")
    ap.add_argument("--versions", default="", help="the versions line the setup call printed (a grid's is read "
                                                   "from its job)")
    ap.add_argument("--device-seconds", type=float, default=None, help="the session's device time at the end")
    ap.add_argument("--date", default=date.today().isoformat(), help="the lease's date (default: today)")
    ap.add_argument("--note", action="append", default=[], help="what a reader should know of the lease (repeatable)")
    ap.add_argument("--figures", action="store_true", help="a grid: also write <out stem>_curves.png (its held-out "
                                                          "curves) and its report as gendistill ablate writes it, "
                                                          "<out stem>_report.md and _report.png")
    ap.add_argument("--repeats", type=Path, default=None,
                    help="a grid: a tarball of runs/<name>/ folders (plain gendistill distill runs of a later call, "
                         "recipe.yaml and metrics.jsonl each) recorded under 'repeats' and drawn dashed in the figure")
    ap.add_argument("--repeat-of", action="append", default=[], metavar="RUN=VARIANT",
                    help="with --repeats: the grid variant a run repeats (recorded; drawn in that variant's colour)")
    ap.add_argument("--suites", action="store_true",
                    help="an e2e job with long-context or code suites: also write, beside --out, longctx_<rest>.json "
                         "and humaneval_<rest>.json (<rest>: the --out name after its 'e2e_') and each long-context "
                         "suite's plot, <suite>_<rest>.png")
    args = ap.parse_args()
    check_replaceable(args.out)
    repeat_of = dict(pair.split("=", 1) for pair in args.repeat_of if "=" in pair)
    if len(repeat_of) != len(args.repeat_of) or (repeat_of and args.repeats is None):
        raise SystemExit("error: --repeat-of takes RUN=VARIANT (a run of --repeats, the grid variant it repeats)")
    if (args.bundle / GRID_ARCHIVE).is_file():
        record = grid_record(args.bundle, args.call, args.device_seconds, args.date, args.note)
        if args.repeats is not None:
            record["repeats"] = portable_paths(repeat_runs(args.repeats, repeat_of))
        atomic_write_json(args.out, record)
        print(f"wrote {args.out}: {record['lease']['card']}, commit {record['lease']['commit']}, "
              f"{len(record['lease']['node_timeline'])} stage runs, {record['evaluated']} of {record['total']} cells "
              "evaluated")
        if args.figures:
            repeats = record.get("repeats", {})
            png = plot_heldout_curves(
                record, extra={f"{name} (repeat)": run["stages"].get(CURVE_STAGE, {}).get("curve", [])
                               for name, run in repeats.items()},
                extra_like={f"{name} (repeat)": run["repeats_cell"] for name, run in repeats.items()
                            if "repeats_cell" in run})
            if png is not None:
                fig = args.out.with_name(f"{args.out.stem}_curves.png")
                atomic_write_bytes(fig, png)
                print(f"wrote {fig}")
            # the grid's own report as `gendistill ablate` writes it, from the record (so without machine paths)
            md = args.out.with_name(f"{args.out.stem}_report.md")
            atomic_write_bytes(md, report_markdown(record).encode())
            print(f"wrote {md}")
            if (png := report_png(record)) is not None:
                atomic_write_bytes(args.out.with_name(f"{args.out.stem}_report.png"), png)
                print(f"wrote {args.out.with_name(f'{args.out.stem}_report.png')}")
        return
    if args.repeats is not None:
        raise SystemExit(f"error: --repeats: {args.bundle} is not a grid lease (no {GRID_ARCHIVE}); repeats go with "
                         "the grid whose cells they repeat")
    record = lease_record(args.bundle, args.call, args.versions, args.device_seconds, args.date, args.note)
    if args.suites:
        stem = args.out.stem.removeprefix("e2e_")
        extra = {args.out.with_name(f"{name}.json"): rec for name, rec in suite_records(record, stem).items()}
        if not extra:
            raise SystemExit(f"error: {args.bundle / 'summary.json'}: --suites, but the job ran no long-context or "
                             "code suite")
        for path in extra:
            check_replaceable(path)
    atomic_write_json(args.out, record)
    if args.suites:
        for path, rec in extra.items():
            atomic_write_json(path, rec)
            print(f"wrote {path}")
        for suite, png in suite_figures(record).items():
            fig = args.out.with_name(f"{suite}_{stem}.png")
            atomic_write_bytes(fig, png)
            print(f"wrote {fig}")
    stages = record["lease"]["stages"]
    print(f"wrote {args.out}: {record['lease']['card']}, commit {record['lease']['commit']}, "
          + ", ".join(f"{s} {r.get('seconds')} s" for s, r in stages.items()))


if __name__ == "__main__":
    main()
