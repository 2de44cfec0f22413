"""Load any model gendistill works with: a teacher spec (short name, GGUF file, HF folder, hub id) or a saved hybrid
student folder."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError

from gendistill.errors import GendistillError
from gendistill.models.hybrid import HybridConfig


def is_student_folder(spec: str) -> bool:
    cfg = Path(spec) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("model_type") == HybridConfig.model_type
    except (OSError, json.JSONDecodeError):
        return False


def load_model(spec: str, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Return ``(model, tokenizer)`` in eval mode for a hybrid student folder or any teacher spec accepted by
    :func:`gendistill.teachers.load_teacher`."""
    if is_student_folder(spec):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype).to(device)
            tokenizer = AutoTokenizer.from_pretrained(spec)
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
            # a damaged or hand-edited folder (bad config value, truncated weights, wrong shapes): one line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise GendistillError(f"cannot load student folder {spec}: {first}") from None
        model.upcast_recurrence_parameters()
        return model.eval(), tokenizer
    from gendistill.teachers import load_teacher

    return load_teacher(spec, dtype=dtype, device=device)
