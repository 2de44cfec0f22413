"""Answer extraction from free-form generations.

Three families:

* :func:`extract_choice` — a multiple-choice answer given as a letter (``B``, ``(B)``, ``B.``, ``Answer: B``,
  ``The correct answer is **B**``, ``\\boxed{B}``) or as the option text itself (``yes``, ``Paris``).
* :func:`extract_number` — the final number of a worked solution (``\\boxed{1,234}``, ``The answer is $18.00``,
  ``#### 18``, else the last number in the text), normalised (commas, ``$`` and trailing zeros removed).
* :func:`normalize_text` / :func:`match_aliases` — SQuAD/TriviaQA normalisation and exact match against aliases.

Every extractor returns ``None`` when it finds no answer; the caller counts those as *invalid*, which is reported
separately from *wrong*.
"""

from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

_THINK_RE = re.compile(r"<think>.*?(</think>|$)", re.S | re.I)
_MD_RE = re.compile(r"[*_`]+")


def strip_reasoning(text: str) -> str:
    """Drop ``<think>…</think>`` blocks (an unterminated one swallows the rest) and markdown emphasis."""
    text = _THINK_RE.sub(" ", text)
    return text


@dataclass(frozen=True)
class Choice:
    index: int | None  # 0-based option index, None when nothing valid was found
    method: str  # which rule fired ("answer_is", "boxed", "paren", "leading", "text", "none", ...)


def _valid(letter: str, n: int) -> int | None:
    i = LETTERS.find(letter.upper())
    return i if 0 <= i < n else None


# "answer is B", "Answer: (B)", "correct option: **C**", "the best answer is D." — the letter must stand alone.
_ANSWER_IS = re.compile(
    r"answer\s*(?:is|would\s+be|should\s+be|=)?\s*(?:option|choice|letter)?\s*[:\-]?\s*"
    r"[\(\[]?([A-Z])[\)\]]?(?![A-Za-z0-9'])",
    re.I,
)
_OPTION_IS = re.compile(r"(?:option|choice)\s*(?:is\s*)?[:\-]?\s*[\(\[]?([A-Z])[\)\]]?(?![A-Za-z0-9'])", re.I)
_BOXED_LETTER = re.compile(r"\\boxed\{\s*(?:\\text\{)?\s*\(?([A-Z])\)?\s*\}?\s*\}")
_PAREN = re.compile(r"(?<![A-Za-z0-9])\(([A-Z])\)(?![A-Za-z0-9])")
# A letter at the very start: "B", "B.", "B)", "(B)", "B:", "B -", "[B]"; "A man …" is not a letter answer.
_LEADING = re.compile(r"^\s*[\(\[]?([A-Z])(?:[\)\]\.:,;]|\s*[-–—]\s|\s*$|\s+(?=is\b|because\b|as\b|since\b)|\s*\n)")
_LONE_LINE = re.compile(r"^\s*[\(\[]?([A-Z])[\)\]\.:]?\s*$", re.M)


def normalize_text(s: str) -> str:
    """SQuAD-style normalisation: lower-case, strip accents, punctuation and articles, squeeze whitespace."""
    s = unicodedata.normalize("NFKD", s)
    s = "".join(c for c in s if not unicodedata.combining(c))
    s = s.lower()
    s = "".join(" " if c in string.punctuation else c for c in s)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def extract_choice(text: str, choices: list[str], *, allow_text: bool = True) -> Choice:
    """The option a generation picked, or ``Choice(None, "none")``.

    Rules, first match wins: explicit statements ("answer is B", "Answer: (B)", "option C"), ``\\boxed{B}``, a letter
    at the start of the reply ("B.", "(B) …"), a letter alone on a line, a single distinct parenthesised letter
    "(B)" anywhere, then (if ``allow_text``) the option text itself — the whole reply equal to one option, or exactly
    one option (the longest, when one contains another) appearing in the reply. Letters outside the option range are
    ignored, so "E" for a 4-option question is invalid, not a guess.
    """
    n = len(choices)
    raw = strip_reasoning(text)
    clean = _MD_RE.sub("", raw).strip()
    if not clean:
        return Choice(None, "none")

    for pat in (_ANSWER_IS, _OPTION_IS):
        for m in pat.finditer(clean):
            letter = m.group(1)
            if letter.isupper() or m.group(0)[-1] in ")]":
                i = _valid(letter, n)
                if i is not None:
                    return Choice(i, "answer_is")
    for m in _BOXED_LETTER.finditer(clean):
        i = _valid(m.group(1), n)
        if i is not None:
            return Choice(i, "boxed")
    m = _LEADING.match(clean)
    if m:
        i = _valid(m.group(1), n)
        if i is not None:
            return Choice(i, "leading")
    for m in _LONE_LINE.finditer(clean):
        i = _valid(m.group(1), n)
        if i is not None:
            return Choice(i, "line")
    parens = {m.group(1) for m in _PAREN.finditer(clean) if _valid(m.group(1), n) is not None}
    if len(parens) == 1:
        return Choice(_valid(parens.pop(), n), "paren")

    if allow_text:
        i = _match_option_text(clean, choices)
        if i is not None:
            return Choice(i, "text")
    return Choice(None, "none")


def _match_option_text(text: str, choices: list[str]) -> int | None:
    norm_choices = [normalize_text(c) for c in choices]
    # Strip a leading "Answer:" / "The answer is" so "Answer: Paris" equals the option "Paris".
    body = re.sub(r"^\s*(?:the\s+)?(?:final\s+|correct\s+|best\s+)?answer\s*(?:is|:)\s*", "", text, flags=re.I)
    first_line = body.strip().splitlines()[0] if body.strip() else ""
    for cand in (body, first_line):
        nc = normalize_text(cand)
        hits = [i for i, c in enumerate(norm_choices) if c and nc == c]
        if len(hits) == 1:
            return hits[0]
    # Single-word options (yes/no, true/false): the first word of the reply decides ("Yes, because …").
    if all(c and " " not in c for c in norm_choices):
        words = normalize_text(body).split()
        if words and words[0] in norm_choices and norm_choices.count(words[0]) == 1:
            return norm_choices.index(words[0])
    nt = f" {normalize_text(body)} "
    found = [i for i, c in enumerate(norm_choices) if c and f" {c} " in nt]
    if not found:
        return None
    # Drop options that are contained in a longer found option ("no" inside "no doubt").
    maximal = [i for i in found if not any(j != i and norm_choices[i] in norm_choices[j] for j in found)]
    if len(maximal) == 1:
        return maximal[0]
    return None


# ---------------------------------------------------------------------------------------------------- numbers

_NUM = r"-?\$?\s?\d[\d,]*(?:\.\d+)?|-?\$?\s?\.\d+"
_NUM_RE = re.compile(_NUM)


def _boxed_contents(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` (balanced braces) in order."""
    out = []
    for m in re.finditer(r"\\boxed\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        if depth == 0:
            out.append(text[m.end() : i - 1])
    return out


def normalize_number(s: str) -> str | None:
    """``"$1,234.50"`` → ``"1234.5"``, ``"18.00"`` → ``"18"``, ``"-3"`` → ``"-3"``; None when no number."""
    m = _NUM_RE.search(s.replace("\\!", "").replace("{,}", ","))
    if not m:
        return None
    tok = m.group(0).replace("$", "").replace(",", "").replace(" ", "")
    try:
        val = float(tok)
    except ValueError:
        return None
    if val == int(val) and abs(val) < 1e15:
        return str(int(val))
    return repr(round(val, 6)).rstrip("0").rstrip(".")


_FINAL_PATTERNS = [
    re.compile(r"####\s*(" + _NUM + ")"),
    re.compile(r"answer\s*(?:is|:|=)\s*:?\s*(?:\\\(|\$\$?)?\s*(" + _NUM + ")", re.I),
    re.compile(r"answer\s*(?:is|:)?[^.\n\d]{0,40}?(" + _NUM + ")", re.I),
]


@dataclass(frozen=True)
class Number:
    value: str | None
    method: str


def extract_number(text: str) -> Number:
    """The final numeric answer: last ``\\boxed{}``, else "The answer is N" / "#### N" (the last such statement),
    else the last number in the reply."""
    t = strip_reasoning(text)
    t = _MD_RE.sub("", t)
    boxed = [normalize_number(b) for b in _boxed_contents(t)]
    boxed = [b for b in boxed if b is not None]
    if boxed:
        return Number(boxed[-1], "boxed")
    for pat in _FINAL_PATTERNS:
        hits = [normalize_number(m.group(1)) for m in pat.finditer(t)]
        hits = [h for h in hits if h is not None]
        if hits:
            return Number(hits[-1], "answer_is")
    nums = [normalize_number(m.group(0)) for m in _NUM_RE.finditer(t)]
    nums = [x for x in nums if x is not None]
    if nums:
        return Number(nums[-1], "last_number")
    return Number(None, "none")


def numbers_equal(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    na, nb = normalize_number(a), normalize_number(b)
    if na is None or nb is None:
        return False
    try:
        return abs(float(na) - float(nb)) <= 1e-6 * max(1.0, abs(float(nb)))
    except ValueError:
        return na == nb


# ---------------------------------------------------------------------------------------------------- short answers


def extract_short_answer(text: str) -> str | None:
    """The answer span of a short-answer reply: the first non-empty line, without "Answer:" and trailing chatter."""
    t = strip_reasoning(text).strip()
    t = _MD_RE.sub("", t)
    for line in t.splitlines():
        line = line.strip()
        if not line:
            continue
        line = re.sub(r"^(?:final\s+)?answer\s*:\s*", "", line, flags=re.I)
        line = re.sub(r"^the\s+answer\s+is\s*:?\s*", "", line, flags=re.I)
        return line.strip() or None
    return None


def match_aliases(text: str, aliases: list[str]) -> tuple[bool, bool]:
    """``(exact, contains)``: the extracted span equals an alias after normalisation; an alias (as whole words)
    appears anywhere in the reply."""
    span = extract_short_answer(text)
    norm_aliases = {normalize_text(a) for a in aliases if normalize_text(a)}
    exact = False
    if span is not None:
        ns = normalize_text(span)
        # "Paris." / "Paris, France" → also try the span cut at the first sentence/comma boundary.
        cut = normalize_text(re.split(r"[.,;(]", span, maxsplit=1)[0])
        exact = ns in norm_aliases or cut in norm_aliases
    nt = f" {normalize_text(strip_reasoning(text))} "
    contains = any(f" {a} " in nt for a in norm_aliases)
    return exact, contains
