"""One command-line convention: every command names the same concept with the same flag (and default), one short
flag means one thing everywhere, every command has the one error handler; ``--version``, ``python -m gendistill``
and the ``recipes`` command; ``distill`` takes a shipped recipe by name; ``--help`` points at nothing a wheel lacks."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import gendistill
from gendistill.cli import app
from gendistill.devices import DEVICE_HELP, DTYPE_HELP

ROOT = Path(__file__).resolve().parents[1]

#: parameter name -> (the flags it must have, the default it must have, or ... for any)
SHARED = {
    "model": (["--model", "-m"], ...),
    "teacher": (["--teacher", "-t"], ...),
    "student": (["--student", "-s"], ...),
    "out": (["--out", "-o"], ...),
    "device": (["--device"], "auto"),
    "dtype": (["--dtype"], "auto"),
    "overwrite": (["--overwrite"], False),
    "resume": (["--resume"], False),
    "dry_run": (["--dry-run"], False),
    "seed": (["--seed"], ...),
    "set_": (["--set"], None),
}
#: flags that would be a second name for one of the concepts above
SYNONYMS = {"--output", "--output-dir", "--outdir", "--out-dir", "--model-path", "--teacher-spec", "--student-dir",
            "--models", "--override", "--gpu", "--cuda", "--torch-dtype"}


#: the help text every ``--device`` / ``--dtype`` shows (a command may put a few words before it)
SHARED_HELP = {"device": DEVICE_HELP, "dtype": DTYPE_HELP}


def _commands() -> dict:
    """Every command, by name (typer's click commands: typer vendors its own click, so they are not ``click``'s)."""
    group = typer.main.get_command(app)
    return dict(group.commands)


def _options(cmd) -> list:
    """The command's options (not its arguments). Duck-typed on ``param_type_name``, which typer's vendored click and
    click itself both set, so no ``isinstance`` can silently match nothing."""
    return [p for p in cmd.params if p.param_type_name == "option"]


def test_every_command_names_shared_concepts_the_same_way():
    commands = _commands()
    assert {"convert", "chat", "distill", "eval", "bench", "ablate", "select-layers", "recipes", "demo"} <= \
        set(commands)
    shorts: dict[str, set[str]] = {}
    seen: dict[str, int] = {}  # concept -> commands that have it
    n_options = 0
    for name, cmd in commands.items():
        for p in _options(cmd):
            n_options += 1
            flags = [*p.opts, *p.secondary_opts]
            assert not SYNONYMS & set(flags), (name, flags)
            for f in p.opts:
                if not f.startswith("--"):
                    shorts.setdefault(f, set()).add(p.opts[0])
            if p.name in SHARED:
                seen[p.name] = seen.get(p.name, 0) + 1
                want, default = SHARED[p.name]
                assert sorted(p.opts) == sorted(want), (name, p.name, p.opts)
                if default is not ... and not p.required:
                    assert p.default == default, (name, p.name, p.default)
            if p.name in SHARED_HELP:
                assert SHARED_HELP[p.name] in (p.help or ""), (name, p.name, p.help)
            for concept, (want, _) in SHARED.items():  # the concept's long flag is used for nothing else
                assert want[0] not in p.opts or p.name == concept, (name, p.name, p.opts)
    assert all(len(longs) == 1 for longs in shorts.values()), shorts
    # the loop really looked: every command's options, and every shared concept in some command
    assert n_options > 100, n_options
    assert set(seen) == set(SHARED), seen


def test_the_option_filter_sees_typer_and_click_options_alike():
    """``_options`` keeps the options of a typer command and of a plain click command, and drops arguments."""
    import click

    typer_cmd = _commands()["eval"]
    assert {"model", "out", "device", "dtype"} <= {p.name for p in _options(typer_cmd)}
    plain = click.Command("x", params=[click.Argument(["thing"]), click.Option(["--out", "-o"])])
    assert [p.name for p in _options(plain)] == ["out"]


def test_every_command_has_the_one_error_handler():
    for cmd in app.registered_commands:
        assert getattr(cmd.callback, "__gendistill_errors__", False), cmd.name


def test_help_points_at_nothing_a_wheel_install_lacks():
    runner = CliRunner()
    for name in _commands():
        text = runner.invoke(app, [name, "--help"], terminal_width=200).output
        assert "recipes/" not in text and "docs/" not in text, name


def test_help_shows_no_sphinx_markup_and_no_broken_lines():
    """Docstrings are written for Sphinx (``:func:`x```, double backticks); ``--help`` shows them as plain text, and
    the command list does not break a description where the source line ends."""
    runner = CliRunner()
    pages = {name: runner.invoke(app, [name, "--help"], terminal_width=200).output for name in _commands()}
    pages["(top)"] = runner.invoke(app, ["--help"], terminal_width=200).output
    for name, text in pages.items():
        assert not re.search(r":(func|mod|class|meth|attr):`|``", text), (name, text)
    helps = {cmd.name or cmd.callback.__name__: cmd.help for cmd in app.registered_commands}
    assert "A thin wrapper over `gendistill.evaluate`." in helps["eval"]
    assert "runs as `gendistill distill NAME`; copy one" in helps["recipes"]  # joined where the source line broke
    assert all(h and "\n" not in h.strip() for h in helps.values()), helps


def test_version_and_python_dash_m():
    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"gendistill {gendistill.__version__}"
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "gendistill", "--version"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == f"gendistill {gendistill.__version__}", out.stderr


def test_recipes_lists_and_prints_the_shipped_recipes():
    from gendistill.distill.recipe_files import load_recipe
    from gendistill.distill.shipped import shipped_recipes

    runner = CliRunner()
    listing = runner.invoke(app, ["recipes"], terminal_width=200)
    assert listing.exit_code == 0
    shipped = shipped_recipes()
    assert {"tiny-cpu", "smollm2-135m", "qwen3-0.6b-paper"} <= {r.name for r in shipped}
    width = max(len(r.name) for r in shipped)
    assert listing.output.splitlines() == [f"{r.name:<{width}}  {r.description}" for r in shipped]
    for r in shipped:  # package data, each with a one-line description (its first comment line)
        assert r.path.parent == Path(gendistill.__file__).parent / "recipes"
        assert r.description and not r.description.startswith("#") and r.description in r.path.read_text()
        assert r.description.endswith("."), r  # a whole sentence, not a line cut mid-phrase
    one = runner.invoke(app, ["recipes", "tiny-cpu"])
    assert one.exit_code == 0 and one.output == (Path(gendistill.__file__).parent / "recipes" / "tiny-cpu.yaml"
                                                 ).read_text()
    assert load_recipe("tiny-cpu").stages and load_recipe("tiny-cpu.yaml").stages
    bad = runner.invoke(app, ["recipes", "no-such-recipe"])
    assert bad.exit_code == 2 and "no shipped recipe named 'no-such-recipe'; shipped: " in bad.stderr


def test_distill_takes_a_shipped_name_and_names_a_missing_data_folder(tmp_path, monkeypatch):
    """The shipped recipe's data files are looked up in the data folder; an empty one is one line before any model
    is loaded."""
    monkeypatch.setenv("GENDISTILL_DATA_DIR", str(tmp_path / "nothing-here"))
    r = CliRunner().invoke(app, ["distill", "tiny-cpu", "--dry-run", "--set", f"run.output_dir={tmp_path / 'run'}"])
    assert r.exit_code == 2
    assert r.stderr.strip() == (f"error: data.sources[0].path: pretrain_wikipedia_en_00.jsonl.gz is neither beside "
                                f"the recipe nor in the data folder {tmp_path / 'nothing-here'}")
    r = CliRunner().invoke(app, ["distill", "no-such-recipe"])
    assert r.exit_code == 2 and "no shipped recipe named 'no-such-recipe'" in r.stderr


def test_a_missing_data_folder_reads_the_same_in_distill_and_eval(tmp_path, monkeypatch):
    """Where no data folder is found, distill and eval say the same thing about how to provide one."""
    import gendistill.distill.pipeline as pipeline
    import gendistill.eval.task as task
    from gendistill.io import DATA_HINT

    monkeypatch.delenv("GENDISTILL_DATA_DIR", raising=False)
    monkeypatch.setattr(pipeline, "data_dir", lambda: None)
    monkeypatch.setattr(task, "data_dir", lambda: None)
    monkeypatch.setattr("gendistill.distill.recipe_files.data_dir", lambda: None)
    r = CliRunner().invoke(app, ["distill", "tiny-cpu", "--dry-run", "--set", f"run.output_dir={tmp_path / 'run'}"])
    assert r.exit_code == 2 and r.stderr.strip() == (
        "error: data.sources[0].path: pretrain_wikipedia_en_00.jsonl.gz is neither beside the recipe nor in a data "
        f"folder ({DATA_HINT})")
    r = CliRunner().invoke(app, ["eval", "-m", "x/y", "--tasks", "arc_easy", "--out", str(tmp_path / "ev")])
    assert r.exit_code == 2 and r.stderr.strip() == (
        f"error: task arc_easy: benchmark folder not found ({DATA_HINT}), needed for arc_easy_test.jsonl.gz")
    assert "../shared/data" in DATA_HINT and "GENDISTILL_DATA_DIR" in DATA_HINT
    assert not (tmp_path / "run").exists() and not (tmp_path / "ev").exists()


@pytest.mark.parametrize("args", [["bench", "--tiny", "--dtype", "int3"], ["eval", "-m", "x", "--device", "gpu"],
                                  ["chat", "-p", "hi", "-t", "x", "--dtype", "int3"]])
def test_device_and_dtype_mistakes_read_the_same_in_every_command(args, tmp_path):
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o")] if args[0] != "chat" else args)
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: --dtype: unknown dtype 'int3'") or \
        r.stderr.startswith("error: --device: expected auto, cpu, cuda or cuda:N")
