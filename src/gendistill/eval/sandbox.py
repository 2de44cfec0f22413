"""Run untrusted, model-written Python where it cannot reach the host (threat model: docs/eval.md, "Sandbox").

**The boundary is bubblewrap** (``bwrap``, the maintained sandbox tool Flatpak builds on): each program runs in its own
user, mount, PID, network, IPC, UTS and cgroup namespaces, without capabilities, and sees a file system of only the
operating system's ``/usr`` and the Python installation (both read-only), a minimal ``/dev``, its own files
(read-only, ``/sandbox``) and a size-limited tmpfs scratch folder (``/scratch``, its working directory, ``HOME`` and
``TMPDIR``). No host socket, UNIX or TCP, exists in that view or that network namespace; when the run ends (or the
evaluator dies: ``--die-with-parent``), the kernel kills every process of its PID namespace.

Inside, further layers (:mod:`gendistill.eval.sandbox_child`): resource limits, Landlock, a seccomp filter that
forbids new processes and threads, tracing other processes and memory files, and an audit hook that gives readable refusals (a diagnostic, not a barrier). Where bubblewrap
is missing or cannot create namespaces, execution is **refused** (:class:`SandboxUnavailable`, one line saying what to
install) unless the caller passes ``unsafe_allow_unsandboxed=True`` (``--unsafe-allow-unsandboxed-code``): then only
the inner layers and, where possible, ``unshare`` namespaces stand between the code and the host — a warning says so
and the results record it.

Two ways to run code:

* :func:`run_python` — a whole program; its exit status is the outcome (0: ``passed``).
* :func:`run_check` — a :class:`CheckedProgram`: model-written definitions run in a *candidate* process; a separate
  *checker* process executes the trusted test code and calls the candidate's function through a pipe (arguments
  and return values cross as plain data). ``passed`` comes only from the checker, after ``check()`` returned,
  through a pipe the candidate never holds — a program that exits early, prints anything or writes to any
  descriptor cannot be scored as passed.

The host side reads every output pipe with a deadline and a byte cap (the first ``max_output_bytes`` of stdout and
the last of stderr are kept; beyond ``kill_output_bytes`` in all the run is killed).

This module decides whether and how code runs and what its outcome is; bubblewrap and the launchers are
:mod:`gendistill.eval.sandbox_isolation`, starting a run and collecting its output
:mod:`gendistill.eval.sandbox_process`.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from gendistill.errors import GendistillError
from gendistill.eval.sandbox_isolation import Isolation, probe_bwrap, unsafe_launcher
from gendistill.eval.sandbox_process import INNER_LAYERS, Limits, RawRun, execute, kill_live, kill_sandboxes_on_sigterm

PASSED, FAILED, TIMEOUT, MEMORY, REFUSED, OUTPUT = "passed", "failed", "timeout", "memory", "refused", "output_limit"
UNSAFE_FLAG = "--unsafe-allow-unsandboxed-code"
INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora/RHEL: dnf install bubblewrap)"
BWRAP = "bwrap"  # the bubblewrap executable: a name looked up on PATH, or a path (tests point it elsewhere)


class SandboxUnavailable(GendistillError):
    """No isolation tool can confine model-written code here, and running it unconfined was not allowed."""


@dataclass
class ExecResult:
    status: str  # passed | failed | timeout | memory | refused | output_limit
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    detail: str = ""  # checked runs: which stage failed and why (from the checker)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CheckedProgram:
    """A program scored by its tests: ``definitions`` (model-written) run only in the candidate process; ``helpers``
    (trusted code the tests use, e.g. the problem's prompt) and ``test`` (defines ``check(candidate)``) run only in
    the checker process."""

    definitions: str
    helpers: str
    test: str
    entry_point: str


# ------------------------------------------------------------------------------------------------ isolation


def isolation(unsafe_allow_unsandboxed: bool = False) -> Isolation:
    """The isolation model-written code gets here; raises :class:`SandboxUnavailable` when bubblewrap cannot be used
    and ``unsafe_allow_unsandboxed`` is False."""
    iso = probe_bwrap(BWRAP)
    if iso.bwrap is None:
        if not unsafe_allow_unsandboxed:
            raise SandboxUnavailable(
                f"executing model-written code needs the bubblewrap sandbox, which is not usable here ({iso.reason}): "
                f"{INSTALL_HINT}, or pass {UNSAFE_FLAG} to run it with weaker layers that such code can escape")
        iso = Isolation(None, reason=iso.reason, launcher=unsafe_launcher())
        _warn_unsandboxed(iso.reason)
    return iso


@functools.cache
def _warn_unsandboxed(reason: str) -> None:
    print(f"warning: {UNSAFE_FLAG}: model-written code runs WITHOUT the bubblewrap sandbox ({reason}); it can reach "
          "host UNIX sockets (docker, D-Bus, ssh-agent), read your files and, without Landlock, write them; "
          f"{INSTALL_HINT}", file=sys.stderr, flush=True)


@functools.cache
def _capabilities(bwrap_name: str, unsafe: bool) -> dict:
    try:
        iso = isolation(unsafe)
    except SandboxUnavailable as exc:
        return {"isolation": "unavailable", "reason": str(exc)}
    r = run_python("import os; print(os.environ['GENDISTILL_SANDBOX_LAYERS'])", Limits(timeout_s=20),
                   unsafe_allow_unsandboxed=unsafe)
    try:
        inner = json.loads(r.stdout)
    except ValueError:
        inner = {"probe_failed": r.stderr[-300:]}
    if iso.bwrap:
        outer = {"isolation": "bubblewrap", "bwrap": iso.bwrap, "bwrap_version": iso.version,
                 "namespaces": ["user", "mount", "pid", "network", "ipc", "uts", "cgroup"],
                 "filesystem": "/usr and the interpreter read-only (installed packages hidden), /dev minimal, "
                               "scratch tmpfs",
                 "scratch_size_limited": "--size" in iso.options,
                 "nested_user_namespaces": "--disable-userns" not in iso.options}
    else:
        outer = {"isolation": "none", "reason": iso.reason,
                 "namespaces": ["user", "network"] + (["pid"] if "--pid" in iso.launcher else []) if iso.user_namespace
                 else [], "launcher": " ".join(os.path.basename(a) for a in iso.launcher) or None}
    return {**outer, **inner, "unsafe_allow_unsandboxed": unsafe}


def capabilities(unsafe_allow_unsandboxed: bool = False) -> dict:
    """Which isolation layers model-written code gets on this machine (probed once; recorded in the results).
    Never raises: where execution would be refused, says so."""
    return _capabilities(BWRAP, unsafe_allow_unsandboxed)


# ------------------------------------------------------------------------------------------------ running


def run_python(code: str, limits: Limits = Limits(), *, unsafe_allow_unsandboxed: bool = False) -> ExecResult:
    """Execute the program ``code`` confined; its exit status is the outcome. Never raises for anything the program
    does; raises :class:`SandboxUnavailable` when it cannot be confined (see :func:`isolation`)."""
    iso = isolation(unsafe_allow_unsandboxed)
    return _result(execute(iso, "program", {"program.py": code}, limits))


def run_check(program: CheckedProgram, limits: Limits = Limits(), *,
              unsafe_allow_unsandboxed: bool = False) -> ExecResult:
    """Score ``program`` by its tests: ``passed`` only when the checker saw ``check(candidate)`` return."""
    iso = isolation(unsafe_allow_unsandboxed)
    problem = {"helpers": program.helpers, "test": program.test, "entry_point": program.entry_point}
    raw = execute(iso, "checker", {"definitions.py": program.definitions}, limits, secret=json.dumps(problem))
    res = _result(raw)
    res.status, res.detail = _check_status(res, raw.verdict, raw.timed_out)
    return res


def run_many(codes: list[str], limits: Limits = Limits(), workers: int | None = None, *,
             unsafe_allow_unsandboxed: bool = False) -> list[ExecResult]:
    """:func:`run_python` on every program, ``workers`` at a time (default: the CPUs this process may use)."""
    return _in_parallel(lambda c: run_python(c, limits, unsafe_allow_unsandboxed=unsafe_allow_unsandboxed),
                        codes, workers, unsafe_allow_unsandboxed)


def run_checks(programs: list[CheckedProgram], limits: Limits = Limits(), workers: int | None = None, *,
               unsafe_allow_unsandboxed: bool = False) -> list[ExecResult]:
    """:func:`run_check` on every program, ``workers`` at a time."""
    return _in_parallel(lambda p: run_check(p, limits, unsafe_allow_unsandboxed=unsafe_allow_unsandboxed),
                        programs, workers, unsafe_allow_unsandboxed)


def _in_parallel(fn, items: list, workers: int | None, unsafe: bool) -> list[ExecResult]:
    if not items:
        return []
    isolation(unsafe)  # refuse before starting anything
    workers = workers or max(1, min(16, len(os.sched_getaffinity(0))))
    with kill_sandboxes_on_sigterm():
        pool = ThreadPoolExecutor(max_workers=workers)
        try:
            return list(pool.map(fn, items))
        except BaseException:  # Ctrl-C, or SIGTERM with a handler that raises: stop now, not after the queue
            pool.shutdown(wait=False, cancel_futures=True)
            kill_live()
            raise
        finally:
            pool.shutdown(wait=True)


# ------------------------------------------------------------------------------------------------ outcomes
def _result(raw: RawRun) -> ExecResult:
    status = OUTPUT if raw.flooded else _program_status(raw.returncode, raw.stderr, raw.timed_out)
    return ExecResult(status, raw.returncode, raw.stdout, raw.stderr, raw.seconds)



def _program_status(rc: int | None, stderr: str, timed_out: bool) -> str:
    if timed_out or rc in (-signal.SIGXCPU, -signal.SIGKILL):
        return TIMEOUT
    if rc == 0:
        return PASSED
    tail = stderr[-2000:]
    if "MemoryError" in tail:
        return MEMORY
    last = tail.strip().splitlines()[-1] if tail.strip() else ""
    if last.startswith("PermissionError"):
        return REFUSED  # the audit hook ("sandbox: …") or the kernel (Landlock: "Permission denied")
    return FAILED


_ERROR_STATUS = {"MemoryError": MEMORY, "PermissionError": REFUSED, f"ProgramEnded:{-signal.SIGXCPU}": TIMEOUT,
                 f"ProgramEnded:{-signal.SIGKILL}": TIMEOUT}


def _check_status(res: ExecResult, verdict: dict | None, timed_out: bool) -> tuple[str, str]:
    """The status of a checked run: ``passed`` only from the checker's verdict. ``timeout`` comes from the evaluator's
    clock or the candidate's end as the checker saw it (SIGXCPU, SIGKILL); ``memory`` and ``refused`` from the
    built-in exception class the candidate reported (the checker keeps only built-in names, the candidate reports its
    exception's nearest built-in class: a class it names ``MemoryError`` counts as ``failed``). A candidate that
    writes its own report on its pipe can still choose between those two labels and ``failed``, never ``passed``."""
    if res.status == OUTPUT:
        return OUTPUT, "output limit exceeded"
    if isinstance(verdict, dict) and verdict.get("passed") is True:
        return PASSED, ""
    if timed_out:
        return TIMEOUT, "time limit exceeded"
    if not isinstance(verdict, dict):
        return (MEMORY if res.status == MEMORY else FAILED), "the checker ended without a verdict"
    error = str(verdict.get("error"))
    if error in ("CandidateError", "ProgramEnded") and verdict.get("candidate_error"):
        error = str(verdict["candidate_error"])[:100]
    detail = f"{verdict.get('stage')}: {verdict.get('error')}: {verdict.get('message', '')}"
    return _ERROR_STATUS.get(error, FAILED), detail


__all__ = ["BWRAP", "FAILED", "INNER_LAYERS", "MEMORY", "OUTPUT", "PASSED", "REFUSED", "TIMEOUT", "UNSAFE_FLAG",
           "CheckedProgram", "ExecResult", "Isolation", "Limits", "SandboxUnavailable", "capabilities", "isolation",
           "run_check", "run_checks", "run_many", "run_python"]
