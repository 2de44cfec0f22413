"""A lease grid (default sweep-smollm2-lease; any shipped grid with --grid) end to end on CPU, scaled down: the same
axes, variants, sharing, data sources (the data folder: ../shared/data or $GENDISTILL_DATA_DIR), teacher (the GGUF
given, or the embedded SmolLM2-135M-Instruct) and report, with every token budget divided so that the base stage 3a
is 1 step of 2 x 64 tokens (stage 3b: 2 x 128; a tokens_<stage> axis keeps its variants distinct: 1, 2, 3 ... steps),
and an evaluation of 2 examples of two tasks (plus one generated recall task at 1K tokens when the grid evaluates
recall). A grid whose cells read select-layers results (select/<method>/layers.json) gets them made here: uniform by
`gendistill select-layers --method uniform`, the other methods as shifted copies of it (placeholders: the layers
change, so each cell trains its own student). What a lease would fail on for a reason a CPU can see (a grid that
does not load, a variant that does not share, data that is missing, a report or plot that breaks) fails here.

    python tools/sweep_cpu_smoke.py --out /tmp/sweep-smoke [--grid NAME] [--teacher PATH.gguf]
"""

from __future__ import annotations

import argparse
import json
import os
import re
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


STAGE_SEQ = {"stage1": SEQ, "stage2": SEQ, "stage3a": SEQ, "stage3b": CHAT_SEQ}
_TOKENS_AXIS = re.compile(r"^tokens_(1|2|3a|3b)$")


def _variants(axis):
    """An axis's variants: its ``variants`` entry (``{stages: ..., variants: ...}``), else the axis itself (a list of
    built-in variants or a mapping of named ones)."""
    return axis.get("variants", axis) if isinstance(axis, dict) else axis


def smoke_grid(out: Path, name: str = "sweep-smollm2-lease") -> dict:
    from gendistill.distill.shipped import recipe_file

    src = recipe_file(name)
    grid = yaml.safe_load(src.read_text())
    if not isinstance(grid, dict) or not {"base", "axes"} <= set(grid):
        raise SystemExit(f"error: --grid {name}: not an ablation grid (no base and axes); "
                         "`gendistill recipes` lists the grids (sweep-*, sched-*, gate-*, select-*, ablate-*)")
    grid["base"] = str(src.parent / grid["base"])
    grid["output_dir"] = str(out / "runs")
    sets = {k: (scaled(v) if k.endswith(".tokens") else v) for k, v in grid["set"].items()}
    base = yaml.safe_load(Path(grid["base"]).read_text())
    for st in base.get("stages", []):  # a budget the grid leaves to its base recipe is divided too
        key = f"stages[{st['name']}].tokens"
        if key not in sets and st.get("tokens") is not None:
            sets[key] = scaled(int(st["tokens"]))
        elif key not in sets and st.get("steps") is not None:
            sets[f"stages[{st['name']}].steps"] = 1
        sets[f"stages[{st['name']}].eval_every"] = 1
    for stage in ("stage1", "stage2", "stage3a", "stage3b"):
        sets |= {f"stages[{stage}].seq_len": CHAT_SEQ if stage == "stage3b" else SEQ,
                 f"stages[{stage}].batch_size": BATCH, f"stages[{stage}].micro_batch_size": BATCH,
                 f"stages[{stage}].eval_sequences": 2}
    sets |= {"run.device": "cpu", "data.heldout_documents": 4, "stages[stage3b].data.heldout_documents": 4}
    grid["set"] = sets
    for axis_name, axis in grid["axes"].items():
        variants = _variants(axis)
        m = _TOKENS_AXIS.match(axis_name)
        if isinstance(variants, list) and m:  # distinct budgets: 1, 2, 3 ... steps of the stage
            step = BATCH * STAGE_SEQ[f"stage{m.group(1)}"]
            scaled_list = [step * (i + 1) for i in range(len(variants))]
            if isinstance(axis, dict):
                axis["variants"] = scaled_list
            else:
                grid["axes"][axis_name] = scaled_list
            continue
        if not isinstance(variants, dict):
            continue  # named presets (objective, masking, freeze, mixer): nothing to scale
        for ov in variants.values():
            for k in list(ov):
                if k.endswith(".tokens"):
                    ov[k] = scaled(ov[k])
                elif k.endswith(".eval_every"):
                    ov[k] = 1
    tasks = ["arc_easy", "boolq"]
    recall = [t for t in str(grid.get("eval", {}).get("tasks", "")).split(",") if t.startswith("ruler_")]
    grid["eval"] = {"tasks": ",".join(tasks + recall[:1]), "protocols": ["loglik", "generate"], "limit": 2,
                    "max_new_tokens": 8, "batch_size": 2, "token_budget": 1024, "device": "cpu"}
    if recall:
        grid["eval"]["context_lengths"] = "1k"
    return grid


def layer_files(grid: dict) -> list[str]:
    """The select-layers results (``student.attention_layers: <file>.json``) the grid's variants read."""
    files = []
    for axis in grid["axes"].values():
        variants = _variants(axis)
        if isinstance(variants, dict):
            files += [v for ov in variants.values() for k, v in ov.items()
                      if k == "student.attention_layers" and str(v).endswith(".json")]
    return files


def make_layer_files(files: list[str], out: Path, teacher: str | None) -> None:
    """``uniform`` for real (``select-layers --method uniform``: the file format the grid reads), then each other
    method's file as a copy whose layers are shifted by one more (a placeholder set, a different student)."""
    real = out / "select-uniform"
    cmd = [sys.executable, "-m", "gendistill", "select-layers", "--method", "uniform", "--budget", "7", "--out",
           str(real), "--overwrite", "--device", "cpu"] + (["--teacher", teacher] if teacher else [])
    print("$", " ".join(cmd), flush=True)
    if subprocess.call(cmd):
        raise SystemExit("select-layers --method uniform failed")
    doc = json.loads((real / "layers.json").read_text())
    for shift, rel in enumerate(files, start=1):
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise SystemExit(f"error: layer file {rel}: a smoke run writes its placeholders inside --out only")
        n = len(doc["ranked"])  # every layer of the teacher, ranked
        placeholder = dict(doc, attention_layers=sorted({(i + shift) % n for i in doc["attention_layers"]}),
                           ranked=[(i + shift) % n for i in doc["ranked"]],
                           placeholder="sweep_cpu_smoke: uniform's layers shifted, not a selection")
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(placeholder, indent=1) + "\n")
        print(f"layer file {rel}: {placeholder['attention_layers']}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--grid", default="sweep-smollm2-lease", help="a shipped grid (gendistill recipes lists them)")
    ap.add_argument("--teacher", default=None, help="teacher spec (default: the grid's, the embedded GGUF)")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.teacher and Path(args.teacher).exists():  # ablate runs in --out (layer files are read from there)
        args.teacher = str(Path(args.teacher).resolve())
    grid = smoke_grid(out, args.grid)
    path = out / f"{args.grid}-smoke.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    files = layer_files(grid)
    if files:
        make_layer_files(files, out, args.teacher)
    cmd = [sys.executable, "-m", "gendistill", "ablate", str(path)]
    if args.teacher:
        cmd += ["--set", f"teacher.spec={args.teacher}"]
    env = dict(os.environ)
    if env.get("GENDISTILL_DATA_DIR"):  # a relative data folder, as this working folder sees it
        env["GENDISTILL_DATA_DIR"] = str(Path(env["GENDISTILL_DATA_DIR"]).resolve())
    for extra in (["--dry-run"], []):
        print("$", " ".join(cmd + extra), flush=True)
        rc = subprocess.call(cmd + extra, cwd=out, env=env)  # layer files are read relative to the working folder
        if rc:
            raise SystemExit(rc)


if __name__ == "__main__":
    main()
