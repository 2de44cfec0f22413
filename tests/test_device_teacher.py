"""tools/device_teacher.py: every lease script assembles the teacher GGUF from two carried pieces with it."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "device_teacher.py"


def _pieces(tmp_path: Path, blob: bytes, cut: int) -> tuple[Path, Path]:
    """The layout tools/device_data.py carries: piece 1 and the manifest in the teacher folder, piece 2 elsewhere."""
    teacher, carry2 = tmp_path / "teacher", tmp_path / "carry2"
    teacher.mkdir()
    carry2.mkdir()
    (teacher / "teacher.gguf.part1").write_bytes(blob[:cut])
    (carry2 / "teacher.gguf.part2").write_bytes(blob[cut:])
    manifest = {"gguf_name": "model-q4.gguf", "gguf_bytes": len(blob), "gguf_sha256": hashlib.sha256(blob).hexdigest()}
    (teacher / "manifest.json").write_text(json.dumps(manifest))
    return teacher, carry2 / "teacher.gguf.part2"


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True, timeout=60)


def test_pieces_assemble_to_the_checked_file(tmp_path):
    blob = bytes(range(256)) * 5000 + b"tail"  # over one 1 MiB read block
    teacher, part2 = _pieces(tmp_path, blob, cut=700_001)
    r = _run(teacher, part2)
    assert r.returncode == 0, r.stderr
    assert (teacher / "model-q4.gguf").read_bytes() == blob
    assert sorted(p.name for p in teacher.iterdir()) == ["manifest.json", "model-q4.gguf"]


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_piece_is_one_error_line_and_no_gguf(tmp_path, damage):
    blob = bytes(range(256)) * 100
    teacher, part2 = _pieces(tmp_path, blob, cut=10_000)
    data = bytearray(part2.read_bytes())
    if damage == "flip":
        data[5] ^= 1
    else:
        del data[-1]
    part2.write_bytes(bytes(data))
    r = _run(teacher, part2)
    assert r.returncode == 5
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "do not match" in lines[0]
    assert sorted(p.name for p in teacher.iterdir()) == ["manifest.json", "teacher.gguf.part1"]  # nothing new


def test_missing_piece_names_it(tmp_path):
    teacher, part2 = _pieces(tmp_path, b"x" * 100, cut=50)
    part2.unlink()
    r = _run(teacher, part2)
    assert r.returncode != 0 and "teacher.gguf.part2 is missing" in r.stderr
