"""Teacher families the hybrid can be built from: where transformers keeps each family's attention, MLP, norm and
rotary modules, and how its attention projections are biased."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from gendistill.errors import UnsupportedModelError


@dataclass(frozen=True)
class Family:
    model_type: str
    module: str  # transformers module holding the classes
    prefix: str  # class-name prefix: {prefix}Attention, {prefix}MLP, {prefix}RMSNorm, {prefix}RotaryEmbedding
    description: str

    def classes(self):
        mod = importlib.import_module(self.module)
        return tuple(getattr(mod, f"{self.prefix}{name}") for name in ("Attention", "MLP", "RMSNorm", "RotaryEmbedding"))

    def attention_biases(self, config) -> tuple[bool, bool]:
        """``(q/k/v bias, o bias)`` of the teacher's attention, which the KDA projections copy."""
        if self.model_type == "qwen2":
            return True, False
        bias = bool(getattr(config, "attention_bias", False))
        return bias, bias


FAMILIES: dict[str, Family] = {
    "qwen3": Family("qwen3", "transformers.models.qwen3.modeling_qwen3", "Qwen3", "Qwen3 (q/k RMSNorm, GQA, RoPE)"),
    "llama": Family("llama", "transformers.models.llama.modeling_llama", "Llama", "Llama / SmolLM2 (GQA, RoPE)"),
    "qwen2": Family("qwen2", "transformers.models.qwen2.modeling_qwen2", "Qwen2", "Qwen2 / Qwen2.5 (q/k/v bias, GQA, RoPE)"),
}


def get_family(model_type: str) -> Family:
    try:
        return FAMILIES[model_type]
    except KeyError:
        supported = "; ".join(f"{f.model_type}: {f.description}" for f in FAMILIES.values())
        raise UnsupportedModelError(
            f"architecture {model_type!r} is not supported; supported families are {supported}"
        ) from None
