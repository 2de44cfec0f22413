"""FSDP2 with world size 1 against the plain trainer on one GPU: the same recipe (stage 3a of the SmolLM2 pair:
teacher ``smollm2-135m-instruct``, student ``every:4``) run twice in one process, (a) the plain trainer
(``run.distributed: ddp`` on one process = no wrapper) and (b) FSDP2 over a one-rank process group
(``run.distributed: fsdp``: student and teacher sharded per decoder block, DCP checkpoint written), then compared
step by step, with each run's peak CUDA memory next to the memory planner's figure for it and each run's tokens/s
(the trainer's own figure, median over the steps after the first).

    python benchmarks/fsdp_check.py --out docs/results/fsdp_check_h200.json     # one GPU, < 6 min on a fresh H200
    python benchmarks/fsdp_check.py --tiny --out /tmp/fsdp_check.json           # CPU smoke run (~1 min)

Data: synthetic documents of random words from a fixed list (seeded), packed to ``--seq`` tokens; the two runs read
the same stream. Tolerance: both runs do the same arithmetic (bf16 autocast over fp32 master weights; FSDP2's
all-gather over one rank is a copy and its reduce-scatter a division by 1), so they would agree exactly but for
run-to-run nondeterminism of the GPU kernels (atomic adds in fla's backward, cuBLAS reductions); over a few steps
of bf16 compute that stays below 1e-3 relative, the bound checked (``--rtol``). The planner's figure is the total of
``gendistill distill RECIPE --plan`` (without its 10% + 1 GiB headroom) for world size 1; the JSON records
measured / planned.

Prints a short table last and exits 1 when a loss differs by more than the tolerance.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

WORDS = ("the of and to in is was for on as with by at from his her an which or were are this be also has had "
         "first one their its new after who they two time city school war world year river music team house "
         "water light number north system game film state group church people history season album family").split()


def write_data(folder: Path, docs: int = 400, seed: int = 0) -> Path:
    rng = random.Random(seed)
    path = folder / "synthetic.jsonl"
    with open(path, "w") as f:
        for _ in range(docs):
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(80, 400)))}) + "\n")
    return path


def tiny_teacher(folder: Path, shape: str = "tiny") -> str:
    """A random Llama saved as an HF folder with a small BPE tokenizer trained on the word list: 4 tiny layers (CPU
    smoke run, ``shape="tiny"``) or SmolLM2-135M's exact shape (``shape="smollm2-135m"``: the same cost and memory as
    the real teacher, for a machine that cannot receive its 98 MB GGUF)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from gendistill.bench.models import smollm2_config

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.train_from_iterator([" ".join(WORDS)] * 20, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(0)
    if shape == "smollm2-135m":
        cfg = smollm2_config()
    else:
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                          tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(folder / "teacher")
    tok.save_pretrained(folder / "teacher")
    return str(folder / "teacher")


def make_recipe(teacher: str, data: Path, out: Path, mode: str, args):
    from gendistill.distill.config import parse_recipe

    return parse_recipe({
        "teacher": {"spec": teacher},
        "student": {"attention_layers": "every:4"},
        "data": {"sources": [{"path": str(data), "format": "text"}], "heldout_documents": 8},
        "stages": [{
            "name": "stage3a", "steps": args.steps, "seq_len": args.seq, "batch_size": args.batch,
            "micro_batch_size": args.micro, "eval_every": 10_000, "eval_sequences": 2,
            "optim": {"lr": 1e-4, "schedule": "constant"}, "loss": {"kind": "forward_kl", "chunk_size": 1024},
        }],
        # compile off in both runs: the FSDP2 path runs eager blocks, so the plain one must too for equal arithmetic
        "run": {"output_dir": str(out / mode), "distributed": mode, "checkpoint_every": args.steps, "compile": "off",
                "progress": "lines", "tensorboard": False, "keep_finished_checkpoints": True,
                "profile_step": args.profile_step},
    })


def steady_tokens_per_s(recipe) -> float | None:
    """The median of the trainer's own tokens/s over the steps after the first (whose figure holds the kernels'
    compilation), read from the run folder's ``metrics.jsonl``."""
    path = Path(recipe.run.output_dir) / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    rates = sorted(r["tokens_per_s"] for r in rows if "tokens_per_s" in r and r.get("step", 0) > 1)
    return rates[len(rates) // 2] if rates else None


def run_one(recipe, device: torch.device) -> dict:
    from gendistill.distill.pipeline import run_recipe

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    out = run_recipe(recipe)
    res = out.results["stage3a"]
    row = {"losses": res.losses, "seconds": time.perf_counter() - t0, "tokens_per_s": steady_tokens_per_s(recipe),
           "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}
    del out, res
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON result path")
    ap.add_argument("--teacher", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--rtol", type=float, default=1e-3)
    ap.add_argument("--profile-step", type=int, default=None, metavar="N",
                    help="profile optimizer step N of both runs (run.profile_step): each run's largest ops go into "
                         "the JSON, the op tables next to it as <out stem>_<ddp|fsdp>_profile.txt")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run: a random 4-layer teacher")
    ap.add_argument("--random-smollm2", action="store_true",
                    help="a random teacher of SmolLM2-135M's exact shape instead of the embedded GGUF")
    args = ap.parse_args()

    import torch.distributed as dist

    from gendistill.distill.memory import GIB, plan_recipe

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    work = Path(tempfile.mkdtemp(prefix="fsdp_check-"))
    teacher = (tiny_teacher(work) if args.tiny else tiny_teacher(work, "smollm2-135m") if args.random_smollm2
               else args.teacher)
    data = write_data(work)
    result: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "torch": torch.__version__,
                    "teacher": "random tiny" if args.tiny else "random smollm2-135m shape" if args.random_smollm2
                    else args.teacher, "steps": args.steps, "seq_len": args.seq,
                    "batch_size": args.batch, "micro_batch_size": args.micro, "rtol": args.rtol}
    runs = {}
    for mode in ("ddp", "fsdp"):  # ddp on one process = the plain trainer, no wrapper
        recipe = make_recipe(teacher, data, work, mode, args)
        try:
            runs[mode] = run_one(recipe, device)
        except Exception as e:  # keep what was measured: the JSON and the table still come out
            import traceback

            traceback.print_exc()
            runs[mode] = {"losses": [], "seconds": None, "peak_gib": None, "error": f"{type(e).__name__}: {e}"}
        card = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else 80 * GIB
        plan = next(p for p in plan_recipe(recipe, 1, card) if p.mode == mode)
        runs[mode]["planned_gib"] = plan.total / GIB
        runs[mode]["plan_gib"] = {k: v / GIB for k, v in plan.as_dict().items()
                                  if k not in ("stage", "mode", "gpus", "fits")}
        runs[mode]["plan_fits"] = plan.fits
        if args.profile_step:  # the trainer's table of the profiled step, and its largest ops
            table = work / mode / "profile" / f"stage3a_step{args.profile_step}.txt"
            if table.is_file():
                out = Path(args.out)
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(table, out.with_name(f"{out.stem}_{mode}_profile.txt"))
            recs = [json.loads(line) for line in (work / mode / "metrics.jsonl").read_text().splitlines()
                    if '"profile"' in line] if (work / mode / "metrics.jsonl").is_file() else []
            runs[mode]["profile"] = recs[-1]["profile"] if recs else None
        if runs[mode]["peak_gib"] is not None:
            runs[mode]["measured_over_planned"] = runs[mode]["peak_gib"] / runs[mode]["planned_gib"]
    if dist.is_initialized():
        dist.destroy_process_group()
    a, b = runs["ddp"]["losses"], runs["fsdp"]["losses"]
    rel = [abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b)] or [float("inf")]
    ok = len(a) == len(b) == args.steps and max(rel) <= args.rtol
    speeds = runs["ddp"].get("tokens_per_s"), runs["fsdp"].get("tokens_per_s")
    result["fsdp_over_plain_tokens_per_s"] = speeds[1] / speeds[0] if all(speeds) else None
    result.update(runs=runs, max_rel_loss_diff=max(rel), passed=ok,
                  checkpoint=sorted(p.name for p in (work / "fsdp" / "checkpoints" / "stage3a").glob("step-*/*")),
                  student_folder_files=sorted(p.name for p in (work / "fsdp" / "stage3a").glob("*")))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))

    print(f"\n{'step':>4}  {'plain loss':>12}  {'fsdp2 loss':>12}  {'rel diff':>9}")
    for i, (x, y, r) in enumerate(zip(a, b, rel), 1):
        print(f"{i:>4}  {x:>12.6f}  {y:>12.6f}  {r:>9.2e}")
    print(f"\n{'run':<6}  {'peak GiB':>9}  {'planned GiB':>11}  {'seconds':>8}  {'tokens/s':>9}")
    for mode, r in runs.items():
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
        secs = f"{r['seconds']:.1f}" if r["seconds"] is not None else "-"
        rate = f"{r['tokens_per_s']:,.0f}" if r.get("tokens_per_s") else "-"
        err = f"  {r['error']}" if "error" in r else ""
        print(f"{mode:<6}  {peak:>9}  {r['planned_gib']:>11.2f}  {secs:>8}  {rate:>9}{err}")
    if result["fsdp_over_plain_tokens_per_s"] is not None:
        print(f"FSDP2 / plain tokens/s (median of steps 2..{args.steps}): {result['fsdp_over_plain_tokens_per_s']:.3f}")
    print(f"\nmax relative loss difference {max(rel):.2e} (tolerance {args.rtol:g}): {'PASS' if ok else 'FAIL'}"
          f"; JSON: {args.out}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
