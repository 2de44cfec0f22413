"""Prompt construction shared by the tasks: option lists, the chat template (with a plain fallback for tokenizers
without one), and the log-likelihood context/continuation pairs in lm-evaluation-harness style."""

from __future__ import annotations

from typing import Any

from gendistill.errors import GendistillError
from gendistill.eval.extract import LETTERS

PLAIN_CHAT_FALLBACK = "plain"


class ChatTemplateError(GendistillError):
    """A tokenizer's chat template raised while rendering a conversation (its own ``raise_exception``, a role it does
    not accept, a Jinja error): one line naming the tokenizer, not a traceback."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def _name(tokenizer) -> str:
    return str(getattr(tokenizer, "name_or_path", "") or "the tokenizer")


def format_options(choices: list[str]) -> str:
    """``A. first\\nB. second`` …"""
    return "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))


def letters_for(n: int) -> str:
    if n <= 2:
        return "A or B"
    return ", ".join(LETTERS[: n - 1]) + f" or {LETTERS[n - 1]}"


def render(template: str, fields: dict[str, Any]) -> str:
    """``str.format`` over the example fields; a missing key raises KeyError naming it (callers add the file)."""
    return template.format(**fields)


def apply_chat(tokenizer, messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
    """The chat-templated prompt as text (non-thinking mode for Qwen3-style templates). Tokenizers without a chat
    template get a plain ``User:/Assistant:`` transcript so tiny test models still work."""
    if getattr(tokenizer, "chat_template", None):
        try:
            return tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt, enable_thinking=False
            )
        except Exception as e:  # noqa: BLE001 - a template is the model's code: raise_exception(), a bad role, ...
            raise ChatTemplateError(f"the chat template of {_name(tokenizer)} failed: {_first_line(e)}") from None
    parts = []
    for m in messages:
        role = {"system": "System", "user": "User", "assistant": "Assistant"}.get(m["role"], m["role"].title())
        parts.append(f"{role}: {m['content']}\n")
    if add_generation_prompt:
        parts.append("Assistant:")
    return "".join(parts)


def chat_loglik_pair(tokenizer, context: str, continuation: str, system: str | None = None) -> tuple[str, str]:
    """lm-eval's ``--apply_chat_template`` for a log-likelihood request: the whole context becomes one user turn and
    the continuation (without its leading delimiter) is scored right after the assistant header."""
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": context.strip()}
    ]
    return apply_chat(tokenizer, msgs, add_generation_prompt=True), continuation.lstrip()
