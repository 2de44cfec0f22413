"""The parts of a GenDistill training step, each timed beside the alternatives that could replace it, on the shapes of
a real step (SmolLM2-135M pair by default: micro-batch 32 x 2048 tokens, 4 packed documents a row). Every
alternative is also checked against the part it would replace (relative L2 difference of outputs and gradients).

    python benchmarks/train_parts.py --out runs/parts.json             # CUDA: all parts
    python benchmarks/train_parts.py --tiny                             # CPU smoke test, tiny shapes

Parts:
* ``attention``: causal attention over packed documents as transformers runs it (SDPA with the block-diagonal mask
  it builds from restarting ``position_ids``) vs ``torch.nn.attention.varlen.varlen_attn`` (FlashAttention over the
  flattened documents, ``cu_seqlens``): teacher forward (no grad) and student forward + backward.
* ``logit_loss``: forward KL through the two vocabulary projections: gendistill's chunked loss
  (:func:`gendistill.distill.losses.chunked_logit_loss`) vs fla's fused linear KL (``fla.modules.fused_kl_div``).
* ``mlp_norm``: RMSNorm + SwiGLU MLP + residual of one block, eager vs ``torch.compile`` (compile time reported).
* ``kda``: one KDA mixer forward + backward (projections, convs, gates, output norm) vs fla's ``chunk_kda`` alone.
* ``residual``: one student block's norms, projections and MLP (attention aside: the norm's output feeds three
  projections, as in transformers' attention) forward + backward under bf16 autocast over fp32 weights, the norms and
  MLP compiled apart (as §8's trainer compiled them; today's trainer compiles the second norm, the MLP and the
  residual adds as one graph), in three variants: ``fp32_residual`` (§8's trainer: the norms return fp32 and autocast
  casts their output before every projection, a copy each), ``bf16_norm_output`` (the norm's output cast to bf16
  inside its compiled kernel: the matmuls see the same bf16 inputs, the casts are gone, but the gradients of the
  norm's consumers are summed in bf16; today's trainer does this for the first norm) and ``bf16_residual`` (the
  residual stream itself in bf16 as well). Each is compared with the same block in float64 (output, input gradient,
  weight gradients), so a change of the trainer's arithmetic is chosen by measured time and measured error.

Writes one JSON (``--out``) with every timing (median of ``--repeats`` after ``--warmup``, CUDA events) and error.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from gendistill.bench.timing import measure  # noqa: E402
from gendistill.io import portable_command  # noqa: E402
from gendistill.models.hybrid.modeling_hybrid import document_cu_seqlens  # noqa: E402
from gendistill.ops.backend import fla_available  # noqa: E402


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 difference ``|a - b| / |b|`` in float64."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def doc_positions(B: int, T: int, docs: int, device) -> torch.Tensor:
    L = T // docs
    pos = torch.cat([torch.arange(L)] * docs + [torch.arange(T - L * docs)])
    return pos[None].expand(B, -1).contiguous().to(device)


def part_attention(args, dev, dt, res):
    B, T, H, Hkv, D, docs = args.batch, args.seq, args.heads, args.kv_heads, args.head_dim, args.docs
    g = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(B, H, T, D, device=dev, dtype=dt, generator=g)
    k = torch.randn(B, Hkv, T, D, device=dev, dtype=dt, generator=g)
    v = torch.randn(B, Hkv, T, D, device=dev, dtype=dt, generator=g)
    pos = doc_positions(B, T, docs, dev)
    doc = (pos == 0).cumsum(-1)
    idx = torch.arange(T, device=dev)
    mask = ((idx[None, :, None] >= idx[None, None, :]) & (doc[:, :, None] == doc[:, None, :]))[:, None]  # [B,1,T,T]

    def sdpa(q, k, v):
        kk = k.repeat_interleave(H // Hkv, dim=1)
        vv = v.repeat_interleave(H // Hkv, dim=1)
        return F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask).transpose(1, 2)  # [B, T, H, D]

    out = {"shape": [B, T, H, Hkv, D], "docs_per_row": docs}
    ref = sdpa(q, k, v)
    with torch.no_grad():
        out["sdpa_mask_fwd_ms"] = measure(lambda: sdpa(q, k, v), dev, args.warmup, args.repeats).median_ms

    def fwd_bwd(fn):
        qq, kk, vv = (x.detach().requires_grad_() for x in (q, k, v))
        o = fn(qq, kk, vv)
        o.backward(gr)
        return o, qq.grad, kk.grad, vv.grad

    gr = torch.randn_like(ref)
    out["sdpa_mask_fwd_bwd_ms"] = measure(lambda: fwd_bwd(sdpa), dev, args.warmup, args.repeats).median_ms
    r_o, r_dq, r_dk, r_dv = fwd_bwd(sdpa)
    try:
        from torch.nn.attention.varlen import varlen_attn

        sig = inspect.signature(varlen_attn).parameters
        out["varlen_signature"] = list(sig)
        cu = document_cu_seqlens(pos)
        maxlen = int((cu[1:] - cu[:-1]).max())
        kw = {"is_causal": True} if "is_causal" in sig else {"window_size": (-1, 0)}
        gqa = "enable_gqa" in sig

        def varlen(q, k, v):
            qf = q.transpose(1, 2).reshape(B * T, H, D)
            if gqa:
                kf, vf = (x.transpose(1, 2).reshape(B * T, Hkv, D) for x in (k, v))
                o = varlen_attn(qf, kf, vf, cu, cu, maxlen, maxlen, enable_gqa=True, **kw)
            else:
                kf, vf = (x.repeat_interleave(H // Hkv, dim=1).transpose(1, 2).reshape(B * T, H, D) for x in (k, v))
                o = varlen_attn(qf, kf, vf, cu, cu, maxlen, maxlen, **kw)
            return o.reshape(B, T, H, D)

        with torch.no_grad():
            out["varlen_fwd_ms"] = measure(lambda: varlen(q, k, v), dev, args.warmup, args.repeats).median_ms
        out["varlen_fwd_bwd_ms"] = measure(lambda: fwd_bwd(varlen), dev, args.warmup, args.repeats).median_ms
        o, dq, dk, dv = fwd_bwd(varlen)
        out["varlen_rel_diff"] = {"out": rel(o, r_o), "dq": rel(dq, r_dq), "dk": rel(dk, r_dk), "dv": rel(dv, r_dv)}
    except Exception as e:  # noqa: BLE001 - recorded
        out["varlen_error"] = f"{type(e).__name__}: {e}"
    res["attention"] = out


def part_logit_loss(args, dev, dt, res):
    from gendistill.distill.config import LossConfig
    from gendistill.distill.losses import chunked_logit_loss

    N, Dm, V = args.batch * args.seq, args.hidden, args.vocab
    g = torch.Generator(device=dev).manual_seed(1)
    w_s = (torch.randn(V, Dm, device=dev, generator=g) * 0.02)
    w_t = (w_s + 0.01 * torch.randn(V, Dm, device=dev, generator=g)).to(dt)
    h_s = torch.randn(N, Dm, device=dev, generator=g)
    h_t = (h_s + 0.3 * torch.randn(N, Dm, device=dev, generator=g)).to(dt)
    labels = torch.zeros(N, dtype=torch.long, device=dev)
    out = {"shape": [N, Dm, V]}

    def ours(chunk):
        def f():
            hs = h_s.detach().requires_grad_()
            with torch.autocast(dev.type, dtype=dt, enabled=dev.type == "cuda"):
                loss = chunked_logit_loss(hs, w_s, h_t, w_t, labels, LossConfig(chunk_size=chunk), compute_dtype=dt)
            loss.backward()
            return loss, hs.grad
        return f

    for chunk in (4096, 8192):
        out[f"chunked_{chunk}_fwd_bwd_ms"] = measure(ours(chunk), dev, args.warmup, args.repeats).median_ms
    ref_loss, ref_grad = ours(8192)()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        ours(8192)()
        out["chunked_8192_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    try:
        from fla.modules.fused_kl_div import fused_kl_div_loss

        def fused():
            hs = h_s.detach().requires_grad_()
            loss = fused_kl_div_loss(hs.to(dt), h_t, w_s.to(dt), w_t, reduction="batchmean") * N
            loss.backward()
            return loss, hs.grad

        out["fla_fused_fwd_bwd_ms"] = measure(fused, dev, args.warmup, args.repeats).median_ms
        loss, grad = fused()
        out["fla_fused_rel_diff"] = {"loss": abs(float(loss) - float(ref_loss)) / abs(float(ref_loss)),
                                     "grad_h": rel(grad, ref_grad)}
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            fused()
            out["fla_fused_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    except Exception as e:  # noqa: BLE001
        out["fla_fused_error"] = f"{type(e).__name__}: {e}"
    res["logit_loss"] = out


def part_mlp_norm(args, dev, dt, res):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

    cfg = LlamaConfig(hidden_size=args.hidden, intermediate_size=args.intermediate, hidden_act="silu")
    N = args.batch * args.seq
    norm, mlp = LlamaRMSNorm(args.hidden, 1e-5).to(dev), LlamaMLP(cfg).to(dev)

    def block(x):
        return x + mlp(norm(x))

    out = {}
    x32 = torch.randn(1, N, args.hidden, device=dev)
    xt = x32.to(dt)
    # teacher: bf16 weights, no grad; student: fp32 weights under autocast, forward + backward
    t_norm, t_mlp = LlamaRMSNorm(args.hidden, 1e-5).to(dev, dt), LlamaMLP(cfg).to(dev, dt)
    t_mlp.load_state_dict(mlp.state_dict())

    def t_block(x):
        return x + t_mlp(t_norm(x))

    def s_step(fn):
        def f():
            x = x32.detach().requires_grad_()
            with torch.autocast(dev.type, dtype=dt, enabled=dev.type == "cuda"):
                y = fn(x)
            y.float().pow(2).mean().backward()
            return y, x.grad
        return f

    with torch.no_grad():
        out["teacher_eager_fwd_ms"] = measure(lambda: t_block(xt), dev, args.warmup, args.repeats).median_ms
    out["student_eager_fwd_bwd_ms"] = measure(s_step(block), dev, args.warmup, args.repeats).median_ms
    y_ref, g_ref = s_step(block)()
    try:
        t0 = time.perf_counter()
        t_c = torch.compile(t_block)
        with torch.no_grad():
            t_c(xt)
        out["teacher_compile_s"] = time.perf_counter() - t0
        with torch.no_grad():
            out["teacher_compiled_fwd_ms"] = measure(lambda: t_c(xt), dev, args.warmup, args.repeats).median_ms
            out["teacher_compiled_rel_diff"] = rel(t_c(xt), t_block(xt))
        t0 = time.perf_counter()
        s_c = torch.compile(block)
        s_step(s_c)()
        out["student_compile_s"] = time.perf_counter() - t0
        out["student_compiled_fwd_bwd_ms"] = measure(s_step(s_c), dev, args.warmup, args.repeats).median_ms
        y, gx = s_step(s_c)()
        out["student_compiled_rel_diff"] = {"out": rel(y, y_ref), "grad_x": rel(gx, g_ref)}
    except Exception as e:  # noqa: BLE001
        out["compile_error"] = f"{type(e).__name__}: {e}"
        out["compile_traceback"] = traceback.format_exc()[-2000:]
    res["mlp_norm"] = out


def part_kda(args, dev, dt, res):
    from gendistill.convert import convert_teacher
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=2,
                      num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, head_dim=args.head_dim,
                      vocab_size=256, tie_word_embeddings=True)
    student = convert_teacher(AutoModelForCausalLM.from_config(cfg), "0").to(dev)
    student.upcast_recurrence_parameters()
    mixer = student.model.layers[1].linear_attn
    B, T = args.batch, args.seq
    pos = doc_positions(B, T, args.docs, dev)
    cu = document_cu_seqlens(pos)
    x = torch.randn(1, B * T, args.hidden, device=dev, dtype=dt)
    out = {}

    def layer():
        xx = x.detach().requires_grad_()
        with torch.autocast(dev.type, dtype=dt, enabled=dev.type == "cuda"):
            y = mixer(xx, cu_seqlens=cu if dev.type == "cuda" else cu.long())
        y.float().pow(2).mean().backward()
        return y

    out["mixer_fwd_bwd_ms"] = measure(layer, dev, args.warmup, args.repeats).median_ms
    if dev.type == "cuda":
        from fla.ops.kda import chunk_kda

        H, K = mixer.num_heads, mixer.head_dim
        q, k, v, f = (torch.randn(1, B * T, H, K, device=dev, dtype=dt) for _ in range(4))
        b = torch.randn(1, B * T, H, device=dev, dtype=dt)

        def kernel():
            qq, kk, vv, ff, bb = (t.detach().requires_grad_() for t in (q, k, v, f, b))
            o, _ = chunk_kda(qq, kk, vv, ff, bb, A_log=mixer.A_log, dt_bias=mixer.dt_bias, use_qk_l2norm_in_kernel=True,
                             use_gate_in_kernel=True, use_beta_sigmoid_in_kernel=True, cu_seqlens=cu)
            o.float().pow(2).mean().backward()
            return o

        out["chunk_kda_fwd_bwd_ms"] = measure(kernel, dev, args.warmup, args.repeats).median_ms
    res["kda"] = out


def part_residual(args, dev, dt, res):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

    cfg = LlamaConfig(hidden_size=args.hidden, intermediate_size=args.intermediate, hidden_act="silu")
    D, N = args.hidden, args.batch * args.seq
    torch.manual_seed(0)
    mods = torch.nn.ModuleDict({"norm1": LlamaRMSNorm(D, 1e-5), "norm2": LlamaRMSNorm(D, 1e-5), "mlp": LlamaMLP(cfg),
                                "q": torch.nn.Linear(D, D, bias=False), "k": torch.nn.Linear(D, D, bias=False),
                                "v": torch.nn.Linear(D, D, bias=False), "o": torch.nn.Linear(D, D, bias=False)})
    with torch.no_grad():
        for m in (mods["norm1"], mods["norm2"]):
            m.weight.uniform_(0.5, 1.5)

    def block(m, x, norm, mlp):
        h = norm(m["norm1"], x)
        x = x + m["o"](m["q"](h) * torch.sigmoid(m["k"](h)) + m["v"](h))  # three consumers of the norm's output
        return x + mlp(m["mlp"], norm(m["norm2"], x))

    def norm_fp32(mod, x):
        return mod(x)

    def norm_cast(mod, x):  # the norm's output in the autocast dtype, cast inside the compiled kernel
        return mod(x).to(torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type)
                         else x.dtype)

    def mlp_call(mod, x):
        return mod(x)

    x0 = torch.randn(1, N, D, device=dev)
    m64 = copy.deepcopy(mods).to(dev, torch.float64)  # the reference: the same block in float64, no autocast
    x64 = x0.double().requires_grad_()
    y64 = block(m64, x64, norm_fp32, mlp_call)
    y64.pow(2).mean().backward()
    y64 = y64.detach()
    g64 = {n: p.grad for n, p in m64.named_parameters()}
    out = {}
    for name, norm, residual_dt in (("fp32_residual", norm_fp32, torch.float32),
                                    ("bf16_norm_output", norm_cast, torch.float32),
                                    ("bf16_residual", norm_cast, dt)):
        m = copy.deepcopy(mods).to(dev, torch.float32)
        c_norm, c_mlp = torch.compile(norm), torch.compile(mlp_call)

        def step(m=m, c_norm=c_norm, c_mlp=c_mlp, residual_dt=residual_dt):
            m.zero_grad(set_to_none=True)
            x = x0.to(residual_dt, copy=True).requires_grad_()
            with torch.autocast(dev.type, dtype=dt, enabled=dev.type == "cuda"):
                y = block(m, x, c_norm, c_mlp)
            y.float().pow(2).mean().backward()
            return y, x.grad

        t0 = time.perf_counter()
        step()
        entry = {"compile_s": time.perf_counter() - t0}
        entry["fwd_bwd_ms"] = measure(step, dev, args.warmup, args.repeats).median_ms
        y, gx = step()
        entry["rel_err_vs_fp64"] = {"out": rel(y, y64), "grad_x": rel(gx, x64.grad),
                                    **{f"grad_{n}": rel(p.grad, g64[n]) for n, p in m.named_parameters()}}
        out[name] = entry
    base = out["fp32_residual"]["fwd_bwd_ms"]
    for entry in out.values():
        entry["speedup_vs_fp32_residual"] = base / entry["fwd_bwd_ms"]
    res["residual"] = out


PARTS = {"attention": part_attention, "logit_loss": part_logit_loss, "mlp_norm": part_mlp_norm, "kda": part_kda,
         "residual": part_residual}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated: {', '.join(PARTS)}")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (CPU smoke test)")
    ap.add_argument("--batch", type=int, default=None, help="rows per micro-batch (default 32; tiny 2)")
    ap.add_argument("--seq", type=int, default=None, help="tokens per row (default 2048; tiny 64)")
    ap.add_argument("--docs", type=int, default=4, help="packed documents per row")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None, help="JSON path")
    args = ap.parse_args()
    tiny = args.tiny
    args.batch = args.batch or (2 if tiny else 32)
    args.seq = args.seq or (64 if tiny else 2048)
    # SmolLM2-135M's shape (tiny: a few heads of 16)
    args.hidden, args.intermediate = (64, 128) if tiny else (576, 1536)
    args.heads, args.kv_heads, args.head_dim = (4, 2, 16) if tiny else (9, 3, 64)
    args.vocab = 512 if tiny else 49152
    dev = torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu")
    dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    if dev.type == "cuda":
        fla_available()  # the shipped kernel configurations, set before fla's first import (the parts import it)
    res = {"benchmark": "train_parts", "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
           "torch": torch.__version__, "batch": args.batch, "seq": args.seq, "docs": args.docs,
           "command": portable_command(sys.argv)}
    for name in [p.strip() for p in args.parts.split(",") if p.strip()]:
        t0 = time.perf_counter()
        try:
            PARTS[name](args, dev, dt, res)
        except Exception as e:  # noqa: BLE001 - one part failing must not lose the others
            res[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        res.setdefault(name, {})["part_seconds"] = time.perf_counter() - t0
        print(name, json.dumps(res[name], default=str)[:1500], flush=True)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(res, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
