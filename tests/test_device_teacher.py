"""tools/device_teacher.py: every lease script assembles the teacher GGUF from two or three carried pieces with it."""

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


def _three_pieces(tmp_path: Path, blob: bytes, cuts: tuple[int, int], parts: bool = True) -> tuple[Path, Path, Path]:
    """The train layout when two pieces do not fit: piece 1 and the manifest (its ``parts``: every piece's size) in the
    teacher folder, piece 2 and piece 3 in their carries."""
    teacher, part2 = _pieces(tmp_path, blob[:cuts[1]], cuts[0])
    part3 = tmp_path / "carry3" / "teacher.gguf.part3"
    part3.parent.mkdir()
    part3.write_bytes(blob[cuts[1]:])
    manifest = {"gguf_name": "model-q4.gguf", "gguf_bytes": len(blob), "gguf_sha256": hashlib.sha256(blob).hexdigest()}
    if parts:
        manifest["parts"] = [cuts[0], cuts[1] - cuts[0], len(blob) - cuts[1]]
    (teacher / "manifest.json").write_text(json.dumps(manifest))
    return teacher, part2, part3


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


def test_three_pieces_assemble_to_the_checked_file(tmp_path):
    blob = bytes(range(256)) * 9000 + b"tail"  # over two 1 MiB read blocks
    teacher, part2, part3 = _three_pieces(tmp_path, blob, cuts=(1_100_000, 2_000_003))
    r = _run(teacher, part2, part3)
    assert r.returncode == 0, r.stderr
    assert "3 pieces" in r.stdout
    assert (teacher / "model-q4.gguf").read_bytes() == blob
    assert sorted(p.name for p in teacher.iterdir()) == ["manifest.json", "model-q4.gguf"]
    assert part2.exists() and part3.exists()  # the carried pieces are left alone


def test_two_pieces_with_parts_in_the_manifest_assemble(tmp_path):
    blob = bytes(range(256)) * 100
    teacher, part2 = _pieces(tmp_path, blob, cut=10_000)
    manifest = json.loads((teacher / "manifest.json").read_text())
    (teacher / "manifest.json").write_text(json.dumps({**manifest, "parts": [10_000, len(blob) - 10_000]}))
    r = _run(teacher, part2)
    assert r.returncode == 0, r.stderr
    assert (teacher / "model-q4.gguf").read_bytes() == blob


def _one_error_line_and_nothing_new(r: subprocess.CompletedProcess, teacher: Path, match: str) -> None:
    assert r.returncode == 5, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], lines
    assert sorted(p.name for p in teacher.iterdir()) == ["manifest.json", "teacher.gguf.part1"]


def test_the_number_of_pieces_must_be_the_manifests(tmp_path):
    blob = bytes(range(256)) * 100
    teacher, part2, part3 = _three_pieces(tmp_path, blob, cuts=(7_000, 15_000))
    r = _run(teacher, part2)  # the third piece forgotten
    _one_error_line_and_nothing_new(r, teacher, "lists 3 GGUF pieces, 2 given")
    manifest = json.loads((teacher / "manifest.json").read_text())
    (teacher / "manifest.json").write_text(json.dumps({**manifest, "parts": manifest["parts"][:2]}))
    r = _run(teacher, part2, part3)  # one too many for a two-piece manifest
    _one_error_line_and_nothing_new(r, teacher, "lists 2 GGUF pieces, 3 given")


@pytest.mark.parametrize("parts", [True, False], ids=["sizes-in-manifest", "no-parts-key"])
def test_pieces_in_the_wrong_order_are_rejected(tmp_path, parts):
    blob = bytes(range(256)) * 100
    teacher, part2, part3 = _three_pieces(tmp_path, blob, cuts=(7_000, 15_000), parts=parts)
    r = _run(teacher, part3, part2)
    _one_error_line_and_nothing_new(r, teacher, "wrong order" if parts else "do not match")


def test_equal_sized_pieces_swapped_fail_the_sha256(tmp_path):
    blob = (bytes(range(251)) * 120)[:30_000]  # piece 2 and piece 3 of the same size, not the same bytes
    teacher, part2, part3 = _three_pieces(tmp_path, blob, cuts=(10_000, 20_000))
    assert part2.stat().st_size == part3.stat().st_size and part2.read_bytes() != part3.read_bytes()
    r = _run(teacher, part3, part2)
    _one_error_line_and_nothing_new(r, teacher, "do not match")
