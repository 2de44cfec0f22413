"""GenDistill training throughput: tokens/s, MFU and peak memory of the trainer's own optimizer step
(:func:`gendistill.distill.trainer.train_step`: teacher forward + student forward/backward + clipping + fused AdamW)
on a teacher and its Hybrid-KDA student with random weights, for stage 1, stage 2 and stage 3a, over a sweep of
micro-batch sizes, with the time from process start to the first finished optimizer step.

    python benchmarks/train_throughput.py                       # Qwen3-0.6B shape, stage 3a, batch 16 x 4096
    python benchmarks/train_throughput.py --config smollm2-135m --seq 2048 --batch 64 --micro-batches 16,32
    python benchmarks/train_throughput.py --stages stage1,stage2,stage3a --micro-batches 4,8,16
    python benchmarks/train_throughput.py --profile runs/profile   # per-op CUDA time of one step (torch.profiler)
    python benchmarks/train_throughput.py --dump-fla-configs DIR   # write fla's autotuned kernel configurations
    python benchmarks/train_throughput.py --tiny                # CPU smoke test (< 1 min), tiny shapes

Writes ``docs/results/train_throughput_<config>_<card>.json`` (``--out`` to change): one row per (stage, micro-batch,
checkpointing) and ``first_step_s``, the seconds from process start to the end of the first optimizer step (on a
fresh machine this includes fla's Triton compilation; gendistill ships tuned kernel configurations for the H200,
``gendistill/ops/fla_config_files``, so no autotuning happens: run with ``TRITON_CACHE_DIR=$(mktemp -d)`` to measure
a fresh machine). The JSON also says where those seconds went: ``models_ready_s`` (imports, the two models
built on the device) and ``first_step_phases_ms``, the first step's phases by the wall clock (the device synchronised
at each mark: compilation happens on the host, in the phase that first runs a kernel). Each row's ``warmup_s`` is
the wall time of its untimed warm-up steps: in the first row the whole first step, in a later row what that row's own
variant compiles beside a step or two (after an ``eager-attention`` row, say, an optimized row's attention graphs).

FLOPs counted per stage-3a step (``T`` tokens, weight matmuls as 2 FLOPs per multiply-add):
* teacher forward: ``2 * N_teacher_matmul * T`` + causal attention ``2 * T_seq * T * H * d_head`` per layer (QK and PV,
  halved by causality) + the lm_head on the masked-in tokens;
* student forward + backward: trainable weight matmuls ``6 * N * T``; frozen ones that still pass gradients
  (attention, lm_head) ``4 * N * T``; attention layers ``3x`` their forward attention FLOPs; the KDA recurrence
  (chunked form, ``~ 2 * T * H * (C*K + C*V + 2*K*V)`` forward, ``3x`` for forward + backward).
Recomputation under gradient checkpointing is not counted. MFU = counted FLOPs / (step time x peak dense bf16 FLOP/s
of the card). Stages 1 and 2 are reported in tokens/s only.
"""

from __future__ import annotations

import time

T_START = time.perf_counter()  # before torch is imported: "first step" latency counts the imports too

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}
PAPER_LAYERS = [0, 2, 6, 11, 13, 18, 21]
CONFIGS = ("qwen3-0.6b", "smollm2-135m")
VARIANTS = ("optimized", "baseline", "uncast", "unfused", "eager-attention", "bf16-student", "bounded-gate")
#: the KDA decay gate's lower bound of the ``bounded-gate`` variant's student (fla's ``safe_gate`` kernels)
BOUNDED_GATE = -5.0
#: how a variant compiles the blocks, as ``compiled_blocks`` keywords (the others: the trainer's defaults)
BLOCKS = {"uncast": {"cast": False}, "unfused": {"fused": False, "cast": False},
          "eager-attention": {"attention": False}}


def model_config(name: str, tiny: bool):
    """A random-weight teacher config of the shape of ``name`` (``tiny``: 4 layers, small widths)."""
    from transformers import Qwen3Config

    from gendistill.bench.models import smollm2_config

    if tiny:
        return Qwen3Config(hidden_size=64, intermediate_size=192, num_hidden_layers=4, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=16, vocab_size=2048, tie_word_embeddings=True,
                           max_position_embeddings=4096)
    if name == "qwen3-0.6b":
        return Qwen3Config(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                           num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True,
                           max_position_embeddings=40960)
    return smollm2_config()  # SmolLM2-135M-Instruct (the embedded teacher's shape)


def attention_layers(name: str, tiny: bool):
    return [0, 2] if tiny else (PAPER_LAYERS if name == "qwen3-0.6b" else "every:4")
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
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--config", choices=CONFIGS, default="qwen3-0.6b", help="teacher shape (random weights)")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on CPU (smoke test)")
    ap.add_argument("--stages", default="stage3a", help="comma-separated: stage1, stage2, stage3a")
    ap.add_argument("--batch", type=int, default=None, help="sequences per optimizer step (default 16; tiny 2)")
    ap.add_argument("--micro-batches", default=None, help="comma-separated micro-batch sizes to sweep (default: "
                                                          "the batch, i.e. no accumulation; tiny 1,2)")
    ap.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 4096; tiny 128)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per row (default 6; tiny 2)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first per row (default 2; tiny 1)")
    ap.add_argument("--grad-ckpt", choices=["off", "on", "both"], default="off", help="gradient checkpointing")
    ap.add_argument("--chunk-size", type=int, default=4096, help="tokens per chunk of the vocabulary projection")
    ap.add_argument("--docs-per-seq", type=int, default=1, help="pack this many documents per sequence")
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak bf16 TFLOP/s (default: from the card)")
    ap.add_argument("--variants", default="optimized", help="comma-separated: optimized (the trainer's defaults: "
                    "packed FlashAttention, compiled blocks, fused loss, where they apply) and/or baseline (SDPA with "
                    "the packed mask, eager blocks, chunked loss), each a row of the same run; uncast: optimized "
                    "with each block's first norm returning fp32, not bf16 (as before that change); unfused: uncast "
                    "with the student's second norm and MLP compiled apart from its residual adds (as before the "
                    "fusion); eager-attention: optimized with the attention modules left eager instead of compiled "
                    "whole (projections, rotary embedding, layout copies; as before that change); bf16-student: an "
                    "experiment, not a training mode: optimized with the student's weights held in bf16 on CUDA (the "
                    "decay parameters kept fp32) and stepped without fp32 master copies, the speed ceiling of a "
                    "bf16 residual stream; bounded-gate: optimized on a second student, converted from the same "
                    f"teacher with the bounded KDA decay gate (kda_gate_lower_bound {BOUNDED_GATE}: fla's safe_gate "
                    "kernels; another function, docs/mixers.md)")
    ap.add_argument("--phases", action="store_true", help="split one step's device time into its phases "
                                                          "(teacher/student forward, loss, backward, optimizer)")
    ap.add_argument("--profile", default=None, help="folder: write a torch.profiler table of one step per row")
    ap.add_argument("--dump-fla-configs", default=None, help="folder: write fla's autotuned kernel configurations")
    ap.add_argument("--out", type=str, default=None, help="JSON path (default docs/results/"
                                                          "train_throughput_<config>_<card>.json)")
    args = ap.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := [v for v in variants if v not in VARIANTS]:
        raise SystemExit(f"--variants: unknown variant {unknown[0]!r} (choose from {', '.join(VARIANTS)})")

    from gendistill.convert import convert_teacher
    from gendistill.distill.config import LossConfig, RunConfig, StageConfig
    from gendistill.distill.distributed import World
    from gendistill.distill.freezing import apply_trainable, param_groups
    from gendistill.distill.profiling import profile_call
    from gendistill.distill.stages import build_stage_module, cast_mixer_inputs
    from gendistill.distill.compile import compiled_blocks
    from gendistill.io import portable_command
    from gendistill.distill.trainer import (_disable_gradient_checkpointing, _enable_gradient_checkpointing,
                                            prefetch_step, train_step, use_compiled_blocks,
                                            use_packed_flash_attention)
    from gendistill.models.packed_attention import packed_flash_attention

    dev = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    tiny = args.tiny
    B = args.batch or (2 if tiny else 16)
    S = args.seq or (128 if tiny else 4096)
    micro_sizes = [int(x) for x in (args.micro_batches or ("1,2" if tiny else str(B))).split(",")]
    steps = args.steps or (2 if tiny else 6)
    warm = args.warmup if args.warmup is not None else (1 if tiny else 2)
    stages = [x.strip() for x in args.stages.split(",") if x.strip()]
    ckpts = {"off": [False], "on": [True], "both": [False, True]}[args.grad_ckpt]
    cfg = model_config(args.config, tiny)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM

    print(f"building {args.config}{'-tiny' if tiny else ''}-shaped teacher + hybrid student on {dev} ...", flush=True)
    teacher = AutoModelForCausalLM.from_config(cfg).to(dev)
    layers = attention_layers(args.config, tiny)
    hooks = []
    draws = torch.get_rng_state()  # the students' initial draws (each student from the same ones)

    def build_student(**kda_options):
        """The hybrid student of ``teacher`` (fp32 master weights, training mode), its mixers' inputs cast to bf16 on
        CUDA as the trainer casts them."""
        torch.set_rng_state(draws)  # the same draws for each: the bounded gate's init maps the exact gate's decays
        s = convert_teacher(teacher, layers, **kda_options).to(device=dev, dtype=torch.float32)
        s.upcast_recurrence_parameters()
        s.train()
        if dev.type == "cuda":
            hooks.extend(cast_mixer_inputs(s, torch.bfloat16))
        return s

    exact = build_student()
    students = {"bounded": build_student(kda_gate_lower_bound=BOUNDED_GATE)} if "bounded-gate" in variants else {}
    if dev.type == "cuda":
        teacher = teacher.to(torch.bfloat16)
    teacher.eval().requires_grad_(False)
    world = World(rank=0, world_size=1, local_rank=0, device=dev)
    run = RunConfig(output_dir="unused", precision="auto", progress="none", tensorboard=False)

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (B, S), generator=g)
    L = S // args.docs_per_seq
    pos = torch.cat([torch.arange(L)] * args.docs_per_seq + [torch.arange(S - L * args.docs_per_seq)])[None].expand(B, -1)
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[:, -1] = False
    full = {"input_ids": ids, "position_ids": pos.contiguous(), "loss_mask": mask,
            "labels": torch.where(mask, torch.roll(ids, -1, 1), -100), "token_mask": mask}

    class FixedBatches:  # the trainer's data interface, always the same global batch
        def __init__(self, micro: int):
            self.micro = micro

        def next_step(self):
            return [{k: v[i : i + self.micro] for k, v in full.items()} for i in range(0, B, self.micro)], None

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    result: dict = {
        "benchmark": "train_throughput", "config": args.config, "card": card_name(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "tiny": tiny, "batch": B, "seq_len": S, "tokens_per_step": B * S, "chunk_size": args.chunk_size,
        "docs_per_seq": args.docs_per_seq, "attention_layers": layers, "vocab_size": cfg.vocab_size,
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "student_params": sum(p.numel() for p in exact.parameters()),
        "bounded_gate": BOUNDED_GATE if students else None,
        "torch": torch.__version__, "kda_backend": "fla" if dev.type == "cuda" else "torch",
        "triton_cache": "set" if os.environ.get("TRITON_CACHE_DIR") else "default",
        "command": portable_command(sys.argv), "runs": [],
    }
    peak = peak_flops(dev, args.peak_tflops)
    first_step_s = None
    out = Path(args.out) if args.out else ROOT / "docs" / "results" / (
        f"train_throughput_{args.config}_{result['card']}{'_tiny' if tiny else ''}.json")
    rows = [(st, ck, mb, va) for st in stages for ck in ckpts for mb in micro_sizes for va in variants]
    for stage_name, ckpt, mb, variant in rows:
        fast = variant != "baseline"
        student = students["bounded"] if variant == "bounded-gate" else exact
        student.to(torch.bfloat16 if variant == "bf16-student" and dev.type == "cuda" else torch.float32)
        student.upcast_recurrence_parameters()
        stage = StageConfig(name=stage_name, steps=1, seq_len=S, batch_size=B, micro_batch_size=mb,
                            optim={"lr": 2.5e-5, "weight_decay": 0.1},
                            loss=LossConfig(chunk_size=args.chunk_size,
                                            implementation="auto" if fast else "chunked")
                            if stage_name.startswith("stage3") else None,
                            gradient_checkpointing=ckpt)
        apply_trainable(student, stage.trainable)
        if ckpt:
            _enable_gradient_checkpointing(student, "benchmark")
        module = build_stage_module(student, teacher, stage)
        trainable = [p for p in student.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(param_groups(student, 0.1), lr=2.5e-5, fused=dev.type == "cuda")
        batches = FixedBatches(mb)
        row = {"stage": stage_name, "variant": variant, "micro_batch": mb, "grad_accumulation": B // mb,
               "kda_gate_lower_bound": student.config.kda_gate_lower_bound,
               "gradient_checkpointing": ckpt, "trainable_params": sum(p.numel() for p in trainable)}
        # what run_stage does around its loop (the baseline: SDPA with the packed mask, eager blocks, the
        # chunked loss)
        context = contextlib.ExitStack()
        row["packed_flash_attention"] = context.enter_context(packed_flash_attention(
            student, teacher, enabled=fast and use_packed_flash_attention(world, run)))
        row["compiled_modules"] = context.enter_context(compiled_blocks(
            student, teacher, enabled=fast and use_compiled_blocks(world, run), **BLOCKS.get(variant, {})))
        if stage_name.startswith("stage3") and dev.type == "cuda":
            row["loss_implementation"] = stage.loss.implementation

        def step(marks=None):
            micro, _ = prefetch_step(batches, module, dev)
            loss, _gn, _d, ok = train_step(module, module, micro, opt, trainable, world, run, 1.0, marks)
            assert ok, f"non-finite loss {loss}"
            return loss

        try:
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            t_warm = time.perf_counter()
            for i in range(warm):
                if first_step_s is None:  # where the first step's seconds go
                    result["models_ready_s"] = time.perf_counter() - T_START
                    result["first_step_phases_ms"] = phase_split(step, teacher, student, host_clock=True)
                else:
                    step()
                if first_step_s is None:
                    sync()
                    first_step_s = time.perf_counter() - T_START
                    print(f"first optimizer step done {first_step_s:.1f} s after process start", flush=True)
                    if "first_step_phases_ms" in result:
                        print(f"  models ready at {result['models_ready_s']:.1f} s; the first step (wall clock, "
                              "ms): " + ", ".join(f"{k} {v:.0f}" for k, v in result["first_step_phases_ms"].items()),
                              flush=True)
            sync()
            row["warmup_s"] = time.perf_counter() - t_warm  # this row's compilation: its variant's cost to a first step
            losses, times = [], []
            for _ in range(steps):  # each step timed (the trainer reads the device once a step anyway)
                t0 = time.perf_counter()
                losses.append(step())
                sync()
                times.append(time.perf_counter() - t0)
            dt = sum(times) / steps
            row.update({"status": "ok", "step_time_s": dt, "step_times_s": times, "tokens_per_s": B * S / dt,
                        "loss_last": losses[-1],
                        "peak_memory_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None})
            if stage_name.startswith("stage3"):
                fl = count_flops(teacher, student, cfg, B, S)
                row.update({"flops_per_step": fl, "achieved_tflops": fl["total"] / dt / 1e12,
                            "mfu": (fl["total"] / dt / peak) if peak else None})
            if args.phases and dev.type == "cuda":
                row["phases_ms"] = phase_split(step, teacher, student)
                print("  phases (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in row["phases_ms"].items()),
                      flush=True)
            if args.profile:
                _, row["profile"] = profile_call(step, Path(args.profile), f"{args.config}_{stage_name}_{variant}_mb{mb}"
                                                 f"{'_ckpt' if ckpt else ''}", dev)
        except torch.OutOfMemoryError as e:
            row.update({"status": "oom", "error": str(e).splitlines()[0],
                        "peak_memory_gib": torch.cuda.max_memory_allocated(dev) / 2**30})
        except Exception as e:  # noqa: BLE001 - one failing row must not lose the others
            row.update({"status": "error", "error": f"{type(e).__name__}: {e}"[:2000]})
            print(f"{stage_name} {variant} mb {mb}: error {type(e).__name__}: {e}"[:2000], flush=True)
        finally:
            context.close()
        opt.zero_grad(set_to_none=True)
        del opt
        if ckpt:
            _disable_gradient_checkpointing(student)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        result["runs"].append(row)
        result["first_step_s"] = first_step_s
        write_result(result, args, out)  # after every row: a run cut off keeps what it measured
        mfu = f"{100 * row['mfu']:.1f}%" if row.get("mfu") is not None else "-"
        if row["status"] == "ok":
            print(f"{stage_name:8s} {variant:9s} mb {mb:3d} ckpt {'on ' if ckpt else 'off'}: "
                  f"{row['tokens_per_s']:>11,.0f} tok/s  MFU {mfu:>6s}  step {row['step_time_s']:.3f} s "
                  f"({min(row['step_times_s']):.3f}-{max(row['step_times_s']):.3f})  "
                  f"peak {row['peak_memory_gib'] or 0:.1f} GiB  warm-up {row['warmup_s']:.1f} s", flush=True)
        else:
            print(f"{stage_name:8s} {variant:9s} mb {mb:3d} ckpt {'on ' if ckpt else 'off'}: {row['status']}",
                  flush=True)
    for h in hooks:
        h.remove()
    write_result(result, args, out)
    print(f"wrote {out}")


def write_result(result: dict, args, out: Path) -> None:
    """The JSON (atomically), and fla's autotuned kernel configurations when asked for."""
    cfg_dir = os.environ.get("FLA_CONFIG_DIR")  # the shipped configurations once fla is in use (ops.fla_configs)
    result["fla_configs"] = {"dir": Path(cfg_dir).name if cfg_dir else None, "mode": os.environ.get("FLA_CACHE_MODE")}
    if args.dump_fla_configs and torch.cuda.is_available() and not args.tiny:
        from gendistill.ops.fla_configs import dump_autotuned

        result["fla_configs_dumped"] = dump_autotuned(args.dump_fla_configs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(out)


def phase_split(step, teacher, student, host_clock: bool = False) -> dict[str, float]:
    """Device time of one optimizer step split into its phases (ms, summed over micro-batches): CUDA events at the
    trainer's marks (:func:`train_step`'s ``marks``) and at the start and end of the teacher's and the student's
    forward (module hooks). A phase's time is the device time between its start mark and its end mark, idle gaps
    included; the phases add up to the step. ``host_clock``: wall-clock time instead, the device synchronised at
    every mark — for the first step, whose time is compilation on the host (Inductor, Triton, fla's autotuning)."""
    events: list[tuple[str, object]] = []

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def mark(name: str) -> None:
        if host_clock:
            sync()
            events.append((name, time.perf_counter()))
            return
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        events.append((name, e))

    def elapsed_ms(a, b) -> float:
        return 1000 * (b - a) if host_clock else a.elapsed_time(b)

    handles = []
    for model, who in ((teacher, "teacher"), (student, "student")):
        base = getattr(model, "model", model)
        handles.append(base.register_forward_pre_hook(lambda *a, w=who: mark(f"{w}_start")))
        handles.append(base.register_forward_hook(lambda *a, w=who: mark(f"{w}_forward")))
    sync()
    mark("start")
    try:
        step(mark)
    finally:
        for h in handles:
            h.remove()
    sync()
    names = {"input": "input (host to device)", "teacher_start": "stage glue", "student_start": "stage glue",
             "teacher_forward": "teacher forward", "student_forward": "student forward",
             "backward": "backward", "clip_grad": "clip grad norm", "optimizer": "optimizer"}
    split: dict[str, float] = {}
    for (prev_name, prev), (name, ev) in zip(events, events[1:]):
        label = names.get(name, name)
        if name == "forward":  # the rest of the stage module's forward: the loss (stage 3: after the student)
            label = "logit loss" if prev_name == "student_forward" else "forward (teacher, student, loss)"
        split[label] = split.get(label, 0.0) + elapsed_ms(prev, ev)
    split["total"] = elapsed_ms(events[0][1], events[-1][1])
    return split


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
