"""Run a grid: train each cell's chain of stage nodes (skipping the ones already trained by this or another cell,
resuming a stopped one from its checkpoint), evaluate its student under both protocols with ``gendistill eval``
against the teacher, write the cell folder, and rebuild the report after every cell.

Cells run one after another in one process; rerunning the same command continues where it stopped and skips
every finished node, evaluation and cell.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gendistill.ablate import report as R
from gendistill.ablate.grid import Cell, Grid, stage_budget
from gendistill.ablate.heldout_curves import stage_curves
from gendistill.ablate.store import Node, cell_nodes, eval_dir, eval_done
from gendistill.convert.layer_spec import layer_file, read_layer_file
from gendistill.devices import resolve_device
from gendistill.distill import pipeline  # called as pipeline.run_recipe: the tests stand in a fake trainer there
from gendistill.distill.config import Recipe, dump_recipe, parse_recipe
from gendistill.distill.distributed import init_world
from gendistill.errors import ConfigError, DataError, GendistillError, LayerSpecError
from gendistill.eval import runner as eval_runner  # called as eval_runner.run_eval (the tests stand in a fake)
from gendistill.eval.config import EvalConfig, check_numbers
from gendistill.eval.ruler import parse_depths, parse_lengths
from gendistill.eval.tasks import parse_tasks
from gendistill.io import atomic_write_json, atomic_write_text, data_dir
from gendistill.layers.registry import mixer_training_refusal
from gendistill.models.loading import load_model
from gendistill.ownership import check_report_folder, claim_report_folder, marker_kind, write_marker
from gendistill.runlock import acquire

EVAL_FILES = ("results.json", "results.md", "results.png")


@dataclass
class CellPlan:
    cell: Cell
    nodes: list[Node]
    eval_dir: Path
    dir: Path

    @property
    def final(self) -> Node:
        return self.nodes[-1]


def plan_grid(grid: Grid) -> list[CellPlan]:
    root = grid.output_dir
    plans = []
    for c in grid.cells:
        nodes = cell_nodes(c, root)
        plans.append(CellPlan(cell=c, nodes=nodes, eval_dir=eval_dir(root, nodes[-1], c.recipe.teacher.spec,
                                                                     grid.config.eval),
                              dir=root / "cells" / c.name))
    return plans


def describe_plan(plans: list[CellPlan]) -> dict[str, Any]:
    """What a run would do, without loading or writing anything: per cell its nodes (status, how many cells share
    each) and its evaluation; identical cells (same final node and evaluation) are marked. ``tokens_distinct``: the
    training tokens of the distinct stage runs (each shared run counted once); ``tokens_to_train``: of those not
    done (a partial run counted whole) that a cell still to evaluate needs: an evaluated cell needs no student, so
    results carried from another machine without their students train nothing again."""
    users: dict[str, list[str]] = {}
    needed = {n.id for p in plans if not eval_done(p.eval_dir) for n in p.nodes}
    for p in plans:
        for n in p.nodes:
            users.setdefault(n.id, []).append(p.cell.name)
    first_with_eval: dict[Path, str] = {}
    cells, nodes_seen, todo_nodes, done_nodes = [], set(), 0, 0
    evals_todo = tokens_distinct = tokens_todo = 0
    for p in plans:
        entry_nodes = []
        budget = stage_budget(p.cell.recipe)
        for n in p.nodes:
            st = n.status()
            if st != "done" and n.id not in needed:
                st = "not needed"  # only evaluated cells use it: nothing to train or resume
            if n.id not in nodes_seen:
                nodes_seen.add(n.id)
                train = st not in ("done", "not needed")  # todo, partial or retrain
                done_nodes += st == "done"
                todo_nodes += train
                tokens_distinct += budget[n.stage]
                tokens_todo += budget[n.stage] if train else 0
            entry_nodes.append({"stage": n.stage, "id": n.id, "status": st, "shared_by": len(users[n.id]),
                                "dir": str(n.dir)})
        same = first_with_eval.get(p.eval_dir)
        ev = "done" if eval_done(p.eval_dir) else "todo"
        if same is None:
            first_with_eval[p.eval_dir] = p.cell.name
            evals_todo += ev == "todo"
        cells.append({"cell": p.cell.name, "assignment": p.cell.assignment, "nodes": entry_nodes, "eval": ev,
                      "eval_dir": str(p.eval_dir), "same_as": same, "tokens": budget,
                      "skipped": ev == "done"})
    return {"cells": cells, "distinct_nodes": len(nodes_seen), "nodes_done": done_nodes, "nodes_to_train": todo_nodes,
            "nodes_not_needed": len(nodes_seen) - done_nodes - todo_nodes,
            "distinct_evals": len(first_with_eval), "evals_to_run": evals_todo,
            "tokens_distinct": tokens_distinct, "tokens_to_train": tokens_todo}


# ------------------------------------------------------------------------------------------------------ progress
class CellProgress:
    """One bar across the grid's cells (rich, on a terminal) or one line per step of work (otherwise). While the bar
    is shown, the stages print lines (rich keeps them above the bar)."""

    def __init__(self, total: int, mode: str):
        self.mode = "none" if mode == "none" else ("bar" if mode == "bar" or (mode == "auto" and sys.stderr.isatty())
                                                   else "lines")
        self.total, self.bar, self.done = total, None, 0
        if self.mode == "bar":
            self.bar = Progress(TextColumn("[bold]cells"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                TextColumn("{task.description}"), console=Console(stderr=True))
            self.task = self.bar.add_task("", total=total)
            self.bar.start()

    def status(self, text: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=text)
        elif self.mode == "lines":
            print(f"[ablate {self.done + 1}/{self.total}] {text}", file=sys.stderr, flush=True)

    def advance(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(self.task, advance=1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# ------------------------------------------------------------------------------------------------------ training
def node_recipe(cell_recipe: Recipe, node: Node, parent: Node | None, progress: str) -> Recipe:
    """The one-stage recipe of ``node``: that stage with its effective data, the student built from the teacher (first
    node) or loaded from the parent node's student, the run folder the node's folder."""
    d = cell_recipe.model_dump(mode="json")
    st = d["stages"][node.index]
    st["data"] = cell_recipe.stage_data(cell_recipe.stages[node.index]).model_dump(mode="json")
    d["stages"], d["data"] = [st], None
    if parent is not None:
        d["student"] = {"path": str(parent.student_dir)}
    d["run"]["output_dir"] = str(node.dir)
    d["run"]["progress"] = progress
    return parse_recipe(d, f"node {node.dir}")


class _Teachers:
    """Teachers for training, loaded once per (spec, dtype) and shared by every node."""

    def __init__(self, given: tuple[Any, Any] | None):
        self.given, self.cache = given, {}

    def get(self, recipe: Recipe, world) -> tuple[Any, Any]:
        if self.given is not None:
            return self.given
        dtype = pipeline.teacher_dtype(recipe, world)
        key = (recipe.teacher.spec, str(dtype))
        if key not in self.cache:
            self.cache[key] = load_model(recipe.teacher.spec, dtype=dtype, device=world.device)
        return self.cache[key]


def train_node(cell: Cell, node: Node, parent: Node | None, teachers: _Teachers, progress: str,
               stop_after: int | None) -> bool:
    """Train (or resume) one node; True when its student is saved."""
    r = node_recipe(cell.recipe, node, parent, progress)
    world = init_world(r.run.device)
    teacher, tok = teachers.get(r, world)
    fresh = node.status() == "retrain"  # nothing to resume: a cleared folder, no missing student, no old records
    node.dir.mkdir(parents=True, exist_ok=True)
    if marker_kind(node.dir) is None:  # the node folder is the stage's run folder: gendistill's own, marked as such
        write_marker(node.dir, "run")
    pipeline.run_recipe(r, resume=not fresh, overwrite=fresh, teacher=teacher, tokenizer=tok, stop_after=stop_after,
                        world=world)
    atomic_write_json(node.dir / "node.json", {"id": node.id, "stage": node.stage, "parent": node.parent,
                                               "first_cell": cell.name, "student": str(node.student_dir)})
    _free_memory()
    return node.status() == "done"


def _free_memory() -> None:
    """Give the finished node's (or evaluation's) GPU memory back before the next one; on CPU reference counting has
    already freed the models."""
    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------------ evaluation
def evaluate(plan: CellPlan, grid: Grid) -> None:
    """Teacher and the cell's student under the grid's evaluation settings, through ``gendistill eval``."""
    ev = grid.config.eval
    # auto follows the cell's training device; the eval runner resolves it (gendistill.devices)
    device = "cpu" if ev.device == "auto" and plan.cell.recipe.run.device == "cpu" else ev.device
    cfg = EvalConfig(
        models=[plan.cell.recipe.teacher.spec, str(plan.final.student_dir)], tasks=ev.tasks,
        protocols=list(ev.protocols), limit=ev.limit, seed=ev.seed, out=str(plan.eval_dir), batch_size=ev.batch_size,
        token_budget=ev.token_budget, loglik_chat_template=ev.loglik_chat_template, samples=ev.samples,
        temperature=ev.temperature, top_p=ev.top_p, top_k=ev.top_k, max_new_tokens=ev.max_new_tokens,
        data_source=ev.data_source, dtype=ev.dtype, device=device, fidelity_chat=ev.fidelity_chat,
        fidelity_data=ev.fidelity_data, show_progress=False,
        context_lengths=list(parse_lengths(ev.context_lengths)) if ev.context_lengths else None,
        depths=list(parse_depths(ev.depths)) if ev.depths else None,
        command=f"gendistill ablate {grid.source}  # cell {plan.cell.name}",
    )
    eval_runner.run_eval(cfg)
    _free_memory()


def check_eval(grid: Grid) -> None:
    """The grid's evaluation, checked before anything trains (and by ``--dry-run``): the task names (built-in,
    groups, task files), the local data file of every task, the fidelity chat data, the device. A grid whose
    evaluation cannot run would otherwise fail only after the first cell's stages had all trained."""
    ev = grid.config.eval
    where = f"{grid.source}: eval"
    try:
        check_numbers(EvalConfig(
            models=[], batch_size=ev.batch_size, token_budget=ev.token_budget, samples=ev.samples,
            temperature=ev.temperature, top_p=ev.top_p, top_k=ev.top_k, max_new_tokens=ev.max_new_tokens,
            fidelity_chat=ev.fidelity_chat, fidelity_data=ev.fidelity_data))
    except GendistillError as e:  # "--batch-size: ..." is the grid's eval.batch_size
        flag, _, rest = str(e).partition(": ")
        raise ConfigError(f"{where}.{flag.removeprefix('--').replace('-', '_')}: {rest}") from None
    try:
        tasks = parse_tasks(ev.tasks)
    except GendistillError as e:
        raise ConfigError(f"{where}.tasks: {e}") from None
    for key, parse in (("context_lengths", parse_lengths), ("depths", parse_depths)):
        if getattr(ev, key) is not None:
            try:
                parse(getattr(ev, key))
            except GendistillError as e:
                raise ConfigError(f"{where}.{key}: {str(e).split(': ', 1)[-1]}") from None
    try:
        if ev.data_source == "local":
            for t in tasks:
                if not t.generated and t.data_file and not t.resolve(t.data_file).is_file():
                    raise DataError(f"task {t.name}: data file {t.resolve(t.data_file)} not found")
        if ev.fidelity_chat > 0:
            chat = Path(ev.fidelity_data) if ev.fidelity_data else (data_dir() or Path("?")) / "sft_mix.jsonl.gz"
            if not chat.is_file():
                raise DataError(f"fidelity_data: {chat} not found")
        resolve_device(ev.device)
    except GendistillError as e:
        raise ConfigError(f"{where}: {e}") from None


# ------------------------------------------------------------------------------------------------------ cell folder
def read_metrics(nodes: list[Node]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every node's metrics.jsonl records (each carries its stage) and a per-stage summary: steps, tokens, first and
    last training loss, held-out loss before and after, median tokens/s, and the last held-out evaluation's fidelity
    to the teacher where the trainer recorded it (logit stages: ``eval_kl`` = mean KL(teacher‖student) in nats per
    loss-mask token, ``eval_top1`` = top-1 agreement in [0, 1], ``eval_tokens``; None in runs that predate them)."""
    records: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for n in nodes:
        recs = metrics_records(n.dir / "metrics.jsonl")
        records += recs
        summary[n.stage] = {"node": n.id, **stage_summary(recs)}
    return records, summary


def metrics_records(path: Path) -> list[dict[str, Any]]:
    """A stage run's ``metrics.jsonl`` rows ([] without the file); a blank line or one cut off by a kill is skipped."""
    recs = []
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    recs.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    return recs


def stage_summary(recs: list[dict[str, Any]]) -> dict[str, Any]:
    """One stage run's summary from its records (:func:`read_metrics` says what each field is)."""
    train = [r for r in recs if "loss" in r]
    evals = [r for r in recs if "eval_loss" in r]
    tps = sorted(r["tokens_per_s"] for r in train if r.get("tokens_per_s"))
    return {
        "steps": max((r.get("step", 0) for r in train), default=0),
        "tokens": max((r.get("tokens", 0) for r in train), default=0),
        "loss_first": train[0]["loss"] if train else None, "loss_last": train[-1]["loss"] if train else None,
        "eval_loss_first": evals[0]["eval_loss"] if evals else None,
        "eval_loss_last": evals[-1]["eval_loss"] if evals else None,
        "tokens_per_s": tps[len(tps) // 2] if tps else None,
        **{f"{k}_last": evals[-1].get(k) if evals else None for k in ("eval_kl", "eval_top1", "eval_tokens")},
        # where the last held-out evaluation was taken: a stage cut short (a timeout) was last evaluated early
        "eval_step_last": evals[-1].get("step") if evals else None,
        "eval_at_tokens_last": evals[-1].get("tokens") if evals else None,
    }


def _copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _link_student(cell_dir: Path, target: Path) -> None:
    link = cell_dir / "student"
    if link.exists() and not link.is_symlink():
        return  # not ours: never replaced
    try:
        if link.is_symlink():
            link.unlink()
        link.symlink_to(os.path.relpath(target, cell_dir), target_is_directory=True)
    except OSError:  # file systems without symlinks: cell.json names the folder anyway
        pass


def write_cell(plan: CellPlan, grid: Grid) -> dict[str, Any]:
    """The cell's folder: its full recipe (runnable on its own with ``gendistill distill``), cell.json, metrics and a
    copy of its evaluation. Returns cell.json's content."""
    d = plan.dir
    d.mkdir(parents=True, exist_ok=True)
    recipe = plan.cell.recipe.model_copy(deep=True)
    recipe.run.output_dir = str(d / "distill")
    atomic_write_text(d / "recipe.yaml", f"# cell {plan.cell.name} of {grid.source}: the base recipe with "
                                         f"{plan.cell.overrides}\n" + dump_recipe(recipe))
    records, summary = read_metrics(plan.nodes)
    atomic_write_text(d / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    atomic_write_json(d / "metrics.json", summary)
    done = eval_done(plan.eval_dir)
    if done:
        (d / "eval").mkdir(exist_ok=True)
        for f in EVAL_FILES:
            if (plan.eval_dir / f).is_file():
                _copy_atomic(plan.eval_dir / f, d / "eval" / f)
    if plan.final.status() == "done":
        _link_student(d, plan.final.student_dir)
    info = {"cell": plan.cell.name, "assignment": plan.cell.assignment, "overrides": plan.cell.overrides,
            "tokens": stage_budget(plan.cell.recipe),
            "nodes": [{"stage": n.stage, "id": n.id, "dir": str(n.dir), "status": n.status()} for n in plan.nodes],
            "student": str(plan.final.student_dir), "eval_dir": str(plan.eval_dir),
            "complete": done, "student_kept": plan.final.status() == "done"}
    atomic_write_json(d / "cell.json", info)
    return info


def load_cell_results(plans: list[CellPlan]) -> list[dict[str, Any]]:
    """What the report needs from every cell: its assignment, per-stage metrics and held-out curves
    (:func:`gendistill.ablate.heldout_curves.stage_curves`), token budget, per-stage loss (the recipe's ``loss``: the
    report names each held-out loss by its kind) and evaluation (None until evaluated)."""
    out = []
    for p in plans:
        results = None
        if eval_done(p.eval_dir):
            results = json.loads((p.eval_dir / "results.json").read_text())
        records, summary = read_metrics(p.nodes)
        out.append({"cell": p.cell.name, "assignment": p.cell.assignment, "metrics": summary,
                    "curves": stage_curves(records),
                    "tokens": stage_budget(p.cell.recipe), "nodes": [n.id for n in p.nodes], "eval": results,
                    "losses": {st.name: st.loss.model_dump(mode="json") if st.loss else None
                               for st in p.cell.recipe.stages}})
    return out


def write_grid_report(grid: Grid, plans: list[CellPlan]) -> dict[str, str]:
    rep = R.build_report(grid_meta(grid), load_cell_results(plans))
    return R.write_report(rep, grid.output_dir)


def grid_meta(grid: Grid) -> dict[str, Any]:
    return {"grid": grid.source, "mode": grid.config.mode, "teacher": grid.base.teacher.spec,
            "axes": {a: list(v) for a, v in grid.variants.items()}, "eval": grid.config.eval.model_dump(mode="json"),
            "base_tokens": stage_budget(grid.base), "output_dir": str(grid.output_dir),
            "created": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


# ------------------------------------------------------------------------------------------------------ the grid
def run_grid(grid: Grid, *, teacher: Any = None, tokenizer: Any = None, stop_after: int | None = None,
             progress: str | None = None) -> dict[str, Any]:
    """Run every cell (skipping finished work) and write the report. ``teacher``/``tokenizer`` may be passed in
    (tests, notebooks); ``stop_after`` stops the first node that trains after that many optimizer steps (to test
    resuming). Returns ``{"cells": [cell.json ...], "report": paths, "stopped": bool}``. The evaluation is checked
    first (:func:`check_eval`), and the grid folder is locked while the grid runs (:func:`lock_grid`)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("gendistill ablate runs its cells one after another in one process; launch it without "
                          "torchrun (each cell can still be run on its own: gendistill distill cells/<cell>/recipe.yaml)")
    check_eval(grid)  # an evaluation that cannot run fails now, not after the first cell has trained
    check_layer_files(grid)
    check_mixers_train_here(grid)
    with lock_grid(grid):
        return _run_cells(grid, teacher=teacher, tokenizer=tokenizer, stop_after=stop_after, progress=progress)


def check_layer_files(grid: Grid) -> None:
    """Every cell whose student keeps the attention layers of a JSON file (a ``select-layers`` result): the file
    exists and lists layers, checked before anything trains (``--dry-run`` plans without it: the file may be made on
    the GPU first). The node ids hash the layers it lists (:mod:`gendistill.ablate.store`)."""
    for c in grid.cells:
        spec = c.recipe.student.attention_layers
        path = layer_file(spec) if spec is not None else None
        if path is None:
            continue
        if not path.is_file():
            raise ConfigError(f"{grid.source}: cell {c.name}: student.attention_layers: layer file {path} "
                              f"does not exist (relative paths are read from {Path.cwd()})")
        try:
            read_layer_file(path)
        except LayerSpecError as e:
            raise ConfigError(f"{grid.source}: cell {c.name}: student.attention_layers: {e}") from None


def check_mixers_train_here(grid: Grid) -> None:
    """Every cell's mixer can be trained on the device its recipe names, checked before anything trains
    (:func:`gendistill.layers.registry.mixer_training_refusal`: Gated DeltaNet and Mamba2 on a Hopper GPU under Triton
    3.6 are not): a mixer axis stops at once, naming the cell, instead of after the cells before it have trained. A
    cell that loads its student (``student.path``) is checked by the trainer when it loads it; an evaluated cell
    trains nothing and is not checked."""
    for p in plan_grid(grid):
        c = p.cell
        if c.recipe.student.path is not None or eval_done(p.eval_dir):
            continue
        mixer = c.recipe.student.kda_options.get("linear_attention_type", "kda")
        line = mixer_training_refusal([mixer], resolve_device(c.recipe.run.device, "run.device"))
        if line is not None:
            raise ConfigError(f"{grid.source}: cell {c.name}: {line}")


#: what a grid writes at the top of its folder (:func:`gendistill.ablate.report.write_report`)
REPORT_FILES = ("report.json", "report.md", "report.png", "budget_curve.png", "curves.png")


@contextlib.contextmanager
def lock_grid(grid: Grid) -> Iterator[None]:
    """The grid folder's lock (:mod:`gendistill.runlock`), held while the grid runs or its report is rebuilt: a
    second ``gendistill ablate`` of the same grid stops with one line instead of training the same nodes and
    writing the same cells at the same time. The folder must be one the grid may write its report into
    (:func:`gendistill.ownership.check_report_folder`: not the working folder, home or a git repository, and no
    report file gendistill did not write); it is marked as gendistill's under the lock. A grid folder written before
    folders were marked (its stage runs are marked) counts as gendistill's."""
    what = f"{grid.source}: output_dir"
    check_report_folder(grid.output_dir, REPORT_FILES, what, earlier=_earlier_grid)
    with acquire(grid.output_dir, what):
        claim_report_folder(grid.output_dir, REPORT_FILES, what, earlier=_earlier_grid)
        yield


def _earlier_grid(root: Path) -> bool:
    """A grid folder written before grid folders were marked: its stage runs are marked."""
    return any(marker_kind(d) == "run" for d in root.glob("stages/*"))


def _run_cells(grid: Grid, *, teacher: Any, tokenizer: Any, stop_after: int | None,
               progress: str | None) -> dict[str, Any]:
    plans = plan_grid(grid)
    mode = progress or grid.base.run.progress
    bar = CellProgress(len(plans), mode)
    stage_progress = "none" if bar.mode == "none" else "lines"  # a stage's own bar would fight the cells' bar
    teachers = _Teachers((teacher, tokenizer) if teacher is not None else None)
    infos, stopped, paths = [], False, None
    try:
        for p in plans:
            if eval_done(p.eval_dir):  # evaluated: its results need no student (a lease's collected results keep
                infos.append(write_cell(p, grid))  # metrics and evaluations, not students)
                paths = None  # the report is written after the next trained cell, or at the end
                bar.advance()
                continue
            prev = None
            for n in p.nodes:
                st = n.status()
                if st != "done":
                    bar.status(f"{p.cell.name}: {'resuming' if st == 'partial' else 'training'} {n.stage} ({n.id})")
                    if not train_node(p.cell, n, prev, teachers, stage_progress, stop_after):
                        stopped = True
                        break
                prev = n
            if stopped:
                infos.append(write_cell(p, grid))
                break
            if not eval_done(p.eval_dir):
                bar.status(f"{p.cell.name}: evaluating")
                evaluate(p, grid)
            infos.append(write_cell(p, grid))
            paths = write_grid_report(grid, plans)  # after every cell: a stopped grid still has a report
            bar.advance()
    finally:
        bar.close()
    if paths is None or stopped:
        paths = write_grid_report(grid, plans)
    return {"cells": infos, "report": paths, "stopped": stopped}
