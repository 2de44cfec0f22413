"""The recipe sweep's grid (sweep-smollm2-lease) end to end on CPU, scaled down: the same axes, variants, sharing,
data sources (the data folder: ../shared/data or $GENDISTILL_DATA_DIR), teacher (the GGUF given, or the embedded
SmolLM2-135M-Instruct) and report, with every token budget divided so that the base stage 3a is 1 step of 2 x 64
tokens (stage 3b: 2 x 128), and an evaluation of 2 examples of two tasks. What a lease would fail on for a reason a
CPU can see (a grid that does not load, a variant that does not share, data that is missing, a report or plot that
breaks) fails here.

    python tools/sweep_cpu_smoke.py --out /tmp/sweep-smoke [--teacher PATH.gguf]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SEQ, BATCH = 64, 2
CHAT_SEQ = 128  # stage 3b: chat prompts are longer than 64 tokens (docs/ablate.md: keep seq_len above the prompt)
SCALE = 8_000_000 // (SEQ * BATCH)  # the base stage 3a (8M tokens) -> 1 step; 16M -> 2, 32M -> 4


def scaled(v: int) -> int:
    return max(SEQ * BATCH, round(v / SCALE))


def smoke_grid(out: Path) -> dict:
    from gendistill.distill.shipped import recipe_file

    src = recipe_file("sweep-smollm2-lease")
    grid = yaml.safe_load(src.read_text())
    grid["base"] = str(src.parent / grid["base"])
    grid["output_dir"] = str(out / "runs")
    sets = {k: (scaled(v) if k.endswith(".tokens") else 1 if k.endswith(".eval_every") else v)
            for k, v in grid["set"].items()}
    for stage in ("stage1", "stage2", "stage3a", "stage3b"):
        sets |= {f"stages[{stage}].seq_len": CHAT_SEQ if stage == "stage3b" else SEQ,
                 f"stages[{stage}].batch_size": BATCH, f"stages[{stage}].micro_batch_size": BATCH,
                 f"stages[{stage}].eval_sequences": 2}
    sets |= {"run.device": "cpu", "data.heldout_documents": 4, "stages[stage3b].data.heldout_documents": 4}
    grid["set"] = sets
    for axis in grid["axes"].values():
        for ov in axis.values():
            for k in list(ov):
                if k.endswith(".tokens"):
                    ov[k] = scaled(ov[k])
                elif k.endswith(".eval_every"):
                    ov[k] = 1
    grid["eval"] = {"tasks": "arc_easy,boolq", "protocols": ["loglik", "generate"], "limit": 2,
                    "max_new_tokens": 8, "batch_size": 2, "token_budget": 1024, "device": "cpu"}
    return grid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--teacher", default=None, help="teacher spec (default: the grid's, the embedded GGUF)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "sweep-smoke.yaml"
    path.write_text(yaml.safe_dump(smoke_grid(out), sort_keys=False))
    cmd = [sys.executable, "-m", "gendistill", "ablate", str(path)]
    if args.teacher:
        cmd += ["--set", f"teacher.spec={args.teacher}"]
    for extra in (["--dry-run"], []):
        print("$", " ".join(cmd + extra), flush=True)
        rc = subprocess.call(cmd + extra)
        if rc:
            raise SystemExit(rc)


if __name__ == "__main__":
    main()
