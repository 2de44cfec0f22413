"""Data-parallel parity and scaling of ``gendistill distill``: the same stage 3a recipe run on 1 process and on N
processes launched with ``torchrun``; compares the loss per step (same global batches, so the curves should agree
within bf16 noise) and the tokens/s.

    python benchmarks/ddp_scaling.py --nproc 2            # on a 2-GPU machine (Qwen3-0.6B-shaped random teacher)
    python benchmarks/ddp_scaling.py --nproc 2 --tiny     # CPU smoke test: tiny model, gloo

Needs no network and no data files: it writes a random-weight teacher (with a small BPE tokenizer trained on the fly)
and a synthetic text corpus into a scratch folder. Writes ``docs/results/ddp_scaling_<card>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
         "they you were her she there been one all we their has would when if so no will more can up out some time "
         "into two then new its only other could these may first any like now my over such our man me even most "
         "after also did many before must through back years where much your way well down should because each just "
         "those people how too little state good very make world still own see men work long get here between both "
         "life being under never day same another know while last might us great old year off come since against go "
         "came right used take three").split()


def build(scratch: Path, tiny: bool) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(50, 3000))) for _ in range(600 if not tiny else 80)]
    with open(scratch / "text.jsonl", "w") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(docs[:50], trainers.BpeTrainer(vocab_size=1000, special_tokens=["<|endoftext|>"],
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    if tiny:
        cfg = Qwen3Config(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                          num_key_value_heads=2, head_dim=16, vocab_size=1024, tie_word_embeddings=True)
    else:
        cfg = Qwen3Config(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                          num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True,
                          max_position_embeddings=40960)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(cfg)
    with torch.no_grad():  # sharper than a random init, so the KL has something to teach
        model.model.embed_tokens.weight.mul_(8.0)
    model.save_pretrained(scratch / "teacher")
    tok.save_pretrained(scratch / "teacher")
    recipe = {
        "teacher": {"spec": str(scratch / "teacher")},
        "student": {"attention_layers": [0, 2] if tiny else [0, 2, 6, 11, 13, 18, 21]},
        "data": {"sources": [{"path": str(scratch / "text.jsonl"), "format": "text"}], "heldout_documents": 8},
        "stages": [{
            "name": "stage3a", "steps": 6 if tiny else 40, "seq_len": 64 if tiny else 4096,
            "batch_size": 4 if tiny else 16, "micro_batch_size": 1 if tiny else 4,
            "gradient_checkpointing": not tiny,
            "optim": {"lr": 1e-3 if tiny else 2.5e-5, "weight_decay": 0.1, "schedule": "wsd", "warmup_ratio": 0.1},
            "loss": {"kind": "forward_kl", "chunk_size": 4096},
        }],
        "run": {"output_dir": "unset", "progress": "lines", "checkpoint_every": 1000},
    }
    path = scratch / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def run(cmd: list[str], env: dict) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)


def read(out: Path) -> tuple[list[float], float]:
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r]
    losses = [r["loss"] for r in steps]
    # tokens/s over the steady steps (the first two include start-up)
    tps = [r["tokens_per_s"] for r in steps[2:]] or [r["tokens_per_s"] for r in steps]
    return losses, sum(tps) / len(tps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--scratch", type=str, default=None)
    ap.add_argument("--out", type=str, default=None)
    args = ap.parse_args()
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="gendistill-ddp-"))
    scratch.mkdir(parents=True, exist_ok=True)
    recipe = build(scratch, args.tiny)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if args.tiny:
        env["OMP_NUM_THREADS"] = "1"
        env["CUDA_VISIBLE_DEVICES"] = ""
    base = [sys.executable, "-m", "gendistill.cli", "distill", str(recipe), "--overwrite"]
    run(base + ["--set", f"run.output_dir={scratch / 'one'}"], env)
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
         "-m", "gendistill.cli", "distill", str(recipe), "--overwrite", "--set", f"run.output_dir={scratch / 'many'}"],
        env)
    l1, t1 = read(scratch / "one")
    ln, tn = read(scratch / "many")
    diffs = [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(l1, ln)]
    card = "cpu" if args.tiny or not torch.cuda.is_available() else torch.cuda.get_device_name(0).split()[1].lower()
    result = {
        "benchmark": "ddp_scaling", "card": card, "tiny": args.tiny, "nproc": args.nproc,
        "losses_1": l1, f"losses_{args.nproc}": ln, "max_rel_loss_diff": max(diffs),
        "tokens_per_s_1": t1, f"tokens_per_s_{args.nproc}": tn, "scaling": tn / t1,
        "scaling_efficiency": tn / t1 / args.nproc,
    }
    out = Path(args.out) if args.out else ROOT / "docs" / "results" / f"ddp_scaling_{card}{'_tiny' if args.tiny else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"loss per step, 1 process:  {[round(x, 5) for x in l1]}")
    print(f"loss per step, {args.nproc} processes: {[round(x, 5) for x in ln]}")
    print(f"max relative loss difference {max(diffs):.2e}; tokens/s {t1:,.0f} -> {tn:,.0f} "
          f"({tn / t1:.2f}x, {100 * tn / t1 / args.nproc:.0f}% scaling efficiency)")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
