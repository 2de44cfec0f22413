"""Stage 3a training throughput: tokens/s, MFU and peak memory of one GenDistill optimizer step (teacher forward +
student forward/backward + AdamW) on a Qwen3-0.6B-shaped teacher and its Hybrid-KDA student (random weights).

    python benchmarks/train_throughput.py                      # on one GPU: batch 4 x 4096, writes
                                                               #   docs/results/train_throughput_<card>.json
    python benchmarks/train_throughput.py --loss full          # the naive baseline: full-vocabulary fp32 KL
    python benchmarks/train_throughput.py --tiny               # CPU smoke test (< 1 min), tiny shapes

The step is the trainer's own code path (:class:`gendistill.distill.stages.Stage3Module`, the chunked KL, fused
AdamW over the stage 3a trainable groups: KDA mixers + MLPs + norms; embeddings, lm_head and attention frozen).

FLOPs counted per step (``T`` tokens, weight matmuls as 2 FLOPs per multiply-add):
* teacher forward: ``2 * N_teacher_matmul * T`` + causal attention ``2 * T_seq * T * H * d_head`` per layer (QK and PV,
  halved by causality) + the lm_head on the masked-in tokens;
* student forward + backward: trainable weight matmuls ``6 * N * T``; frozen ones that still pass gradients
  (attention, lm_head) ``4 * N * T``; attention layers ``3x`` their forward attention FLOPs; the KDA recurrence
  (chunked form, ``~ 2 * T * H * (C*K + C*V + 2*K*V)`` forward, ``3x`` for forward + backward).
MFU = counted FLOPs / (step time x peak dense bf16 FLOP/s of the card).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}
PAPER_LAYERS = [0, 2, 6, 11, 13, 18, 21]


def qwen3_config(tiny: bool):
    from transformers import Qwen3Config

    if tiny:
        return Qwen3Config(hidden_size=64, intermediate_size=192, num_hidden_layers=4, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=16, vocab_size=2048, tie_word_embeddings=True,
                           max_position_embeddings=4096)
    return Qwen3Config(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True,
                       max_position_embeddings=40960)


def card_name(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device)
    for k in PEAK_BF16:
        if k in name:
            return k.lower()
    return name.replace(" ", "_").lower()


def peak_flops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def count_flops(teacher, student, cfg, batch: int, seq: int, chunk: int = 64) -> dict[str, float]:
    T = batch * seq
    H, hd = cfg.num_attention_heads, cfg.head_dim
    attn_fwd = 2.0 * seq * T * H * hd  # causal QK^T + PV per attention layer
    head = 2.0 * cfg.vocab_size * cfg.hidden_size * T

    def matmul_params(model, pred=lambda n, p: True):
        return sum(p.numel() for n, p in model.named_parameters()
                   if p.ndim == 2 and "embed_tokens" not in n and "lm_head" not in n and pred(n, p))

    teacher_f = 2.0 * matmul_params(teacher) * T + cfg.num_hidden_layers * attn_fwd + head
    train_mm = matmul_params(student, lambda n, p: p.requires_grad)
    frozen_mm = matmul_params(student, lambda n, p: not p.requires_grad)
    n_attn = sum(1 for layer in student.model.layers if hasattr(layer, "self_attn"))
    kda_layers = [layer.linear_attn for layer in student.model.layers if hasattr(layer, "linear_attn")]
    kda_fwd = sum(2.0 * T * m.num_heads * (chunk * m.head_dim * 2 + 2 * m.head_dim * m.head_dim) for m in kda_layers)
    student_f = 6.0 * train_mm * T + 4.0 * frozen_mm * T + 3.0 * n_attn * attn_fwd + 3.0 * kda_fwd + 2.0 * head
    return {"teacher_forward": teacher_f, "student_forward_backward": student_f, "total": teacher_f + student_f}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on CPU (smoke test)")
    ap.add_argument("--batch", type=int, default=None, help="sequences per step (default 4; tiny 2)")
    ap.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 4096; tiny 128)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 10; tiny 3)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; tiny 1)")
    ap.add_argument("--loss", choices=["chunked", "full"], default="chunked",
                    help="chunked KL (ours) or the naive full-vocabulary fp32 KL")
    ap.add_argument("--chunk-size", type=int, default=4096, help="tokens per chunk of the vocabulary projection")
    ap.add_argument("--no-grad-ckpt", action="store_true", help="turn gradient checkpointing off")
    ap.add_argument("--docs-per-seq", type=int, default=1, help="pack this many documents per sequence")
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak bf16 TFLOP/s (default: from the card)")
    ap.add_argument("--out", type=str, default=None, help="JSON path (default docs/results/train_throughput_<card>.json)")
    args = ap.parse_args()

    from gendistill.convert import convert_teacher
    from gendistill.distill.config import LossConfig, StageConfig
    from gendistill.distill.freezing import apply_trainable, param_groups
    from gendistill.distill.losses import full_logit_loss
    from gendistill.distill.stages import Stage3Module, cast_mixer_inputs

    dev = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    tiny = args.tiny
    B = args.batch or (2 if tiny else 4)
    S = args.seq or (128 if tiny else 4096)
    steps = args.steps or (3 if tiny else 10)
    warm = args.warmup if args.warmup is not None else (1 if tiny else 3)
    cfg = qwen3_config(tiny)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    from transformers import Qwen3ForCausalLM

    print(f"building Qwen3{'-tiny' if tiny else '-0.6B'}-shaped teacher + hybrid student on {dev} ...", flush=True)
    teacher = Qwen3ForCausalLM(cfg).to(dev)
    layers = [0, 2] if tiny else PAPER_LAYERS
    student = convert_teacher(teacher, layers).to(device=dev, dtype=torch.float32)
    student.upcast_recurrence_parameters()
    if dev.type == "cuda":
        teacher = teacher.to(torch.bfloat16)
    teacher.eval().requires_grad_(False)
    stage = StageConfig(name="stage3a", steps=1, seq_len=S, batch_size=B, micro_batch_size=B,
                        optim={"lr": 2.5e-5, "weight_decay": 0.1}, loss=LossConfig(chunk_size=args.chunk_size),
                        gradient_checkpointing=not args.no_grad_ckpt)
    apply_trainable(student, stage.trainable)
    if stage.gradient_checkpointing:
        from gendistill.distill.trainer import _enable_gradient_checkpointing

        _enable_gradient_checkpointing(student, "benchmark")
    student.train()
    module = Stage3Module(student, teacher, stage)
    if dev.type == "cuda":  # as the trainer does under bf16 autocast: one dtype into the KDA kernels
        cast_mixer_inputs(student, torch.bfloat16)
    opt = torch.optim.AdamW(param_groups(student, 0.1), lr=2.5e-5, fused=dev.type == "cuda")

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (B, S), generator=g)
    L = S // args.docs_per_seq
    pos = torch.cat([torch.arange(L)] * args.docs_per_seq + [torch.arange(S - L * args.docs_per_seq)])[None].expand(B, -1)
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[:, -1] = False
    batch = {"input_ids": ids, "position_ids": pos.contiguous(), "loss_mask": mask,
             "labels": torch.where(mask, torch.roll(ids, -1, 1), -100), "token_mask": mask}
    batch = {k: v.to(dev) for k, v in batch.items()}
    denom = float(mask.sum())

    def full_loss_step():
        with torch.no_grad():
            t_logits = teacher(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        s_logits = student(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        sel = batch["loss_mask"].reshape(-1)
        per = full_logit_loss(s_logits.reshape(-1, cfg.vocab_size)[sel].float(),
                              t_logits.reshape(-1, cfg.vocab_size)[sel].float(), batch["labels"].reshape(-1)[sel],
                              stage.loss)
        return per.sum() / denom

    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)

    def step():
        with amp:
            loss = module(batch, denom) if args.loss == "chunked" else full_loss_step()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in student.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    result: dict = {
        "benchmark": "train_throughput", "stage": "stage3a", "card": card_name(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "tiny": tiny, "batch": B, "seq_len": S, "tokens_per_step": B * S, "loss_impl": args.loss,
        "chunk_size": args.chunk_size if args.loss == "chunked" else None,
        "gradient_checkpointing": stage.gradient_checkpointing, "docs_per_seq": args.docs_per_seq,
        "attention_layers": layers, "vocab_size": cfg.vocab_size,
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "student_params": sum(p.numel() for p in student.parameters()),
        "trainable_params": sum(p.numel() for p in student.parameters() if p.requires_grad),
        "torch": torch.__version__, "kda_backend": "fla" if dev.type == "cuda" else "torch",
    }
    try:
        for _ in range(warm):
            step()
        sync()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        losses = [step() for _ in range(steps)]
        sync()
        dt = (time.perf_counter() - t0) / steps
        tok_s = B * S / dt
        fl = count_flops(teacher, student, cfg, B, S)
        peak = peak_flops(dev, args.peak_tflops)
        result.update({
            "status": "ok", "step_time_s": dt, "tokens_per_s": tok_s, "loss_last": losses[-1],
            "flops_per_step": fl, "achieved_tflops": fl["total"] / dt / 1e12,
            "peak_tflops": peak / 1e12 if peak else None, "mfu": (fl["total"] / dt / peak) if peak else None,
            "peak_memory_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None,
        })
    except torch.OutOfMemoryError as e:
        result.update({"status": "oom", "error": str(e).splitlines()[0],
                       "peak_memory_gib": torch.cuda.max_memory_allocated(dev) / 2**30})
    # what the chunking saves: fp32 logits of the whole batch, per tensor (student, teacher, their softmaxes, grad)
    V = cfg.vocab_size
    result["full_fp32_logits_gib_per_tensor"] = B * S * V * 4 / 2**30
    result["chunk_fp32_logits_gib_per_tensor"] = min(args.chunk_size, B * S) * V * 4 / 2**30

    out = Path(args.out) if args.out else ROOT / "docs" / "results" / (
        f"train_throughput_{result['card']}{'_tiny' if tiny else ''}{'_fullkl' if args.loss == 'full' else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    if result["status"] == "ok":
        mfu = f"{100 * result['mfu']:.1f}%" if result["mfu"] is not None else "n/a (no peak for this device)"
        mem = f"{result['peak_memory_gib']:.1f} GiB" if result["peak_memory_gib"] is not None else "n/a"
        print(f"stage3a {B}x{S} on {result['device_name']}: {tok_s:,.0f} tokens/s, MFU {mfu}, peak memory {mem}, "
              f"step {dt:.3f}s ({args.loss} KL)")
    else:
        print(f"stage3a {B}x{S} on {result['device_name']}: out of memory ({args.loss} KL) at "
              f"{result['peak_memory_gib']:.1f} GiB")
    print(f"full-batch fp32 logits would be {result['full_fp32_logits_gib_per_tensor']:.2f} GiB per tensor; "
          f"one chunk is {result['chunk_fp32_logits_gib_per_tensor']:.2f} GiB")
    print(f"wrote {out}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
