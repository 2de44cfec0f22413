#!/usr/bin/env python
"""Cost of each registered linear mixer as one student layer (GPU; ``--device cpu`` only checks the plumbing).

For every mixer in ``gendistill.layers.registry`` (kda, gated_deltanet, gla, mamba2), built at a teacher's attention
shape (default: SmolLM2-135M, D=576, 9 query / 3 kv heads of 64), times at each sequence length T (batch B):
  fwd        one forward of the layer (prefill / scoring), fla's chunked kernels on CUDA; ``--layout packed``: the
             B x T tokens as B documents in one row (``cu_seqlens``), the layout the distillation trainer uses
  fwd+bwd    forward + backward with respect to the input and all parameters (distillation step cost)
and per decode step (one new token on top of a cached state): ``step``. Also reports each layer's parameter count and
its fixed generation state (recurrent + conv bytes per sequence). The mixer axis of an ablation costs what these rows
say, so run this before giving every mixer the same token budget.

A mixer whose backward fla refuses on this card (Gated DeltaNet and Mamba2 on a Hopper GPU under Triton < 3.7.1 when
gendistill's block-width backend is switched off, ``GENDISTILL_FLA_HOPPER_BK32=0``:
:func:`gendistill.layers.registry.backward_refusal`) gets its forward and decode timed and the reason recorded.
Every time is also given as a ratio to KDA's in the same run (``x kda``: > 1 means slower than KDA), the baseline the
mixer axis compares against; KDA is measured whenever it is in ``--mixers`` (the default).

  COMMIT=$(git rev-parse --short HEAD) python benchmarks/mixer_throughput.py --out runs/mixers   # ~1 min on an H100
Prints a table last and writes <out>/mixer_throughput_<card>.json (the card, the commit from $COMMIT: a device copy's
git metadata may be stale; which code ran the gated backward), rewritten after every mixer ("complete": false until
the last), so a run cut short keeps the mixers it timed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gendistill.bench.timing import measure as timed  # noqa: E402  (the project's timer: CUDA events on GPU)
from gendistill.io import portable_command  # noqa: E402


def time_ms(fn, warmup: int, repeats: int, device: torch.device) -> float:
    """Median of ``repeats`` calls after ``warmup`` ones (autotuning stays out): :func:`gendistill.bench.timing.measure`
    (CUDA events on GPU)."""
    return timed(fn, device, warmup=warmup, repeats=repeats).median_ms


def build(mixer: str, args, device, dtype):
    from transformers import LlamaConfig

    from gendistill.layers.registry import get_linear_mixer
    from gendistill.models.hybrid import HybridConfig

    teacher = LlamaConfig(hidden_size=args.hidden, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                          head_dim=args.dim, num_hidden_layers=1, intermediate_size=4 * args.hidden)
    skip = ("model_type", "transformers_version", "layer_types")
    fields = {k: v for k, v in teacher.to_dict().items() if k not in skip}
    config = HybridConfig(base_model_type="llama", layer_types=["linear_attention"], linear_attention_type=mixer,
                          **fields)
    torch.manual_seed(0)
    layer = get_linear_mixer(mixer)(config, 0).to(device=device, dtype=dtype)
    for name in getattr(layer, "fp32_parameters", ()):
        p = layer.get_parameter(name)
        p.data = p.data.float()
    return config, layer


def measure(mixer: str, args, device, dtype) -> dict:
    from transformers.cache_utils import DynamicCache

    from gendistill.layers.registry import backward_refusal

    config, layer = build(mixer, args, device, dtype)
    refused = backward_refusal(type(layer))  # None off fla's kernels
    row = {"mixer": mixer, "params": sum(p.numel() for p in layer.parameters()),
           "state_bytes": sum(layer.state_bytes(1, dtype).values()), "prefill": [], "backward_refused": refused}
    for T in args.lengths:
        if args.layout == "packed":  # the trainer's: B documents of T tokens in one row, the state reset at each
            x = torch.randn(1, args.batch * T, args.hidden, device=device, dtype=dtype)
            kw = {"cu_seqlens": torch.arange(0, args.batch * T + 1, T, device=device, dtype=torch.int32)}
        else:
            x, kw = torch.randn(args.batch, T, args.hidden, device=device, dtype=dtype), {}
        layer.eval()
        with torch.no_grad():
            fwd = time_ms(lambda: layer(x, **kw), args.warmup, args.repeats, device)
        layer.train()
        xg = x.clone().requires_grad_()

        def step():
            layer.zero_grad(set_to_none=True)
            layer(xg, **kw).float().square().mean().backward()

        fwd_bwd = None if refused else time_ms(step, args.warmup, args.repeats, device)  # fla would raise
        row["prefill"].append({"T": T, "fwd_ms": fwd, "fwd_bwd_ms": fwd_bwd,
                               "fwd_tokens_per_s": args.batch * T / fwd * 1e3,
                               "fwd_bwd_tokens_per_s": None if fwd_bwd is None else args.batch * T / fwd_bwd * 1e3})
    layer.eval()
    cache = DynamicCache(config=config)
    with torch.no_grad():
        layer(torch.randn(args.batch, 16, args.hidden, device=device, dtype=dtype), cache=cache)
        one = torch.randn(args.batch, 1, args.hidden, device=device, dtype=dtype)
        row["step_ms"] = time_ms(lambda: layer(one, cache=cache), args.warmup, args.repeats, device)
    return row


def gated_backward(device: torch.device) -> str:
    """Which code runs Gated DeltaNet's and Mamba2's gated ``chunk_bwd_dqkwg`` backward here: fla's own launch, or
    gendistill's block-width backend where fla refuses it (a Hopper GPU under Triton < 3.7.1, docs/mixers.md)."""
    from gendistill.ops import fla_hopper_dqkwg as hopper
    from gendistill.ops.backend import fla_available  # first: it points fla at the shipped kernel configurations

    if device.type != "cuda" or not fla_available():
        return "PyTorch reference (no fla kernels here)"
    if not hopper.affected():
        return "fla"
    if not hopper.enabled():
        return "refused by fla (GENDISTILL_FLA_HOPPER_BK32=0)"
    return f"gendistill block-width backend (key block {hopper.key_block()} where fla would use 64)"


def add_ratios(rows: list[dict], baseline: str = "kda") -> None:
    """Each row's times as multiples of ``baseline``'s in the same run (``*_vs_<baseline>``; > 1: slower), in place;
    None where either time is missing (a backward fla refuses). Nothing is added when the baseline was not measured."""
    base = next((r for r in rows if r["mixer"] == baseline), None)
    if base is None:
        return
    for r in rows:
        for mine, ref in zip(r["prefill"], base["prefill"]):
            for k in ("fwd_ms", "fwd_bwd_ms"):
                both = mine[k] is not None and ref[k] is not None
                mine[f"{k[:-3]}_vs_{baseline}"] = mine[k] / ref[k] if both else None
        r[f"step_vs_{baseline}"] = r["step_ms"] / base["step_ms"]


def main(argv=None) -> int:
    from gendistill.layers.registry import LINEAR_MIXERS
    from gendistill.ops.fla_configs import describe_active

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--mixers", default=",".join(LINEAR_MIXERS), help="comma-separated registry names")
    p.add_argument("--lengths", default="2048,8192", help="sequence lengths, e.g. '2048,8192'")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--layout", choices=["batch", "packed"], default="batch",
                   help="batch: B sequences of T (prefill); packed: the same B x T tokens as B documents in one row "
                        "with cu_seqlens, as the distillation trainer feeds the student (fla's packed kernels)")
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--heads", type=int, default=9)
    p.add_argument("--kv-heads", type=int, default=3)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", type=Path, default=Path("runs/mixers"))
    args = p.parse_args(argv)
    args.lengths = [int(t) for t in args.lengths.split(",") if t.strip()]
    mixers = [m.strip() for m in args.mixers.split(",") if m.strip()]
    unknown = sorted(set(mixers) - set(LINEAR_MIXERS))
    if unknown:
        print(f"error: unknown --mixers {unknown}; registered: {', '.join(LINEAR_MIXERS)}", file=sys.stderr)
        return 2
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu-{platform.machine()}"
    rows: list[dict] = []
    res = {"card": card, "commit": os.environ.get("COMMIT"), "dtype": args.dtype, "batch": args.batch,
           "layout": args.layout,
           "shape": dict(hidden=args.hidden, heads=args.heads, kv_heads=args.kv_heads, head_dim=args.dim),
           "torch": torch.__version__, "gated_backward": gated_backward(device),  # (it activates the configurations)
           "fla_configs": describe_active(card), "complete": False,
           "command": portable_command(["python", "benchmarks/mixer_throughput.py",
                                        *(sys.argv[1:] if argv is None else argv)]), "mixers": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"mixer_throughput_{card.replace(' ', '-').replace('/', '-')}.json"
    for mixer in mixers:  # the JSON after every mixer: a run cut short (autotuning on a fresh card) keeps what it timed
        print(f"[mixer_throughput] {mixer}", flush=True)
        rows.append(measure(mixer, args, device, dtype))
        add_ratios(rows)
        res["complete"] = len(rows) == len(mixers)
        path.write_text(json.dumps(res, indent=2) + "\n")

    from rich.console import Console
    from rich.table import Table

    tbl = Table(title=f"Linear mixers on {card} ({args.layout} B={args.batch}, D={args.hidden}, "
                      f"H={args.heads}/{args.kv_heads}, K={args.dim}, {args.dtype}); ms, median")
    times = [f"{k} T={T}" for T in args.lengths for k in ("fwd", "fwd+bwd")]
    for col in ["mixer", "params", "state/seq", *times, "step"]:
        tbl.add_column(col, justify="left" if col == "mixer" else "right")

    def cell(ms: float | None, ratio: float | None, digits: int = 2) -> str:
        if ms is None:
            return "refused by fla"
        return f"{ms:.{digits}f}" + ("" if ratio is None else f" ({ratio:.2f}x kda)")

    for r in rows:
        cells = [cell(x[k], x.get(f"{k[:-3]}_vs_kda")) for x in r["prefill"] for k in ("fwd_ms", "fwd_bwd_ms")]
        tbl.add_row(r["mixer"], f"{r['params']:,}", f"{r['state_bytes'] / 1024:.0f} KiB", *cells,
                    cell(r["step_ms"], r.get("step_vs_kda"), 3))
    Console(width=200).print(tbl)
    for r in rows:
        if r["backward_refused"]:
            print(f"{r['mixer']}: no backward timed: {r['backward_refused']}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
