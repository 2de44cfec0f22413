"""Write the demo's training sample, src/gendistill/demo/chat.jsonl: the embedded teacher (SmolLM2-135M-Instruct,
Apache-2.0) answers instructions written for gendistill (below), greedily, on CPU. Deterministic; about 2 minutes
on 2 cores. The output is what `make demo` distills on (see src/gendistill/demo/README.md).

    python tools/make_demo_data.py            # rewrites src/gendistill/demo/chat.jsonl
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[1] / "src" / "gendistill" / "demo" / "chat.jsonl"

# Written for gendistill's demo (Apache-2.0, like the project). Everyday topics, so the teacher writes fluent text.
PROMPTS = [
    "Explain why the sky looks blue during the day.",
    "Describe how a bicycle works in a few sentences.",
    "Write a short paragraph about the life of a honeybee.",
    "What are three tips for getting a good night's sleep?",
    "Explain what a volcano is to a ten-year-old.",
    "Describe a walk through a forest in autumn.",
    "Why do we have seasons on Earth?",
    "Give a simple recipe for pancakes.",
    "What is photosynthesis? Answer briefly.",
    "Write a short story about a lost cat that finds its way home.",
    "Explain how rain forms.",
    "What is the difference between weather and climate?",
    "Describe the water cycle in simple words.",
    "List some benefits of regular exercise.",
    "How does a refrigerator keep food cold?",
    "Write a friendly letter inviting a neighbour to dinner.",
    "Explain what gravity is.",
    "Why do leaves change colour in the fall?",
    "Describe the planet Mars.",
    "What should you pack for a day at the beach?",
    "Explain how to plant a tomato seedling.",
    "What is a healthy breakfast? Give an example.",
    "Describe how bread is made.",
    "Why is it important to drink water?",
    "Explain what a computer program is.",
    "Write a short poem about the ocean.",
    "How do birds fly?",
    "Describe a busy city street in the morning.",
    "What are the main parts of a plant?",
    "Explain why the moon changes shape during the month.",
    "Give three reasons to read books.",
    "How do you make a cup of tea?",
    "Describe the job of a firefighter.",
    "What is the difference between a frog and a toad?",
    "Explain how a rainbow appears.",
    "Write a short description of a lighthouse at night.",
    "What happens when water boils?",
    "How can someone learn a new language?",
    "Describe the life cycle of a butterfly.",
    "Why do we need sleep?",
    "Explain what electricity is in simple terms.",
    "What are some ways to save energy at home?",
    "Describe a thunderstorm.",
    "How does the heart pump blood?",
    "Write a short dialogue between a shopkeeper and a customer.",
    "Explain what recycling is and why it helps.",
    "What do plants need to grow?",
    "Describe a mountain village in winter.",
    "How do magnets work?",
    "Give advice to someone starting their first job.",
    "Explain what a map is used for.",
    "Why do people wear seat belts?",
    "Describe the taste of a ripe orange.",
    "How are clouds formed?",
    "What is the role of bees in farming?",
    "Write a short paragraph about friendship.",
    "Explain how a train moves along its tracks.",
    "What are the colours of the rainbow?",
    "How do you take care of a pet dog?",
    "Describe what you might see at a farmers' market.",
    "Explain why ice floats on water.",
    "What is a desert? Describe one.",
    "How does a library organise its books?",
    "Write a few sentences about the importance of kindness.",
]


def main() -> None:
    from gendistill.teachers import load_teacher

    torch.manual_seed(0)
    model, tok = load_teacher("smollm2-135m-instruct")
    model.eval()
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    rows = []
    for i in range(0, len(PROMPTS), 8):
        batch = PROMPTS[i : i + 8]
        texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                 for p in batch]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=160, do_sample=False, repetition_penalty=1.2,
                                 pad_token_id=tok.pad_token_id)
        for p, ids in zip(batch, out[:, enc["input_ids"].shape[1] :]):
            reply = tok.decode(ids, skip_special_tokens=True).strip()
            rows.append({"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": reply}]})
        print(f"{len(rows)}/{len(PROMPTS)}", flush=True)
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(rows)} conversations)")


if __name__ == "__main__":
    main()
