#!/usr/bin/env python
"""Where the hybrid student's prefill (time to first token) goes, and how one KDA layer compares with fla's kernel
alone and with fla's own ``KimiDeltaAttention`` layer. GPU benchmark (``--device cpu --tiny``: plumbing check only).

Qwen3-0.6B shape with random weights (bf16, SDPA for both models), batch 1, the layout of the paper (7 attention +
21 KDA layers); the bench's own prefill (``gendistill.bench.engine.prefill``: fresh cache, last logits only).

  model    TTFT of teacher and student (median, CUDA events; the student's mixers on weights joined once, as the
           bench runs them) and, from one torch.profiler trace of the student, the
           device-busy time (sum of kernel times), the host gap (wall - busy: launch and Python overhead), the number
           of kernels, the split by block part (attention / KDA / MLP / lm_head) and the top kernels (text file).
  layer    one KDA mixer with a fresh cache (as in prefill) vs fla's ``chunk_kda`` alone on the same shapes (the
           kernel with the gate, L2 norm and beta sigmoid fused in, final state out): the issue's bound is
           layer <= 2x kernel; plus the layer's parts timed alone (projections, convs, GQA repeat, output gate/norm),
           and the layer's prefill and one decode step with its weights joined once (``joined_weights``, as
           generation and the bench run it) against joined at every call; on CUDA also captured in CUDA graphs
           (as a graphed prefill runs it): its kernel count and time, live and joined, against fla's kernel alone.
  peer     fla's ``fla.layers.KimiDeltaAttention`` at the same shapes, our weights mapped onto it (GQA k/v heads
           repeated to MHA, convs without activation, SiLU gate in the output norm): max relative difference of the
           outputs against our layer (no cache) and its time.

  python benchmarks/prefill_profile.py --contexts 4k,128k --layer-contexts 1k,4k,32k,128k --out runs/prefill
Prints a table last and writes <out>/prefill_profile_<label>.json and <out>/prefill_kernels_<label>.txt.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gendistill.bench import engine  # noqa: E402
from gendistill.bench.profile import append_table, label_times, labelled, op_table  # noqa: E402
from gendistill.bench.timing import measure  # noqa: E402
from gendistill.io import portable_command  # noqa: E402
from gendistill.layers.base import joined_weights  # noqa: E402
from gendistill.ops.backend import fla_available  # noqa: E402


def log(msg: str) -> None:
    print(f"[prefill_profile] {msg}", flush=True)


def parse_lengths(text: str) -> list[int]:
    return [int(p.rstrip("kK")) * (1024 if p.lower().endswith("k") else 1) for p in text.split(",") if p.strip()]


def build(tiny: bool, device: torch.device, dtype: torch.dtype):
    from transformers import Qwen3ForCausalLM

    from gendistill.bench.models import qwen3_config
    from gendistill.bench.settings import PAPER_ATTENTION_LAYERS, TINY_ATTENTION_LAYERS
    from gendistill.convert import convert_teacher

    torch.manual_seed(0)
    cfg = qwen3_config("tiny" if tiny else "qwen3-0.6b", "sdpa")
    with torch.device(device):
        teacher = Qwen3ForCausalLM(cfg).to(dtype).eval()
        layers = TINY_ATTENTION_LAYERS if tiny else PAPER_ATTENTION_LAYERS
        student = convert_teacher(teacher, list(layers)).to(device).eval()
    for name, p in student.named_parameters():  # A_log / dt_bias stay fp32
        if name.endswith(("A_log", "dt_bias")):
            p.data = p.data.float()
    return teacher, student


# ------------------------------------------------------------------------------------------------------------ model
def kernel_events(prof) -> list:
    return [e for e in prof.events() if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]


def busy_ms(events) -> float:
    """Union of the kernels' [start, end) intervals: the time the GPU was busy (overlaps counted once)."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in events)
    total, cur_s, cur_e = 0.0, None, None
    for s, e in spans:
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total / 1e3


@torch.inference_mode()
def profile_model(model, L: int, device: torch.device, table_path: Path, title: str) -> dict:
    from torch.profiler import ProfilerActivity, profile

    ids = engine.random_prompt(model.config.vocab_size, L, 1, device, seed=123)
    t = measure(lambda: engine.prefill(model, ids), device, warmup=2, repeats=5, budget_s=8.0)
    res = {"wall_ms": t.median_ms, "wall_ms_all": t.all_ms}
    if device.type != "cuda":
        return res
    with labelled(model):
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            engine.prefill(model, ids)
            torch.cuda.synchronize(device)
            traced_wall = (time.perf_counter() - t0) * 1e3
    kernels = kernel_events(prof)
    res["traced_wall_ms"] = traced_wall
    res["kernels"] = len(kernels)
    res["kernel_sum_ms"] = sum(e.time_range.elapsed_us() for e in kernels) / 1e3
    res["busy_ms"] = busy_ms(kernels)
    res["host_gap_ms"] = max(0.0, t.median_ms - res["busy_ms"])
    res["by_part_ms"] = label_times(prof, use_cuda=True)
    append_table(table_path, title, op_table(prof, use_cuda=True))
    return res


# ------------------------------------------------------------------------------------------------------------ layer
def kernel_count(fn) -> int:
    """How many CUDA kernels one call of ``fn`` launches (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return len(kernel_events(prof))


def graphed_ms(fn, device: torch.device) -> float:
    """Median time of one replay of ``fn`` captured in a CUDA graph (``engine.GraphStep``: the benchmark's capture,
    warm-up on a side stream first so that autotuning and lazy allocations stay outside the graph)."""
    return measure(engine.GraphStep(fn), device, warmup=2, repeats=20, budget_s=2).median_ms


@torch.inference_mode()
def profile_layer(student, L: int, device: torch.device) -> dict:
    from transformers import DynamicCache

    from gendistill.ops.conv import causal_conv1d_btd

    idx = student.config.linear_layers[0]
    mixer = student.model.layers[idx].linear_attn
    B, D, H, Hkv, K = 1, mixer.hidden_size, mixer.num_heads, mixer.num_kv_heads, mixer.head_dim
    x = torch.randn(B, L, D, device=device, dtype=student.dtype)
    res = {}
    t = measure(lambda: mixer(x, cache=DynamicCache(config=student.config)), device, warmup=2, repeats=5, budget_s=5)
    res["layer_cached_prefill_ms"] = t.median_ms
    t = measure(lambda: mixer(x), device, warmup=2, repeats=5, budget_s=5)
    res["layer_no_cache_ms"] = t.median_ms
    # the weights joined once (as gendistill's generation engine and bench run the student) against joined at every
    # call, for the prefill and for one decode step after it
    cache = DynamicCache(config=student.config)
    mixer(x, cache=cache)
    x1 = x[:, -1:].clone()
    t = measure(lambda: mixer(x1, cache=cache), device, warmup=2, repeats=20, budget_s=2)
    res["layer_decode_step_ms"] = t.median_ms
    with joined_weights(mixer):
        t = measure(lambda: mixer(x, cache=DynamicCache(config=student.config)), device, warmup=2, repeats=5,
                    budget_s=5)
        res["layer_cached_prefill_joined_ms"] = t.median_ms
        t = measure(lambda: mixer(x1, cache=cache), device, warmup=2, repeats=20, budget_s=2)
        res["layer_decode_step_joined_ms"] = t.median_ms

    qkv = mixer.project_qkv(x)
    q, k, v = qkv.split([mixer.q_dim, mixer.k_dim, mixer.v_dim], dim=-1)
    cw, cb = mixer.conv_weights()
    parts = {
        "qkv_proj": lambda: mixer.project_qkv(x),
        "conv_with_state": lambda: causal_conv1d_btd(qkv, cw, cb, None, output_final_state=True),
        "gqa_repeat": lambda: (k.view(B, L, Hkv, K).repeat_interleave(H // Hkv, 2),
                               v.view(B, L, Hkv, K).repeat_interleave(H // Hkv, 2)),
        "f_b_proj": lambda: (mixer.f_proj(x), mixer.b_proj(x)),
        "g_proj": lambda: mixer.g_proj(x),
    }
    qh = q.view(B, L, H, K)
    kh = k.view(B, L, Hkv, K).repeat_interleave(H // Hkv, 2)
    vh = v.view(B, L, Hkv, K).repeat_interleave(H // Hkv, 2)
    f, b = mixer.f_proj(x).view(B, L, H, K), mixer.b_proj(x)
    o = torch.randn(B, L, H, K, device=device, dtype=x.dtype)
    gate = mixer.g_proj(x).view(B, L, H, K)
    parts["o_norm"] = lambda: mixer.o_norm(o, gate)
    parts["o_proj"] = lambda: mixer.o_proj(o.view(B, L, H * K))
    if device.type == "cuda":
        from fla.ops.kda import chunk_kda

        def kernel():
            return chunk_kda(qh, kh, vh, f, b, A_log=mixer.A_log, dt_bias=mixer.dt_bias, output_final_state=True,
                             use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True, use_beta_sigmoid_in_kernel=True)

        def kernel_safe_gate():  # fla's faster path for gates clamped to [-5, 0): a different function, for scale
            return chunk_kda(qh, kh, vh, f, b, A_log=mixer.A_log, dt_bias=mixer.dt_bias, output_final_state=True,
                             use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True, use_beta_sigmoid_in_kernel=True,
                             safe_gate=True, lower_bound=-5.0)

        parts["chunk_kda_kernel"] = kernel
        parts["chunk_kda_kernel_safe_gate_lb-5"] = kernel_safe_gate
    res["parts_ms"] = {name: measure(fn, device, warmup=2, repeats=5, budget_s=4).median_ms for name, fn in parts.items()}
    if device.type == "cuda":
        # as a graphed prefill runs the layer (no launch or Python overhead): its kernels and their time, on the live
        # weights and on weights joined once, against fla's kernel alone
        try:
            graphed = {"layer_kernels": kernel_count(lambda: mixer(x)),
                       "layer_ms": graphed_ms(lambda: mixer(x), device)}
            with joined_weights(mixer):
                graphed["layer_joined_kernels"] = kernel_count(lambda: mixer(x))
                graphed["layer_joined_ms"] = graphed_ms(lambda: mixer(x), device)
            graphed["kernel_kernels"] = kernel_count(parts["chunk_kda_kernel"])
            graphed["kernel_ms"] = graphed_ms(parts["chunk_kda_kernel"], device)
            res["graphed"] = graphed
        except Exception as exc:  # noqa: BLE001 - recorded; the eager figures above stand
            res["graphed_error"] = f"{type(exc).__name__}: {exc}"[:500]
    kern = res["parts_ms"].get("chunk_kda_kernel")
    res["layer_over_kernel"] = res["layer_cached_prefill_ms"] / kern if kern else None
    return res


# ------------------------------------------------------------------------------------------------------------- peer
def fla_peer(mixer):
    """fla's KimiDeltaAttention with ``mixer``'s weights: k/v heads repeated to MHA, convs without activation, SiLU gate
    in the output norm. Returns None when the shapes do not map (ranks of fla's low-rank projections = head_dim)."""
    from fla.layers.kda import KimiDeltaAttention as FlaKDA

    H, Hkv, K = mixer.num_heads, mixer.num_kv_heads, mixer.head_dim
    if mixer.f_proj[0].out_features != K or mixer.g_proj[0].out_features != K:
        return None
    peer = FlaKDA(hidden_size=mixer.hidden_size, head_dim=K, num_heads=H, conv_size=mixer.conv_size,
                  conv_bias=mixer.q_conv1d.bias is not None, norm_eps=mixer.o_norm.eps, layer_idx=0)
    for conv in (peer.q_conv1d, peer.k_conv1d, peer.v_conv1d):
        conv.activation = mixer.conv_activation
    peer.o_norm.activation = mixer.o_norm.activation
    rep = H // Hkv

    def heads(w):  # [Hkv*K, ...] -> [H*K, ...], each query head getting its group's k/v head
        return w.view(Hkv, K, *w.shape[1:]).repeat_interleave(rep, 0).reshape(H * K, *w.shape[1:])

    with torch.no_grad():
        peer.q_proj.weight.copy_(mixer.q_proj.weight)
        peer.k_proj.weight.copy_(heads(mixer.k_proj.weight))
        peer.v_proj.weight.copy_(heads(mixer.v_proj.weight))
        peer.q_conv1d.weight.copy_(mixer.q_conv1d.weight)
        peer.k_conv1d.weight.copy_(heads(mixer.k_conv1d.weight))
        peer.v_conv1d.weight.copy_(heads(mixer.v_conv1d.weight))
        if mixer.q_conv1d.bias is not None:
            peer.q_conv1d.bias.copy_(mixer.q_conv1d.bias)
            peer.k_conv1d.bias.copy_(heads(mixer.k_conv1d.bias))
            peer.v_conv1d.bias.copy_(heads(mixer.v_conv1d.bias))
        for name in ("f_proj.0.weight", "f_proj.1.weight", "b_proj.weight", "g_proj.0.weight", "g_proj.1.weight",
                     "g_proj.1.bias", "o_norm.weight", "o_proj.weight", "A_log", "dt_bias"):
            peer.get_parameter(name).copy_(mixer.get_parameter(name))
    return peer


@torch.inference_mode()
def compare_peer(student, contexts: list[int], device: torch.device) -> dict:
    mixer = student.model.layers[student.config.linear_layers[0]].linear_attn
    if any(getattr(mixer, n, None) is not None for n in ("q_proj",)) and mixer.q_proj.bias is not None:
        return {"skipped": "our projections have biases; fla's layer has none"}
    peer = fla_peer(mixer)
    if peer is None:
        return {"skipped": "low-rank ranks differ from head_dim"}
    peer = peer.to(device=device, dtype=student.dtype)
    peer.A_log.data, peer.dt_bias.data = peer.A_log.data.float(), peer.dt_bias.data.float()
    out = {"mapping": "k/v repeated to MHA; conv activation None; gate activation " + mixer.o_norm.activation}
    for L in contexts:
        x = torch.randn(1, L, mixer.hidden_size, device=device, dtype=student.dtype)
        ours, theirs = mixer(x), peer(x)[0]
        ref = ours.double()
        row = {"rel_diff": ((theirs.double() - ref).norm() / ref.norm()).item(),
               "ours_ms": measure(lambda: mixer(x), device, warmup=2, repeats=5, budget_s=4).median_ms,
               "fla_layer_ms": measure(lambda: peer(x), device, warmup=2, repeats=5, budget_s=4).median_ms}
        out[str(L)] = row
        log(f"peer L={L}: rel diff {row['rel_diff']:.2e}, ours {row['ours_ms']:.2f} ms, fla layer "
            f"{row['fla_layer_ms']:.2f} ms")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", default="4k,128k", help="model-level prefill contexts (profiled)")
    ap.add_argument("--layer-contexts", default="1k,4k,32k,128k", help="single-layer and peer contexts")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: model,teacher,layer,peer")
    ap.add_argument("--label", default="current", help="name of this code version in the output files")
    ap.add_argument("--tiny", action="store_true", help="tiny random shape (CPU plumbing check)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--out", default="runs/prefill")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("prefill_profile: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        fla_available()  # the shipped kernel configurations, set before fla's first import (the parts import it)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table_path = out / f"prefill_kernels_{args.label}.txt"
    table_path.write_text("")
    teacher, student = build(args.tiny, device, dtype)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    res = {"label": args.label, "card": card, "dtype": str(dtype), "torch": torch.__version__,
           "command": portable_command(sys.argv), "model": {}, "layer": {}, "peer": {}}
    json_path = out / f"prefill_profile_{args.label}.json"

    def save():
        json_path.write_text(json.dumps(res, indent=1))

    if "model" not in skip:
        for L in parse_lengths(args.contexts):
            with joined_weights(student):  # as the bench runs the student
                row = {"student": profile_model(student, L, device, table_path, f"student prefill {L}")}
            if "teacher" not in skip:
                row["teacher"] = profile_model(teacher, L, device, table_path, f"teacher prefill {L}")
                row["ttft_speedup"] = row["teacher"]["wall_ms"] / row["student"]["wall_ms"]
            res["model"][str(L)] = row
            log(f"model L={L}: {json.dumps(row)[:400]}")
            save()
    if "layer" not in skip:
        for L in parse_lengths(args.layer_contexts):
            res["layer"][str(L)] = profile_layer(student, L, device)
            log(f"layer L={L}: {json.dumps(res['layer'][str(L)])}")
            save()
    if "peer" not in skip and device.type == "cuda":
        res["peer"] = compare_peer(student, parse_lengths(args.layer_contexts), device)
        save()

    print(f"\nprefill profile [{args.label}] on {card}")
    print(f"{'context':>8} {'teacher ms':>11} {'student ms':>11} {'speed-up':>9} {'busy ms':>8} {'gap ms':>7} "
          f"{'kernels':>8}  by part (ms)")
    for L, row in res["model"].items():
        s, t = row["student"], row.get("teacher", {})
        print(f"{L:>8} {t.get('wall_ms', float('nan')):>11.2f} {s['wall_ms']:>11.2f} "
              f"{row.get('ttft_speedup', float('nan')):>9.2f} {s.get('busy_ms', float('nan')):>8.2f} "
              f"{s.get('host_gap_ms', float('nan')):>7.2f} {s.get('kernels', 0):>8}  {s.get('by_part_ms', {})}")
    print(f"\n{'context':>8} {'layer ms':>9} {'joined ms':>10} {'step ms':>8} {'joined':>7} {'kernel ms':>10} "
          f"{'layer/kernel':>13}  parts (ms)")
    for L, row in res["layer"].items():
        kern = row["parts_ms"].get("chunk_kda_kernel", float("nan"))
        ratio = row["layer_over_kernel"] or float("nan")
        parts = {k.replace("chunk_kda_kernel_", ""): round(v, 2) for k, v in row["parts_ms"].items()
                 if k != "chunk_kda_kernel"}
        print(f"{L:>8} {row['layer_cached_prefill_ms']:>9.2f} {row['layer_cached_prefill_joined_ms']:>10.2f} "
              f"{row['layer_decode_step_ms']:>8.3f} {row['layer_decode_step_joined_ms']:>7.3f} {kern:>10.2f} "
              f"{ratio:>13.2f}  {parts}")
    graphed_rows = {L: row["graphed"] for L, row in res["layer"].items() if "graphed" in row}
    if graphed_rows:
        print(f"\n{'context':>8} {'graphed layer ms (kernels)':>27} {'joined ms (kernels)':>20} "
              f"{'fla kernel ms (kernels)':>24}")
        for L, g in graphed_rows.items():
            print(f"{L:>8} {g['layer_ms']:>20.3f} ({g['layer_kernels']:>3}) {g['layer_joined_ms']:>13.3f} "
                  f"({g['layer_joined_kernels']:>3}) {g['kernel_ms']:>17.3f} ({g['kernel_kernels']:>3})")
    save()
    print(f"\nwrote {json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
