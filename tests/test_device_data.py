"""tools/device_data.py's arithmetic of what each device call carries: the GGUF cut so that the two GGUF calls carry
the same, or in three pieces when two do not fit (either layout), and the working tree counted as the device tool sends
it (git's tracked and untracked-not-ignored files)."""

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


GGUF, WHEELS = 98_362_432, 20_039_831


def test_two_pieces_when_they_fit():
    pieces = TOOL["gguf_pieces"]
    balanced = TOOL["split_bytes"]("auto", GGUF, WHEELS, 0)
    rooms = [60 * MIB - WHEELS, 60 * MIB, 20 * MIB]  # 100 MiB for the GGUF in the first two calls
    assert pieces("auto", GGUF, WHEELS, 0, rooms) == [balanced, GGUF - balanced]
    # the balanced cut one byte over call 1's room (the manifest's bytes): moved, still two pieces
    tight = [balanced - 1, GGUF - balanced + 10]
    assert pieces("auto", GGUF, WHEELS, 0, tight + [20 * MIB]) == [balanced - 1, GGUF - balanced + 1]
    assert pieces("37", GGUF, WHEELS, 0, [40 * MIB, 80 * MIB, 20 * MIB]) == [37 * MIB, GGUF - 37 * MIB]


def test_three_pieces_when_two_do_not_fit():
    pieces = TOOL["gguf_pieces"]
    room1, room2 = 35 * MIB + 123, 55 * MIB + 45  # 90 MiB for a 93.8 MiB GGUF: no two-piece cut fits
    got = pieces("auto", GGUF, WHEELS, 0, [room1, room2, 12 * MIB])
    spare = (room1 + room2 + 12 * MIB - GGUF) // 3  # what the three calls hold beyond the GGUF, shared equally
    assert got == [room1 - spare, room2 - spare, GGUF - room1 - room2 + 2 * spare] and sum(got) == GGUF
    assert 12 * MIB - got[2] >= spare  # call 3 keeps at least the headroom of the others
    # an explicit first piece is kept; piece 2 fills call 2, the rest is piece 3
    got = pieces("30", GGUF, WHEELS, 0, [room1, room2, 12 * MIB])
    assert got == [30 * MIB, room2, GGUF - 30 * MIB - room2]
    # ... and two pieces while piece 2 fits call 2 (piece 1 over call 1 is the caller's error to report)
    assert pieces("40", GGUF, WHEELS, 0, [room1, room2, 12 * MIB]) == [40 * MIB, GGUF - 40 * MIB]
    # no third call to hold a third piece: two pieces, the over-full call reported by the caller's totals
    assert len(pieces("auto", GGUF, WHEELS, 0, [room1, room2])) == 2
    assert sum(pieces("auto", GGUF, WHEELS, 0, [room1, room2])) == GGUF


def test_call_rooms_leave_out_the_working_tree_and_what_each_call_carries_beside_its_piece():
    rooms = TOOL["call_rooms"](7 * MIB, 20 * MIB, 600, [2 * MIB, 0])
    limit = TOOL["CALL_LIMIT_MIB"] * MIB - 7 * MIB
    assert rooms == [limit - 20 * MIB - 600, limit - 2 * MIB, limit]


# the eval layout (tools/device_eval_speed.sh): the selected examples, pools and t0 rows travel in carry2 with piece 2;
# carry3, when there is one, holds piece 3 alone
EXAMPLES, MANIFEST = 2_519_000, 600


def _eval_calls(tree: int, parts: list[int]) -> list[int]:
    """Each call's bytes as device_eval_speed.sh carries them: setup (.whl, piece 1, manifest), data (carry2), start
    (carry3: piece 3, when there is one)."""
    calls = [tree + WHEELS + parts[0] + MANIFEST, tree + EXAMPLES + parts[1]]
    return calls + [tree + p for p in parts[2:]]


def test_eval_layout_two_pieces_when_they_fit():
    tree = 2 * MIB  # a small working tree: the first two calls hold the GGUF
    rooms = TOOL["call_rooms"](tree, WHEELS, MANIFEST, [EXAMPLES, 0])
    parts = TOOL["gguf_pieces"]("auto", GGUF, WHEELS, EXAMPLES, rooms)
    assert parts == [TOOL["split_bytes"]("auto", GGUF, WHEELS, EXAMPLES), GGUF - parts[0]]  # the balanced cut
    calls = _eval_calls(tree, parts)
    assert max(calls) <= TOOL["CALL_LIMIT_MIB"] * MIB and abs(calls[0] - calls[1]) <= MANIFEST + 1


def test_eval_layout_three_pieces_when_two_do_not_fit():
    limit = TOOL["CALL_LIMIT_MIB"] * MIB
    tree = 8_074_000  # 7.7 MiB (2026-12-06): the balanced two-piece cut carried 65.2 MiB in each call
    two = TOOL["split_bytes"]("auto", GGUF, WHEELS, EXAMPLES)
    assert min(_eval_calls(tree, [two, GGUF - two])) > limit
    rooms = TOOL["call_rooms"](tree, WHEELS, MANIFEST, [EXAMPLES, 0])
    parts = TOOL["gguf_pieces"]("auto", GGUF, WHEELS, EXAMPLES, rooms)
    assert len(parts) == 3 and sum(parts) == GGUF and min(parts) >= MIB
    calls = _eval_calls(tree, parts)
    assert max(calls) <= limit and max(calls) - min(calls) <= 3  # the same headroom in all three calls
    # an explicit first piece: piece 2 fills call 2 to the limit, the rest is piece 3 (call 3 alone)
    parts = TOOL["gguf_pieces"]("20", GGUF, WHEELS, EXAMPLES, rooms)
    assert parts[0] == 20 * MIB and _eval_calls(tree, parts)[1] == limit and sum(parts) == GGUF
    assert max(_eval_calls(tree, parts)) <= limit


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
