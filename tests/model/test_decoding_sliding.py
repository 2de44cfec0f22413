"""Static-cache decoding (:mod:`gendistill.models.decoding`) keeps every key; a sliding-window layer's dynamic cache keeps
only the last ``window - 1``. The sliding layers must be recognised as transformers' ``DynamicCache`` builds them (Qwen2
/ Qwen3: ``use_sliding_window`` and ``max_window_layers``; Mistral: no ``layer_types``, a ``sliding_window`` that is not
None), and a windowed cache must never be copied into a static one."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

from gendistill.errors import UnsupportedModelError
from gendistill.models.decoding import (forward, new_dynamic_cache, require_full_attention, sliding_window_setting,
                                        to_static_cache)
from tests.fixtures_teachers import tiny_model

SMALL = dict(num_hidden_layers=4, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)


@pytest.mark.parametrize("config, expected", [
    (Qwen2Config(**SMALL), None),  # shipped Qwen2/2.5 configs: use_sliding_window false
    (Qwen2Config(**SMALL, use_sliding_window=True, sliding_window=8, max_window_layers=0),
     "use_sliding_window=True, sliding_window=8, max_window_layers=0: 4 of 4 layers"),
    (Qwen2Config(**SMALL, use_sliding_window=True, sliding_window=8, max_window_layers=3),
     "use_sliding_window=True, sliding_window=8, max_window_layers=3: 1 of 4 layers"),
    (Qwen2Config(**SMALL, use_sliding_window=True, sliding_window=8, max_window_layers=4), None),  # no layer slides
    (Qwen3Config(**SMALL), None),
    (Qwen3Config(**SMALL, use_sliding_window=True, sliding_window=16, max_window_layers=2),
     "use_sliding_window=True, sliding_window=16, max_window_layers=2: 2 of 4 layers"),
    (LlamaConfig(**SMALL), None),
    (MistralConfig(**SMALL), "sliding_window=4096: 4 of 4 layers"),  # Mistral slides by default, no layer_types
    (MistralConfig(**SMALL, sliding_window=None), None),
], ids=["qwen2", "qwen2-sliding", "qwen2-sliding-top-layer", "qwen2-sliding-no-layer", "qwen3", "qwen3-sliding",
        "llama", "mistral", "mistral-no-window"])
def test_sliding_window_setting(config, expected):
    assert sliding_window_setting(config) == expected


def test_a_converted_student_inherits_the_teachers_sliding_layers():
    from gendistill.convert.convert import convert_teacher

    teacher = tiny_model("qwen2", 300, use_sliding_window=True, sliding_window=8, max_window_layers=0)
    student = convert_teacher(teacher, [0])  # layer 0 keeps (sliding) attention, layer 1 becomes KDA
    assert sliding_window_setting(student.config).endswith(": 1 of 2 layers")
    assert sliding_window_setting(convert_teacher(tiny_model("qwen2", 300), [0]).config) is None


@torch.inference_mode()
def test_static_copy_of_a_sliding_window_cache_is_refused():
    model = tiny_model("qwen2", 300, use_sliding_window=True, sliding_window=8, max_window_layers=0)
    cache = new_dynamic_cache(model)
    forward(model, torch.randint(0, 300, (1, 20)), cache)
    assert cache.layers[0].keys.shape[-2] == 7  # the window, not the 20 tokens a static layer would assume
    with pytest.raises(UnsupportedModelError, match=r"layer 0 keeps a sliding window.*sliding_window=8"):
        to_static_cache(cache, model.config, 40)
    from gendistill.models.decode_slots import DecodeSlots

    first, real = torch.zeros((1, 1), dtype=torch.long), torch.tensor([20])
    with pytest.raises(UnsupportedModelError, match=r"^decode slot: layer 0 keeps a sliding window.*sliding_window=8"):
        DecodeSlots(model, graphs=False).load(cache, first, real, width=20, columns=40, pad=0)
    with pytest.raises(UnsupportedModelError, match=r"^the bench teacher has sliding-window attention "
                                                    r"\(use_sliding_window=True, sliding_window=8, .*2 of 2 layers\)"):
        require_full_attention(model.config, "the bench teacher")
    require_full_attention(tiny_model("qwen2", 300).config, "the bench teacher")  # no window: no error
