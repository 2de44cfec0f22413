"""The execution sandbox refuses what a malicious or runaway completion tries: writes outside its scratch folder (by
many routes), network connections, runaway time and memory; it still lets honest code run and write in its folder.
Each case is checked with every layer on, and the kernel layers (Landlock, network namespace) alone where this
machine has them."""

from __future__ import annotations

import socket
import textwrap

import pytest

from gendistill.eval import sandbox as S

CAPS = S.capabilities()
KERNEL_FS = pytest.mark.skipif(not CAPS["landlock_fs"], reason="kernel has no Landlock")
KERNEL_NET = pytest.mark.skipif(not (CAPS["landlock_net"] or CAPS["network_namespace"]),
                                reason="neither Landlock TCP rules nor network namespaces here")


def _run(code: str, **limits) -> S.ExecResult:
    return S.run_python(textwrap.dedent(code), S.Limits(**{"timeout_s": 10, **limits}))


def test_honest_code_runs_and_writes_in_its_folder():
    r = _run("""
        import os, tempfile, json
        from typing import List
        open("a.txt", "w").write("x" * 10)
        os.mkdir("d"); os.rename("a.txt", "d/b.txt")
        with tempfile.NamedTemporaryFile("w", delete=False) as f:
            f.write("tmp")
        print(json.dumps([open("d/b.txt").read(), os.path.dirname(f.name) == os.getcwd()]))
    """)
    assert r.status == S.PASSED, r.stderr
    assert r.stdout.strip() == '["xxxxxxxxxx", true]'


WRITES = {
    "open": "open(T + '/pwn', 'w').write('x')",
    "os.open": "import os; os.close(os.open(T + '/pwn', os.O_CREAT | os.O_WRONLY))",
    "append to existing": "open(T + '/sentinel', 'a').write('x')",
    "remove existing": "import os; os.remove(T + '/sentinel')",
    "rename out": "import os; open('x', 'w').close(); os.rename('x', T + '/pwn')",
    "pathlib": "import pathlib; pathlib.Path(T, 'pwn').write_text('x')",
    "chdir then relative": "import os; os.chdir(T); open('pwn', 'w')",
    "symlink then write": "import os; os.symlink(T, 'link'); open('link/pwn', 'w')",
    "os.system": "import os; os.system('touch ' + T + '/pwn')",
    "subprocess": "import subprocess; subprocess.run(['touch', T + '/pwn'])",
    "ctypes": "import ctypes; ctypes.CDLL(None).system(('touch ' + T + '/pwn').encode())",
    "shutil.rmtree": "import shutil; shutil.rmtree(T)",
}


@pytest.mark.parametrize("guard", [True, pytest.param(False, marks=KERNEL_FS, id="kernel-only")])
@pytest.mark.parametrize("how", sorted(WRITES))
def test_writes_outside_the_scratch_folder_are_refused(how, guard, tmp_path):
    if not guard and how in ("os.system", "subprocess", "ctypes"):
        pytest.skip("process spawning and ctypes are refused by the audit hook; Landlock still binds the child")
    (tmp_path / "sentinel").write_text("keep")
    r = _run(f"T = {str(tmp_path)!r}\n{WRITES[how]}\n", python_guard=guard)
    assert r.status != S.PASSED or how in ("os.system", "subprocess"), r
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sentinel"], r.stderr
    assert (tmp_path / "sentinel").read_text() == "keep"
    if guard:
        assert r.status == S.REFUSED, r.stderr


@pytest.mark.parametrize("guard", [True, pytest.param(False, marks=KERNEL_NET, id="kernel-only")])
def test_no_network_connection(guard):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        r = _run(f"""
            import socket
            s = socket.create_connection(("127.0.0.1", {port}), timeout=3)
            s.sendall(b"leak")
        """, python_guard=guard)
        with pytest.raises(socket.timeout):
            server.accept()  # nothing ever connected
    finally:
        server.close()
    assert r.status in (S.REFUSED, S.FAILED), r
    assert "Error" in r.stderr


def test_runaway_time_is_stopped():
    r = _run("while True:\n    pass\n", timeout_s=1.0)
    assert r.status == S.TIMEOUT and r.seconds < 5


def test_sleeping_past_the_wall_clock_is_stopped():
    r = _run("import time; time.sleep(30)", timeout_s=1.0)
    assert r.status == S.TIMEOUT and r.seconds < 5


def test_runaway_memory_is_stopped():
    r = _run("x = bytearray(2 << 30)\nprint('allocated')", memory_mb=256)
    assert r.status == S.MEMORY and "allocated" not in r.stdout


def test_failures_are_reported_and_scratch_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(S.tempfile, "tempdir", str(tmp_path))
    r = _run("assert 1 == 2")
    assert r.status == S.FAILED and "AssertionError" in r.stderr
    assert list(tmp_path.iterdir()) == []  # the scratch folder is gone
    rs = S.run_many(["print(1)", "raise SystemExit(3)"], S.Limits(timeout_s=10), workers=2)
    assert [x.status for x in rs] == [S.PASSED, S.FAILED] and rs[1].returncode == 3
