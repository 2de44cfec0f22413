"""The training data path on the host: what the trainer's data thread spends on one optimizer step's batch (read,
tokenise, pack, collate, the packed-attention boundaries: ``gendistill.distill.trainer.prefetch_step``), on the first
pass over the data and on later passes, and how much it holds the GIL — time the main thread, which launches the GPU
kernels, cannot run Python.

Why: on the H200, stage 3a of the SmolLM2 pair trains at ~147K tokens/s in ``benchmarks/train_throughput.py``
(synthetic batches, no data thread work) but at ~120K in real runs (docs/results.md §8, §10). A small model's step
is launch-bound, so a data thread that holds the GIL delays the launches.

Measured here on the CPU (no GPU needed): a recipe stage's real stream (default: the lease recipe's stage 3a on
``pretrain_wikipedia_en_00``, limited to ``--documents`` documents so that later passes come quickly), the teacher's
tokenizer, ``--steps`` steps of ``batch_size x seq_len`` tokens, each under ``cProfile``: the time inside the Rust
tokenizer's ``encode`` (which releases the GIL) and the rest of the step (Python packing, list -> tensor conversion:
GIL held). A step counts as first pass when every document it read was new, as a later pass when every one had been
read before.

    python benchmarks/data_path.py [--recipe smollm2-135m-lease] [--stage stage3a] [--documents 200] [--steps 40]
        [--out docs/results/data_path_<card>.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import cProfile
import pstats
import statistics
import sys
import time
from pathlib import Path

import torch

from gendistill.distill.data import BatchStream, PackedStream
from gendistill.distill.recipe_files import load_recipe
from gendistill.distill.stages import StageModule
from gendistill.distill.trainer import prefetch_step
from gendistill.io import portable_command
from gendistill.models.loading import load_model


class _Prepare:
    """What the trainer's data thread calls on each micro-batch: the stage module's ``prepare`` (the same for every
    stage: the packed documents' boundaries, computed on the host)."""

    prepare = StageModule.prepare


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="smollm2-135m-lease", help="a shipped recipe name or a recipe file")
    ap.add_argument("--stage", default="stage3a")
    ap.add_argument("--documents", type=int, default=200,
                    help="read only this many documents of each source (later passes come sooner)")
    ap.add_argument("--steps", type=int, default=40, help="optimizer steps of data to produce")
    ap.add_argument("--out", type=Path, help="JSON file")
    args = ap.parse_args(argv)

    recipe = load_recipe(args.recipe)
    stage = next(s for s in recipe.stages if s.name == args.stage)
    data = recipe.stage_data(stage)
    data = data.model_copy(update={"sources": [s.model_copy(update={"limit": args.documents}) for s in data.sources]})
    _, tok = load_model(recipe.teacher.spec, dtype=torch.float32, device=torch.device("cpu"))
    packed = PackedStream(data, tok, stage.seq_len, stage.masking)
    packed.validate()
    batches = BatchStream(packed, stage.batch_size, stage.micro_batch_size)
    step_tokens = stage.batch_size * stage.seq_len
    dev = torch.device("cpu")

    # the data thread's time per step, and how much of it is the tokenizer's (HF tokenizers' encode releases the GIL:
    # the rest of the step — Python packing, list -> tensor conversion — holds it). A step is of the first pass when
    # every document it read was new, of a later pass when every one had been read before (the few steps across the
    # boundary count as neither).
    n_docs = sum(len(r._records) for r in packed.readers)  # noqa: SLF001  (table sources: the training documents)
    first, later = [], []
    for _ in range(args.steps):
        start = batches.state.draw
        prof = cProfile.Profile()
        t = time.perf_counter()
        prof.enable()
        prefetch_step(batches, _Prepare(), dev)
        prof.disable()
        dt = time.perf_counter() - t
        stats = pstats.Stats(prof).stats  # {(file, line, name): (calls, prim, tottime, cumtime, callers)}
        tok_s = sum(v[2] for k, v in stats.items() if "encode" in k[2] and "tokenizers" in k[2])
        if batches.state.draw <= n_docs:
            first.append((dt, tok_s))
        elif start >= 1.2 * n_docs:  # past every source's first epoch (the mixture's draws are not exactly even)
            later.append((dt, tok_s))
    draws = batches.state.draw

    def med(rows, i):
        return 1e3 * statistics.median(r[i] for r in rows) if rows else None

    def held(rows):
        return 1e3 * statistics.median(r[0] - r[1] for r in rows) if rows else None

    row = {
        "benchmark": "data_path", "recipe": args.recipe, "stage": args.stage, "documents": args.documents,
        "steps": args.steps, "step_tokens": step_tokens, "training_documents": n_docs, "draws_read": draws,
        "first_pass_steps": len(first), "later_pass_steps": len(later),
        "ms_per_step_first_pass": med(first, 0), "ms_tokenizer_first_pass": med(first, 1),
        "ms_gil_held_first_pass": held(first),
        "ms_per_step_later_passes": med(later, 0), "ms_tokenizer_later_passes": med(later, 1),
        "ms_gil_held_later_passes": held(later),
        "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__, "command": portable_command(sys.argv),
    }
    print(f"| pass | steps | ms per step of {step_tokens:,} tokens | of which the tokenizer (GIL released) | "
          "the rest (GIL held) |\n|---|---:|---:|---:|---:|")
    for name, rows in (("first", first), ("later", later)):
        if rows:
            print(f"| {name} | {len(rows)} | {med(rows, 0):.1f} | {med(rows, 1):.1f} | {held(rows):.1f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(row, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
