"""A tiny Llama teacher whose important layers are known by construction.

Every layer outside ``RECALL_LAYERS`` has its attention output projection zeroed: its attention contributes nothing,
and the KDA mixer converted from it (o_proj copied) contributes nothing either, so replacing it by KDA costs exactly
nothing. The ``RECALL_LAYERS`` keep a sharp (q scaled up), amplified (o scaled up) softmax attention that mixes
information across positions; the rest of the network depends on it, and a linear-attention mixer cannot reproduce
it from a few steps of alignment. Each method must therefore rank ``RECALL_LAYERS`` first.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from tests.fixtures_teachers import tiny_tokenizer

NUM_LAYERS = 6
RECALL_LAYERS = (1, 4)

_WORDS = ("the cat sat on a mat and dog ran to park with ball red blue green one two three four five big small "
          "quick slow fox jumps over lazy river stone tree house bird sings song morning evening light dark").split()


def synthetic_teacher(tokenizer, recall_layers=RECALL_LAYERS, num_layers: int = NUM_LAYERS, seed: int = 0,
                      hidden: int = 32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=num_layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    cfg._attn_implementation = "sdpa"
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(20)  # sharp next-token distributions: KL has something to measure
        for i, layer in enumerate(model.model.layers):
            if i in recall_layers:
                layer.self_attn.q_proj.weight.mul_(4.0)
                layer.self_attn.o_proj.weight.mul_(4.0)
            else:
                layer.self_attn.o_proj.weight.zero_()
    return model.eval()


def text_file(path: Path, n: int = 80, seed: int = 0) -> Path:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(20, 40))]
        lines.append('{"text": "' + " ".join(words) + '"}')
    path.write_text("\n".join(lines) + "\n")
    return path


def tokenizer():
    return tiny_tokenizer()
