#!/usr/bin/env python
"""Where batched generation's prefill goes at long context: the left-padded batch with its attention mask (as
``gendistill eval``'s fast engine runs it, :mod:`gendistill.eval.generate`) against one unpadded prefill per row,
which needs no mask. GPU benchmark (``--device cpu --tiny``: plumbing check only).

Issue 29's second lease (docs/results.md section 16): at 16K tokens the teacher's generation took 294 s for 220
prompts, its log-likelihood scoring of the same prompts 36 s; log-likelihood batches are right-padded without a mask
(causal attention, :mod:`gendistill.eval.loglik`), generation batches left-padded with one. This measures whether the
masked prefill is that difference.

SmolLM2-135M's shape with random weights (the embedded teacher's: 30 layers, 9 heads, 3 KV heads) and its every:4
hybrid, bf16, SDPA. Per model and length: ``rows`` prompts of ``length - u`` tokens, ``u`` spread over ``[0,
jitter)`` (RULER-style prompts of one nominal length differ by a few tokens, so the batch is padded), then

  padded    one forward of the left-padded batch with its mask and position ids (a fresh dynamic cache, last logits)
  per_row   one forward per row, no padding, no mask (a fresh cache each)

median seconds of ``--repeats`` after a warm-up (CUDA-synchronised), the per-row/padded ratio, the largest difference
of the last-position logits between the two (bf16), and with ``--profile`` the top kernels of each (text file).
Below float32 each row also records both paths' distance from the same rows in float32 (``per_row_vs_fp32``,
``padded_vs_fp32``): a padded-vs-per-row difference at the size of ``per_row_vs_fp32`` is the precision's noise, not
the padding's (docs/results.md section 16: the random-weight hybrid's 0.24 in bf16).

  python benchmarks/long_prefill.py --lengths 4k,16k --rows 8 --out runs/long_prefill
  python benchmarks/long_prefill.py --device cpu --dtype bfloat16 --models student --lengths 256 --rows 3 \
      --jitter 32 --repeats 1          # the hybrid's bf16 noise against its padding, on CPU (about 3 minutes)
Prints a table and writes <out>/long_prefill_<card>.json (and long_prefill_kernels_<card>.txt with --profile).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gendistill.bench.models import smollm2_config  # noqa: E402
from gendistill.errors import ConfigError  # noqa: E402
from gendistill.eval.generate import left_padded  # noqa: E402
from gendistill.eval.ruler import parse_lengths  # noqa: E402
from gendistill.io import atomic_write_json, portable_command  # noqa: E402
from gendistill.models.decoding import forward, new_dynamic_cache  # noqa: E402


def log(msg: str) -> None:
    print(f"[long_prefill] {msg}", flush=True)


def teacher_config(tiny: bool):
    from transformers import LlamaConfig

    if tiny:
        return LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=16, vocab_size=512, tie_word_embeddings=True,
                           max_position_embeddings=32768)
    return smollm2_config(max_position_embeddings=32768)


def build(tiny: bool, device: torch.device, dtype: torch.dtype) -> dict:
    """The teacher (random weights) and its hybrid: every fourth layer from 3 keeps attention (2 layers when tiny)."""
    from transformers import LlamaForCausalLM

    from gendistill.convert import convert_teacher

    torch.manual_seed(0)
    cfg = teacher_config(tiny)
    cfg._attn_implementation = "sdpa"
    teacher = LlamaForCausalLM(cfg).to(device=device, dtype=dtype).eval()
    student = convert_teacher(teacher, [0, 2] if tiny else "every:4").eval()
    return {"teacher": teacher, "student": student}


def prompts(length: int, rows: int, jitter: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    cut = [int(u) for u in torch.randint(0, max(1, jitter), (rows,), generator=g)]
    cut[0] = 0  # the longest row is the nominal length
    return [torch.randint(10, vocab, (length - c,), generator=g).tolist() for c in cut]


@torch.inference_mode()
def padded_prefill(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """As the fast engine prefills a batch: ``[B, V]`` last-position logits."""
    out = forward(model, ids, new_dynamic_cache(model), position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                  attention_mask=mask)
    return out.logits[:, -1]


@torch.inference_mode()
def per_row_prefill(model, rows: list[list[int]], device) -> torch.Tensor:
    """One unpadded prefill a row, no mask: ``[B, V]`` last-position logits."""
    last = []
    for r in rows:
        out = forward(model, torch.tensor([r], device=device), new_dynamic_cache(model))
        last.append(out.logits[:, -1])
    return torch.cat(last)


def precision_floor(fp32_model, rows: list[list[int]], device: torch.device, row_logits: torch.Tensor,
                    padded_logits: torch.Tensor | None) -> dict:
    """How far each half-precision path is from the same weights in float32 (``fp32_model``: a float32 copy of the
    model; one unpadded prefill a row, untimed): ``per_row_vs_fp32`` is the precision's own noise on these rows, the
    floor below which ``max_logit_diff`` (padded against per row, both in half precision) says nothing about padding;
    ``padded_vs_fp32`` the padded path's."""
    ref = per_row_prefill(fp32_model, rows, device).float()
    return {"per_row_vs_fp32": float((row_logits.float() - ref).abs().max()),
            "padded_vs_fp32": None if padded_logits is None else float((padded_logits.float() - ref).abs().max())}


def timed(fn, device: torch.device, repeats: int) -> tuple[float, object]:
    """Median wall seconds of ``repeats`` calls after one warm-up, and the last call's output (the logits compared;
    :func:`gendistill.bench.timing.measure` keeps none)."""
    out = fn()  # warm-up (kernel compilation, autotuning)
    secs = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        secs.append(time.perf_counter() - t)
    return sorted(secs)[len(secs) // 2], out


def kernel_table(fn, device: torch.device, top: int = 10) -> str:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=top, max_name_column_width=70)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--lengths", default="4k,16k", help="prompt lengths (tokens; k = 1024)")
    ap.add_argument("--rows", type=int, default=8, help="prompts a batch")
    ap.add_argument("--jitter", type=int, default=64, help="rows are up to this many tokens shorter than the length")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default="teacher,student",
                    help="comma-separated: teacher, student or teacher,student (the default)")
    ap.add_argument("--profile", action="store_true", help="also write the top kernels of each prefill")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto",
                    help="the models' precision (auto: bfloat16 on CUDA, float32 on CPU); below float32 each row also "
                         "records how far the same rows are from float32 (per_row_vs_fp32: the precision's own noise)")
    ap.add_argument("--tiny", action="store_true", help="a 4-layer model (plumbing check on CPU)")
    ap.add_argument("--out", default="runs/long_prefill")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but no CUDA device here (use --device cpu --tiny for a plumbing check)")
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    if not names or set(names) - {"teacher", "student"}:
        raise SystemExit(f"error: --models {args.models}: teacher, student or teacher,student")
    try:
        lengths = parse_lengths(args.lengths)
    except ConfigError as e:
        raise SystemExit(f"error: --lengths {args.lengths}: {e}") from None
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32, "bfloat16": torch.bfloat16,
             "float32": torch.float32}[args.dtype]
    models = build(args.tiny, device, dtype)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    label = card.lower().replace("nvidia ", "").split()[0] if device.type == "cuda" else "cpu"
    rows_out, kernels = [], []
    for name in names:
        model = models[name]
        fp32_model = copy.deepcopy(model).float() if dtype != torch.float32 else None  # once a model, every length
        for length in lengths:
            rows = prompts(length, args.rows, args.jitter, model.config.vocab_size, seed=length)
            ids, mask = (t.to(device) for t in left_padded(rows, 0))  # as the fast engine pads a batch
            try:
                padded_s, padded_logits = timed(lambda: padded_prefill(model, ids, mask), device, args.repeats)
            except torch.OutOfMemoryError:
                log(f"{name} {length}: the padded batch ran out of memory")
                padded_s, padded_logits = None, None
                torch.cuda.empty_cache()
            row_s, row_logits = timed(lambda: per_row_prefill(model, rows, device), device, args.repeats)
            diff = (None if padded_logits is None else
                    float((padded_logits.float() - row_logits.float()).abs().max()))
            rec = {"model": name, "length": length, "rows": args.rows, "tokens": sum(map(len, rows)),
                   "padded_s": padded_s, "per_row_s": row_s,
                   "per_row_speedup": None if padded_s is None else padded_s / row_s,
                   "max_logit_diff": diff,
                   "logit_scale": float(row_logits.float().abs().max())}
            if fp32_model is not None:  # the yardstick for max_logit_diff: the same rows in float32, one a row
                rec.update(precision_floor(fp32_model, rows, device, row_logits, padded_logits))
            rows_out.append(rec)
            log(json.dumps(rec))
            if args.profile:
                for what, fn in (("padded", lambda: padded_prefill(model, ids, mask)),
                                 ("per_row", lambda: per_row_prefill(model, rows, device))):
                    if what == "padded" and padded_s is None:
                        continue
                    kernels.append(f"== {name}, {length} tokens x {args.rows} rows, {what}\n"
                                   + kernel_table(fn, device))
            padded_logits = row_logits = None  # the next length's batch gets the memory
            if device.type == "cuda":
                torch.cuda.empty_cache()
    result = {"benchmark": "long_prefill", "card": card, "device": device.type, "dtype": str(dtype),
              "torch": torch.__version__, "tiny": args.tiny, "jitter": args.jitter, "repeats": args.repeats,
              "command": portable_command(sys.argv),
              "commit": os.environ.get("COMMIT"),  # the caller's: a device copy's git metadata may be stale
              "rows": rows_out}
    path = out_dir / f"long_prefill_{label}.json"
    atomic_write_json(path, result)
    if kernels:
        (out_dir / f"long_prefill_kernels_{label}.txt").write_text("\n\n".join(kernels))
    print("\n| model | length | rows | padded + mask (s) | per row, no mask (s) | padded / per row | max logit diff "
          "| per row vs fp32 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows_out:
        pad = "OOM" if r["padded_s"] is None else f"{r['padded_s']:.3f}"
        ratio = "–" if r["per_row_speedup"] is None else f"{r['per_row_speedup']:.2f}"
        dif, floor = ("–" if r.get(k) is None else f"{r[k]:.3g}" for k in ("max_logit_diff", "per_row_vs_fp32"))
        print(f"| {r['model']} | {r['length']:,} | {r['rows']} | {pad} | {r['per_row_s']:.3f} | {ratio} | {dif} "
              f"| {floor} |")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
