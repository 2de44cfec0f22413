"""``gendistill distill RECIPE.yaml``: run a distillation recipe (one process, or one per GPU under ``torchrun``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

from gendistill.cli_utils import console, user_errors


def register(app: typer.Typer) -> None:
    @app.command("distill")
    @user_errors
    def distill(
        recipe: Path = typer.Argument(..., help="the recipe YAML (see recipes/ and docs/distill.md)"),
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
        -m gendistill.cli distill RECIPE."""
        import torch.distributed as dist

        from gendistill.distill.config import load_recipe
        from gendistill.distill.pipeline import run_recipe
        from gendistill.errors import ConfigError

        r = load_recipe(recipe, set_ or [])
        try:
            if allow_optim_change and not resume:
                raise ConfigError("--allow-optim-change only applies with --resume")
            out = run_recipe(r, resume=resume, overwrite=overwrite, dry_run=dry_run, stop_after=stop_after,
                             allow_optim_change=allow_optim_change)
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
        if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
            return
        if dry_run:
            console.print_json(json.dumps(out))
            return
        for name, res in out["results"].items():
            first = f"{res.losses[0]:.4f}" if res.losses else "-"
            last = f"{res.losses[-1]:.4f}" if res.losses else "-"
            ev = f", held-out {res.eval_losses[-1][1]:.4f}" if res.eval_losses else ""
            console.print(f"{name}: {res.steps} steps, {res.tokens:,} tokens, loss {first} -> {last}{ev}")
        for name in out["completed"]:
            console.print(f"student after {name}: {Path(out['run_dir']) / name}")
