"""The whole GenDistill job in one go: distill a recipe through its four stages and evaluate the teacher, the
undistilled student, the stage-3a student and the final student side by side under both protocols, with fidelity on
the pipeline's own held-out data and a budget curve over stage 3a.

    python tools/e2e.py smollm2-135m-lease --out runs/e2e                 # GPU: all 9 tasks, 500 each
    python tools/e2e.py RECIPE --out DIR --tasks arc_easy,gsm8k --limit 100 --set stages[2].tokens=2e6
    python tools/e2e.py RECIPE --out DIR --extra-tasks my_quiz.jsonl                    # your task files too
    python tools/e2e.py smollm2-135m-lease --out DIR --long-context 1k,2k,4k,8k --scaled-context 16k:yarn:2 --code

Phases (each timed in ``summary.json`` by when its own work started and ended, in seconds from the job's start; phases
run in parallel where said, so their seconds overlap and do not add up to the wall time, ``wall_seconds``):
  1. convert  the undistilled student (the pipeline's own conversion, same seed) -> DIR/undistilled
  2. distill  ``gendistill distill`` on the resolved recipe (stage 3a also saved at --snapshots fractions)
     while, in parallel on the same device, ``gendistill eval`` scores the teacher and the undistilled student
     (phase eval_base: from its launch to its exit, sharing the device with the distillation);
  3. eval     the distilled students (after 3a and after 3b, one process each: eval_stage3a, eval_<last stage>) on
     the same examples; the 3a snapshots on a few generation tasks (eval_snapshots, the budget curve);
     eval_distilled spans them, from the first launch to the last exit;
  4. fidelity teacher-forced top-1 agreement and KL on the held-out sequences of stage 3a (text) and stage 3b (chat,
     completion-only: the trainer's mask), for every student;
  5. summary  DIR/summary.json, DIR/summary.md, DIR/budget_curve.png, and the merged evaluation in DIR/eval/all.

With ``--long-context``, ``--scaled-context`` or ``--code`` (issue 29) the teacher and the undistilled student are
also scored on the long-context tasks (by context length and needle depth, both protocols; beyond the teacher's trained
length with rope scaling) and on HumanEval (completions run in the sandbox) beside the distillation, the final student
after it (phases eval_<suite>_base / _final); each suite is merged in DIR/eval_extra/<suite>/all (results.md,
long_context.png) and summarised under its name in summary.json (mean accuracy per model and length; pass@1). A suite
that fails (HumanEval where no sandbox can run) is reported with its log's last line; the job goes on, and
``--suites-only`` (the same recipe, suite options and ``--out``) later runs again only the parts that wrote no results,
on the students still in the folder, then merges and summarises the suites. These
evaluations share the device with the distillation, so its tokens/s in such a job are not a throughput figure.

Each evaluation and the distillation run as their own ``python -m gendistill`` processes (logs in DIR/logs); the
summary is rewritten after every phase, so a job cut off keeps what it finished.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BUILTIN_TASKS = "arc_easy,arc_challenge,hellaswag,piqa,winogrande,boolq,mmlu,gsm8k,triviaqa"
#: issue 25's targets for the student after its last stage, evaluated as users load it: held-out text (stage 3a's rows)
#: and chat (stage 3b's completion tokens) top-1 agreement and KL; answer agreement on each multiple-choice task; the
#: mean retention over the tasks under each protocol
TARGETS = {"text_top1": 0.90, "text_kl": 0.10, "chat_top1": 0.85, "chat_kl": 0.30, "answer_agreement": 0.90,
           "generation_retention": 0.95, "loglik_retention": 0.95}
MC_FREE_TEXT = ("gsm8k", "triviaqa")  # the tasks without options: no answer agreement target


class Job:
    """A subprocess (``cmd``, by default ``python -m gendistill ARGS``) with its log file and the times it really ran:
    ``start`` when it was launched and ``end`` when it exited, both ``time.monotonic()`` seconds. A watcher thread
    reaps the process the moment it exits, so ``end`` does not depend on when the job is waited on."""

    def __init__(self, name: str, args: list[str], logs: Path, env: dict[str, str], cmd: list[str] | None = None):
        self.name, self.args = name, args
        self.log = logs / f"{name}.log"
        self.end: float | None = None
        self.fh = open(self.log, "w")  # noqa: SIM115 (closed by the watcher when the process exits)
        self.start = time.monotonic()
        self.proc = subprocess.Popen(cmd or [sys.executable, "-m", "gendistill", *args], stdout=self.fh,
                                     stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self._watcher = threading.Thread(target=self._reap, name=f"e2e-{name}", daemon=True)
        self._watcher.start()

    def _reap(self) -> None:
        self.proc.wait()
        self.end = time.monotonic()
        self.fh.close()

    def wait(self, check: bool = True) -> tuple[float, float]:
        """Block until the process has exited; its ``(start, end)``. A failed process ends the job with its log's
        tail, unless ``check`` is off (the optional suites: their failure is reported, the job goes on)."""
        self._watcher.join()
        rc = self.proc.returncode
        if rc != 0 and check:
            tail = self.log.read_text(errors="replace").strip().splitlines()[-15:]
            raise SystemExit(f"e2e: {self.name} failed (exit {rc}); log {self.log}:\n" + "\n".join(tail))
        assert self.end is not None
        return self.start, self.end


def record_phase(phases: dict[str, Any], name: str, start: float, end: float, origin: float) -> dict[str, float]:
    """``phases[name]``: when the phase's own work started and ended, in seconds from ``origin`` (the job's start,
    same clock), and how long it ran. Returns the entry."""
    phases[name] = entry = {"start_s": round(start - origin, 1), "end_s": round(end - origin, 1),
                            "seconds": round(end - start, 1)}
    return entry


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", help="the distillation recipe: a YAML file or a shipped recipe's name")
    ap.add_argument("--out", required=True, help="job folder (must not exist, or hold an earlier e2e job to redo)")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="recipe override, as for gendistill distill --set (repeatable)")
    ap.add_argument("--tasks", default=BUILTIN_TASKS, help="evaluation tasks (built-in names or task files)")
    ap.add_argument("--extra-tasks", action="append", default=[], help="more task files, evaluated the same way")
    ap.add_argument("--limit", type=int, default=500, help="examples per task (all where the set is smaller)")
    ap.add_argument("--snapshots", default="0.25,0.5", help="stage-3a fractions saved for the budget curve")
    ap.add_argument("--snapshot-tasks", default="arc_easy,hellaswag,boolq,triviaqa",
                    help="tasks of the budget curve's answer agreement (among --tasks; same examples)")
    ap.add_argument("--fidelity-sequences", type=int, default=64,
                    help="held-out sequences of stages 3a/3b (the trainer's eval_sequences): the rows of the "
                         "trainer's held-out evaluation and of the fidelity")
    ap.add_argument("--device", default="auto", help="auto | cuda | cpu")
    ap.add_argument("--batch-size", type=int, default=None, help="generation batch (default: 192 on CUDA, 8 on CPU)")
    ap.add_argument("--token-budget", type=int, default=None, help="log-likelihood tokens per batch (default: 65536 "
                                                                   "on CUDA, 2048 on CPU)")
    ap.add_argument("--long-context", default=None, metavar="LENGTHS",
                    help="also score the teacher, the undistilled and the final student on the RULER-style tasks at "
                         "these context lengths (e.g. 1k,2k,4k,8k), both protocols, needle depths swept (issue 29)")
    ap.add_argument("--long-context-tasks", default="ruler", help="the long-context tasks (default: the ruler group)")
    ap.add_argument("--long-context-limit", type=int, default=20, help="samples per context length and task")
    ap.add_argument("--depths", default=None,
                    help="needle depths in percent (gendistill eval's default: 0,25,50,75,100)")
    ap.add_argument("--scaled-context", default=None, metavar="LENGTH:ROPE",
                    help="also score them beyond the teacher's trained length with rope scaling, e.g. 16k:yarn:2 "
                         "(gendistill eval --context-lengths 16k --rope-scaling yarn:2)")
    ap.add_argument("--code", action="store_true",
                    help="also score them on HumanEval (greedy pass@1; every problem; completions run in the sandbox)")
    ap.add_argument("--suite-memory-fraction", type=float, default=0.06,
                    help="on CUDA, the share of the card each long-context or code evaluation may hold, its batches "
                         "planned within it (gendistill eval --gpu-memory-fraction; default 0.06)")
    ap.add_argument("--smoke", action="store_true", help="plumbing check: 4 examples per task, 16 new tokens")
    ap.add_argument("--no-parallel", action="store_true", help="run the first evaluation after the distillation")
    ap.add_argument("--suites-only", action="store_true",
                    help="in an earlier job's --out (its students still there): run again only the parts of the "
                         "long-context and code suites that wrote no results, e.g. after they failed, then merge and "
                         "summarise the suites into its summary.json (the recipe and suite options as the job had "
                         "them)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    job_start = time.monotonic()
    args = parse_args(argv)
    import torch

    from gendistill.distill.config import dump_recipe
    from gendistill.distill.recipe_files import load_recipe
    from gendistill.distill.shipped import recipe_file
    from gendistill.errors import GendistillError
    from gendistill.io import portable_paths

    out = Path(args.out).resolve()
    if out.exists() and any(out.iterdir()) and not (out / "summary.json").exists():
        raise SystemExit(f"e2e: --out {out} exists and is not an e2e job folder; choose a new folder")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    cuda = device.startswith("cuda")
    batch = args.batch_size or (192 if cuda else 8)
    budget = args.token_budget or (65536 if cuda else 2048)
    fractions = [float(x) for x in args.snapshots.split(",") if x.strip()]
    try:  # the long-context and code evaluations' settings fail now, not after the distillation
        suites = _suites(args, device, "bfloat16" if cuda else "float32", cuda, budget)
    except GendistillError as e:
        raise SystemExit(f"e2e: {e}") from None

    try:
        recipe = load_recipe(args.recipe, [*args.overrides, f"run.output_dir={out / 'run'}"])
    except GendistillError as e:
        raise SystemExit(f"e2e: {e}") from None
    names = [s.name for s in recipe.stages]
    if "stage3a" not in names:
        raise SystemExit("e2e: the recipe has no stage3a (the budget curve and the 3a student need it)")
    i3a = names.index("stage3a")
    recipe.stages[i3a].snapshots = fractions
    for st in recipe.stages:  # the trainer's held-out rows of the logit stages are the rows fidelity is computed on
        if st.name in ("stage3a", "stage3b"):
            st.eval_sequences = args.fidelity_sequences
    final_stage = names[-1]
    if args.suites_only:
        return rerun_suites(out, suites, recipe.teacher.spec, final_stage)
    out.mkdir(parents=True, exist_ok=True)  # every setting checked: nothing is written for bad input
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    resolved = out / "recipe.yaml"
    _write(resolved, dump_recipe(recipe))

    summary: dict[str, Any] = {
        # committed as docs/results/e2e_*.json: no machine paths (gendistill.io.portable_paths)
        "recipe": recipe_file(args.recipe).name, "overrides": portable_paths(args.overrides),
        "device": device, "device_name": torch.cuda.get_device_name(0) if cuda else "cpu", "limit": args.limit,
        "smoke": args.smoke, "phases": {},
        "command": portable_paths(" ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])])),
        "budgets": [{"stage": s.name, "steps": s.total_steps(), "tokens": s.total_steps() * s.batch_size * s.seq_len,
                     "seq_len": s.seq_len, "batch_size": s.batch_size} for s in recipe.stages],
        "targets": TARGETS,
        # which layers kept attention, as the recipe (with its overrides) says: records of one recipe differ in it
        "student": {"attention_layers": recipe.student.attention_layers},
    }

    def save() -> None:
        _write(out / "summary.json", json.dumps(summary, indent=1, default=str) + "\n")

    def phase(name: str, start: float, end: float) -> None:
        e = record_phase(summary["phases"], name, start, end, job_start)
        summary["wall_seconds"] = round(time.monotonic() - job_start, 1)
        save()
        print(f"[e2e] {name}: {e['seconds']:.0f} s (from {e['start_s']:.0f} s to {e['end_s']:.0f} s)", flush=True)

    save()
    env = _job_env()
    dtype = "bfloat16" if cuda else "float32"
    tasks = ",".join([args.tasks, *args.extra_tasks])
    eval_common = ["--tasks", tasks, "--limit", str(args.limit), "--protocol", "loglik,generate", "--device", device,
                   "--dtype", dtype, "--batch-size", str(batch), "--token-budget", str(budget), "--no-progress"]
    if args.smoke:
        eval_common.append("--smoke")
    teacher_spec = recipe.teacher.spec

    # 1. the undistilled student, built exactly as the pipeline builds it (same seed, same conversion)
    t0 = time.monotonic()
    undistilled = out / "undistilled"
    from gendistill.convert.convert import save_student
    from gendistill.distill.distributed import World
    from gendistill.distill.pipeline import build_student, teacher_dtype
    from gendistill.models.loading import load_model

    world = World(device=torch.device(device))
    teacher, tok = load_model(teacher_spec, dtype=teacher_dtype(recipe, world), device=world.device)
    student = build_student(recipe, teacher, world.device)
    save_student(student.eval(), tok, undistilled, overwrite=True)
    del student
    phase("convert", t0, time.monotonic())

    # 2. distillation, with the first evaluation beside it
    distill = Job("distill", ["distill", str(resolved), "--overwrite"], logs, env)

    def suite_jobs(who: str, models: list[str]) -> list[Job]:
        return [suite_job(out, name, who, models, sargs, env) for name, sargs in suites.items()]

    def base_jobs() -> tuple[Job, list[Job]]:
        """Teacher and undistilled student: the short tasks and every suite."""
        return (Job("eval_base", ["eval", "-m", teacher_spec, "-m", str(undistilled), *eval_common,
                                  "--out", str(out / "eval" / "base")], logs, env),
                suite_jobs("base", [teacher_spec, str(undistilled)]))

    base_eval, base_suites = (None, []) if args.no_parallel else base_jobs()
    phase("distill", *distill.wait())
    if base_eval is None:
        base_eval, base_suites = base_jobs()
    run_dir = out / "run"
    summary["distill_metrics"] = _stage_metrics(run_dir / "metrics.jsonl")
    save()

    # 3. the distilled students, and the budget curve's snapshots (generation only)
    from gendistill.distill.stage_files import snapshot_name

    students = {"stage3a": run_dir / "stage3a", final_stage: run_dir / final_stage}
    # the snapshots the run saved (two fractions of a very short stage can fall on the same step: one folder)
    snaps = {f: run_dir / snapshot_name("stage3a", f) for f in fractions}
    snaps = {f: d for f, d in snaps.items() if (d / "config.json").is_file()}
    # the teacher's answers come from the base evaluation (same examples: same tasks, limit and seed)
    # one process per student, in parallel (each is launch-bound; together they fill the device better)
    # --update-card: each student's model card carries its evaluation (held-out KL / top-1 are there already)
    dist_evals = [Job(f"eval_{p.name}", ["eval", "-m", str(p), *eval_common, "--update-card",
                                         "--out", str(out / "eval" / f"distilled_{p.name}")], logs, env)
                  for p in dict.fromkeys(students.values())]
    final_ready = (students[final_stage] / "config.json").is_file()
    final_suites = suite_jobs("final", [str(students[final_stage])]) if final_ready else []
    snap_eval = None
    if snaps:
        snap_tasks = _task_specs(tasks, args.snapshot_tasks)
        snap_eval = Job("eval_snapshots", ["eval", *[a for p in snaps.values() for a in ("-m", str(p))],
                                           "--tasks", snap_tasks, "--limit", str(args.limit),
                                           "--protocol", "generate", "--device", device, "--dtype", dtype,
                                           "--batch-size", str(batch), "--no-progress",
                                           "--out", str(out / "eval" / "snapshots"),
                                           *(["--smoke"] if args.smoke else [])],
                        logs, env)

    # 4. fidelity on the pipeline's held-out slices while the evaluations run
    t2 = time.monotonic()
    fid = _heldout_fidelity(run_dir, teacher, {"undistilled": undistilled, **{snapshot_name("stage3a", f): p
                                                                              for f, p in snaps.items()}, **students},
                            world.device)
    summary["heldout_fidelity"] = fid
    phase("fidelity", t2, time.monotonic())
    del teacher
    phase("eval_base", *base_eval.wait())
    later = [*dist_evals, *([snap_eval] if snap_eval is not None else [])]
    for job in later:
        phase(job.name, *job.wait())
    # the distilled students' evaluations together: from the first one's launch to the last one's exit
    phase("eval_distilled", min(j.start for j in later), max(j.end for j in later))
    for job in [*base_suites, *final_suites]:
        phase(job.name, *job.wait(check=False))

    # 5. the summary
    t3 = time.monotonic()
    merged = out / "eval" / "all"
    Job("eval_merge", ["eval", *[a for d in _eval_parts(out / "eval") for a in ("--merge", str(d))],
                       "--out", str(merged)], logs, env).wait()
    summary["evaluation"] = _evaluation_summary(out / "eval")
    summary["budget_curve"] = _budget_curve(out / "eval", fid, sorted(snaps), summary.get("distill_metrics", {}))
    summary["targets_met"] = _targets(summary, final_stage)
    merge_suites(out, suites, summary, env)
    phase("summary", t3, time.monotonic())
    summary["complete"] = True
    save()
    _write(out / "summary.md", render_markdown(summary))
    _plot_budget(summary["budget_curve"], out / "budget_curve.png")
    print(f"[e2e] done: {out / 'summary.md'}", flush=True)
    return summary


def _job_env() -> dict[str, str]:
    """The environment of the job's ``python -m gendistill`` processes: this checkout's package first."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def suite_job(out: Path, name: str, who: str, models: list[str], suite_args: list[str], env: dict[str, str]) -> Job:
    """One part of a suite (``who``: ``base``, the teacher and the undistilled student, or ``final``) as its own
    ``gendistill eval`` of ``models``, writing ``out/eval_extra/<name>/<who>`` (beside it ``all/``, the merged
    parts); its log ``out/logs/eval_<name>_<who>.log``."""
    return Job(f"eval_{name}_{who}", ["eval", *[a for m in models for a in ("-m", m)], *suite_args,
                                      "--out", str(out / "eval_extra" / name / who)], out / "logs", env)


def merge_suites(out: Path, suites: dict[str, list[str]], summary: dict[str, Any], env: dict[str, str]) -> None:
    """Each suite's parts (``base``: teacher + undistilled, ``final``: the final student) merged into
    ``out/eval_extra/<suite>/all`` and summarised under the suite's name in ``summary``."""
    extra, logs = out / "eval_extra", out / "logs"
    for name in suites:
        parts = [extra / name / who for who in ("base", "final") if (extra / name / who / "results.json").is_file()]
        if parts:
            Job(f"eval_merge_{name}", ["eval", *[a for d in parts for a in ("--merge", str(d))],
                                        "--out", str(extra / name / "all")], logs, env).wait(check=False)
        summary[name] = _suite_summary(extra / name, logs, name)


def rerun_suites(out: Path, suites: dict[str, list[str]], teacher_spec: str, final_stage: str) -> dict[str, Any]:
    """``--suites-only``: in the job folder ``out``, run again every suite part that wrote no results (in parallel,
    each its own ``gendistill eval``; the failed run's log kept as ``<part>.previous.log``), timed as phases
    ``eval_<suite>_<part>_rerun`` from this call's start, then merge and summarise the suites into the job's
    ``summary.json`` and ``summary.md``. The models must still be in the folder (the undistilled student, the final
    stage's); nothing is started when one is missing."""
    start = time.monotonic()
    summary_file = out / "summary.json"
    if not suites:
        raise SystemExit("e2e: --suites-only: name the suites (--long-context, --scaled-context, --code)")
    if not summary_file.is_file():
        raise SystemExit(f"e2e: --suites-only: {out} holds no e2e job (no summary.json)")
    summary = json.loads(summary_file.read_text())
    extra, logs = out / "eval_extra", out / "logs"
    students = {"base": out / "undistilled", "final": out / "run" / final_stage}  # the teacher is a spec
    models = {"base": [teacher_spec, str(students["base"])], "final": [str(students["final"])]}
    todo = [(name, who) for who in models for name in suites if not (extra / name / who / "results.json").is_file()]
    missing = sorted({str(students[who]) for _, who in todo if not (students[who] / "config.json").is_file()})
    if missing:
        raise SystemExit(f"e2e: --suites-only: {', '.join(missing)} not found: the students must still be in the job "
                         "folder")
    env = _job_env()
    jobs = []
    for name, who in todo:
        log = logs / f"eval_{name}_{who}.log"
        if log.is_file():
            log.replace(log.with_name(f"{log.stem}.previous.log"))
        jobs.append(suite_job(out, name, who, models[who], suites[name], env))
        print(f"[e2e] rerun: {jobs[-1].name}", flush=True)
    for job in jobs:
        entry = record_phase(summary["phases"], f"{job.name}_rerun", *job.wait(check=False), start)
        print(f"[e2e] {job.name}_rerun: {entry['seconds']:.0f} s", flush=True)
    merge_suites(out, suites, summary, env)
    _write(summary_file, json.dumps(summary, indent=1, default=str) + "\n")
    _write(out / "summary.md", render_markdown(summary))
    print(f"[e2e] suites done: {out / 'summary.md'}", flush=True)
    return summary


# --------------------------------------------------------------------------------------------------------- phases
def _suites(args: argparse.Namespace, device: str, dtype: str, cuda: bool, token_budget: int) -> dict[str, list[str]]:
    """The evaluations beyond the short tasks (issue 29), as ``gendistill eval`` arguments without models and output:
    ``longctx`` (the long-context tasks at ``--long-context`` lengths, both protocols, depths swept),
    ``longctx_scaled`` (at the ``--scaled-context`` length with rope scaling) and ``code`` (HumanEval, greedy). Their
    settings are checked here, by the parsers ``gendistill eval`` uses."""
    from gendistill.devices import check_memory_fraction
    from gendistill.errors import ConfigError
    from gendistill.eval.rope import parse_rope_scaling
    from gendistill.eval.ruler import parse_depths, parse_lengths
    from gendistill.eval.tasks import parse_tasks

    common = ["--device", device, "--dtype", dtype, "--no-progress", *(["--smoke"] if args.smoke else [])]
    # On CUDA each suite's process may hold at most --suite-memory-fraction of the card and plans its batches within
    # it: several evaluations start together (beside the distillation, or after it with --no-parallel), each would
    # otherwise plan for half the memory free at its start, and a fixed batch ran out of memory (16 rows of 16K
    # tokens beside a distillation on an H100, docs/results.md section 13). On CPU: small fixed batches.
    check_memory_fraction(args.suite_memory_fraction, "--suite-memory-fraction")
    sizing = (["--gpu-memory-fraction", str(args.suite_memory_fraction)] if cuda
              else ["--batch-size", "2", "--token-budget", str(token_budget)])
    long = ["--tasks", args.long_context_tasks, "--limit", str(args.long_context_limit), "--protocol",
            "loglik,generate", *sizing]
    if args.long_context_limit < 1:
        raise ConfigError(f"--long-context-limit must be a positive integer, got {args.long_context_limit}")
    if args.depths:
        parse_depths(args.depths)
        long += ["--depths", args.depths]
    suites: dict[str, list[str]] = {}
    if args.long_context or args.scaled_context:
        parse_tasks(args.long_context_tasks)
    if args.long_context:
        parse_lengths(args.long_context)
        suites["longctx"] = [*long, "--context-lengths", args.long_context, *common]
    if args.scaled_context:
        length, _, rope = args.scaled_context.partition(":")
        if not rope:
            raise ConfigError(f"--scaled-context {args.scaled_context}: give LENGTH:ROPE, e.g. 16k:yarn:2")
        parse_lengths(length)
        parse_rope_scaling(rope)
        suites["longctx_scaled"] = [*long, "--context-lengths", length, "--rope-scaling", rope, *common]
    if args.code:
        suites["code"] = ["--tasks", "humaneval", "--protocol", "generate", *sizing, *common]
    return suites


def _suite_summary(folder: Path, logs: Path, name: str) -> dict[str, Any]:
    """A suite's figures from its merged ``folder/all/results.json``: per model and protocol the mean accuracy over
    the tasks at each context length (long-context suites), per model HumanEval pass@1 (code), and each row as the
    report keeps it; ``error``: the last log line of each of its evaluations (``base``: teacher + undistilled,
    ``final``: the final student) that wrote no results."""
    errors = {}
    for who in ("base", "final"):
        if not (folder / who / "results.json").is_file():
            log = logs / f"eval_{name}_{who}.log"
            lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()] if log.is_file() else []
            errors[log.stem] = lines[-1] if lines else "(no log)"
    res_file = folder / "all" / "results.json"
    if not res_file.is_file():
        return {"error": errors}
    res = json.loads(res_file.read_text())
    out: dict[str, Any] = {"models": res["meta"]["models"], "rows": res["rows"],
                           **({"error": errors} if errors else {})}
    if name == "code":
        out["pass@1"] = {r["model"]: r["acc"] for r in res["rows"] if r["task"] == "humaneval"}
        return out
    means: dict[str, dict[str, dict[str, float]]] = {}  # model -> protocol -> context length (JSON key) -> mean
    for m in res["meta"]["models"]:
        for proto in ("generate", "loglik"):
            acc: dict[int, list[float]] = {}
            for r in res["rows"]:
                if r["model"] == m and r["protocol"] == proto:
                    for b in r.get("by_length", []):
                        acc.setdefault(b["length"], []).append(b["acc"])
            if acc:
                means.setdefault(m, {})[proto] = {str(n): sum(v) / len(v) for n, v in sorted(acc.items())}
    out["mean_by_length"] = means
    return out


def _task_specs(tasks: str, names: str) -> str:
    """The entries of the ``tasks`` list (built-in names or task files) whose task name is in ``names``."""
    from gendistill.eval.tasks import parse_tasks

    specs = [t for t in tasks.split(",") if t.strip()]
    wanted = {n.strip() for n in names.split(",") if n.strip()}
    picked = [spec for spec in specs if {t.name for t in parse_tasks(spec)} & wanted]
    if not picked:
        raise SystemExit(f"e2e: --snapshot-tasks {names}: none of them is among --tasks")
    return ",".join(picked)


def _profile_summary(rec: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A profiled step's summary as the trainer logged it, its total (and so each op's share) as its table states
    (:func:`gendistill.distill.profiling.table_device_total_ms`: runs before the phases were added logged a total
    that counted each kernel twice)."""
    from gendistill.distill.profiling import table_device_total_ms

    prof = {"step": rec["step"], **rec["profile"]}
    table = folder / str(prof.get("table", ""))
    total = table_device_total_ms(table.read_text(encoding="utf-8")) if table.is_file() else None
    if total:
        prof["total_ms"] = total
        prof["top"] = [{**op, "share": op["ms"] / total} for op in prof.get("top", [])]
    return prof


def _stage_metrics(path: Path) -> dict[str, Any]:
    """Per stage: steps, tokens, first/last training loss, held-out losses, median tokens/s, and its wall time:
    ``seconds`` from the stage's first record to its last, ``first_step_seconds`` from the held-out loss before
    training to the first optimizer step (compilation and autotuning on a fresh machine), when both are there, and
    ``first_step_process_seconds``: how long the process had run at the stage's first step (the trainer's record of
    it). A resumed run appends to the same file, so its ``seconds`` include the time between the two processes (and
    the first of its processes gives the first step's age)."""
    per: dict[str, Any] = {}
    if not path.exists():
        return per
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        st = per.setdefault(rec["stage"], {"eval": [], "loss": [], "tokens_per_s": [], "times": []})
        st["times"].append(rec["time"])
        if "loss" in rec and "first_step_at" not in st:
            st["first_step_at"] = rec["time"]
        if "process_seconds" in rec and "first_step_process_seconds" not in st:
            st["first_step_process_seconds"] = rec["process_seconds"]
        if "eval_loss" in rec:
            st["eval"].append([rec["step"], rec["eval_loss"]])
        if "eval_kl" in rec:  # the trainer's held-out fidelity (logit stages): [step, KL, top-1]
            st.setdefault("eval_fidelity", []).append([rec["step"], rec["eval_kl"], rec["eval_top1"]])
            if "eval_tokens" in rec:  # how many held-out tokens those figures average over
                st["eval_tokens"] = rec["eval_tokens"]
        if "profile" in rec:  # run.profile_step: the profiled step's largest ops
            st["profile"] = _profile_summary(rec, path.parent / "profile")
        if "loss" in rec:
            st["loss"].append(rec["loss"])
            st["tokens_per_s"].append(rec.get("tokens_per_s", 0.0))
            st["steps"], st["tokens"] = rec["step"], rec["tokens"]
    for st in per.values():
        times, first_step_at = st.pop("times"), st.pop("first_step_at", None)
        st["seconds"] = round(times[-1] - times[0], 1)
        if first_step_at is not None and first_step_at > times[0]:  # a record came before the first step
            st["first_step_seconds"] = round(first_step_at - times[0], 1)
        tps = sorted(st.pop("tokens_per_s"))
        losses = st.pop("loss")
        st["median_tokens_per_s"] = tps[len(tps) // 2] if tps else None
        st["first_loss"], st["last_loss"] = (losses[0], losses[-1]) if losses else (None, None)
    return per


def _heldout_fidelity(run_dir: Path, teacher, students: dict[str, Path], device) -> dict[str, Any]:
    """Teacher-forced top-1 agreement and KL of each student on the held-out rows the trainer scored in stage 3a and
    in the last stage (``run/heldout/<stage>.safetensors``), by the function the trainer's held-out evaluation calls
    (gendistill.eval.heldout.heldout_fidelity), the student loaded as users load it."""
    import gc

    import torch

    from gendistill.distill.heldout import heldout_file
    from gendistill.eval.heldout import heldout_fidelity, load_heldout_rows
    from gendistill.models.loading import load_model

    rows = {stage: load_heldout_rows(heldout_file(run_dir, stage))[0] for stage in ("stage3a", "stage3b")
            if heldout_file(run_dir, stage).is_file()}
    res: dict[str, Any] = {}
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    for name, path in students.items():
        if not (path / "config.json").exists():
            continue
        model, _ = load_model(str(path), dtype=dtype, device=device)
        res[name] = {stage: heldout_fidelity(teacher, model.eval(), r) for stage, r in rows.items()}
        del model
        gc.collect()
    return res


def _eval_parts(eval_dir: Path) -> list[Path]:
    """The evaluation folders of teacher + undistilled (first) and of each distilled student."""
    return [eval_dir / "base", *sorted(d for d in eval_dir.glob("distilled_*") if (d / "results.json").exists())]


def _examples(folder: Path, protocol: str = "generate") -> dict[tuple[str, str], dict[str, Any]]:
    """``{(model, task): {example id: record}}`` of the records under ``folder/examples`` of one protocol (generation:
    the greedy ones)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for f in sorted((folder / "examples").glob(f"*__{protocol}.jsonl")):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            if r.get("seed") is None:
                out.setdefault((r["model"], r["task"]), {})[r["id"]] = r
    return out


def _evaluation_summary(eval_dir: Path) -> dict[str, Any]:
    """Per task and model: accuracy under both protocols; per student: retention (student / teacher) under each
    protocol and the protocol gap, both as ``gendistill eval``'s comparisons compute them
    (:func:`gendistill.eval.report.comparisons`), and answer agreement with the teacher (the student's extracted answer
    equals the teacher's) on the same questions."""
    from gendistill.eval.fidelity import answer_agreement
    from gendistill.eval.report import comparisons, retention
    from gendistill.eval.runner import loglik_choice_key

    parts = [json.loads((d / "results.json").read_text()) for d in _eval_parts(eval_dir)]
    teacher = parts[0]["meta"]["teacher"]
    rows = [r for part in parts for r in part["rows"]]
    ex = {k: v for d in _eval_parts(eval_dir) for k, v in _examples(d).items()}
    ll = {k: v for d in _eval_parts(eval_dir) for k, v in _examples(d, "loglik").items()}
    table: dict[str, dict[str, dict[str, float]]] = {}
    for r in rows:
        table.setdefault(r["task"], {}).setdefault(r["model"], {})[r["protocol"]] = r["acc"]
        if r["protocol"] == "generate" and "contains_rate" in r:
            table[r["task"]][r["model"]]["generate_alias_anywhere"] = r["contains_rate"]
    models = [teacher] + [m for m in dict.fromkeys(r["model"] for r in rows) if m != teacher]
    comps = {(c["student"], c["task"]): c for c in comparisons(rows, teacher)}
    students: dict[str, Any] = {}
    for m in models[1:]:
        per_task = {}
        for task, accs in table.items():
            t, s = accs.get(teacher, {}), accs.get(m, {})
            c = comps.get((m, task), {})
            entry: dict[str, Any] = {}
            for proto in ("loglik", "generate"):
                if f"retention_{proto}" in c:
                    entry[f"retention_{proto}"] = c[f"retention_{proto}"]["raw"]
            if t.get("generate_alias_anywhere") and "generate_alias_anywhere" in s:
                entry["retention_generate_alias"] = retention(t["generate_alias_anywhere"],
                                                              s["generate_alias_anywhere"], 0.0)["raw"]
            if "protocol_gap" in c:
                entry["protocol_gap"] = c["protocol_gap"]
            te, se = ex.get((teacher, task), {}), ex.get((m, task), {})
            ids = [i for i in te if i in se]
            if ids:
                entry.update(answer_agreement([te[i]["pred"] for i in ids], [se[i]["pred"] for i in ids]))
                entry["text_agreement"] = sum(te[i]["generation"] == se[i]["generation"] for i in ids) / len(ids)
                entry["n"] = len(ids)
            # the same agreement between the two models' log-likelihood choices (no reply to extract: every
            # question is answered, so a teacher above chance has a choice worth copying)
            te, se = ll.get((teacher, task), {}), ll.get((m, task), {})
            ids = [i for i in te if i in se and "pred" in te[i]]  # multiple choice (a free-text answer has none)
            if ids:
                key = loglik_choice_key(task)  # the choice the task's reported accuracy counts
                agree = answer_agreement([te[i][key] for i in ids], [se[i][key] for i in ids])
                entry.update({f"loglik_{k}": v for k, v in agree.items() if k != "answer_agreement_valid"})
            per_task[task] = entry
        students[m] = per_task
    return {"teacher": teacher, "models": models, "accuracy": table, "students": students,
            "collapse": {r["model"] + " / " + r["task"]: r["positions"] for r in rows
                         if r["protocol"] == "generate" and "positions" in r}}


def _budget_curve(eval_dir: Path, fid: dict[str, Any], fractions: list[float], metrics: dict[str, Any]) -> list[dict]:
    """Held-out KL (stage-3a text) and generation answer agreement with the teacher (the snapshot tasks) at each
    stage-3a fraction (1.0 = the 3a student). Model labels are the student folder names."""
    from gendistill.distill.stage_files import snapshot_name
    from gendistill.eval.fidelity import answer_agreement

    snap_dir = eval_dir / "snapshots"
    ex = {k: v for d in _eval_parts(eval_dir) for k, v in _examples(d).items()}
    if (snap_dir / "examples").exists():
        ex.update(_examples(snap_dir))
    teacher = json.loads((eval_dir / "base" / "results.json").read_text())["meta"]["teacher"]
    snap_tasks = {t for (m, t) in _examples(snap_dir)} if (snap_dir / "examples").exists() else set()
    curve = []
    tokens_3a = metrics.get("stage3a", {}).get("tokens")
    for f in [*fractions, 1.0]:
        key = snapshot_name("stage3a", f) if f < 1 else "stage3a"
        t_preds, s_preds = [], []
        for (m, task), recs in ex.items():
            if m != key or task not in snap_tasks:
                continue
            te = ex.get((teacher, task), {})
            ids = [i for i in recs if i in te]
            t_preds += [te[i]["pred"] for i in ids]
            s_preds += [recs[i]["pred"] for i in ids]
        point = {"fraction": f, "tokens": round(f * tokens_3a) if tokens_3a else None, "student": key,
                 "answer_agreement": answer_agreement(t_preds, s_preds).get("answer_agreement"),
                 "n_answers": len(s_preds), "answer_tasks": sorted(snap_tasks)}
        for stage, v in fid.get(key, {}).items():
            point[f"heldout_kl_{stage}"] = v.get("kl_teacher_student")
            point[f"heldout_top1_{stage}"] = v.get("top1_agreement")
        curve.append(point)
    return curve


def _mean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def _targets(summary: dict[str, Any], final: str) -> dict[str, Any]:
    """Each of :data:`TARGETS` for the final student: its value and whether it is met (a missing value is not)."""
    fid = summary.get("heldout_fidelity", {}).get(final, {})
    text, chat = fid.get("stage3a") or {}, fid.get("stage3b") or {}
    ev = summary.get("evaluation", {}).get("students", {}).get(final, {})
    mc = {t: v.get("answer_agreement") for t, v in ev.items() if t not in MC_FREE_TEXT}
    values = {
        "text_top1": text.get("top1_agreement"), "text_kl": text.get("kl_teacher_student"),
        "chat_top1": chat.get("top1_agreement"), "chat_kl": chat.get("kl_teacher_student"),
        "answer_agreement": min(mc.values()) if mc and None not in mc.values() else None,
        # GSM8K by exact match of the final number, TriviaQA by alias match (an accepted alias anywhere in the reply)
        "generation_retention": _mean([v.get("retention_generate_alias" if t == "triviaqa" else "retention_generate")
                                       for t, v in ev.items()]),
        "loglik_retention": _mean([v.get("retention_loglik") for v in ev.values()]),
    }
    lower_is_better = {"text_kl", "chat_kl"}
    # beside each task's agreement, what the two models' answer shares give by chance (read the first against it)
    out: dict[str, Any] = {"mc_answer_agreement": mc,
                           "mc_answer_agreement_chance": {t: ev[t].get("answer_agreement_chance") for t in mc}}
    for k, v in values.items():
        out[k] = v
        out[f"{k}_met"] = v is not None and (v <= TARGETS[k] if k in lower_is_better else v >= TARGETS[k])
    out["all_met"] = all(out[f"{k}_met"] for k in values)
    return out


# ------------------------------------------------------------------------------------------------------- rendering
def _f(x: Any, pct: bool = False) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.1f}" if pct else f"{x:.3f}"


def phase_table(phases: dict[str, dict[str, float]], wall: float | None) -> list[str]:
    """The phase table's lines: each phase's own start, end and duration (seconds from the job's start), then the
    job's wall time."""
    lines = ["Each phase from when its own work started to when it ended (seconds from the job's start). Phases "
             "overlap: eval_base runs beside distill; fidelity, eval_stage3a/3b and eval_snapshots run together "
             "(eval_distilled spans the last three).", "",
             "| phase | start | end | seconds |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {v['start_s']} | {v['end_s']} | {v['seconds']} |" for k, v in phases.items()]
    if wall is not None:
        lines.append(f"| whole job (wall) | 0 | {wall} | {wall} |")
    return lines


def render_markdown(s: dict[str, Any]) -> str:
    from gendistill.eval.report import signed_points

    ev = s["evaluation"]
    teacher = ev["teacher"]
    models = ev["models"]
    lines = [f"# GenDistill end to end — {s['device_name']}", "",
             f"Recipe `{s['recipe']}`, overrides {s['overrides'] or 'none'}; {s['limit']} examples per task"
             f"{' (smoke)' if s['smoke'] else ''}."
             + (f" Attention layers: `{s['student']['attention_layers']}`." if "student" in s else ""),
             "", "## Budgets and phase times", "",
             "| stage | steps | tokens | seq | batch |", "|---|---:|---:|---:|---:|"]
    for b in s["budgets"]:
        lines.append(f"| {b['stage']} | {b['steps']} | {b['tokens']:,} | {b['seq_len']} | {b['batch_size']} |")
    lines += ["", *phase_table(s["phases"], s.get("wall_seconds"))]
    lines += ["", "## Accuracy (%) — log-likelihood / generation", "",
              "| task | " + " | ".join(models) + " |", "|---|" + "---:|" * len(models)]
    for task, accs in ev["accuracy"].items():
        cells = [f"{_f(accs.get(m, {}).get('loglik'), True)} / {_f(accs.get(m, {}).get('generate'), True)}"
                 for m in models]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    lines += ["", f"## Against the teacher ({teacher})", "",
              "Retention = student / teacher under the same protocol; protocol gap (points) = retention loglik − "
              "retention generate: positive = generation reveals a loss that log-likelihood hides; – where the "
              "teacher is at or below chance under a protocol. Answer agreement (%): the student's extracted answer "
              "is the teacher's; by chance: what the two models' answer shares alone give; kappa = (agreement − "
              "chance) / (1 − chance), 0 when the student's answers say nothing of the teacher's beyond those "
              "shares. Choice agreement: the same between the two models' log-likelihood choices.",
              "",
              "| student | task | retention loglik | retention generate | protocol gap | answer agreement | by chance "
              "| kappa | choice agreement (loglik) | by chance | kappa |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m, per in ev["students"].items():
        for task, e in per.items():
            lines.append(f"| {m} | {task} | {_f(e.get('retention_loglik'))} | {_f(e.get('retention_generate'))} | "
                         f"{signed_points(e.get('protocol_gap'))} | {_f(e.get('answer_agreement'), True)} | "
                         f"{_f(e.get('answer_agreement_chance'), True)} | {_f(e.get('answer_kappa'))} | "
                         f"{_f(e.get('loglik_answer_agreement'), True)} | "
                         f"{_f(e.get('loglik_answer_agreement_chance'), True)} | {_f(e.get('loglik_answer_kappa'))} |")
    lines += ["", "## Teacher-forced fidelity on the pipeline's held-out sequences", "",
              "| student | data | top-1 agreement (%) | KL (nats/token) | tokens |", "|---|---|---:|---:|---:|"]
    for m, per in s["heldout_fidelity"].items():
        for stage, v in per.items():
            lines.append(f"| {m} | {stage} | {_f(v.get('top1_agreement'), True)} | {_f(v.get('kl_teacher_student'))} "
                         f"| {v.get('n_tokens')} |")
    answer_tasks = next((p.get("answer_tasks") for p in s["budget_curve"] if p.get("answer_tasks")), None)
    lines += ["", "## Budget curve (stage 3a)", "",
              "Answer agreement under generation on the snapshot tasks"
              + (f" ({', '.join(answer_tasks)})" if answer_tasks else "") + ", before stage 3b's chat training.", "",
              "| fraction | tokens | held-out KL (3a) | answer agreement (%) |", "|---:|---:|---:|---:|"]
    for p in s["budget_curve"]:
        lines.append(f"| {p['fraction']} | {p['tokens'] or '–'} | {_f(p.get('heldout_kl_stage3a'))} | "
                     f"{_f(p.get('answer_agreement'), True)} |")
    lines += _suite_markdown(s)
    t = s["targets_met"]
    lines += ["", "## Targets (issue 25)", ""]
    for k, what, pct in (("text_top1", "held-out text top-1 agreement ≥ 90 %", True),
                         ("text_kl", "held-out text KL ≤ 0.10", False),
                         ("chat_top1", "held-out chat top-1 agreement ≥ 85 %", True),
                         ("chat_kl", "held-out chat KL ≤ 0.30", False),
                         ("answer_agreement", "answer agreement ≥ 90 % on each multiple-choice task (lowest)", True),
                         ("generation_retention", "mean generation retention ≥ 0.95", False),
                         ("loglik_retention", "mean log-likelihood retention ≥ 0.95", False)):
        lines.append(f"- {what}: {_f(t.get(k), pct)} ({'met' if t.get(f'{k}_met') else 'not met'})")
    chance = t.get("mc_answer_agreement_chance") or {}
    if any(v is not None for v in chance.values()):
        lines.append("- per task, answer agreement (by chance): " + ", ".join(
            f"{task} {_f(a, True)} ({_f(chance.get(task), True)})" for task, a in t["mc_answer_agreement"].items()))
    lines.append("")
    return "\n".join(lines)


def _suite_markdown(s: dict[str, Any]) -> list[str]:
    """The long-context and code sections of the summary (issue 29), where those suites ran."""
    lines: list[str] = []
    for name, title in (("longctx", "Long context"), ("longctx_scaled", "Long context, rope-scaled")):
        suite = s.get(name)
        if suite is None:
            continue
        lines += ["", f"## {title} — mean accuracy (%) over the tasks, generation / log-likelihood greedy match", ""]
        lines += [f"- failed: {k}: {v}" for k, v in suite.get("error", {}).items()]
        if "mean_by_length" not in suite:
            continue
        means = suite["mean_by_length"]
        lengths = sorted({int(n) for per in means.values() for d in per.values() for n in d})
        lines += ["| model | " + " | ".join(f"{n:,}" for n in lengths) + " |", "|---|" + "---:|" * len(lengths)]
        for m, per in means.items():
            gen, ll = per.get("generate", {}), per.get("loglik", {})
            lines.append(f"| {m} | " + " | ".join(f"{_f(gen.get(str(n)), True)} / {_f(ll.get(str(n)), True)}"
                                                  for n in lengths) + " |")
    code = s.get("code")
    if code is not None:
        lines += ["", "## HumanEval (greedy pass@1, %)", ""]
        lines += [f"- failed: {k}: {v}" for k, v in code.get("error", {}).items()]
        lines += [f"- {m}: {_f(v, True)}" for m, v in code.get("pass@1", {}).items()]
    return lines


def _plot_budget(curve: list[dict], path: Path) -> None:
    if not curve:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax1 = plt.subplots(figsize=(5, 3.2))
    xs = [p["fraction"] for p in curve]
    ax1.plot(xs, [p.get("heldout_kl_stage3a") for p in curve], "o-", color="tab:blue", label="held-out KL (3a)")
    ax1.set_xlabel("fraction of the stage-3a budget")
    ax1.set_ylabel("KL(teacher ‖ student), nats/token", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(xs, [None if p.get("answer_agreement") is None else 100 * p["answer_agreement"] for p in curve], "s--",
             color="tab:red", label="answer agreement")
    ax2.set_ylabel("answer agreement with teacher (%)", color="tab:red")
    ax1.set_title("Budget curve (as the paper's Fig. 3)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
