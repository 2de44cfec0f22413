"""Turning one record into tokens and a target mask: plain text, prompt/response (through the chat template or
not) or a chat conversation. Whether a token is a training target is decided here, once, for both masking modes;
everything downstream (packing, ``collate``, the losses) only reads ``target_mask``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gendistill.distill.config import DataConfig, SourceConfig
from gendistill.errors import DataError


#: text longer than this many characters is tokenised in pieces of at most this size (a tokenizer's working memory
#: grows with its input: one 50 MB document tokenised at once took 10 GB). Shorter text is tokenised in one call.
TOKENIZE_PIECE_CHARS = 1 << 18


def split_for_tokenizer(text: str, limit: int | None = None) -> list[str]:
    """``text`` in consecutive pieces of at most ``limit`` characters (default :data:`TOKENIZE_PIECE_CHARS`; one
    piece when it is not longer). Each cut is placed before a single space between two non-space characters, in the
    last half of the window, where the pre-tokenizers of byte-level BPE tokenizers (GPT-2, Llama 3, Qwen, SmolLM)
    and of SentencePiece's metaspace split anyway, so the tokens are those of one call; a window without such a
    space (a long run without spaces) is cut at ``limit``, and the tokens at that cut may differ from one call's."""
    limit = limit or TOKENIZE_PIECE_CHARS
    if len(text) <= limit:
        return [text]
    pieces, start = [], 0
    while len(text) - start > limit:
        lo, cut = start + limit // 2, start + limit
        p = text.rfind(" ", lo, cut)
        while p > lo and (text[p - 1].isspace() or text[p + 1].isspace()):
            p = text.rfind(" ", lo, p)
        if p > lo:
            cut = p
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


class NothingToDistillError(DataError):
    """A well-formed record with nothing to train on (no assistant turn, empty response or text). Skipped instead of
    raised when the data's ``skip_empty`` is on."""


@dataclass
class Encoded:
    """One document: ``input_ids`` [T] and ``target_mask`` [T] (lists as the encoder makes them; int32 / bool numpy
    arrays once a stream keeps them for a later pass)."""

    input_ids: Sequence[int]
    target_mask: Sequence[int]  # 1 where the token is a training target (predicted from the tokens before it)


def get_field(rec: Any, field: str, origin: str, kind: type | tuple[type, ...] = str) -> Any:
    """``rec[field]``, checked to be a ``kind``; a DataError naming the record otherwise."""
    if not isinstance(rec, dict):
        raise DataError(f"{origin}: a record must be a JSON object, got {type(rec).__name__}")
    if field not in rec or rec[field] is None:
        raise DataError(f"{origin}: missing field {field!r} (has: {', '.join(sorted(map(str, rec))) or 'nothing'})")
    v = rec[field]
    if not isinstance(v, kind):
        raise DataError(f"{origin}: field {field!r} should be {getattr(kind, '__name__', kind)}, got {type(v).__name__}")
    return v


def check_messages(messages: Any, origin: str) -> list[dict[str, str]]:
    """A well-formed conversation with at least one non-empty assistant turn."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{origin}: 'messages' must be a non-empty list of {{role, content}} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f"{origin}: messages[{i}] must be an object with string 'role' and 'content'")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise NothingToDistillError(f"{origin}: conversation has no assistant turn (nothing to distill)")
    return messages


class Encoder:
    """Turns a record into tokens + a target mask for one source format and masking mode."""

    def __init__(self, tokenizer: Any, source: SourceConfig, masking: str, data: DataConfig):
        self.tok, self.src, self.masking, self.data = tokenizer, source, masking, data
        self.eos = tokenizer.eos_token_id
        self.uses_template = source.format == "chat" or (source.format == "prompt_response" and source.chat_template)
        self._turn_end: str | None = None
        if self.uses_template:
            if not getattr(tokenizer, "chat_template", None):
                raise DataError(
                    f"{source.path}: format {source.format!r} needs a chat template but the teacher tokenizer has "
                    "none (use format 'text', or prompt_response with chat_template: false)"
                )
            self._turn_end = self._probe_turn_end()
        if source.format == "text" and masking == "completion_only":
            raise DataError(f"{source.path}: masking completion_only needs chat or prompt_response data, not text")

    def _render(self, messages: list[dict[str, str]], **kw: Any) -> str:
        return self.tok.apply_chat_template(messages, tokenize=False, **self.data.chat_template_kwargs, **kw)

    def _probe_turn_end(self) -> str:
        sentinel = "GENDISTILL_SENTINEL_7f3a"
        try:
            text = self._render([{"role": "user", "content": "hi"}, {"role": "assistant", "content": sentinel}])
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{self.src.path}: the tokenizer's chat template failed to render: {e}") from None
        if sentinel not in text:
            raise DataError(f"{self.src.path}: the chat template does not render assistant content verbatim")
        return text[text.index(sentinel) + len(sentinel) :].rstrip()

    def _ids(self, text: str) -> list[int]:
        """Tokens of ``text`` without special tokens, in bounded pieces (:func:`split_for_tokenizer`)."""
        ids: list[int] = []
        for piece in split_for_tokenizer(text):
            ids += self.tok(piece, add_special_tokens=False)["input_ids"]
        return ids

    def _ids_with_specials(self, text: str) -> list[int]:
        """Tokens of ``text`` with the tokenizer's special tokens (a BOS), as one call would give them; a text longer
        than a piece is tokenised in pieces and wrapped in the special tokens the tokenizer adds around any text."""
        if len(text) <= TOKENIZE_PIECE_CHARS:
            return list(self.tok(text, add_special_tokens=True)["input_ids"])
        prefix, suffix = self._special_wrapping()
        return prefix + self._ids(text) + suffix

    def _special_wrapping(self) -> tuple[list[int], list[int]]:
        """The special tokens the tokenizer puts before and after a text (``([bos], [])`` for Llama)."""
        plain = list(self.tok("a", add_special_tokens=False)["input_ids"])
        full = list(self.tok("a", add_special_tokens=True)["input_ids"])
        for i in range(len(full) - len(plain) + 1):
            if full[i : i + len(plain)] == plain:
                return full[:i], full[i + len(plain) :]
        return [], []  # pragma: no cover - a post-processor that changes the text's own tokens

    def fields(self, rec: Any, origin: str) -> str | tuple[str, str] | list[dict[str, str]]:
        """Check ``rec`` for this source's format without tokenizing: the text, ``(prompt, response)`` or the
        messages. DataError on a malformed record, NothingToDistillError on one with nothing to train on."""
        f = self.src.format
        if f == "text":
            text = get_field(rec, self.src.text_field, origin)
            if not text.strip():
                raise NothingToDistillError(f"{origin}: empty {self.src.text_field!r} (nothing to distill)")
            return text
        if f == "prompt_response":
            prompt = get_field(rec, self.src.prompt_field, origin)
            response = get_field(rec, self.src.response_field, origin)
            if not response.strip():
                raise NothingToDistillError(f"{origin}: empty {self.src.response_field!r} (nothing to distill)")
            return prompt, response
        return check_messages(get_field(rec, self.src.messages_field, origin, list), origin)

    def encode(self, rec: Any, origin: str) -> Encoded:
        """Tokens and target mask of one record (the mask: 1 on every token with ``all_tokens``; with
        ``completion_only`` only on the response / assistant turns and the end-of-turn marker after each)."""
        got = self.fields(rec, origin)
        f = self.src.format
        if f == "text":
            assert isinstance(got, str)
            ids = self._ids_with_specials(got)
            if self.data.add_eos and self.eos is not None and (not ids or ids[-1] != self.eos):
                ids.append(self.eos)
            return Encoded(ids, [1] * len(ids))
        if f == "prompt_response":
            assert isinstance(got, tuple)
            prompt, response = got
            if self.src.chat_template:
                return self._encode_chat(
                    [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], origin
                )
            p = self._ids_with_specials(prompt)
            r = self._ids(response)
            if self.data.add_eos and self.eos is not None:
                r.append(self.eos)
            m = [0 if self.masking == "completion_only" else 1] * len(p) + [1] * len(r)
            return Encoded(p + r, m)
        assert isinstance(got, list)
        return self._encode_chat(got, origin)

    def _encode_chat(self, messages: list[dict[str, str]], origin: str) -> Encoded:
        """Render the whole conversation once, find each assistant turn's content (and the template's end-of-turn
        marker after it) in the rendered text, and tokenize the pieces separately so the assistant tokens are exactly
        the ones the model would generate after the rendered prompt."""
        try:
            text = self._render(messages)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{origin}: the chat template failed on this conversation: {e}") from None
        spans: list[tuple[int, int]] = []
        cursor = 0
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                # advance past user/system content so an assistant reply that repeats it is found at the right place
                c = m["content"].strip()
                if c:
                    k = text.find(c, cursor)
                    if k >= 0:
                        cursor = k + len(c)
                continue
            # The reply starts after the rendered prompt up to this turn: search from there, so a short reply cannot be
            # "found" inside the template's own markup (e.g. an "a" inside "<|im_start|>assistant").
            try:
                prefix = self._render(messages[:i], add_generation_prompt=True) if i else ""
            except Exception:  # noqa: BLE001 - some templates refuse partial conversations; keep the running cursor
                prefix = ""
            if prefix and text.startswith(prefix):
                cursor = max(cursor, len(prefix))
            content = m["content"]
            k = text.find(content, cursor) if content else -1
            if k < 0:
                content = content.strip()
                k = text.find(content, cursor) if content else -1
            if k < 0:
                if not m["content"].strip():
                    continue
                raise DataError(
                    f"{origin}: messages[{i}]: the chat template changes the assistant text, so its tokens cannot "
                    "be located for the completion mask"
                )
            end = k + len(content)
            if self._turn_end and text.startswith(self._turn_end, end):
                end += len(self._turn_end)
            spans.append((k, end))
            cursor = end
        ids: list[int] = []
        mask: list[int] = []
        pos = 0
        all_tokens = self.masking == "all_tokens"
        for a, b in spans:
            if a > pos:
                piece = self._ids(text[pos:a])
                ids += piece
                mask += [1 if all_tokens else 0] * len(piece)
            piece = self._ids(text[a:b])
            ids += piece
            mask += [1] * len(piece)
            pos = b
        if pos < len(text):
            piece = self._ids(text[pos:])
            ids += piece
            mask += [1 if all_tokens else 0] * len(piece)
        return Encoded(ids, mask)
