"""``gendistill distill RECIPE``: run a distillation recipe (one process, or one per GPU under ``torchrun``); a thin
wrapper over :func:`gendistill.distill`."""

from __future__ import annotations

import json
import os
from typing import Optional

import typer

from gendistill.cli_utils import console


def register(app: typer.Typer) -> None:
    @app.command("distill")
    def distill(
        recipe: str = typer.Argument(..., help="a recipe YAML file, or the name of a shipped recipe (list them with "
                                               "`gendistill recipes`; e.g. tiny-cpu)"),
        resume: bool = typer.Option(False, "--resume", help="continue the run in run.output_dir where it stopped"),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="delete the run in run.output_dir first (only a folder gendistill wrote)"
        ),
        allow_optim_change: bool = typer.Option(
            False, "--allow-optim-change",
            help="with --resume: continue although the optimisation settings (optim.lr, schedule, clipping, ...) "
            "changed, e.g. a lower learning rate after a diverged run; the data position is kept, the change logged",
        ),
        set_: Optional[list[str]] = typer.Option(
            None, "--set", help="override a recipe key, e.g. --set stages[0].steps=10 --set run.output_dir=runs/x"
        ),
        dry_run: bool = typer.Option(
            False, "--dry-run", help="check the recipe and every data source, build the student, print the plan"
        ),
        stop_after: Optional[int] = typer.Option(
            None, "--stop-after", help="stop after this many optimizer steps (a checkpoint is written); for testing"
        ),
    ) -> None:
        """Distill a hybrid student from its teacher: stage 1 (KDA mixer alignment), stage 2 (block alignment),
        stage 3a (KL on text), stage 3b (chat KD, completion-only). Multi-GPU: torchrun --nproc-per-node N
        -m gendistill distill RECIPE."""
        import torch.distributed as dist

        from gendistill.api import distill as run

        try:
            out = run(recipe, overrides=set_ or [], resume=resume, overwrite=overwrite, dry_run=dry_run,
                      stop_after=stop_after, allow_optim_change=allow_optim_change)
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
        if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
            return
        if dry_run:
            console.print_json(json.dumps({"plan": out.plan, "data": out.data}))
            return
        for name, res in out.results.items():
            first = f"{res.losses[0]:.4f}" if res.losses else "-"
            last = f"{res.losses[-1]:.4f}" if res.losses else "-"
            ev = f", held-out {res.eval_losses[-1][1]:.4f}" if res.eval_losses else ""
            console.print(f"{name}: {res.steps} steps, {res.tokens:,} tokens, loss {first} -> {last}{ev}")
        for name, folder in out.student_dirs.items():
            console.print(f"student after {name}: {folder}")
