"""tools/device_data.py's arithmetic of what each device call carries: the GGUF cut so that the two GGUF calls carry
the same, and the working tree counted as the device tool sends it (git's tracked and untracked-not-ignored files)."""

from __future__ import annotations

import runpy
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = runpy.run_path(str(ROOT / "tools" / "device_data.py"))
MIB = 2**20


def test_auto_cut_balances_the_two_gguf_calls():
    split = TOOL["split_bytes"]
    gguf, wheels = 98_362_432, 20_039_831
    for beside in (0, 2_400_000):  # train layout: piece 2 alone; eval layout: the examples travel with it
        cut = split("auto", gguf, wheels, beside)
        assert abs((wheels + cut) - (gguf - cut + beside)) <= 1
    assert split("37", gguf, wheels, 0) == 37 * MIB
    assert split("0", gguf, wheels, 0) == MIB and split("500", gguf, wheels, 0) == gguf - MIB  # both pieces >= 1 MiB
    with pytest.raises(SystemExit, match="--split-mib 'forty': give a size in MiB or auto"):
        split("forty", gguf, wheels, 0)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_the_working_tree_counts_what_git_would_send(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / ".gitignore").write_text("ignored/\n")
    (tmp_path / "tracked.txt").write_bytes(b"x" * 1000)
    git("add", ".gitignore", "tracked.txt")
    (tmp_path / "untracked.txt").write_bytes(b"y" * 300)
    (tmp_path / "ignored").mkdir()
    (tmp_path / "ignored" / "big.bin").write_bytes(b"z" * 10_000)
    assert TOOL["tree_bytes"](tmp_path) == 1000 + 300 + len("ignored/\n")
