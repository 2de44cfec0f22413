"""Building the teacher and student for the benchmark: a named shape with random weights, or any model reference
(through :func:`gendistill.models.loading.load_model`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import LlamaConfig, Qwen3Config, Qwen3ForCausalLM

from gendistill.bench.cache import layer_types
from gendistill.convert.convert import convert_teacher
from gendistill.errors import ConfigError
from gendistill.models.loading import load_model, model_label


def qwen3_config(name: str, attn_implementation: str = "sdpa") -> Qwen3Config:
    if name == "qwen3-0.6b":
        cfg = Qwen3Config(
            hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
            num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=131072,
            tie_word_embeddings=True,
        )
    elif name == "tiny":
        cfg = Qwen3Config(
            hidden_size=64, intermediate_size=128, num_hidden_layers=8, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, vocab_size=512, max_position_embeddings=4096,
            tie_word_embeddings=True,
        )
    else:
        raise ConfigError(f"--config: unknown shape {name!r} (known: qwen3-0.6b, tiny)")
    cfg._attn_implementation = attn_implementation
    return cfg


def smollm2_config(max_position_embeddings: int = 8192, attn_implementation: str = "sdpa") -> LlamaConfig:
    """SmolLM2-135M-Instruct's shape, as published (the embedded teacher's: 30 layers, 9 heads, 3 KV heads), for
    random-weight benchmarks of its cost and memory; ``max_position_embeddings`` above its 8192 for long prompts."""
    cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                      num_key_value_heads=3, head_dim=64, vocab_size=49152, tie_word_embeddings=True,
                      rope_theta=100000.0, max_position_embeddings=max_position_embeddings, rms_norm_eps=1e-5)
    cfg._attn_implementation = attn_implementation
    return cfg


@dataclass
class ModelPair:
    teacher: Any
    student: Any
    name: str
    student_is_standin: bool  # recorded in the results; always False since the hybrid student exists
    note: str = ""


def _set_attn(model: Any, impl: str) -> None:
    try:
        model.set_attn_implementation(impl)
    except Exception:  # noqa: BLE001 - older/other models: fall back to the config field
        model.config._attn_implementation = impl


def _convert(teacher: Any, attention_layers: tuple[int, ...] | str,
             gate_lower_bound: float | None = None) -> tuple[Any, bool, str]:
    """The teacher converted at ``attention_layers`` (indices, or a spec such as ``every:4`` where the settings could
    not resolve it without the teacher), with the paper's KDA decay gate or fla's bounded one (``gate_lower_bound``);
    no stand-in, no note."""
    spec = attention_layers if isinstance(attention_layers, str) else list(attention_layers)
    return convert_teacher(teacher, attention_layers=spec, kda_gate_lower_bound=gate_lower_bound), False, ""


def model_name(settings) -> str:
    """The run's label (file names): ``--model-name``, else the shape or teacher, with ``-gate<lb>`` for a converted
    student with a bounded decay gate, so its JSON never overwrites the exact student's."""
    if settings.model_name:
        return settings.model_name
    name = model_label(settings.teacher) if settings.teacher else settings.config
    lb = settings.kda_gate_lower_bound
    return name if lb is None or settings.student else f"{name}-gate{lb:g}"


def build_models(settings, device: torch.device, dtype: torch.dtype) -> ModelPair:
    torch.manual_seed(settings.seed)
    impl = settings.attn_implementation
    if settings.teacher or settings.student:
        if not settings.teacher:
            raise ConfigError("--student needs --teacher (the benchmark compares the two)")
        teacher, _ = load_model(settings.teacher, dtype=dtype, device=device, tokenizer=False)
        if settings.student:
            student, _ = load_model(settings.student, dtype=dtype, device=device, tokenizer=False)
            standin, note = False, ""
        else:
            with torch.device(device):
                student, standin, note = _convert(teacher, settings.attention_layers, settings.kda_gate_lower_bound)
    else:
        cfg = qwen3_config(settings.config, impl)
        # Random init directly on the device: initialising 0.6B parameters on CPU takes longer than the benchmark.
        with torch.device(device):
            teacher = Qwen3ForCausalLM(cfg)
        teacher = teacher.to(dtype)
        with torch.device(device):  # the student is built where the teacher lives (no 0.6B init on CPU)
            student, standin, note = _convert(teacher, settings.attention_layers, settings.kda_gate_lower_bound)
    teacher = teacher.to(device=device, dtype=dtype).eval()
    # Only move the student: convert_teacher and load_model gave it `dtype`, with its mixers' fp32 parameters
    # (A_log, dt_bias, ...) in float32; a dtype cast would round those through `dtype`.
    student = student.to(device=device).eval()
    emb_dtype = student.get_input_embeddings().weight.dtype
    if emb_dtype != dtype:
        raise ConfigError(f"student dtype {emb_dtype} != requested {dtype}")
    _set_attn(teacher, impl)
    _set_attn(student, impl)
    return ModelPair(teacher, student, model_name(settings), standin, note)


def count_params(model: Any) -> int:
    seen, n = set(), 0
    for p in model.parameters():
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        n += p.numel()
    return n


def layer_type_counts(model: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in layer_types(model.config):
        out[t] = out.get(t, 0) + 1
    return out
