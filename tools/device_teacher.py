"""Assemble the teacher GGUF on the device from the two pieces that ``tools/device_data.py`` cut (one piece per device
call: 64 MiB carried per call) and check it against the manifest, for every lease script (device_e2e.sh,
device_sweep.sh, device_eval_speed.sh). Standard library only: it runs before the wheels are installed.

    python3 tools/device_teacher.py TEACHER_DIR PART2

``TEACHER_DIR`` holds ``teacher.gguf.part1`` and ``manifest.json`` (copied there by the lease's first call); ``PART2``
is ``teacher.gguf.part2`` from the second carry. On success the GGUF is ``TEACHER_DIR/<gguf_name>`` and the first
piece is removed; on a size or sha256 mismatch nothing is left but the pieces, one ``error:`` line, exit 5.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path


def assemble(teacher_dir: Path, part2: Path) -> Path:
    """Concatenate ``teacher_dir/teacher.gguf.part1`` and ``part2`` into ``teacher_dir/<manifest gguf_name>``, checked
    against the manifest's size and sha256. Raises ``ValueError`` (nothing written) on a mismatch."""
    manifest = json.loads((teacher_dir / "manifest.json").read_text())
    part1 = teacher_dir / "teacher.gguf.part1"
    tmp = teacher_dir / (manifest["gguf_name"] + ".partial")
    h, n = hashlib.sha256(), 0
    with open(tmp, "wb") as out:
        for piece in (part1, part2):
            with open(piece, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
                    n += len(block)
                    out.write(block)
    if n != manifest["gguf_bytes"] or h.hexdigest() != manifest["gguf_sha256"]:
        tmp.unlink()
        raise ValueError(f"the GGUF pieces {part1} + {part2} do not match {teacher_dir / 'manifest.json'}: "
                         f"{n} bytes, sha256 {h.hexdigest()[:12]}… (manifest: {manifest['gguf_bytes']} bytes, "
                         f"{manifest['gguf_sha256'][:12]}…)")
    gguf = teacher_dir / manifest["gguf_name"]
    shutil.move(tmp, gguf)
    part1.unlink()
    return gguf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("teacher_dir", type=Path, help="folder with teacher.gguf.part1 and manifest.json")
    ap.add_argument("part2", type=Path, help="teacher.gguf.part2 from the second carry")
    args = ap.parse_args()
    for p in (args.teacher_dir / "manifest.json", args.teacher_dir / "teacher.gguf.part1", args.part2):
        if not p.is_file():
            sys.exit(f"error: {p} is missing (run the lease's 'setup' call first, and carry the second piece)")
    try:
        gguf = assemble(args.teacher_dir, args.part2)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(5)
    print(f"teacher: {gguf} {gguf.stat().st_size} bytes, sha256 ok")


if __name__ == "__main__":
    main()
