"""Helpers shared by the distillation tests (imported by conftest and the test modules)."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import torch

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

WORDS = (
    "the cat sat on a mat and dog ran to park with ball red blue green one two three four five big small quick "
    "slow fox jumps over lazy river stone tree house bird sings song morning evening light dark water fire"
).split()


def sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(6, 18)
        start = rng.randrange(len(WORDS))
        # a learnable structure: mostly consecutive words of the list
        out.append(" ".join(WORDS[(start + i) % len(WORDS)] if rng.random() < 0.8 else rng.choice(WORDS) for i in range(k)))
    return out


def _train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = sentences(400, 0) + ["user assistant system\n" * 3]
    tk.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
    )
    tok.chat_template = CHATML
    return tok


def tiny_llama(vocab: int, seed: int = 0, layers: int = 4, hidden: int = 32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    m = LlamaForCausalLM(cfg)
    # make the teacher's distributions sharper than a random init's so KL has something to teach
    with torch.no_grad():
        m.model.embed_tokens.weight.mul_(20)
    return m.eval()


def write_jsonl(path: Path, records: list, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if gz else open
    with opener(path, "wt", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def text_records(n: int, seed: int = 0) -> list[dict]:
    s = sentences(n * 3, seed)
    return [{"text": " ".join(s[3 * i : 3 * i + 3])} for i in range(n)]


def chat_records(n: int, seed: int = 0) -> list[dict]:
    s = sentences(n * 2, seed + 100)
    return [
        {"messages": [{"role": "user", "content": s[2 * i]}, {"role": "assistant", "content": s[2 * i + 1]}]}
        for i in range(n)
    ]


