"""The part of the sandbox that runs INSIDE it: confinement layers, then one of three roles.

This file is a standalone script (standard library only; gendistill never imports it): :mod:`gendistill.eval.sandbox`
copies it next to the program and runs ``python -I -S -B child.py CONFIG_JSON`` inside bubblewrap. Roles:

* ``program`` — confine this process, then execute ``program.py`` (the exit status is the outcome).
* ``checker`` — the trusted half of a checked run. It never executes model-written code: it reads the problem (its
  tests) from a descriptor of an unlinked file, starts a ``candidate`` process (below), executes the problem's own,
  trusted, helper and test code, and calls ``check(candidate)`` with a
  proxy that forwards each call to the candidate as data and turns the reply back into a plain value. Only after
  ``check`` returned does it write ``{"passed": true}`` to a pipe that only it holds (``verdict_fd``; the candidate
  never has it, and it cannot reach this process's memory or descriptors — see ``_protect_checker``).
* ``candidate`` — confine this process (more tightly than the checker: its own Landlock domain, no new processes),
  execute the model-written definitions, then answer calls: arguments in, return value out, as tagged JSON. Whatever
  it does — exit early, print anything, write to any descriptor it has — it can only make the check fail.

Confinement layers, applied in this order (``layers`` in the config selects the optional ones; tests switch them off
to check that each other layer holds alone):

1. resource limits (always): address space, CPU seconds, file size, no core files, open files, processes;
2. ``landlock`` (Linux >= 5.13): no file-system writes outside the scratch folder (``/dev/null`` excepted);
   ABI >= 4: no TCP bind/connect;
   ABI >= 5: no ioctl on devices; ABI >= 6: no signals to, and no abstract UNIX sockets of, processes outside;
3. ``seccomp`` (x86_64, aarch64): no new processes or threads (``fork``, ``vfork``, ``clone``, ``clone3``), no
   tracing or reading of another process (``ptrace``, ``process_vm_*``, ``pidfd_*``, ``kcmp``), no memory files
   (``memfd_create``, ``memfd_secret``): see :func:`seccomp_filter`;
4. ``audit_hook``: a ``sys.addaudithook`` that refuses the same things with a readable ``PermissionError``. It is a
   diagnostic, not a barrier: code in the same interpreter can disarm it.
"""

import json
import os
import resource
import sys

ROLES = ("program", "checker", "candidate")
MESSAGE_LIMIT = 16 << 20  # one RPC message, bytes


# ------------------------------------------------------------------------------------------- confinement layers


def set_limits(cfg, role):
    mem, cpu = cfg["memory"], cfg["cpu"]
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["fsize"], cfg["fsize"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    if role != "checker" and cfg.get("nproc"):
        resource.setrlimit(resource.RLIMIT_NPROC, (cfg["nproc"], cfg["nproc"]))


def _libc():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return ctypes, libc


def landlock(scratch):
    """Restrict this process (and what it starts) to writing beneath ``scratch``; returns the Landlock ABI (0: none)."""
    ctypes, libc = _libc()
    abi = libc.syscall(444, None, 0, 1)  # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    if abi < 1:
        return 0
    write = (1 << 1) | (1 << 4) | (1 << 5) | sum(1 << b for b in range(6, 13))  # write, remove, make-*
    if abi >= 2:
        write |= 1 << 13  # refer (rename/link across folders)
    if abi >= 3:
        write |= 1 << 14  # truncate
    handled = write | (1 << 15 if abi >= 5 else 0)  # ioctl on devices: refused outside the scratch folder

    class Ruleset(ctypes.Structure):
        _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]

    class Beneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed", ctypes.c_uint64), ("fd", ctypes.c_int32)]

    attr = Ruleset(handled, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)  # net: TCP bind+connect; scoped: both
    size = 24 if abi >= 6 else (16 if abi >= 4 else 8)
    rs = libc.syscall(444, ctypes.byref(attr), size, 0)
    if rs < 0:
        return 0
    devnull = (1 << 1) | (1 << 14 if abi >= 3 else 0)  # write and truncate /dev/null (honest code silences output)
    try:
        for path, allowed in ((scratch, handled), (os.devnull, devnull)):
            fd = os.open(path, os.O_PATH | (os.O_DIRECTORY if path == scratch else 0))
            rule = Beneath(allowed, fd)
            ok = libc.syscall(445, rs, 1, ctypes.byref(rule), 0) == 0  # LANDLOCK_RULE_PATH_BENEATH
            os.close(fd)
            if not ok:
                return 0
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS (bubblewrap sets it already)
        return abi if libc.syscall(446, rs, 0) == 0 else 0  # landlock_restrict_self
    finally:
        os.close(rs)


# seccomp: (AUDIT_ARCH, numbers of the refused system calls) of the architectures the filter knows
_ARCHES = {"x86_64": (0xC000003E, {"clone": 56, "fork": 57, "vfork": 58, "clone3": 435,
                                   "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312,
                                   "pidfd_open": 434, "pidfd_getfd": 438,
                                   "memfd_create": 319, "memfd_secret": 447}),
           "aarch64": (0xC00000B7, {"clone": 220, "clone3": 435,
                                    "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "kcmp": 272,
                                    "pidfd_open": 434, "pidfd_getfd": 438,
                                    "memfd_create": 279, "memfd_secret": 447})}


def seccomp_filter(machine):
    """The classic-BPF program for ``machine``, as bytes (None: architecture unknown). These system calls, and every
    system call of another ABI (x32, i386), answer EPERM:

    * fork, vfork, clone, clone3 — no new processes or threads (RLIMIT_NPROC does not bind root, and a thread takes a
      PID like a process);
    * ptrace, process_vm_readv/writev, kcmp, pidfd_open, pidfd_getfd — no reaching into another process of the
      sandbox (same user): without Landlock's scoping, bubblewrap's init (pid 1, dumpable) could be traced and made
      to fork a process with no filter and no limits, or to drop its die-with-parent signal;
    * memfd_create, memfd_secret — no anonymous files: their memory lies outside RLIMIT_AS (about 0.9 GiB per
      candidate through 64 descriptors of 16 MiB)."""
    import struct

    if machine not in _ARCHES:
        return None
    arch, nr = _ARCHES[machine]
    LD, JEQ, JGE, RET = 0x20, 0x15, 0x35, 0x06
    ALLOW, EPERM = 0x7FFF0000, 0x00050000 | 1
    checks = [(JGE, 0x40000000)] if machine == "x86_64" else []  # x32 system calls
    checks += [(JEQ, n) for n in nr.values()]
    prog = [(LD, 0, 0, 4), (JEQ, 0, len(checks) + 2, arch), (LD, 0, 0, 0)]  # arch, else deny; then the number
    for i, (op, k) in enumerate(checks):
        prog.append((op, len(checks) - i, 0, k))  # match: jump to deny
    prog += [(RET, 0, 0, ALLOW), (RET, 0, 0, EPERM)]
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)


def no_new_processes():
    """Install :func:`seccomp_filter` on this process; True when it is in force."""
    prog = seccomp_filter(os.uname().machine)
    if prog is None:
        return False
    ctypes, libc = _libc()
    buf = ctypes.create_string_buffer(prog, len(prog))

    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = Fprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    return libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER


def forget_ctypes():
    """A later ``import ctypes`` must load the library again, which the audit hook refuses."""
    for m in [m for m in sys.modules if m == "ctypes" or m.startswith(("ctypes.", "_ctypes"))]:
        del sys.modules[m]


def audit_hook(scratch):
    """Refuse, with a readable PermissionError, writes outside ``scratch``, processes, signals, sockets, ctypes."""
    realpath, fspath, sep = os.path.realpath, os.fspath, os.sep
    W = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def inside(p):
        if isinstance(p, int):
            return True  # an already open descriptor
        try:
            full = realpath(fspath(p))
        except Exception:
            return False
        return full == scratch or full.startswith(scratch + sep) or full == os.devnull

    PATH1 = frozenset({"os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.truncate", "os.utime",
                       "shutil.rmtree", "os.mkfifo", "os.mknod", "os.chflags", "os.lchflags", "os.setxattr",
                       "os.removexattr"})
    BOTH = frozenset({"os.rename", "os.replace", "os.link", "shutil.move"})  # source and destination inside
    DEST = frozenset({"os.symlink", "shutil.copyfile", "shutil.copytree", "shutil.copymode", "shutil.copystat"})
    DENY = frozenset({"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
                      "subprocess.Popen", "pty.spawn", "os.kill", "os.killpg", "signal.pthread_kill",
                      "socket.__new__", "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
                      "socket.getaddrinfo", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function",
                      "gc.get_objects", "gc.get_referrers", "gc.get_referents", "webbrowser.open", "os.chroot",
                      "os.setuid", "os.setgid"})

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


def confine(cfg, role):
    """Apply the layers for ``role``; returns what is in force (also in ``$GENDISTILL_SANDBOX_LAYERS``)."""
    scratch, layers = os.path.realpath(cfg["scratch"]), cfg["layers"]
    set_limits(cfg, role)
    applied = {"rlimits": True, "landlock_abi": 0, "seccomp_no_processes_or_threads": False, "audit_hook": False}
    if "landlock" in layers:
        try:
            applied["landlock_abi"] = landlock(scratch)
        except Exception:
            pass
    if role != "checker":
        if "seccomp" in layers:
            try:
                applied["seccomp_no_processes_or_threads"] = no_new_processes()
            except Exception:
                pass
        forget_ctypes()
        if "audit_hook" in layers:
            audit_hook(scratch)
            applied["audit_hook"] = True
    os.environ["GENDISTILL_SANDBOX_LAYERS"] = json.dumps(applied)
    return applied


# ------------------------------------------------------------------------------------- values across the pipe


def encode(x, depth=0):
    """A return value or argument as JSON-able data, tagged so that tuples, sets, dicts with any keys, bytes, and
    complex numbers come back as themselves (and floats exactly, inf and nan included). Only plain data crosses:
    anything else raises TypeError."""
    if depth > 100:
        raise TypeError("value nested too deeply")
    d = depth + 1
    if x is None or isinstance(x, bool):
        return x
    if isinstance(x, int):
        return int(x)
    if isinstance(x, float):
        return float(x)  # JSON keeps floats exactly (repr), inf and nan included
    if isinstance(x, str):
        return str(x)
    if isinstance(x, list):
        return [encode(v, d) for v in x]
    if isinstance(x, tuple):
        return {"t": "tuple", "v": [encode(v, d) for v in x]}
    if isinstance(x, (set, frozenset)):
        return {"t": "frozenset" if isinstance(x, frozenset) else "set", "v": [encode(v, d) for v in x]}
    if isinstance(x, dict):
        return {"t": "dict", "v": [[encode(k, d), encode(v, d)] for k, v in x.items()]}
    if isinstance(x, (bytes, bytearray)):
        return {"t": "bytes", "v": bytes(x).hex()}
    if isinstance(x, complex):
        return {"t": "complex", "v": [repr(x.real), repr(x.imag)]}
    raise TypeError(f"a value of type {type(x).__name__} cannot leave the program (only plain data can)")


def decode(x):
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if isinstance(x, list):
        return [decode(v) for v in x]
    if not isinstance(x, dict) or set(x) != {"t", "v"}:
        raise ValueError("malformed value")
    t, v = x["t"], x["v"]
    if t == "tuple":
        return tuple(decode(e) for e in v)
    if t in ("set", "frozenset"):
        return (set if t == "set" else frozenset)(decode(e) for e in v)
    if t == "dict":
        return {decode(k): decode(e) for k, e in v}
    if t == "bytes":
        return bytes.fromhex(v)
    if t == "complex":
        return complex(float(v[0]), float(v[1]))
    raise ValueError(f"unknown value tag {t!r}")


def _send(fh, msg):
    fh.write(json.dumps(msg).encode() + b"\n")
    fh.flush()


def _receive(fh):
    line = fh.readline(MESSAGE_LIMIT)
    if not line:
        return None
    if not line.endswith(b"\n"):
        raise ValueError("message too long")
    return json.loads(line)


def _builtin_exceptions():
    import builtins

    return {name: c for name, c in vars(builtins).items() if isinstance(c, type) and issubclass(c, BaseException)}


# The built-in exception classes by name (the checker's look-up) and by identity (the candidate's report), taken when
# this script starts, before any model-written code could rebind a name in ``builtins``.
BUILTIN_EXCEPTIONS = _builtin_exceptions()
_BUILTIN_BY_ID = {id(c): name for name, c in BUILTIN_EXCEPTIONS.items()}


def _exception(e):
    """The candidate's report of the exception ``e``: the nearest built-in exception class of its type, found by
    identity, not by name (a class the program itself calls ``MemoryError`` is reported as its built-in base)."""
    name = next((_BUILTIN_BY_ID[id(c)] for c in type.__getattribute__(type(e), "__mro__") if id(c) in _BUILTIN_BY_ID),
                "BaseException")
    try:
        message = str(e)[:500]
    except BaseException:  # noqa: BLE001 - a __str__ that raises
        message = ""
    return {"raise": name, "message": message}


# ------------------------------------------------------------------------------------------------------ roles


def run_program(cfg):
    confine(cfg, "program")
    path = os.path.join(cfg["files"], "program.py")
    with open(path, encoding="utf-8") as fh:
        code = compile(fh.read(), path, "exec")
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})


def run_candidate(cfg):
    req = os.fdopen(cfg["rpc"][0], "rb")
    resp = os.fdopen(cfg["rpc"][1], "wb")
    confine(cfg, "candidate")
    path = os.path.join(cfg["files"], "definitions.py")
    with open(path, encoding="utf-8") as fh:
        source = fh.read()
    ns = {"__name__": "candidate", "__builtins__": __builtins__}  # `if __name__ == "__main__":` demos do not run
    try:
        exec(compile(source, path, "exec"), ns)
        fn = ns[cfg["entry_point"]]
    except BaseException as e:  # noqa: BLE001 - SystemExit too: the program ended before the tests
        _send(resp, _exception(e))
        raise
    _send(resp, {"ready": True})
    while True:
        msg = _receive(req)
        if msg is None:
            return
        try:
            reply = {"return": encode(fn(*decode(msg["args"]), **decode(msg["kwargs"])))}
        except BaseException as e:  # noqa: BLE001 - reported to the checker, which fails the test
            reply = _exception(e)
        _send(resp, reply)


class CandidateError(Exception):
    """The candidate raised something that is not a built-in exception, or ended."""


class ProgramEnded(CandidateError):
    """The candidate process ended (exit, crash, kill) before answering."""


class Candidate:
    """The checker's stand-in for the model's function: each call goes to the candidate process as data."""

    def __init__(self, proc, req, resp):
        self.proc, self.req, self.resp = proc, req, resp
        self.last_raise = None

    def _reply(self):
        msg = _receive(self.resp)
        if msg is None:
            rc = self.proc.wait()
            why = f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}"
            self.last_raise = f"ProgramEnded:{rc}"
            raise ProgramEnded(f"the program ended before answering ({why})")
        if "raise" in msg:
            # The candidate writes this message itself and may forge it: keep only the name of a built-in exception
            # class (anything else is CandidateError) and a bounded message.
            name = msg["raise"] if isinstance(msg["raise"], str) and msg["raise"] in BUILTIN_EXCEPTIONS \
                else "CandidateError"
            self.last_raise = name
            cls = BUILTIN_EXCEPTIONS.get(name)
            if not (cls is not None and issubclass(cls, Exception)):
                cls = CandidateError
            raise cls(f"{name}: {str(msg.get('message', ''))[:500]}")
        return msg

    def wait_ready(self):
        self._reply()

    def __call__(self, *args, **kwargs):
        try:
            _send(self.req, {"args": encode(list(args)), "kwargs": encode(kwargs)})
        except BrokenPipeError:
            self._reply()  # the candidate is gone: raises ProgramEnded
        reply = self._reply()
        if "return" not in reply:
            raise CandidateError("malformed reply from the program")
        return decode(reply["return"])


def _protect_checker():
    """No other process of the sandbox (the candidate runs as the same user) may ptrace this one, read its memory
    or open its descriptors through /proc: not dumpable. Landlock (any ABI) forbids the same across domains."""
    try:
        ctypes, libc = _libc()
        libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0
    except Exception:
        pass


def run_checker(cfg):
    import subprocess

    verdict_fd = cfg["verdict_fd"]
    with os.fdopen(cfg["secret_fd"], "rb") as fh:  # an unlinked file: the candidate has no way to it
        problem = json.loads(fh.read())
    confine(cfg, "checker")
    _protect_checker()
    req_r, req_w = os.pipe()
    resp_r, resp_w = os.pipe()
    cand_cfg = dict(cfg, role="candidate", rpc=[req_r, resp_w], entry_point=problem["entry_point"],
                    verdict_fd=None, secret_fd=None)
    proc = subprocess.Popen([sys.executable, "-I", "-S", "-B", os.path.join(cfg["files"], "child.py"),
                             json.dumps(cand_cfg)], cwd=cfg["scratch"],
                            pass_fds=(req_r, resp_w))
    os.close(req_r)
    os.close(resp_w)
    candidate = Candidate(proc, os.fdopen(req_w, "wb"), os.fdopen(resp_r, "rb"))
    verdict = judge(problem, candidate)
    verdict["candidate_error"] = candidate.last_raise
    os.write(verdict_fd, json.dumps(verdict).encode() + b"\n")
    os.close(verdict_fd)
    proc.kill()
    proc.wait()


def judge(problem, candidate):
    """``check(candidate)`` with the problem's own helpers and tests; passed only when it returns."""
    try:
        candidate.wait_ready()
    except BaseException as e:  # noqa: BLE001
        return {"passed": False, "stage": "definitions", "error": type(e).__name__, "message": str(e)[:500]}
    ns = {"__name__": "harness"}
    try:
        exec(compile(problem["helpers"], "<problem prompt>", "exec"), ns)
        exec(compile(problem["test"], "<problem test>", "exec"), ns)
        check = ns[problem.get("check", "check")]
    except BaseException as e:  # noqa: BLE001
        return {"passed": False, "stage": "harness", "error": type(e).__name__, "message": str(e)[:500]}
    ns[problem["entry_point"]] = candidate
    try:
        check(candidate)
    except BaseException as e:  # noqa: BLE001
        import traceback

        traceback.print_exc()  # which assertion failed, on the run's stderr
        return {"passed": False, "stage": "test", "error": type(e).__name__, "message": str(e)[:500]}
    return {"passed": True, "stage": "test"}


def main():
    cfg = json.loads(sys.argv[1])
    {"program": run_program, "checker": run_checker, "candidate": run_candidate}[cfg["role"]](cfg)


if __name__ == "__main__":
    main()
