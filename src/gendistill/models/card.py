"""The model card (``README.md``) of a saved student: what it was made from, how, how well it does, how to load it.

Every folder :func:`gendistill.convert.save_student` writes gets one; ``gendistill distill`` adds the recipe and the
stages with their token counts, ``gendistill eval --update-card`` the evaluation results. The metadata block is
huggingface_hub's :class:`~huggingface_hub.ModelCardData`, so the hub reads the card as it reads any other. Nothing in
the card is a machine path: the teacher is named as the user gave it (:func:`public_model_name`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCardData

EVAL_BEGIN, EVAL_END = "<!-- gendistill:evaluation -->", "<!-- /gendistill:evaluation -->"

#: embedded short names -> the hub model they are a quantised copy of (the card's ``base_model``)
_EMBEDDED_HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def public_model_name(spec: str | Path | None) -> str | None:
    """How a model reference is recorded in a shared config or card: short names and hub ids as given, a local file
    or folder by its name only (its location on this machine means nothing elsewhere)."""
    if spec is None:
        return None
    text = str(spec).strip()
    p = Path(text).expanduser()
    if p.exists() or text.startswith((".", "/", "~")) or text.lower().endswith(".gguf") or "\\" in text:
        return p.name or text
    return text


@dataclass
class StageRecord:
    """One distillation stage as the card shows it (``tokens`` = steps x batch_size x seq_len)."""

    name: str
    steps: int
    tokens: int
    seq_len: int
    batch_size: int
    loss: str | None = None
    masking: str | None = None
    trainable: list[str] = field(default_factory=list)
    heldout_kl: float | None = None  # logit stages: KL(teacher ‖ student), nats/token, at the stage's end
    heldout_top1: float | None = None  # and top-1 agreement (0-1), on the stage's held-out rows


def _front_matter(teacher: str | None) -> str:
    base = _EMBEDDED_HUB_IDS.get((teacher or "").lower()) or (teacher if teacher and _HUB_ID.match(teacher) else None)
    data = ModelCardData(library_name="transformers", pipeline_tag="text-generation", base_model=base,
                         tags=["gendistill", "hybrid", "kimi-delta-attention", "linear-attention", "distillation"])
    return f"---\n{data.to_yaml()}\n---\n"


def gate_description(lower_bound: float | None) -> str:
    """How the model card and ``gendistill convert``'s summary name the KDA decay gate (``kda_gate_lower_bound``):
    the paper's ``-exp(A_log)*softplus(f+dt_bias)``, or fla's bounded ``lb*sigmoid(exp(A_log)*(f+dt_bias))``."""
    if lower_bound is None:
        return "paper gate"
    return f"bounded, lower bound {lower_bound:g}"


def _kda_rows(config: Any) -> list[tuple[str, Any]]:
    keys = ["linear_attention_type", "kda_num_heads", "kda_num_kv_heads", "kda_head_dim", "kda_kv_mode",
            "kda_conv_size", "kda_conv_activation", "kda_gate_activation", "kda_decay_rank", "kda_gate_rank"]
    rows = [(k, getattr(config, k, None)) for k in keys]
    if config.linear_attention_type == "kda":
        lb = getattr(config, "kda_gate_lower_bound", None)
        rows.append(("kda_gate_lower_bound (decay gate)", gate_description(lb)))
    return rows


def evaluation_section(rows: list[dict[str, Any]] | None) -> str:
    """The evaluation block (between markers, so a later evaluation replaces it): one line per task and protocol."""
    if not rows:
        body = "Not evaluated yet: `gendistill eval --model TEACHER --model THIS_FOLDER --update-card`."
    else:
        lines = ["| task | protocol | metric | accuracy | ± s.e. | n |", "|---|---|---|---:|---:|---:|"]
        for r in rows:
            lines.append(f"| {r.get('task')} | {r.get('protocol')} | {r.get('metric', 'acc')} | "
                         f"{100 * float(r.get('acc', 0)):.1f} | {100 * float(r.get('stderr') or 0):.1f} | "
                         f"{r.get('n', '')} |")
        body = "\n".join(lines)
    return f"{EVAL_BEGIN}\n{body}\n{EVAL_END}"


def model_card(config: Any, *, recipe: str | None = None, stages: list[StageRecord] | None = None,
               evaluation: list[dict[str, Any]] | None = None) -> str:
    """The README.md text of a student with ``config`` (a :class:`HybridConfig`); ``recipe`` is the recipe's name
    (a shipped name or a file name), ``stages`` the completed distillation stages, ``evaluation`` result rows of
    ``gendistill eval`` for this model."""
    teacher = getattr(config, "teacher", None)
    n = len(config.layer_types)
    attn, lin = config.attention_layers, config.linear_layers
    mixer = {"kda": "Kimi Delta Attention (KDA)"}.get(config.linear_attention_type, config.linear_attention_type)
    out = [_front_matter(teacher), "# Hybrid student made with gendistill", ""]
    state = "distilled with GenDistill" if stages else "with no distillation recorded"
    out.append(f"A hybrid of **{teacher or 'an unnamed teacher'}** ({config.base_model_type} family): {len(attn)} of "
               f"{n} layers keep the teacher's softmax attention, the other {len(lin)} use **{mixer}**, {state}.")
    out += ["", "## Layer layout", "", f"`{config.layer_spec()}`", "",
            "(`gendistill convert --attention-layers` reads this string back.)", "", "## Linear-attention options", "",
            "| option | value |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in _kda_rows(config)]
    lb = getattr(config, "kda_gate_lower_bound", None)
    if lb is not None and config.linear_attention_type == "kda":
        out += ["", f"The KDA decay gate is fla's bounded gate `{lb:g} * sigmoid(exp(A_log) * (f + dt_bias))`, in "
                f"[{lb:g}, 0], not the paper's `-exp(A_log) * softplus(f + dt_bias)`; on CUDA fla's "
                f"`chunk_kda(..., safe_gate=True, lower_bound={lb:g})` computes it."]
    out += ["", "## Distillation", ""]
    if stages:
        out.append(f"Recipe: `{recipe or 'given in Python'}`. Tokens are token slots trained on "
                   "(steps × batch size × sequence length).")
        out += ["", "| stage | steps | tokens | seq_len | batch | loss | masking | trained | held-out KL / top-1 |",
                "|---|---:|---:|---:|---:|---|---|---|---:|"]
        for s in stages:
            fid = (f"{s.heldout_kl:.4f} / {100 * s.heldout_top1:.1f} %" if s.heldout_kl is not None
                   and s.heldout_top1 is not None else "")
            out.append(f"| {s.name} | {s.steps:,} | {s.tokens:,} | {s.seq_len} | {s.batch_size} | {s.loss or ''} | "
                       f"{s.masking or ''} | {', '.join(s.trainable)} | {fid} |")
        out.append("")
        out.append(f"Total: {sum(s.tokens for s in stages):,} tokens. Held-out KL / top-1: KL(teacher ‖ student) in "
                   "nats per token and top-1 agreement with the teacher on the stage's held-out rows at its end "
                   "(the trainer's `eval_kl` / `eval_top1`; stages 3a/3b).")
    else:
        out.append("None recorded. Fresh from `gendistill convert`, the linear-attention layers are untrained (their "
                   "text is noise); distill with `gendistill distill RECIPE` (`student.path`: this folder).")
    out += ["", "## Evaluation", "", evaluation_section(evaluation), "", "## Use", "", "```python",
            "import gendistill  # registers the hybrid with transformers' Auto classes",
            "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            'model = AutoModelForCausalLM.from_pretrained("THIS_FOLDER_OR_HUB_ID")',
            'tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER_OR_HUB_ID")',
            'messages = [{"role": "user", "content": "What is 2+2?"}]',
            "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", "
            "return_dict=True)",
            "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=32)[0]))", "```", "",
            "`pip install gendistill` first; on CUDA the linear-attention layers use flash-linear-attention's "
            "kernels, on CPU gendistill's pure-PyTorch ones.", ""]
    return "\n".join(out)


def update_evaluation(card_text: str, rows: list[dict[str, Any]]) -> str:
    """``card_text`` with its evaluation block replaced by ``rows``."""
    pattern = re.compile(re.escape(EVAL_BEGIN) + r".*?" + re.escape(EVAL_END), re.S)
    section = evaluation_section(rows)
    if pattern.search(card_text):
        return pattern.sub(lambda _m: section, card_text, count=1)
    return card_text.rstrip("\n") + "\n\n## Evaluation\n\n" + section + "\n"


__all__ = ["StageRecord", "gate_description", "model_card", "update_evaluation", "evaluation_section",
           "public_model_name"]
