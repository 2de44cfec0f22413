"""Run untrusted, model-written Python in a separate, confined process.

Each program runs in its own interpreter (``python -I -S -B``: no site-packages, no user paths, no bytecode written)
inside a fresh scratch folder (its working directory, ``HOME`` and ``TMPDIR``), removed afterwards. Before the
program's first line, a bootstrap applies, in this order:

1. **resource limits** (``resource.setrlimit``): address space (``memory_mb``), CPU seconds, file size, no core files,
   a small number of open files;
2. **Landlock** (Linux ≥ 5.13, when the kernel has it): the kernel refuses every file-system write outside the scratch
   folder (create, write, truncate, remove, rename, link, make-dir …) and, with Landlock ABI ≥ 4, every TCP bind and
   connect; with ABI ≥ 6, signals to processes outside the sandbox. Reads stay allowed (the program needs the
   standard library);
3. **an audit hook** (``sys.addaudithook``, cannot be removed once added): refuses writes outside the scratch folder,
   sockets, starting processes (``os.system``, ``subprocess``, ``fork``, ``exec``), signals, ``ctypes`` and the
   ``gc``/frame introspection one would use to tamper with the hook. It is the portable layer (and the one that gives a
   clear ``PermissionError``); the kernel layers are what a determined program cannot talk its way around.

Around it: a **network namespace** without interfaces (``unshare -rn``, when the system allows unprivileged user
namespaces), a **wall-clock limit** after which the whole process group is killed, and a cap on captured output.
:func:`capabilities` says which kernel layers this machine provides; the results record it.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

PASSED, FAILED, TIMEOUT, MEMORY, REFUSED = "passed", "failed", "timeout", "memory", "refused"


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0  # wall clock
    memory_mb: int = 1024  # address space
    file_size_mb: int = 16
    max_output_bytes: int = 64 * 1024
    python_guard: bool = True  # the audit-hook layer (tests switch it off to check the kernel layers alone)


@dataclass
class ExecResult:
    status: str  # passed | failed | timeout | memory | refused
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


# The bootstrap runs in the child as ``python -I -S -B -c BOOTSTRAP scratch program.py memory cpu fsize guard``.
BOOTSTRAP = r'''
import os, sys, resource
scratch, program = os.path.realpath(sys.argv[1]), sys.argv[2]
mem, cpu, fsize, guard = (int(x) for x in sys.argv[3:7])
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

def _landlock():
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(444, None, 0, 1)  # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    if abi < 1:
        return 0
    write = (1 << 1) | (1 << 4) | (1 << 5) | sum(1 << b for b in range(6, 13))  # write, remove, make-*
    if abi >= 2:
        write |= 1 << 13  # refer (rename/link across folders)
    if abi >= 3:
        write |= 1 << 14  # truncate
    class Ruleset(ctypes.Structure):
        _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]
    class Beneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed", ctypes.c_uint64), ("fd", ctypes.c_int32)]
    attr = Ruleset(write, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)  # net: bind+connect TCP; scoped: signals
    size = 24 if abi >= 6 else (16 if abi >= 4 else 8)
    rs = libc.syscall(444, ctypes.byref(attr), size, 0)
    if rs < 0:
        return 0
    fd = os.open(scratch, os.O_PATH | os.O_DIRECTORY)
    rule = Beneath(write, fd)
    if libc.syscall(445, rs, 1, ctypes.byref(rule), 0) != 0:  # LANDLOCK_RULE_PATH_BENEATH
        return 0
    os.close(fd)
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    if libc.syscall(446, rs, 0) != 0:  # landlock_restrict_self
        return 0
    os.close(rs)
    return abi

try:
    _abi = _landlock()
except Exception:
    _abi = 0
for _m in [m for m in sys.modules if m == "ctypes" or m.startswith(("ctypes.", "_ctypes"))]:
    del sys.modules[_m]  # a later `import ctypes` must open libraries again, which the audit hook refuses
os.environ["GENDISTILL_SANDBOX_LANDLOCK"] = str(_abi)

def _install(scratch=scratch):
    realpath, fspath, sep = os.path.realpath, os.fspath, os.sep
    W = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    def inside(p):
        if isinstance(p, int):
            return True  # an already open descriptor
        try:
            full = realpath(fspath(p))
        except Exception:
            return False
        return full == scratch or full.startswith(scratch + sep)
    PATH1 = {"os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.truncate", "os.utime",
             "shutil.rmtree", "os.mkfifo", "os.mknod", "os.chflags", "os.lchflags", "os.setxattr",
             "os.removexattr"}
    BOTH = {"os.rename", "os.replace", "os.link", "shutil.move"}  # source and destination must be inside
    DEST = {"os.symlink", "shutil.copyfile", "shutil.copytree", "shutil.copymode", "shutil.copystat"}
    DENY = {"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "subprocess.Popen",
            "pty.spawn", "os.kill", "os.killpg", "signal.pthread_kill", "socket.__new__", "socket.connect",
            "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo", "ctypes.dlopen",
            "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function", "gc.get_objects", "gc.get_referrers",
            "gc.get_referents", "webbrowser.open", "os.chroot", "os.setuid", "os.setgid"}
    def hook(event, args):
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, None))[:3]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                      (isinstance(flags, int) and flags & W)
            if writing and not inside(path):
                raise PermissionError(f"sandbox: writing {path!r} outside the scratch folder is not allowed")
        elif event in PATH1:
            if args and not inside(args[0]):
                raise PermissionError(f"sandbox: {event} outside the scratch folder is not allowed")
        elif event in BOTH or event in DEST:
            paths = args[:2] if event in BOTH else args[1:2]
            if not all(inside(a) for a in paths):
                raise PermissionError(f"sandbox: {event} outside the scratch folder is not allowed")
        elif event in DENY or event.startswith(("ctypes.", "socket.")):
            raise PermissionError(f"sandbox: {event} is not allowed")
    sys.addaudithook(hook)

if guard:
    _install()
del _install, _landlock, _m
_code = compile(open(program, encoding="utf-8").read(), program, "exec")
exec(_code, {"__name__": "__main__", "__builtins__": __builtins__})
'''


@functools.cache
def _unshare_net() -> list[str]:
    """``["unshare", "-rn", "--"]`` when an empty network namespace can be made here, else ``[]``."""
    exe = shutil.which("unshare")
    if exe is None:
        return []
    try:
        ok = subprocess.run([exe, "-rn", "--", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return [exe, "-rn", "--"] if ok else []


@functools.cache
def capabilities() -> dict:
    """Which isolation layers this machine gives a sandboxed program (probed once)."""
    r = run_python("import os; print(os.environ['GENDISTILL_SANDBOX_LANDLOCK'])", Limits(timeout_s=20))
    try:
        abi = int(r.stdout.strip() or 0)
    except ValueError:
        abi = 0
    return {"network_namespace": bool(_unshare_net()), "landlock_abi": abi,
            "landlock_fs": abi >= 1, "landlock_net": abi >= 4, "audit_hook": True, "rlimits": True}


def _classify(rc: int | None, stderr: str, timed_out: bool) -> str:
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


def run_python(code: str, limits: Limits = Limits()) -> ExecResult:
    """Execute ``code`` in a confined child interpreter; never raises for anything the program does."""
    scratch = tempfile.mkdtemp(prefix="gendistill-exec-")
    try:
        prog = os.path.join(scratch, "program.py")
        with open(prog, "w", encoding="utf-8") as fh:
            fh.write(code)
        cpu = int(limits.timeout_s) + 1
        cmd = [*_unshare_net(), sys.executable, "-I", "-S", "-B", "-c", BOOTSTRAP, scratch, prog,
               str(limits.memory_mb << 20), str(cpu), str(limits.file_size_mb << 20), str(int(limits.python_guard))]
        env = {"PATH": "/usr/bin:/bin", "HOME": scratch, "TMPDIR": scratch, "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0"}
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=scratch, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        timed_out = False
        try:
            out, err = proc.communicate(timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            out, err = proc.communicate()
        finally:
            _kill_group(proc)  # nothing the program started outlives it
        secs = time.perf_counter() - t0
        n = limits.max_output_bytes
        stdout, stderr = out[:n].decode("utf-8", "replace"), err[-n:].decode("utf-8", "replace")
        return ExecResult(_classify(proc.returncode, stderr, timed_out), proc.returncode, stdout, stderr,
                          round(secs, 3))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_many(codes: list[str], limits: Limits = Limits(), workers: int | None = None) -> list[ExecResult]:
    """:func:`run_python` on every program, ``workers`` at a time (default: the CPUs this process may use)."""
    if not codes:
        return []
    workers = workers or max(1, min(16, len(os.sched_getaffinity(0))))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda c: run_python(c, limits), codes))
