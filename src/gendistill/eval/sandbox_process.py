"""Starting a confined run and collecting what it leaves: the child script (:mod:`sandbox_child`) copied beside the
program's files, run under bubblewrap (or the unsafe launcher), every output pipe read with a deadline and a byte cap,
and everything the run started killed when it ends, times out, floods its output, or when the evaluator gets
SIGTERM. What the outcome means is :mod:`gendistill.eval.sandbox`'s business."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from gendistill.eval.sandbox_isolation import FILES, SCRATCH, Isolation, bwrap_command, python_executable

INNER_LAYERS = ("landlock", "seccomp", "audit_hook")
CHILD = Path(__file__).with_name("sandbox_child.py")
_GRACE_S = 0.5  # after the program exits, how long its output pipes may stay open (then they are abandoned)


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
class RawRun:
    """What one run left: its exit status, the kept output, its wall time, the checker's verdict (checked runs),
    and whether the deadline or the output cap ended it."""

    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    verdict: dict | None
    timed_out: bool
    flooded: bool


def execute(iso: Isolation, role: str, files: dict[str, str], limits: Limits, secret: str | None = None) -> RawRun:
    """Run the child script in ``role`` with ``files`` beside it (readable by the program). ``secret`` (the
    checker's problem: its tests) travels in an unlinked file whose descriptor only the checker holds."""
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
        argv = [python_executable(), "-I", "-S", "-B", f"{files_dir}/child.py", json.dumps(cfg)]
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
        return RawRun(rc, stdout, stderr, round(time.monotonic() - t0, 3), verdict, timed_out, flooded)
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


def kill_live(remove_folders: bool = False) -> None:
    for run in list(_LIVE.values()):
        run.kill()
        for d in run.folders if remove_folders else ():
            shutil.rmtree(d, ignore_errors=True)  # the process is about to end: its finally blocks will not run


@contextlib.contextmanager
def kill_sandboxes_on_sigterm():
    """While a batch runs (from the main thread): SIGTERM first kills every running sandbox, then does what it did
    before (by default, ends the process). Bubblewrap's --die-with-parent covers SIGKILL."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):
        kill_live(remove_folders=previous == signal.SIG_DFL)
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
