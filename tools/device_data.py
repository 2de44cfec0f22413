"""Prepare what a one-GPU lease needs and cannot fetch, in carry folders that each fit one device call (64 MiB per
call, the working tree and the wheels included): the teacher GGUF in two or three pieces, the training text the lease
recipes read, and the evaluation examples they score.

``--layout train`` (the default; tools/device_e2e.sh and tools/device_sweep.sh: the wheels travel in the first call
and the training text does not fit beside either of the first two GGUF pieces) writes three folders:

* carry1: ``teacher.gguf.part1`` and ``manifest.json`` (sizes and sha256 of the GGUF and its pieces, the rows of every
  data file; the lease scripts check them);
* carry2: ``teacher.gguf.part2``;
* carry3: ``data/``: the first ``--wiki-docs`` documents of ``pretrain_wikipedia_en_00`` (default all 2,923: the
  lease recipes read them) and all of ``pretrain_wikipedia_en_01`` (the lease recipe's second stage-3a source),
  ``sft_mix``, the first ``--t0-rows`` rows of ``t0_train_55k``, and for each built-in task
  exactly the ``--limit`` examples that ``gendistill eval --limit N --seed 0`` selects from the full file (so the
  scores equal a run on the full data; the sweep grid evaluates 200, the end-to-end lease 500), and the few-shot pools;
  and, beside ``data/``, ``teacher.gguf.part3`` when the GGUF does not fit the first two calls (see below).

``--layout eval`` (tools/device_eval_speed.sh: no training) writes two folders, or three when the GGUF does not fit
the first two calls:

* carry1: ``teacher.gguf.part1`` and ``manifest.json`` (and ``data/`` with 850 wiki documents and ``sft_mix``, which
  device_eval_speed.sh does not carry: its first call names the piece and the manifest);
* carry2: ``teacher.gguf.part2`` and ``data/``: the ``--limit`` selected examples of each task (as above), the
  few-shot pools and the t0 rows (~2.4 MiB);
* carry3, only when two pieces do not fit: ``teacher.gguf.part3`` alone. The examples stay in carry2: the three-piece
  cut gives every call the same headroom wherever they travel, and device_eval_speed.sh's ``data`` call (carry2) puts
  them in place whether the GGUF has two pieces or three.

    python tools/device_data.py                       # train layout, 500 examples per task
    python tools/device_data.py --limit 200           # the sweep's evaluation
    python tools/device_data.py --layout eval         # the evaluation-speed lease

Where the GGUF is cut (``--split-mib``, default ``auto``), every call counted with the working tree the device tool
sends along (git's tracked and untracked-not-ignored files) and held to ``CALL_LIMIT_MIB`` (63 MiB: a margin under 64):

* ``auto``: in two pieces, so that the first call (the wheels in ``.whl``, piece 1 and the manifest) and the second
  (piece 2 and what else carry2 holds) carry about the same. When no two-piece cut fits both (either layout: the lease
  scripts have a third call), in three pieces, cut so that the three calls keep the same headroom under the limit;
  the third piece is ``carry3/teacher.gguf.part3`` (train: beside the data; eval: alone), and the lease scripts then
  keep piece 2 in the second call (``data``) and assemble the teacher in the third call's ``start``.
* ``--split-mib N``: piece 1 is N MiB; piece 2 the rest, or as much as fits the second call, with the rest in
  ``carry3/teacher.gguf.part3``.

The manifest's ``parts`` lists every piece's size (two or three entries; tools/device_teacher.py checks the count).
Each call's total is printed; one over the limit is an error, on one line (nothing is left half-written: the folders
are made again on the next run).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

EVAL_TASKS = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande", "boolq", "mmlu", "gsm8k", "triviaqa")
POOLS = ("mmlu_dev.jsonl.gz", "gsm8k_train.jsonl.gz")


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _head(src: Path, dst: Path, n: int) -> int:
    rows = 0
    with gzip.open(src, "rt", encoding="utf-8") as fi, gzip.open(dst, "wt", encoding="utf-8", compresslevel=9) as fo:
        for line in fi:
            if rows >= n:
                break
            fo.write(line)
            rows += 1
    return rows


def _selected(task_name: str, data: Path, dst: Path, limit: int) -> int:
    """Write the raw rows of the examples ``select(all, limit, seed=0)`` keeps, in file order."""
    from gendistill.eval.task import select
    from gendistill.eval.tasks import parse_tasks

    task = parse_tasks(task_name)[0]
    keep = {e.id for e in select(task.load("local"), limit, 0)}
    src = data / task.data_file
    n = 0
    with gzip.open(src, "rt", encoding="utf-8") as fi, gzip.open(dst / task.data_file, "wt", encoding="utf-8",
                                                                  compresslevel=9) as fo:
        for line in fi:
            if json.loads(line).get("id") in keep:
                fo.write(line)
                n += 1
    if n != len(keep):
        raise SystemExit(f"{task_name}: matched {n} rows for {len(keep)} selected ids (ids not unique?)")
    return n


#: what one device call may carry, the working tree included: 64 MiB, less a margin for the device tool's own
#: counting (it refused a call counted here at 63.8 MiB on 2026-12-05 and took one of 61.5)
CALL_LIMIT_MIB = 63


def _size(path: Path) -> int:
    """Bytes of a file, or of every file under a folder (0 when it does not exist)."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def tree_bytes(root: Path) -> int:
    """Bytes of what the device tool sends with every call: git's tracked and untracked-not-ignored files (0, with a
    note, outside a git checkout)."""
    try:
        names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                               capture_output=True, check=True).stdout.split(b"\0")
    except (OSError, subprocess.CalledProcessError):
        print("note: not a git checkout: the calls' totals leave out the working tree")
        return 0
    return sum(_size(root / n.decode()) for n in names if n)


def split_bytes(split_mib: str, gguf_bytes: int, wheels_bytes: int, beside_piece2: int) -> int:
    """Where the GGUF is cut: ``split_mib`` MiB, or for ``auto`` where call 1 (wheels + piece 1) and call 2 (piece 2 +
    ``beside_piece2``) carry the same; at least 1 MiB in each piece."""
    if split_mib == "auto":
        cut = (gguf_bytes + beside_piece2 - wheels_bytes) // 2
    else:
        try:
            cut = int(float(split_mib) * 2**20)
        except ValueError:
            raise SystemExit(f"error: --split-mib {split_mib!r}: give a size in MiB or auto") from None
    return min(max(cut, 2**20), gguf_bytes - 2**20)


def gguf_pieces(split_mib: str, gguf_bytes: int, wheels_bytes: int, beside_piece2: int, rooms: list[int]) -> list[int]:
    """The GGUF pieces' sizes, two or three. ``rooms``: the bytes call 1 and call 2 (and call 3, where the lease has a
    third call for a third piece: both layouts, see :func:`call_rooms`) can still take for their piece under
    ``CALL_LIMIT_MIB``, after the working tree and what else they carry.

    Two pieces cut by :func:`split_bytes` when they fit (``auto``: the balanced cut, moved within the rooms if the
    manifest's few bytes push it over). Otherwise, with a third room: ``auto`` gives each of the three calls the same
    headroom under the limit (what the three rooms hold beyond the GGUF, shared equally) and the rest is piece 3;
    an explicit ``split_mib`` keeps piece 1, fills call 2 and the rest is piece 3. Where that
    cannot help (no third room, or a room under 1 MiB), the two-piece cut: the caller's totals then report the call
    that is over."""
    mib = 2**20
    cut = split_bytes(split_mib, gguf_bytes, wheels_bytes, beside_piece2)
    room1, room2 = rooms[0], rooms[1]
    auto = split_mib == "auto"
    lo, hi = max(gguf_bytes - room2, mib), min(room1, gguf_bytes - mib)
    if auto and lo <= hi:  # some two-piece cut fits: the one nearest the balanced cut
        cut = min(max(cut, lo), hi)
    rest = gguf_bytes - cut
    if (rest <= room2 and (cut <= room1 or not auto)) or len(rooms) < 3:
        return [cut, rest]
    spare = max(sum(rooms[:3]) - gguf_bytes, 0) // 3 if auto else 0  # auto: the three calls keep equal headroom
    first, second = (room1 - spare if auto else cut), room2 - spare
    if first < mib or second < mib or gguf_bytes - first - second < 1:
        return [cut, rest]
    return [first, second, gguf_bytes - first - second]


def call_rooms(tree: int, wheels: int, manifest_bytes: int, beside: list[int]) -> list[int]:
    """What each call can still take for its GGUF piece under ``CALL_LIMIT_MIB``: every call carries the working tree
    (``tree`` bytes), call 1 the wheels and the manifest, call 2 and call 3 what else their carry folder holds
    (``beside``: carry2's bytes, carry3's; train: 0 and the data, eval: the examples and 0)."""
    limit = CALL_LIMIT_MIB * 2**20 - tree
    return [limit - wheels - manifest_bytes] + [limit - b for b in beside]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / ".device"))
    ap.add_argument("--layout", choices=("train", "eval"), default="train",
                    help="train: three carry folders (tools/device_e2e.sh, tools/device_sweep.sh); eval: two, or "
                         "three when the GGUF needs a third piece (tools/device_eval_speed.sh)")
    ap.add_argument("--limit", type=int, default=500, help="evaluation examples per task")
    ap.add_argument("--wiki-docs", type=int, default=None, help="pretrain_wikipedia_en_00 documents (train: 2923, "
                                                                "eval: 850)")
    ap.add_argument("--t0-rows", type=int, default=2500)
    ap.add_argument("--split-mib", default="auto", help="size of the first GGUF piece in MiB, or auto (default): "
                                                        "the two GGUF calls carry the same (a third piece in "
                                                        "carry3 when two do not fit)")
    args = ap.parse_args()
    sweep = args.layout == "train"  # three folders (eval: a third only for a third GGUF piece)
    args.wiki_docs = args.wiki_docs or (2923 if sweep else 850)

    from gendistill.io import data_dir
    from gendistill.teachers import resolve_teacher

    data = data_dir()
    if data is None:
        raise SystemExit("no ../shared/data here")
    out = Path(args.out)
    c1, c2, c3 = out / "carry1", out / "carry2", out / "carry3"
    folders = (c1, c2, c3) if sweep else (c1, c2)
    for c in (c1, c2, c3):
        if c.exists():
            shutil.rmtree(c)
    for c in folders:
        (c / "data").mkdir(parents=True)
    text_dir = (c3 if sweep else c1) / "data"  # the training text and sft_mix
    eval_dir = (c3 if sweep else c2) / "data"  # the evaluation examples, pools and t0 rows
    src = resolve_teacher("smollm2-135m-instruct")
    gguf = Path(src.location) / src.gguf_file
    blob = gguf.read_bytes()
    manifest = {"gguf_name": gguf.name, "gguf_bytes": len(blob), "gguf_sha256": hashlib.sha256(blob).hexdigest(),
                "wiki_docs": args.wiki_docs, "t0_rows": args.t0_rows, "eval_limit": args.limit, "rows": {}}
    manifest["rows"]["pretrain_wikipedia_en_00.jsonl.gz"] = _head(
        data / "pretrain_wikipedia_en_00.jsonl.gz", text_dir / "pretrain_wikipedia_en_00.jsonl.gz", args.wiki_docs)
    if sweep:  # smollm2-135m-lease's stage 3a reads this file too (whole; its first documents are held out)
        manifest["rows"]["pretrain_wikipedia_en_01.jsonl.gz"] = _head(
            data / "pretrain_wikipedia_en_01.jsonl.gz", text_dir / "pretrain_wikipedia_en_01.jsonl.gz", 10**9)
    shutil.copy(data / "sft_mix.jsonl.gz", text_dir)
    for t in EVAL_TASKS:
        manifest["rows"][t] = _selected(t, data, eval_dir, args.limit)
    for p in POOLS:
        shutil.copy(data / p, eval_dir)
    manifest["rows"]["t0_train_55k.jsonl.gz"] = _head(data / "t0_train_55k.jsonl.gz",
                                                      eval_dir / "t0_train_55k.jsonl.gz", args.t0_rows)
    for c in folders:  # an empty data/ is not left behind (train: carry1 and carry2 hold the GGUF only)
        if not any((c / "data").iterdir()):
            (c / "data").rmdir()
    tree, wheels = tree_bytes(ROOT), _size(ROOT / ".whl")
    if wheels == 0:
        print("note: no .whl here yet (bash tools/device_wheels.sh): the first call's total counts none")
    beside_piece2 = _size(c2)  # eval layout: the selected examples travel with piece 2
    # what each call can still take for its piece; the manifest counted at its largest (three sizes of the GGUF's)
    manifest_max = len(json.dumps({**manifest, "parts": [len(blob)] * 3, "layout": args.layout}, indent=1) + "\n")
    rooms = call_rooms(tree, wheels, manifest_max, [beside_piece2, _size(c3)])
    parts = gguf_pieces(args.split_mib, len(blob), wheels, beside_piece2, rooms)
    if len(parts) == 3 and c3 not in folders:  # eval layout: carry3 holds the third piece alone
        c3.mkdir(parents=True)
        folders = (*folders, c3)
    start = 0
    for i, (c, n) in enumerate(zip(folders, parts), 1):  # piece i into carry i
        (c / f"teacher.gguf.part{i}").write_bytes(blob[start:start + n])
        start += n
    manifest["parts"] = parts
    manifest["layout"] = args.layout
    (c1 / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    for c in folders:
        print(f"{c}: {_size(c) / 2**20:.1f} MiB")
    print(f"GGUF pieces: {', '.join(f'{n / 2**20:.1f}' for n in parts)} MiB")
    calls = {"1 (.whl, carry1's piece and manifest)": wheels + parts[0] + (c1 / "manifest.json").stat().st_size,
             "2 (carry2)": _size(c2)}
    if c3 in folders:
        held = (["data"] if (c3 / "data").is_dir() else []) + (["piece 3"] if len(parts) == 3 else [])
        calls[f"3 (carry3: {', '.join(held)})"] = _size(c3)
    over = []
    for name, size in calls.items():
        total = (size + tree) / 2**20
        print(f"call {name}: {total:.1f} MiB with the working tree's {tree / 2**20:.1f} MiB")
        if total > CALL_LIMIT_MIB:
            over.append(f"call {name} would carry {total:.1f} MiB (> {CALL_LIMIT_MIB} MiB)")
    print(json.dumps(manifest["rows"]))
    if not sweep:  # which carry goes with which call of tools/device_eval_speed.sh
        print(f"tools/device_eval_speed.sh, {len(parts)} GGUF pieces: call 1 'setup' carries .whl and carry1's piece "
              "and manifest; call 2 'data' .device/carry2 (" + (
                  "piece 2 kept); call 3 'start' .device/carry3 (the teacher assembled)" if len(parts) == 3 else
                  "the teacher assembled); call 3 'start' nothing (no carry3)"))
    if over:
        raise SystemExit("error: " + "; ".join(over) + ": pass --split-mib to move bytes between the GGUF calls, "
                         "or carry less (git-ignore what the lease does not need; fewer --wiki-docs or --t0-rows)")


if __name__ == "__main__":
    main()
