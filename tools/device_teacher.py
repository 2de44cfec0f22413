"""Assemble the teacher GGUF on the device from the two or three pieces that ``tools/device_data.py`` cut (one piece
per device call: 64 MiB carried per call; a third piece travels with the data when two do not fit) and check it
against the manifest, for every lease script (device_e2e.sh, device_sweep.sh, device_eval_speed.sh). Standard library
only: it runs before the wheels are installed.

    python3 tools/device_teacher.py TEACHER_DIR PART2 [PART3]

``TEACHER_DIR`` holds ``teacher.gguf.part1`` and ``manifest.json`` (copied there by the lease's first call); ``PART2``
is ``teacher.gguf.part2`` from the second carry, ``PART3`` (when the manifest lists three ``parts``)
``teacher.gguf.part3`` from the third. On success the GGUF is ``TEACHER_DIR/<gguf_name>`` and the first piece is
removed; when the number of pieces given is not the manifest's, or a piece's size, or the whole's size or sha256 does
not match, nothing is left but the pieces, one ``error:`` line, exit 5.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path


def assemble(teacher_dir: Path, *rest: Path) -> Path:
    """Concatenate ``teacher_dir/teacher.gguf.part1`` and the pieces ``rest`` (in order) into
    ``teacher_dir/<manifest gguf_name>``, checked against the manifest: the number of pieces and each one's size (when
    it lists ``parts``), the whole's size and sha256. Raises ``ValueError`` (nothing written) on a mismatch."""
    manifest = json.loads((teacher_dir / "manifest.json").read_text())
    part1 = teacher_dir / "teacher.gguf.part1"
    pieces = (part1, *rest)
    parts = manifest.get("parts")
    if parts is not None:
        if len(pieces) != len(parts):
            raise ValueError(f"{teacher_dir / 'manifest.json'} lists {len(parts)} GGUF pieces, {len(pieces)} given "
                             f"({' + '.join(map(str, pieces))}): pass the {len(parts) - 1} after part1, in order")
        for i, (piece, size) in enumerate(zip(pieces, parts), 1):
            if piece.stat().st_size != size:
                raise ValueError(f"GGUF piece {i} ({piece}) is {piece.stat().st_size} bytes, "
                                 f"{teacher_dir / 'manifest.json'} says {size} (the pieces in the wrong order, or "
                                 "from another run of tools/device_data.py?)")
    tmp = teacher_dir / (manifest["gguf_name"] + ".partial")
    h, n = hashlib.sha256(), 0
    try:
        with open(tmp, "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                        n += len(block)
                        out.write(block)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if n != manifest["gguf_bytes"] or h.hexdigest() != manifest["gguf_sha256"]:
        tmp.unlink()
        raise ValueError(f"the GGUF pieces {' + '.join(map(str, pieces))} do not match "
                         f"{teacher_dir / 'manifest.json'}: {n} bytes, sha256 {h.hexdigest()[:12]}… (manifest: "
                         f"{manifest['gguf_bytes']} bytes, {manifest['gguf_sha256'][:12]}…)")
    gguf = teacher_dir / manifest["gguf_name"]
    shutil.move(tmp, gguf)
    part1.unlink()
    return gguf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("teacher_dir", type=Path, help="folder with teacher.gguf.part1 and manifest.json")
    ap.add_argument("part2", type=Path, help="teacher.gguf.part2 from the second carry")
    ap.add_argument("part3", type=Path, nargs="?", help="teacher.gguf.part3 from the third carry (when the manifest "
                                                         "lists three parts)")
    args = ap.parse_args()
    rest = [p for p in (args.part2, args.part3) if p is not None]
    for p in (args.teacher_dir / "manifest.json", args.teacher_dir / "teacher.gguf.part1", *rest):
        if not p.is_file():
            sys.exit(f"error: {p} is missing (run the lease's 'setup' call first, and carry the other pieces)")
    try:
        gguf = assemble(args.teacher_dir, *rest)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(5)
    print(f"teacher: {gguf} {gguf.stat().st_size} bytes ({len(rest) + 1} pieces), sha256 ok")


if __name__ == "__main__":
    main()
