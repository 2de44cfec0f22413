"""``python -m gendistill.demo [options]``: the same as ``gendistill demo``."""

import typer

from gendistill.demo.cli import register

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
register(app)
# a single registered command: typer runs it without the sub-command name
app(prog_name="python -m gendistill.demo")
