"""``gendistill demo``: convert, distill briefly, evaluate teacher / undistilled / distilled side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from gendistill.cli_utils import console, user_errors
from gendistill.demo.driver import run_demo
from gendistill.devices import DEVICE_HELP, DTYPE_HELP


def register(app: typer.Typer) -> None:
    @app.command("demo")
    @user_errors
    def demo(
        out: Path = typer.Option(Path("runs/demo"), "--out", "-o",
                                 help="output folder (undistilled/, run/, eval/, demo.md)"),
        full: Optional[bool] = typer.Option(
            None, "--full/--cpu-demo",
            help="--full: the real SmolLM2 recipe (the shipped smollm2-135m, needs the data folder); --cpu-demo: "
            "the short CPU recipe on the shipped sample. Default: --full when CUDA is present",
        ),
        recipe: Optional[Path] = typer.Option(None, "--recipe", help="any other recipe instead"),
        set_: Optional[list[str]] = typer.Option(None, "--set", help="override a recipe key (as for distill)"),
        device: str = typer.Option("auto", "--device", help=f"{DEVICE_HELP}."),
        dtype: str = typer.Option("auto", "--dtype", help=f"dtype of the teacher and of the evaluation: {DTYPE_HELP}; "
                                                          "auto keeps the recipe's teacher.dtype."),
        limit: Optional[int] = typer.Option(None, "--limit", help="examples per task (default: all)"),
        max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="override every task's max new tokens"),
        no_progress: bool = typer.Option(False, "--no-progress", help="no progress bars"),
    ) -> None:
        """Show what GenDistill is for, on this machine: convert the embedded SmolLM2-135M-Instruct teacher, distill
        the hybrid student briefly on the sample the package ships, evaluate teacher, undistilled and distilled
        student by log-likelihood AND by generation, and print them side by side with the held-out perplexity."""
        res = run_demo(out, full=full, recipe=recipe, overrides=list(set_ or []), device=device, dtype=dtype,
                       limit=limit, max_new_tokens=max_new_tokens, show_progress=not no_progress)
        console.print(res.table, markup=False, highlight=False)
        console.print(f"written: {res.out / 'demo.md'}, {res.out / 'demo.json'}, {res.out / 'eval'}", markup=False)
