"""The ``gendistill`` command line (also ``python -m gendistill``). Each sub-package contributes its commands through a
``register(app)`` function in its own ``cli`` module; this file assembles them, adds ``--version`` and ``recipes``,
and gives every command the one error handler (:func:`gendistill.cli_utils.user_errors`).

Flag convention, the same in every command (``tests/test_cli_consistency.py`` checks it): ``--model``/``-m`` a model
to evaluate; ``--teacher``/``-t`` and ``--student``/``-s`` where both roles exist; ``--out``/``-o`` the output folder;
``--device`` and ``--dtype`` default ``auto``; ``--set`` a recipe override; ``--overwrite``, ``--resume``,
``--dry-run``, ``--seed``.
"""

from __future__ import annotations

import inspect
import re
from typing import Optional

import typer

from gendistill.ablate import cli as ablate_cli
from gendistill.bench import cli as bench_cli
from gendistill.chat import cli as chat_cli
from gendistill.cli_utils import user_errors
from gendistill.convert import cli as convert_cli
from gendistill.demo import cli as demo_cli
from gendistill.distill import cli as distill_cli
from gendistill.distill.shipped import shipped_recipe, shipped_recipes
from gendistill.eval import cli as eval_cli
from gendistill.select import cli as select_cli
from gendistill.version import __version__

app = typer.Typer(
    name="gendistill",
    help=(
        "Turn a pretrained Transformer into a faster hybrid (a few softmax-attention layers, the rest Kimi Delta "
        "Attention), distill it with GenDistill, and evaluate it by generation as well as by log-likelihood."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gendistill {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Turn a pretrained Transformer into a faster hybrid and distill it with GenDistill."""


def recipes_command(
    name: Optional[str] = typer.Argument(None, help="A shipped recipe's name: print it (omit to list them all)."),
) -> None:
    """List the recipes that ship with gendistill (name and first comment line), or print one. Any of them runs as
    ``gendistill distill NAME``; copy one to change it (``gendistill recipes NAME > my.yaml``)."""
    if name is None:
        rows = shipped_recipes()
        width = max(len(r.name) for r in rows)
        for r in rows:
            typer.echo(f"{r.name:<{width}}  {r.description}")
        return
    typer.echo(shipped_recipe(name).path.read_text(encoding="utf-8"), nl=False)


app.command("recipes")(recipes_command)

# Sub-command providers, in the order their commands appear in --help.
for _commands in (convert_cli, chat_cli, distill_cli, eval_cli, ablate_cli, bench_cli, select_cli, demo_cli):
    _commands.register(app)


def terminal_help(docstring: str) -> str:
    """A command's docstring as ``--help`` shows it: Sphinx markup (``:func:`x```, double backticks) reads in a
    terminal as noise, so a role becomes its plain target and a double-backtick literal a single-backtick one; the
    lines of a paragraph are joined (the command list would otherwise break them where the source does)."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", docstring).replace("``", "`")
    return re.sub(r"(?<!\n)\n(?!\n)", " ", text)


# One error handler for every command: a GendistillError is one line on stderr and exit status 2. Each command's
# help is its docstring without Sphinx markup.
for _command in app.registered_commands:
    if _command.callback is not None and not getattr(_command.callback, "__gendistill_errors__", False):
        _command.callback = user_errors(_command.callback)
    if _command.callback is not None and _command.help is None and _command.callback.__doc__:
        _command.help = terminal_help(inspect.getdoc(_command.callback))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
