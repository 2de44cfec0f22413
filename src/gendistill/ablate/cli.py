"""``gendistill ablate GRID.yaml``: run an ablation grid of distillation recipes and report how each axis' variants
rank under log-likelihood and under generation (docs/ablate.md)."""

from __future__ import annotations

from typing import Any, Optional

import typer
from rich.table import Table

from gendistill.ablate.grid import load_grid
from gendistill.ablate.report import human_tokens
from gendistill.ablate.runner import check_eval, describe_plan, lock_grid, plan_grid, run_grid, write_grid_report
from gendistill.cli_utils import console


def _print_plan(plan: dict[str, Any]) -> None:
    stages = list(dict.fromkeys(n["stage"] for c in plan["cells"] for n in c["nodes"]))
    t = Table(title="ablation grid: stage runs as id · status (×N: shared by N cells)")
    for col in ("#", "cell", *stages, "eval", "tokens"):
        t.add_column(col, overflow="fold")
    for i, c in enumerate(plan["cells"], 1):
        by = {n["stage"]: n for n in c["nodes"]}
        cols = [f"{by[s]['id'][:8]} · {by[s]['status']}" + (f" ×{by[s]['shared_by']}" if by[s]["shared_by"] > 1 else "")
                if s in by else "–" for s in stages]
        ev = c["eval"] + (f" (= cell {c['same_as']})" if c["same_as"] else "")
        name = c["cell"] + (" (finished: skipped)" if c["skipped"] else "")
        t.add_row(str(i), name, *cols, ev, human_tokens(sum(c["tokens"].values())))
    console.print(t)
    console.print(f"{len(plan['cells'])} cells; {plan['distinct_nodes']} distinct stage runs "
                  f"({plan['nodes_done']} done, {plan['nodes_to_train']} to train or resume"
                  + (f", {plan['nodes_not_needed']} not needed: only evaluated cells use them"
                     if plan["nodes_not_needed"] else "") + "); "
                  f"{plan['distinct_evals']} distinct evaluations ({plan['evals_to_run']} to run); "
                  f"{human_tokens(plan['tokens_distinct'])} training tokens in the distinct stage runs "
                  f"({plan['tokens_distinct']:,}; {human_tokens(plan['tokens_to_train'])} to train)")


def register(app: typer.Typer) -> None:
    @app.command("ablate")
    def ablate(
        grid: str = typer.Argument(..., help="the grid YAML, or the name of a shipped grid (gendistill recipes): a "
                                            "base recipe plus named variants per axis, e.g. ablate-smollm2"),
        set_: Optional[list[str]] = typer.Option(
            None, "--set", help="override a key of the base recipe for every cell, e.g. "
                                "--set stages\\[stage3b].tokens=2000000 (a stage by name or index)"),
        dry_run: bool = typer.Option(False, "--dry-run", help="validate every cell's recipe and print the cells, "
                                                              "which stage runs they share and what is already done; "
                                                              "loads and writes nothing"),
        report_only: bool = typer.Option(False, "--report-only", help="train and evaluate nothing: rebuild the "
                                                                      "report from the cells finished so far"),
    ) -> None:
        """Run an ablation grid: every cell is the base recipe with one variant per axis (one axis at a time, or the
        full product). Cells that share a prefix of stages train it once; finished stages, evaluations and cells
        are skipped, a stopped stage resumes, so rerunning the command continues the grid. Each cell is evaluated
        with the teacher under log-likelihood and generation; the report ranks each axis' variants under both,
        flags rank reversals, and draws every cell's held-out KL against tokens and training time (curves.png), so
        variants compare at equal tokens and at equal time. Shipped grids: gendistill recipes."""
        g = load_grid(grid, set_ or [])
        if dry_run:
            check_eval(g)  # what the run would check before training: the dry run says it too
            _print_plan(describe_plan(plan_grid(g)))
            return
        if report_only:
            with lock_grid(g):
                paths = write_grid_report(g, plan_grid(g))
        else:
            out = run_grid(g)
            paths = out["report"]
            if out["stopped"]:
                console.print("stopped before the grid finished; rerun the same command to continue")
        for k, v in paths.items():
            console.print(f"{k}: {v}", markup=False)
