"""The memory planner behind ``gendistill distill RECIPE --plan``: per-GPU bytes of every stage of a recipe under DDP
and FSDP2 for a given number of GPUs and card size, and whether it fits.

Parameter counts are exact: teacher and student are built on the ``meta`` device from their configs (no weights
read) and each stage's trainable set is selected with the trainer's own :func:`apply_trainable`. The terms:

=================  ===========================================  ==============================================
term               DDP (per GPU)                                FSDP2 over N GPUs (per GPU)
=================  ===========================================  ==============================================
params             4 B x student params (fp32 master)           4 B x student params / N
grads              2 x 4 B x trainable (grads + DDP buckets)    4 B x trainable / N
optimizer          8 B x trainable (AdamW exp_avg, exp_avg_sq)  8 B x trainable / N
teacher            teacher bytes (bf16 on CUDA)                 blocks / N + embeddings, norm, lm_head whole
gathered           0                                            student root (embeddings, norm, lm_head) fp32
                                                                + 3 x largest student block fp32 (current,
                                                                prefetched, its unsharded gradient) + 2 x
                                                                largest teacher block
activations        per micro-batch, see :func:`activation_bytes` (the same in both modes)
=================  ===========================================  ==============================================

``fits``: total x 1.1 (allocator fragmentation) + 1 GiB (CUDA context, NCCL buffers) <= card memory.
Parameters, gradients, optimizer state and the teacher are exact (tested against the tensors of a real FSDP2 run);
activations are an estimate (bf16 autocast, per token and layer, below), to be checked against a measured peak
(``benchmarks/fsdp_check.py`` records both).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, Qwen3Config

from gendistill.convert.convert import student_config_from_teacher
from gendistill.distill.freezing import apply_trainable
from gendistill.distill.recipe_files import load_recipe
from gendistill.distill.stage_facts import STAGES
from gendistill.models.hybrid.configuration_hybrid import HybridConfig
from gendistill.models.hybrid.modeling_hybrid import HybridForCausalLM
from gendistill.teachers import load_teacher_config

GIB = 1024**3
CONTEXT_BYTES = GIB
SLACK = 1.1


def parse_bytes(text: str) -> int:
    """``80GB``, ``141GB``, ``80GiB``, ``81920MB`` -> bytes (GB and GiB both read as 2^30, like ``nvidia-smi``)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT])?(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"{text!r} is not a memory size (e.g. 80GB)")
    return int(float(m.group(1)) * 1024 ** (1 + "KMGT".index((m.group(2) or "G").upper())))


@dataclass
class ModelShapes:
    """What the planner needs from a model: parameter counts by owner (exact) and the activation shape."""

    params: int
    root_params: int                 # embeddings, final norm, lm_head (counted once when tied)
    largest_block: int
    hidden: int
    intermediate: int
    kv_dim: int
    layers_attention: int
    layers_linear: int
    linear_heads: int
    linear_head_dim: int
    vocab: int


def _unique_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def shapes_of(model: nn.Module) -> ModelShapes:
    cfg = model.config
    base = getattr(model, "model", model)
    blocks = list(base.layers)
    in_blocks = {id(p) for b in blocks for p in b.parameters()}
    root = sum(p.numel() for p in model.parameters() if id(p) not in in_blocks)
    types = getattr(cfg, "layer_types", None) or ["full_attention"] * len(blocks)
    n_lin = sum(t == "linear_attention" for t in types)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return ModelShapes(
        params=_unique_params(model), root_params=root, largest_block=max(_unique_params(b) for b in blocks),
        hidden=cfg.hidden_size, intermediate=cfg.intermediate_size, kv_dim=cfg.num_key_value_heads * head_dim,
        layers_attention=len(blocks) - n_lin, layers_linear=n_lin,
        linear_heads=getattr(cfg, "kda_num_heads", None) or cfg.num_attention_heads,
        linear_head_dim=getattr(cfg, "kda_head_dim", None) or head_dim, vocab=cfg.vocab_size,
    )


def activation_bytes(s: ModelShapes, stage: Any, tokens: int) -> int:
    """Estimated bytes kept for backward by one micro-batch of ``tokens`` tokens (bf16 autocast, fp32 residual).

    Per token and layer: an attention block ``2(10h + 4kv + 6i) + 12h`` (bf16 projections, SDPA/flash inputs and
    output, SwiGLU's three intermediate tensors, fp32 residual/norm inputs); a KDA block ``2(20h + 6i) + 12h`` plus the
    chunked recurrence's fp32 state per 64-token chunk (``4 H d^2 / 64``). Gradient checkpointing keeps the fp32
    block input ``4h`` per layer and one block's activations. Stage 3 adds the chunked KL's few ``[chunk, vocab]``
    fp32 tensors (4 of them) and the selected hidden rows of both models; stages 1-2 keep the teacher's captured
    input/output of each trained layer and only the KDA mixers' (stage 1) or KDA blocks' (stage 2) activations."""
    h, i, kv = s.hidden, s.intermediate, s.kv_dim
    attn = 2 * (10 * h + 4 * kv + 6 * i) + 12 * h
    lin = 2 * (20 * h + 6 * i) + 12 * h + 4 * s.linear_heads * s.linear_head_dim**2 // 64
    aligns = STAGES[stage.name].aligns
    if aligns == "mixer":
        per = s.layers_linear * (2 * (20 * h) + 4 * s.linear_heads * s.linear_head_dim**2 // 64 + 2 * 4 * h)
        return per * tokens
    if aligns == "block":
        return s.layers_linear * (lin + 2 * 4 * h) * tokens
    if stage.gradient_checkpointing:
        body = (s.layers_attention + s.layers_linear) * 4 * h + max(attn, lin)
    else:
        body = s.layers_attention * attn + s.layers_linear * lin
    chunk = min(stage.loss.chunk_size, tokens) if stage.loss else tokens
    return body * tokens + 4 * 4 * chunk * s.vocab + 2 * 4 * h * tokens


@dataclass
class StagePlan:
    stage: str
    mode: str
    gpus: int
    params: int
    grads: int
    optimizer: int
    teacher: int
    gathered: int
    activations: int
    total: int
    fits: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_stage(stage: Any, student: ModelShapes, teacher: ModelShapes, trainable: int, trainable_root: int,
               mode: str, gpus: int, gpu_bytes: int, teacher_bytes_per_param: int = 2) -> StagePlan:
    """Per-GPU bytes of one stage (see the module docstring for every term)."""
    n = gpus if mode == "fsdp" else 1
    params = 4 * student.params // n
    grads = 4 * trainable // n * (2 if mode == "ddp" and gpus > 1 else 1)
    optim = 8 * trainable // n
    tb = teacher_bytes_per_param
    if mode == "fsdp":
        teach = tb * (teacher.params - teacher.root_params) // n + tb * teacher.root_params
        gathered = 4 * (student.root_params + trainable_root) + 3 * 4 * student.largest_block \
            + 2 * tb * teacher.largest_block
    else:
        teach, gathered = tb * teacher.params, 0
    act = activation_bytes(student, stage, stage.micro_batch_size * stage.seq_len)
    total = params + grads + optim + teach + gathered + act
    return StagePlan(stage.name, mode, gpus, params, grads, optim, teach, gathered, act, total,
                     total * SLACK + CONTEXT_BYTES <= gpu_bytes)


def meta_models(teacher_config: Any, student_config: Any) -> tuple[nn.Module, nn.Module]:
    """Teacher and student on the meta device (exact parameter shapes, no memory)."""
    with torch.device("meta"):
        teacher = AutoModelForCausalLM.from_config(teacher_config)
        student = HybridForCausalLM(student_config)
    if getattr(student_config, "tie_word_embeddings", False):
        student.tie_weights()
    return teacher, student


def plan_models(stages: list[Any], teacher: nn.Module, student: nn.Module, gpus: int, gpu_bytes: int,
                modes: tuple[str, ...] = ("ddp", "fsdp"), teacher_bytes_per_param: int = 2) -> list[StagePlan]:
    """Every stage's plan under each of ``modes`` for these (meta-device) models."""
    t_shapes, s_shapes = shapes_of(teacher), shapes_of(student)
    in_blocks = {id(p) for b in getattr(student, "model", student).layers for p in b.parameters()}
    out = []
    for i, st in enumerate(stages):
        apply_trainable(student, st.trainable, f"stages[{i}].trainable")
        trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
        trainable_root = sum(p.numel() for p in student.parameters() if p.requires_grad and id(p) not in in_blocks)
        for mode in modes:
            out.append(plan_stage(st, s_shapes, t_shapes, trainable, trainable_root, mode, gpus, gpu_bytes,
                                  teacher_bytes_per_param))
    return out


def plan_recipe(recipe: Any, gpus: int, gpu_bytes: int) -> list[StagePlan]:
    """The plan of every stage of ``recipe`` (teacher config read, no weights), for both modes."""
    tcfg = load_teacher_config(recipe.teacher.spec)
    if recipe.student.path is not None:
        scfg = HybridConfig.from_pretrained(recipe.student.path)
    else:
        scfg = student_config_from_teacher(tcfg, recipe.student.attention_layers, **recipe.student.kda_options)
    teacher, student = meta_models(tcfg, scfg)
    tb = 4 if recipe.teacher.dtype == "float32" else 2
    return plan_models(recipe.stages, teacher, student, gpus, gpu_bytes, teacher_bytes_per_param=tb)


# ----------------------------------------------------------------------------- Qwen3 shapes (public configs)
QWEN3 = {  # from the config.json of Qwen/Qwen3-{0.6B,1.7B,4B,8B} on the hub
    "Qwen3-0.6B": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "Qwen3-1.7B": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "Qwen3-4B": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "Qwen3-8B": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
}
_QWEN3_COMMON = dict(vocab_size=151936, max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1000000.0,
                     attention_bias=False, hidden_act="silu")


def qwen3_config(name: str) -> Qwen3Config:
    return Qwen3Config(**_QWEN3_COMMON, **QWEN3[name])


def qwen3_table(stage: Any, cards_gib: tuple[int, ...] = (80, 141), gpu_counts: tuple[int, ...] = (1, 2, 8)) -> str:
    """The markdown table of docs/distill.md: per-GPU memory of ``stage`` for the Qwen3 family as a hybrid keeping
    1 layer in 4 as attention (``every:4``): DDP on 1 GPU, FSDP2 on more."""
    rows = ["| teacher | mode | GPUs | params | grads | optimizer | teacher | gathered | activations | total | "
            + " | ".join(f"fits {c} GB" for c in cards_gib) + " |",
            "|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(cards_gib)]
    g = lambda b: f"{b / GIB:.1f}"  # noqa: E731
    for name in QWEN3:
        tcfg = qwen3_config(name)
        teacher, student = meta_models(tcfg, student_config_from_teacher(tcfg, "every:4"))
        for gpus in gpu_counts:
            for mode in ("ddp", "fsdp"):
                if (mode == "ddp") != (gpus == 1):  # DDP on several GPUs needs what one GPU needs
                    continue
                fits = [plan_models([stage], teacher, student, gpus, c * GIB, (mode,))[0] for c in cards_gib]
                p = fits[0]
                rows.append(f"| {name} | {mode} | {gpus} | {g(p.params)} | {g(p.grads)} | {g(p.optimizer)} | "
                            f"{g(p.teacher)} | {g(p.gathered)} | {g(p.activations)} | {g(p.total)} | "
                            + " | ".join("yes" if f.fits else "no" for f in fits) + " |")
    return "\n".join(rows)


def main() -> None:
    """``python -m gendistill.distill.memory``: print the Qwen3 table of docs/distill.md (stage 3a of
    the shipped qwen3-0.6b-paper recipe: 4 x 4096 tokens per micro-batch, gradient checkpointing, KL chunks of 2048)."""
    print(qwen3_table(load_recipe("qwen3-0.6b-paper", []).stages[2]))


if __name__ == "__main__":
    main()
