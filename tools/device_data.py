"""Prepare what a one-GPU lease needs and cannot fetch, in carry folders that each fit one device call (64 MiB per
call, the working tree and the wheels included): the teacher GGUF in two pieces, the training text the lease recipes
read, and the evaluation examples they score.

``--layout train`` (the default; tools/device_e2e.sh and tools/device_sweep.sh: the wheels travel in the first call
and the training text does not fit beside a GGUF piece) writes three folders:

* carry1: ``teacher.gguf.part1`` and ``manifest.json`` (sizes and sha256 of the GGUF and its pieces, the rows of every
  data file; the lease scripts check them);
* carry2: ``teacher.gguf.part2``;
* carry3: ``data/``: the first ``--wiki-docs`` documents of ``pretrain_wikipedia_en_00`` (default all 2,923: the
  lease recipes read them) and all of ``pretrain_wikipedia_en_01`` (the lease recipe's second stage-3a source),
  ``sft_mix``, the first ``--t0-rows`` rows of ``t0_train_55k``, and for each built-in task
  exactly the ``--limit`` examples that ``gendistill eval --limit N --seed 0`` selects from the full file (so the
  scores equal a run on the full data; the sweep grid evaluates 200, the end-to-end lease 500), and the few-shot pools.

``--layout eval`` (tools/device_eval_speed.sh: no training) writes two: carry1 = ``teacher.gguf.part1`` +
``manifest.json`` (+ ``data/`` with 850 wiki documents and ``sft_mix``), carry2 = ``teacher.gguf.part2`` + the
selected examples, pools and t0 rows.

    python tools/device_data.py --split-mib 40                     # train layout, 500 examples per task
    python tools/device_data.py --split-mib 40 --limit 200         # the sweep's evaluation
    python tools/device_data.py --layout eval --split-mib 40       # the evaluation-speed lease
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import shutil
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / ".device"))
    ap.add_argument("--layout", choices=("train", "eval"), default="train",
                    help="train: three carry folders (tools/device_e2e.sh, tools/device_sweep.sh); eval: two "
                         "(tools/device_eval_speed.sh)")
    ap.add_argument("--limit", type=int, default=500, help="evaluation examples per task")
    ap.add_argument("--wiki-docs", type=int, default=None, help="pretrain_wikipedia_en_00 documents (train: 2923, "
                                                                "eval: 850)")
    ap.add_argument("--t0-rows", type=int, default=2500)
    ap.add_argument("--split-mib", type=float, default=33.8, help="size of the first GGUF piece")
    args = ap.parse_args()
    sweep = args.layout == "train"  # three folders
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
    cut = int(args.split_mib * 2**20)
    (c1 / "teacher.gguf.part1").write_bytes(blob[:cut])
    (c2 / "teacher.gguf.part2").write_bytes(blob[cut:])
    manifest = {"gguf_name": gguf.name, "gguf_bytes": len(blob), "gguf_sha256": hashlib.sha256(blob).hexdigest(),
                "parts": [cut, len(blob) - cut], "wiki_docs": args.wiki_docs, "t0_rows": args.t0_rows,
                "eval_limit": args.limit, "rows": {}}
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
    manifest["layout"] = args.layout
    (c1 / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    for c in folders:
        size = sum(f.stat().st_size for f in c.rglob("*") if f.is_file())
        print(f"{c}: {size / 2**20:.1f} MiB")
    print(json.dumps(manifest["rows"]))


if __name__ == "__main__":
    main()
