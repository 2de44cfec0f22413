"""Check, here on the CPU, the commands the lease scripts (tools/device_*.sh) will run on the GPU machine: every
``python3 benchmarks/*.py`` / ``tools/*.py`` command line parses with that script's argparse parser, every
``python3 -m gendistill CMD`` line with the CLI's own option parser, and every ``python3 -m pytest`` line collects at
least one test. A renamed option or a ``-k`` that selects nothing then fails here, before it costs device time.

How the lines are found: backslash-continued lines are joined; ``NAME="..."`` and ``NAME=(...)`` assignments of the
script are expanded (``$SMOL``, ``"${BENCH[@]}"``); ``${NAME:-default}`` becomes its default, ``${NAME:+word}`` its word (as if set, so that the options it adds are checked
too); any other expansion
(``$GGUF``, ``$(gguf)``, ``$OUT/x.json``) becomes the placeholder ``1``, and a line that passes the caller's own
arguments on (``"$@"``) is checked without them (pytest lines of that kind are skipped: the files are the caller's).
A command ends at the first unquoted ``;``, ``&``, ``|``, ``<``, ``>`` or parenthesis. Parsing only: no script body
runs (each argparse script is run up to its ``parse_args`` call, which then stops it; ``--device cuda`` is parsed as
``--device cpu``, since this machine has none); ``gendistill`` lines are checked for their command and option names.

    python tools/lease_check.py [SCRIPT ...]      (default: every tools/device_*.sh); exit 1 when a command fails
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import runpy
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLACEHOLDER = "1"
CALLER_ARGS = "\x00caller-args\x00"  # what "$@" expands to: removed from the checked command
_COMMAND = re.compile(r"\bpython3\s+(?:-m\s+(?:gendistill|pytest)\b|(?:benchmarks|tools)/[\w./-]+\.py)")
_ASSIGN = re.compile(r"""^\s*([A-Z_][A-Z0-9_]*)=(\((?:[^()]*)\)|"[^"$`]*"|'[^']*')\s*$""")


@dataclass
class Command:
    """One command line of a lease script: where it stands, its kind and its arguments (after the program)."""

    script: str
    line: int
    kind: str  # "argparse" (a .py file), "gendistill", "pytest"
    program: str  # the .py path, or the module name
    args: list[str]
    passes_caller_args: bool

    def __str__(self) -> str:
        return f"{self.script}:{self.line}: {self.program} {shlex.join(self.args)}"


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """``(first line number, line)`` with backslash continuations joined; comment lines dropped."""
    out, buf, start = [], "", 0
    for no, raw in enumerate(text.splitlines(), 1):
        if not buf:
            start = no
            if raw.lstrip().startswith("#"):
                continue
        if raw.endswith("\\"):
            buf += raw[:-1] + " "
            continue
        out.append((start, buf + raw))
        buf = ""
    if buf:
        out.append((start, buf))
    return out


def _assignments(lines: list[tuple[int, str]]) -> dict[str, str]:
    """Constant ``NAME="..."`` / ``NAME='...'`` / ``NAME=(...)`` assignments (no expansions inside) -> their words."""
    found: dict[str, str] = {}
    for _, line in lines:
        m = _ASSIGN.match(line)
        if m:
            value = m.group(2)
            found[m.group(1)] = value[1:-1] if value[0] in "(\"'" else value
    return found


def _expand(line: str, names: dict[str, str]) -> str:
    """The shell expansions of ``line`` as the checker sees them (see the module docstring)."""
    line = line.replace('"$@"', f" {CALLER_ARGS} ")

    def array(m: re.Match) -> str:
        return names.get(m.group(1), PLACEHOLDER)

    line = re.sub(r'"\$\{(\w+)\[@\]\}"', array, line)
    line = re.sub(r"\$\(\([^)]*\)\)", PLACEHOLDER, line)  # arithmetic
    line = re.sub(r"\$\([^()]*\)", PLACEHOLDER, line)  # command substitution
    line = re.sub(r"\$\{\w+:-([^}]*)\}", lambda m: m.group(1) or PLACEHOLDER, line)
    line = re.sub(r"\$\{\w+:\+([^}]*)\}", lambda m: m.group(1), line)  # as if set: its options are checked too
    line = re.sub(r"\$\{[^}]*\}", lambda m: names.get(m.group(0)[2:-1], PLACEHOLDER), line)
    line = re.sub(r"\$(\w+)", lambda m: names.get(m.group(1), PLACEHOLDER), line)
    return re.sub(r"(?<=\s)\d(?=>)", "", line)  # "2>&1": the descriptor belongs to the redirection


def lease_commands(script: Path) -> list[Command]:
    """Every python3 command line of a lease script that this checker knows how to check."""
    lines = _logical_lines(script.read_text())
    names = _assignments(lines)
    out = []
    for no, raw in lines:
        line = _expand(raw, names)
        for m in _COMMAND.finditer(line):
            lexer = shlex.shlex(line[m.start():], posix=True, punctuation_chars=";&|<>()")
            lexer.whitespace_split = True
            words = []
            for word in lexer:
                if word and all(c in ";&|<>()" for c in word):
                    break
                words.append(word)
            words = words[1:]  # python3
            caller = CALLER_ARGS.strip() in (w.strip() for w in words)
            words = [w for w in words if w.strip() != CALLER_ARGS.strip()]
            if words[0] == "-m":
                kind, program, args = words[1], words[1], words[2:]
            else:
                kind, program, args = "argparse", words[0], words[1:]
            out.append(Command(str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else str(script), no,
                               kind, program, args, caller))
    return out


# ------------------------------------------------------------------------------------------------------- checks
class _Parsed(Exception):
    """Raised by the patched ``parse_args``: the command line parsed; the script stops there."""


def _on_this_machine(args: list[str]) -> list[str]:
    """``--device cuda[:N]`` as ``--device cpu``: a parser that checks that the device exists would refuse it here."""
    out = list(args)
    for i, a in enumerate(out[:-1]):
        if a == "--device" and out[i + 1].startswith("cuda"):
            out[i + 1] = "cpu"
    return out


def _cli_wrapper(source: str) -> str | None:
    """The ``gendistill`` command a thin script hands its arguments to (``app(["bench", *sys.argv[1:]])``), if any."""
    m = re.search(r"""\bapp\(\[\s*["'](\w[\w-]*)["']\s*,\s*\*sys\.argv\[1:\]""", source)
    return m.group(1) if m else None


def _check_script(cmd: Command) -> str | None:
    """A .py file: its argparse parser, or, for a thin wrapper of a ``gendistill`` command, that command's parser.
    A script with neither is not run (its body would run for real): that is a finding too."""
    path = ROOT / cmd.program
    if not path.is_file():
        return f"{cmd.program}: no such file"
    source = path.read_text()
    wrapped = _cli_wrapper(source)
    if wrapped is not None:
        return _check_gendistill(Command(cmd.script, cmd.line, "gendistill", "gendistill", [wrapped, *cmd.args],
                                         cmd.passes_caller_args))
    if "ArgumentParser(" not in source:
        return f"{cmd.program}: neither an argparse parser nor a gendistill wrapper; not run, so not checked"
    return _check_argparse(cmd)


def _check_argparse(cmd: Command) -> str | None:
    path = ROOT / cmd.program
    original = argparse.ArgumentParser.parse_args

    def parse_args(self, args=None, namespace=None):
        ns, extra = self.parse_known_args(args, namespace)
        if extra:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        raise _Parsed(ns)

    argv, err = sys.argv, io.StringIO()
    argparse.ArgumentParser.parse_args = parse_args
    sys.argv = [str(path), *_on_this_machine(cmd.args)]
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            runpy.run_path(str(path), run_name="__main__")
    except _Parsed:
        return None
    except SystemExit as e:
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
        return lines[-1] if lines else f"exited with {e.code} before parsing its arguments"
    except Exception as e:  # noqa: BLE001  (anything else the script raised is the finding)
        return f"{type(e).__name__}: {e}"
    finally:
        argparse.ArgumentParser.parse_args = original
        sys.argv = argv
    return "ran to the end without parsing its arguments"


def _check_gendistill(cmd: Command) -> str | None:
    """The CLI's own parser, through typer's public test runner: the line with ``--help`` appended. Click parses every
    option name (an unknown one is a usage error) before the eager ``--help`` stops the command, so nothing runs; the
    option values are not converted (argparse lines check theirs)."""
    from typer.testing import CliRunner  # noqa: PLC0415  (imported only when a gendistill line is checked)

    from gendistill.cli import app  # noqa: PLC0415

    result = CliRunner().invoke(app, [*cmd.args, "--help"])
    if result.exit_code == 0:
        return None
    lines = [ln.strip(" │╭╮╰╯─") for ln in result.output.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith(("Usage:", "Try "))]
    return " ".join(lines[-2:]) or f"exit {result.exit_code}"


class _Count:
    def __init__(self) -> None:
        self.n = 0

    def pytest_collection_finish(self, session) -> None:
        self.n = len(session.items)


def _check_pytest(cmd: Command) -> str | None:
    import pytest  # noqa: PLC0415

    args = [a for a in cmd.args if a not in ("-s", "-x", "-v", "-q")]
    counter = _Count()
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()):
        rc = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", *args], plugins=[counter])
    if rc != 0 or counter.n == 0:
        tail = [ln for ln in out.getvalue().splitlines() if ln.strip()][-3:]
        return f"collects {counter.n} tests (pytest exit {int(rc)}): {' | '.join(tail)}"
    return None


def check(cmd: Command) -> str | None:
    """None when ``cmd`` parses (collects, for pytest), else one line saying why not."""
    if cmd.kind == "pytest":
        return None if cmd.passes_caller_args else _check_pytest(cmd)
    if cmd.kind == "gendistill":
        return _check_gendistill(cmd)
    return _check_script(cmd)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scripts", nargs="*", type=Path, help="lease scripts (default: every tools/device_*.sh)")
    args = ap.parse_args(argv)
    scripts = args.scripts or sorted((ROOT / "tools").glob("device_*.sh"))
    failed = total = 0
    for script in scripts:
        for cmd in lease_commands(script):
            total += 1
            problem = check(cmd)
            skipped = cmd.kind == "pytest" and cmd.passes_caller_args
            print(f"{'skip' if skipped else 'ok  ' if problem is None else 'FAIL'}  {cmd}"[:300], flush=True)
            if problem is not None:
                failed += 1
                print(f"      {problem}", flush=True)
    print(f"{total - failed} of {total} lease commands parse ({len(scripts)} scripts)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
