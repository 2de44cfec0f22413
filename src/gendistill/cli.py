"""The ``gendistill`` command line. Each sub-package contributes its commands through a ``register(app)`` function
in its own ``cli`` module, so this file only assembles them."""

from __future__ import annotations

import importlib
import importlib.util

import typer

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

# Sub-command providers, in the order their commands appear in --help.
_COMMAND_MODULES = (
    "gendistill.convert.cli",
    "gendistill.distill.cli",
    "gendistill.eval.cli",
    "gendistill.ablate.cli",
    "gendistill.bench.cli",
    "gendistill.select.cli",
    "gendistill.demo.cli",
)

for _name in _COMMAND_MODULES:
    if importlib.util.find_spec(_name.rsplit(".", 1)[0]) is not None and importlib.util.find_spec(_name) is not None:
        importlib.import_module(_name).register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
