#!/usr/bin/env python
"""Per-op timings of the KDA kernels (GPU only), to find where the hybrid's time goes.

At each sequence length T (batch B, H heads, K = V head size, bf16):
  chunk_kda[pre]     fla chunk_kda on pre-activated inputs (g fp32 log-decay, l2-normed q/k, beta in (0,1)) --
                     what gendistill.ops.kda.kda_chunk calls in prefill
  chunk_kda[fused]   fla chunk_kda with the gate, q/k l2norm and beta sigmoid inside the kernel (fla's layer path)
  fused,packed       the same as one packed row (cu_seqlens, a bound every T) under inference mode: the call fla's
                     intra-card split takes (it splits packed calls only)
  fused,split        the same call with fla's intra-card context parallelism on (gendistill.ops.backend.fla_intracard:
                     the state pass of a long sequence split across the card, then chained); its output and final state
                     against the serial packed call's are in the row (split_rel_o, split_rel_state), computed on inputs
                     whose decays are slow (about 1e-4 a token or less), so that each piece's chained start state shows
  prep[torch]        the pre-activation done outside the kernel in our layer (gate in fp32, l2norm, sigmoid)
  fused_recurrent    fla fused_recurrent_kda over the whole sequence (the step kernel used as a prefill)
  sdpa_causal        the teacher's attention for one layer (16 q heads, 8 kv heads, flash via SDPA), for scale
and per decode step (T = 1 new token, state / KV of length T):
  recurrent_step     fused_recurrent_kda, one token, fp32 state in and out
  sdpa_decode        one query against a KV cache of length T (HF's decode path: packed GQA + bool mask)
Numerics on a short sequence: fla chunk / fused_recurrent (both input modes) vs fla's fp32 naive_recurrent_kda.

  python benchmarks/kda_kernels.py --out runs/kda_kernels            # ~1-2 min on an H100
Prints a table last and writes <out>/kda_kernels_<card>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # gendistill's ops for the prep[torch] row

from gendistill.bench.timing import measure  # noqa: E402  (the project's timer: CUDA events on GPU)
from gendistill.ops.backend import fla_available, fla_intracard  # noqa: E402
from gendistill.ops.varlen import row_bounds  # noqa: E402


def empty_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def log(msg: str) -> None:
    print(f"[kda_kernels] {msg}", flush=True)


def parse_lengths(text: str) -> list[int]:
    out = []
    for p in text.split(","):
        p = p.strip().lower()
        if p:
            out.append(int(p.rstrip("k")) * (1024 if p.endswith("k") else 1))
    return out


def cpu_standins():
    """fla's KDA kernels are Triton/GPU only; on CPU (``--device cpu``, used by the tests to keep this script from
    rotting) they are replaced by gendistill's pure-PyTorch chunked and recurrent KDA (fp32) behind fla's signatures,
    so the numerics section still compares two independent implementations (ours against fla's
    ``naive_recurrent_kda``). CPU timings mean nothing."""
    from gendistill.ops.kda import kda_gate, l2norm, torch_chunk_kda, torch_recurrent_kda

    def standin(kernel):
        def op(q, k, v, g, beta, A_log=None, dt_bias=None, scale=None, initial_state=None, output_final_state=False,
               use_qk_l2norm_in_kernel=False, use_gate_in_kernel=False, use_beta_sigmoid_in_kernel=False,
               state_v_first=False, **kwargs):
            if use_qk_l2norm_in_kernel:
                q, k = l2norm(q.float()), l2norm(k.float())
            if use_gate_in_kernel:
                g = kda_gate(g.float(), A_log, dt_bias)
            if use_beta_sigmoid_in_kernel:
                beta = torch.sigmoid(beta.float())
            h0 = initial_state.transpose(-1, -2) if (state_v_first and initial_state is not None) else initial_state
            o, s = kernel(q.float(), k.float(), v.float(), g.float(), beta.float(), scale=scale,
                          initial_state=None if h0 is None else h0.float(), output_final_state=output_final_state)
            if state_v_first and s is not None:
                s = s.transpose(-1, -2)
            return o.to(v.dtype), s

        return op

    return standin(torch_chunk_kda), standin(torch_recurrent_kda)


def packed_call(chunk_kda, x, B, T, device):
    """The fused ``chunk_kda`` call on ``x``'s raw inputs as one packed row of ``B`` sequences of ``T`` tokens (bounds
    on the device and the host), under inference mode, where fla may split it (:func:`fla_intracard`)."""
    packed = [t.reshape(1, B * T, *t.shape[2:]) for t in (x["q"], x["k"], x["v"], x["g_raw"], x["b_raw"])]
    cu_host, cu = row_bounds(B, T, device)

    def call():
        with torch.inference_mode():
            return chunk_kda(*packed, output_final_state=True, use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True,
                             use_beta_sigmoid_in_kernel=True, A_log=x["A_log"], dt_bias=x["dt_bias"], cu_seqlens=cu,
                             cu_seqlens_cpu=cu_host)

    return call


def slow_decay(x):
    """``x`` with a gate and beta under which the state lives across the whole sequence: ``-exp(A_log) *
    softplus(f + dt_bias)`` at about ``-1e-2 * softplus(-8 + f)`` (1e-4 a token or less) and beta about
    ``sigmoid(-5)``. With :func:`make_inputs`' Mamba-style decays a start state is forgotten within a few hundred
    tokens, so a split whose pieces started from wrong states would hardly show."""
    return {**x, "A_log": torch.full_like(x["A_log"], -4.6), "dt_bias": torch.full_like(x["dt_bias"], -8.0),
            "b_raw": x["b_raw"] - 5.0}


def split_difference(chunk_kda, x, B, T, device) -> dict:
    """The split call against the serial one on the same inputs: relative L2 difference of the outputs and of the
    final states."""
    serial = packed_call(chunk_kda, x, B, T, device)
    o_ser, s_ser = serial()
    with fla_intracard():
        o_spl, s_spl = serial()
    return {"split_rel_o": ((o_spl.float() - o_ser.float()).norm() / o_ser.float().norm()).item(),
            "split_rel_state": ((s_spl - s_ser).norm() / s_ser.norm()).item()}


def _unit(key: str) -> str:
    """The unit of a prefill row's number in the log: ratios ``x``, relative differences none, times ``ms``."""
    if key.startswith("split_rel"):
        return ""
    return "x" if key in ("attn_over_chunk_pre", "split_speedup") else "ms"


def make_inputs(B, T, H, K, dtype, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(B, T, H, K, device=device, dtype=dtype, generator=g)
    k = torch.randn(B, T, H, K, device=device, dtype=dtype, generator=g)
    v = torch.randn(B, T, H, K, device=device, dtype=dtype, generator=g)
    g_raw = torch.randn(B, T, H, K, device=device, dtype=dtype, generator=g)
    b_raw = torch.randn(B, T, H, device=device, dtype=dtype, generator=g)
    A_log = torch.empty(H, device=device, dtype=torch.float32).uniform_(1, 16, generator=g).log()
    dt = torch.exp(torch.empty(H * K, device=device).uniform_(math.log(1e-3), math.log(1e-1), generator=g))
    dt_bias = dt + torch.log(-torch.expm1(-dt))  # softplus^-1
    return dict(q=q, k=k, v=v, g_raw=g_raw, b_raw=b_raw, A_log=A_log, dt_bias=dt_bias)


def activate(x):
    from fla.ops.kda.gate import naive_kda_gate

    q = F.normalize(x["q"].float(), dim=-1).to(x["q"].dtype)
    k = F.normalize(x["k"].float(), dim=-1).to(x["k"].dtype)
    g = naive_kda_gate(x["g_raw"].float(), x["A_log"], x["dt_bias"])  # fp32 log decay
    beta = torch.sigmoid(x["b_raw"].float()).to(x["q"].dtype)
    return q, k, g, beta


def numerics(device, dtype, chunk_kda, fused_recurrent_kda, T=512, B=2, H=4, K=64) -> dict:
    from fla.ops.kda.naive import naive_recurrent_kda

    x = make_inputs(B, T, H, K, dtype, device, seed=1)
    q, k, g, beta = activate(x)
    h0 = torch.randn(B, H, K, K, device=device, dtype=torch.float32) * 0.1
    ref_o, ref_s = naive_recurrent_kda(q.float(), k.float(), x["v"].float(), g, beta.float(), initial_state=h0,
                                       output_final_state=True)
    out = {"T": T, "B": B, "H": H, "K": K, "dtype": str(dtype)}

    def cmp(name, o, s):
        o, s = o.float(), s.float()
        scale_o = ref_o.abs().max().item()
        out[name] = {
            "max_abs_o": (o - ref_o.float()).abs().max().item(),
            "rel_o": ((o - ref_o.float()).norm() / ref_o.float().norm()).item(),
            "max_abs_state": (s - ref_s.float()).abs().max().item(),
            "ref_o_absmax": scale_o,
        }

    o, s = chunk_kda(q, k, x["v"], g, beta, initial_state=h0.clone(), output_final_state=True)
    cmp("chunk_kda[pre]", o, s)
    o, s = chunk_kda(x["q"], x["k"], x["v"], x["g_raw"], x["b_raw"], initial_state=h0.clone(), output_final_state=True,
                     use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True, use_beta_sigmoid_in_kernel=True,
                     A_log=x["A_log"], dt_bias=x["dt_bias"])
    cmp("chunk_kda[fused]", o, s)
    o, s = fused_recurrent_kda(q, k, x["v"], g, beta, initial_state=h0.clone(), output_final_state=True)
    cmp("fused_recurrent[pre]", o, s)
    o, s = fused_recurrent_kda(x["q"], x["k"], x["v"], x["g_raw"], x["b_raw"], A_log=x["A_log"],
                               dt_bias=x["dt_bias"], initial_state=h0.clone(), output_final_state=True,
                               use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True, use_beta_sigmoid_in_kernel=True)
    cmp("fused_recurrent[fused]", o, s)
    # state layout: state_v_first transposes [N, H, K, V] -> [N, H, V, K]
    o, s = chunk_kda(q, k, x["v"], g, beta, initial_state=h0.transpose(-1, -2).contiguous(), output_final_state=True,
                     state_v_first=True)
    cmp("chunk_kda[pre,state_v_first]", o, s.transpose(-1, -2))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="1k,4k,16k,32k,64k,128k")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=8, help="teacher kv heads for the SDPA reference")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--budget-s", type=float, default=3.0, help="soft time budget per (op, T)")
    ap.add_argument("--recurrent-max-len", type=int, default=131072, help="longest T for fused_recurrent prefill")
    ap.add_argument("--decode-batches", default="1,64")
    ap.add_argument("--numerics-len", type=int, default=512)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: plumbing check with naive stand-ins")
    ap.add_argument("--out", default="runs/kda_kernels")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            log("needs a CUDA GPU (fla's KDA kernels are Triton); --device cpu only checks the plumbing")
            return 2
        fla_available()  # the shipped kernel configurations, set before fla's first import
        from fla.ops.kda import chunk_kda, fused_recurrent_kda
    else:
        chunk_kda, fused_recurrent_kda = cpu_standins()

    try:
        from gendistill.ops.kda import kda_gate, l2norm
    except Exception:  # noqa: BLE001 - the script also runs outside the package
        kda_gate = l2norm = None

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    B, H, K, Hkv = args.batch, args.heads, args.dim, args.kv_heads
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu-{platform.machine()}"
    from importlib.metadata import version

    import transformers

    res = {
        "card": card,
        "versions": {"torch": torch.__version__, "fla": version("flash-linear-attention"), "fla_core": version("fla-core"),
                     "triton": version("triton"), "transformers": transformers.__version__,
                     "python": platform.python_version(), "cuda": torch.version.cuda},
        "command": " ".join(["python", *sys.argv]),
        "shape": {"B": B, "H": H, "K": K, "V": K, "kv_heads_sdpa": Hkv, "dtype": args.dtype},
        "prefill": [],
        "decode": [],
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"kda_kernels_{card.replace(' ', '-').replace('/', '-')}.json"

    def save():
        path.write_text(json.dumps(res, indent=2))

    log("numerics vs fla naive_recurrent_kda (fp32)")
    try:
        res["numerics"] = numerics(device, dtype, chunk_kda, fused_recurrent_kda, T=args.numerics_len)
    except Exception as exc:  # noqa: BLE001
        res["numerics"] = {"error": f"{type(exc).__name__}: {exc}"}
    log(json.dumps(res["numerics"]))
    save()

    for T in parse_lengths(args.lengths):
        row = {"T": T}
        try:
            x = make_inputs(B, T, H, K, dtype, device)
            q, k, g, beta = activate(x)
            v = x["v"]
            ops = {
                "chunk_kda[pre]": lambda: chunk_kda(q, k, v, g, beta, output_final_state=True),
                "chunk_kda[fused]": lambda: chunk_kda(
                    x["q"], x["k"], v, x["g_raw"], x["b_raw"], output_final_state=True, use_qk_l2norm_in_kernel=True,
                    use_gate_in_kernel=True, use_beta_sigmoid_in_kernel=True, A_log=x["A_log"], dt_bias=x["dt_bias"]),
            }
            fused_packed = packed_call(chunk_kda, x, B, T, device)

            def fused_split():
                with fla_intracard():
                    return fused_packed()

            ops["fused,packed"], ops["fused,split"] = fused_packed, fused_split
            try:  # the split against the serial packed call on slow decays: rounding only, or a defect
                row.update(split_difference(chunk_kda, slow_decay(x), B, T, device))
            except Exception as exc:  # noqa: BLE001 - OOM or kernel failure: record and go on
                row["split_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                empty_cache()
            if kda_gate is not None:
                ops["prep[torch]"] = lambda: (
                    l2norm(x["q"].float()).to(dtype), l2norm(x["k"].float()).to(dtype),
                    kda_gate(x["g_raw"], x["A_log"], x["dt_bias"]), torch.sigmoid(x["b_raw"].float()))
            if T <= args.recurrent_max_len:
                ops["fused_recurrent"] = lambda: fused_recurrent_kda(q, k, v, g, beta, output_final_state=True)
            qa = torch.randn(B, H, T, K, device=device, dtype=dtype)
            ka = torch.randn(B, Hkv, T, K, device=device, dtype=dtype)
            va = torch.randn(B, Hkv, T, K, device=device, dtype=dtype)
            ops["sdpa_causal"] = lambda: F.scaled_dot_product_attention(qa, ka, va, is_causal=True, enable_gqa=True)
            for name, fn in ops.items():
                try:
                    # warm-up runs first (autotuning, first-call compilation), timed repeats cut to fit the budget
                    t = measure(fn, device, warmup=args.warmup, repeats=args.repeats, budget_s=args.budget_s)
                    row[name] = t.median_ms
                    row[name + "_all"] = t.all_ms
                except Exception as exc:  # noqa: BLE001 - OOM or kernel failure: record and go on
                    row[name] = None
                    row[name + "_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                    empty_cache()
            del x, q, k, g, beta, v, qa, ka, va, ops, fused_packed
            empty_cache()
        except torch.OutOfMemoryError as exc:
            row["error"] = f"oom: {str(exc)[:200]}"
            empty_cache()
        if row.get("chunk_kda[pre]") and row.get("sdpa_causal"):
            row["attn_over_chunk_pre"] = row["sdpa_causal"] / row["chunk_kda[pre]"]
        if row.get("fused,packed") and row.get("fused,split"):
            row["split_speedup"] = row["fused,packed"] / row["fused,split"]
        log(f"prefill T={T}: " + ", ".join(f"{k}={v:{'.2e' if k.startswith('split_rel') else '.3f'}}{_unit(k)}"
                                            for k, v in row.items()
                                            if isinstance(v, float) and not k.endswith("_all") and k != "T"))
        res["prefill"].append(row)
        save()

        for Bd in parse_lengths(args.decode_batches):
            drow = {"T": T, "B": Bd}
            try:
                x = make_inputs(Bd, 1, H, K, dtype, device)
                q1, k1, g1, b1 = activate(x)
                h = torch.zeros(Bd, H, K, K, device=device, dtype=torch.float32)
                t = measure(lambda: fused_recurrent_kda(q1, k1, x["v"], g1, b1, initial_state=h,
                                                        output_final_state=True), device, warmup=args.warmup,
                            repeats=20, budget_s=1.0)
                drow["recurrent_step"] = t.median_ms
                qd = torch.randn(Bd, Hkv, H // Hkv, K, device=device, dtype=dtype)  # packed GQA query
                kd = torch.randn(Bd, Hkv, T, K, device=device, dtype=dtype)
                vd = torch.randn(Bd, Hkv, T, K, device=device, dtype=dtype)
                mask = torch.ones(Bd, 1, 1, T, device=device, dtype=torch.bool)
                t = measure(lambda: F.scaled_dot_product_attention(qd, kd, vd, attn_mask=mask), device,
                            warmup=args.warmup, repeats=20, budget_s=1.0)
                drow["sdpa_decode"] = t.median_ms
                del x, q1, k1, g1, b1, h, qd, kd, vd, mask
            except torch.OutOfMemoryError as exc:
                drow["error"] = f"oom: {str(exc)[:200]}"
            empty_cache()
            log(f"decode T={T} B={Bd}: {drow}")
            res["decode"].append(drow)
            save()

    save()
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    tbl = Table(title=f"KDA kernels on {card} (B={B}, H={H}, K=V={K}, {args.dtype}); ms, median")
    cols = ["chunk_kda[pre]", "chunk_kda[fused]", "fused,packed", "fused,split", "split_speedup", "split_rel_o",
            "prep[torch]", "fused_recurrent", "sdpa_causal", "attn_over_chunk_pre"]
    tbl.add_column("T", justify="right")
    for c in cols:
        tbl.add_column(escape(c), justify="right")
    for row in res["prefill"]:
        tbl.add_row(str(row["T"]), *["-" if row.get(c) is None else
                                     (f"{row[c]:.1e}" if c == "split_rel_o" else f"{row[c]:.3f}") for c in cols])
    dt = Table(title="decode step (ms): one token, state / KV of length T")
    for c in ("T", "B", "recurrent_step", "sdpa_decode"):
        dt.add_column(c, justify="right")
    for row in res["decode"]:
        dt.add_row(str(row["T"]), str(row["B"]), *[("-" if row.get(c) is None else f"{row[c]:.4f}")
                                                   for c in ("recurrent_step", "sdpa_decode")])
    nt = Table(title="numerics vs fla naive_recurrent_kda (fp32)")
    for c in ("path", "max|do|", "rel(o)", "max|dS|"):
        nt.add_column(c)
    for name, v in (res.get("numerics") or {}).items():
        if isinstance(v, dict):
            nt.add_row(escape(name), f"{v['max_abs_o']:.2e}", f"{v['rel_o']:.2e}", f"{v['max_abs_state']:.2e}")
    con = Console(width=200)
    con.print(nt)
    con.print(dt)
    con.print(tbl)
    con.print(f"JSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
