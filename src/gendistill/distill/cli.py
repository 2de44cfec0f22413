"""``gendistill distill RECIPE``: run a distillation recipe (one process, or one per GPU under ``torchrun``); a thin
wrapper over :func:`gendistill.distill`."""

from __future__ import annotations

import json
import os
from typing import Optional

import torch
import torch.distributed as dist
import typer

from gendistill.cli_utils import console
from gendistill.distill import recipe_help
from gendistill.distill.api import distill as run
from gendistill.distill.config import Recipe
from gendistill.distill.memory import GIB, parse_bytes, plan_recipe
from gendistill.distill.recipe_files import load_recipe
from gendistill.errors import ConfigError


def _help_recipe(value: bool) -> None:
    if value:
        typer.echo(recipe_help.text(), nl=False)
        raise typer.Exit()


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
        plan: bool = typer.Option(
            False, "--plan", help="print the per-GPU memory of every stage under DDP and FSDP2 and whether it fits "
            "(reads the teacher's config only; trains nothing)",
        ),
        gpus: Optional[int] = typer.Option(
            None, "--gpus", min=1, help="with --plan: number of GPUs (default: WORLD_SIZE, else the visible GPUs)"
        ),
        gpu_memory: Optional[str] = typer.Option(
            None, "--gpu-memory", help="with --plan: memory of one GPU, e.g. 80GB (default: this machine's GPU)"
        ),
        help_recipe: bool = typer.Option(
            False, "--help-recipe", callback=_help_recipe, is_eager=True,
            help="print every key a recipe can hold (type, default, what it does) and exit",
        ),
    ) -> None:
        """Distill a hybrid student from its teacher: stage 1 (KDA mixer alignment), stage 2 (block alignment),
        stage 3a (KL on text), stage 3b (chat KD, completion-only). Multi-GPU: torchrun --nproc-per-node N
        -m gendistill distill RECIPE."""
        if plan:
            _print_plan(load_recipe(recipe, set_ or []), gpus, gpu_memory)
            return
        if gpus is not None or gpu_memory is not None:
            raise ConfigError("--gpus and --gpu-memory only apply with --plan")
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
            console.print(f"student after {name}: {folder}", markup=False)


def _print_plan(recipe: Recipe, gpus: int | None, gpu_memory: str | None) -> None:
    """``--plan``: one row per stage and mode (the recipe's mode marked)."""
    n = gpus or int(os.environ.get("WORLD_SIZE", "0")) or torch.cuda.device_count() or 1
    if gpu_memory is not None:
        try:
            card = parse_bytes(gpu_memory)
        except ValueError as e:
            raise ConfigError(f"--gpu-memory: {e}") from None
    elif torch.cuda.is_available():
        card = torch.cuda.get_device_properties(0).total_memory
    else:
        raise ConfigError("--gpu-memory: no CUDA device here to read it from; give the card's memory, e.g. 80GB")
    rows = plan_recipe(recipe, n, card)
    cols = ("params", "grads", "optim", "teacher", "gathered", "activ", "total")
    lines = [f"per-GPU memory in GiB, {n} GPU(s) of {card / GIB:.0f} GiB (* = the recipe's run.distributed)",
             f"{'stage':<8}{'mode':<6}" + "".join(f"{c:>9}" for c in cols) + "  fits"]
    for p in rows:
        mark = "*" if p.mode == recipe.run.distributed else ""
        nums = (p.params, p.grads, p.optimizer, p.teacher, p.gathered, p.activations, p.total)
        lines.append(f"{p.stage:<8}{p.mode + mark:<6}" + "".join(f"{b / GIB:>9.2f}" for b in nums)
                     + ("  yes" if p.fits else "  NO"))
    console.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)
    console.print("fits: total x 1.1 + 1 GiB <= card; parameters, gradients, optimizer state and teacher are exact, "
                  "activations an estimate (docs/distill.md)")
