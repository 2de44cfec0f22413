"""The numbers ``gendistill convert`` reports: layers, parameters, and generation-cache bytes, teacher vs student."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from gendistill.convert.convert import parameter_count


@dataclass
class ConversionSummary:
    teacher: str
    family: str
    num_layers: int
    attention_layers: list[int]
    kda_layers: list[int]
    teacher_params: int
    student_params: int
    teacher_cache_bytes_per_token: int
    student_cache_bytes_per_token: int
    student_fixed_state_bytes: int
    teacher_cache_bytes_128k: int
    student_cache_bytes_128k: int
    kda_gate_lower_bound: float | None = None  # None: the paper's decay gate; else fla's bounded gate's lower bound

    def to_dict(self) -> dict:
        return asdict(self)


def kv_bytes_per_token(config, num_attention_layers: int, dtype: torch.dtype = torch.bfloat16) -> int:
    """K and V bytes one token adds to the cache across ``num_attention_layers`` layers of this config."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * num_attention_layers * config.num_key_value_heads * head_dim * itemsize


def summarize(teacher_name: str, teacher, student, cache_dtype: torch.dtype = torch.bfloat16) -> ConversionSummary:
    cfg = student.config
    fixed = student.cache_bytes(0, batch=1, dtype=cache_dtype)["linear_attention"]
    t_tok = kv_bytes_per_token(teacher.config, teacher.config.num_hidden_layers, cache_dtype)
    s_tok = kv_bytes_per_token(cfg, len(cfg.attention_layers), cache_dtype)
    n = 128 * 1024
    return ConversionSummary(
        teacher=teacher_name, family=cfg.base_model_type, num_layers=cfg.num_hidden_layers,
        attention_layers=cfg.attention_layers, kda_layers=cfg.linear_layers,
        teacher_params=parameter_count(teacher), student_params=parameter_count(student),
        teacher_cache_bytes_per_token=t_tok, student_cache_bytes_per_token=s_tok, student_fixed_state_bytes=fixed,
        teacher_cache_bytes_128k=t_tok * n, student_cache_bytes_128k=s_tok * n + fixed,
        kda_gate_lower_bound=getattr(cfg, "kda_gate_lower_bound", None),
    )


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"
