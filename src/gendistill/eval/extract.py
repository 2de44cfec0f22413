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
from decimal import Decimal, InvalidOperation
from fractions import Fraction

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


# Explicit statements. The letter may be in parentheses or brackets; what follows it decides whether it stands alone
# (see _stands_alone): "The answer is B", "Answer: (b)", "answer: b", "The correct option is C", "Option B is correct",
# "I'd go with B.", "I would choose (D)", "My pick is A".
_LETTER = r"\s*[:\-]?\s*(?P<open>[\(\[])?(?P<L>[A-Za-z])(?P<close>[\)\]])?"
_ANSWER_IS = re.compile(
    r"\banswer\b\s*(?P<verb>is|would\s+be|should\s+be|will\s+be|=)?\s*(?P<noun>option|choice|letter)?" + _LETTER,
    re.I)
_PICK = re.compile(
    r"(?:\b(?:i(?:'d|\s+would|'ll|\s+will)?|let's|we(?:'ll|\s+will)?)\s+(?:go\s+with|choose|pick|select|opt\s+for)"
    r"|\bmy\s+(?:pick|choice)\s+is|\bit(?:'s|\s+is|\s+must\s+be)|\b(?:correct|right|best)\s+(?:option|choice)\s+is)"
    r"\s*(?:option|choice|letter|answer)?" + _LETTER, re.I)
_OPTION_IS = re.compile(
    r"\b(?:option|choice|answer)\s+(?P<open>[\(\[])?(?P<L>[A-Za-z])(?P<close>[\)\]])?"
    r"(?=\s+is\s+(?:correct|right|the\s+(?:correct|right|best)\b))", re.I)
# After an explicit marker a letter stands alone when it ends the sentence or is followed by a connective:
# "answer: b." or "answer is A because …", but not "the answer is a seed" (an article) or "Answer: I think …".
_ALONE_AFTER = re.compile(r"(?:\s*(?:$|[.,;:!?\n*])|\s+[-–—]|\s+(?:because|since|as|is|was|which|for|and)\b)", re.I)


#: what may follow a letter named without a verb or separator ("Answer A."): the end of a sentence, no connective
_ENDS_AFTER = re.compile(r"\s*(?:$|[.,;!?\n*])")


def _stands_alone(m: re.Match, text: str) -> bool:
    letter, rest = m.group("L"), text[m.end():]
    if m.group("close"):  # "A)", "(A)", "[A]": a closing bracket right after the letter makes it a label
        return True
    if rest[:1].isalnum() or rest[:1] == "'":
        return False
    if m.re is _ANSWER_IS and not (m.group("verb") or m.group("noun") or re.search(r"[:\-]", m.group(0))):
        # "answer" right before the letter, no verb or separator: "Answer A is wrong" names option A, it does not
        # choose it; "Answer A." at the end of a sentence does
        return bool(_ENDS_AFTER.match(rest))
    if letter.isupper() and letter not in "AI":  # "A" and "I" are also English words
        return True
    return bool(_ALONE_AFTER.match(rest))


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

    # the first explicit statement in the reply wins, whichever its form: explanations come after it
    statements = sorted((m for pat in (_ANSWER_IS, _PICK, _OPTION_IS) for m in pat.finditer(clean)),
                        key=lambda m: m.start())
    for m in statements:
        i = _valid(m.group("L"), n)
        if i is not None and _stands_alone(m, clean):
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


_TEXT_MARKER = re.compile(r"\banswer\s*(?:is|would\s+be|:)\s*:?|\bi(?:'d|\s+would)\s+(?:go\s+with|choose|pick)", re.I)


def _match_option_text(text: str, choices: list[str]) -> int | None:
    norm_choices = [normalize_text(c) for c in choices]
    # "Not a seed; the answer is pollen.": the span after the last explicit marker, up to its sentence end, decides
    # when it is exactly one option.
    for m in reversed(list(_TEXT_MARKER.finditer(text))):
        span = normalize_text(re.split(r"[.;!?\n]|,\s", text[m.end():].strip(), maxsplit=1)[0])
        hits = [i for i, c in enumerate(norm_choices) if c and span == c]
        if len(hits) == 1:
            return hits[0]
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

# One number: an optional minus (not the hyphen of a range "10-12"), digits with optional thousands separators
# ("1,234,567"; "1,2,3" is three numbers), an optional decimal part, an optional exponent ("1e3", "2.5E-4") and an
# optional denominator ("3/4"; "24/7/365" is not a fraction). Units, "$" and "%" around it are ignored.
_NUM = (
    r"(?:(?<![\w)\]])-)?(?<![\d./])"
    r"(?:(?:\d{1,3}(?:,\d{3})+(?![\d,]\d)|\d+)(?:\.\d+)?|\.\d+)"
    r"(?:[eE][+-]?\d+(?![\w.]))?"
    r"(?:/\d+(?![\d/.]))?"
    r"(?![\d])"
)
_NUM_RE = re.compile(_NUM)

_LATEX_SUBS = [
    (re.compile(r"\\[dt]?frac\s*\{\s*([^{}]*?)\s*\}\s*\{\s*([^{}]*?)\s*\}"), r"\1/\2"),  # \frac{1}{2} -> 1/2
    (re.compile(r"\\[dt]?frac\s*(\d)(\d)"), r"\1/\2"),  # \frac12 -> 1/2
    (re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox)\s*\{([^{}]*)\}"), r" \1 "),  # units: \text{ cm}
    (re.compile(r"\{,\}|\\!|\\,|\\;|\\:|~"), ""),  # LaTeX thousands separators and thin spaces: 1{,}234, 1\,234
    (re.compile(r"\^\s*\{?\\circ\}?|\\circ|\\%|\\\$|\\left|\\right"), " "),
    (re.compile(r"[\u2212\u2013](?=\d)"), "-"),  # unicode minus / en dash before a digit
    (re.compile(r"(?<=\d)[\u202f\u2009](?=\d{3}\b)"), ""),  # narrow no-break / thin space as thousands separator
]


def _plain(text: str) -> str:
    """LaTeX number notation to plain text: fractions to ``a/b``, ``\\text{}`` units unwrapped, thin spaces and
    ``{,}`` separators dropped, ``\\%``/``^\\circ``/``\\$`` removed."""
    for pat, rep in _LATEX_SUBS:
        text = pat.sub(rep, text)
    return text


def _boxed_contents(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces) in order."""
    out = []
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
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


def _canonical(tok: str) -> str | None:
    """One matched number token to its canonical string: ``"1,234.50"`` → ``"1234.5"``, ``"1e3"`` → ``"1000"``,
    ``"6/8"`` → ``"3/4"``, ``"4/2"`` → ``"2"``, ``"-0"`` → ``"0"``."""
    tok = tok.replace(",", "")
    num, _, den = tok.partition("/")
    try:
        d = Decimal(num)
        if den:
            if int(den) == 0:
                return None
            f = Fraction(d) / int(den)
            return str(f.numerator) if f.denominator == 1 else f"{f.numerator}/{f.denominator}"
    except (InvalidOperation, ValueError):
        return None
    if not d.is_finite():
        return None
    if d == 0:
        return "0"
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def _numbers(text: str) -> list[str]:
    return [c for c in (_canonical(m.group(0)) for m in _NUM_RE.finditer(text)) if c is not None]


def normalize_number(s: str) -> str | None:
    """The first number in ``s``, canonical: ``"$1,234.50"`` → ``"1234.5"``, ``"18.00"`` → ``"18"``, ``"-3"`` →
    ``"-3"``, ``"\\frac{1}{2}"`` → ``"1/2"``, ``"1e3"`` → ``"1000"``, ``"45%"`` → ``"45"``; None when no number."""
    nums = _numbers(_plain(s))
    return nums[0] if nums else None


# An explicit final-answer statement: "#### 18", "The answer is 18", "Final answer: $18", "answer = 18". What follows
# the marker up to the end of its sentence is the answer; when that span is a calculation ("the answer is 3 + 4 = 7")
# the number after its last "=" is taken.
_MARKER_RE = re.compile(
    r"####|\banswer\s*(?:is|was|will\s+be|would\s+be|should\s+be|[:=])\s*:?|\banswer\s*\n",
    re.I,
)
_SENTENCE_END = re.compile(r"\.(?:\s|$)|\n|;|,\s+(?:so|because|since|which)\b")


def _marked_numbers(text: str) -> list[str]:
    out = []
    for m in _MARKER_RE.finditer(text):
        rest = text[m.end():]
        end = _SENTENCE_END.search(rest.lstrip())
        span = rest.lstrip()[: end.start() if end else len(rest)]
        nums = _numbers(span.rsplit("=", 1)[-1] if "=" in span else span)
        if nums:
            out.append(nums[-1] if "=" in span else nums[0])
    return out


@dataclass(frozen=True)
class Number:
    value: str | None
    method: str


def extract_number(text: str) -> Number:
    """The final numeric answer, canonical (see :func:`normalize_number`). Rules, first that finds one wins:

    1. the last ``\\boxed{}`` that holds a number: its first number after its last "=" (``\\boxed{x = 5}``,
       ``\\boxed{12\\text{ cm}^2}``);
    2. the last explicit statement: "#### N", "The (final) answer is N", "Answer: N" (see ``_MARKER_RE``);
    3. the last number in the reply.
    """
    t = strip_reasoning(text)
    t = _MD_RE.sub("", t)
    boxed = []
    for b in _boxed_contents(t):
        nums = _numbers(_plain(b.rsplit("=", 1)[-1]))
        if nums:  # the first: "12 cm^2" is 12
            boxed.append(nums[0])
    if boxed:
        return Number(boxed[-1], "boxed")
    t = _plain(t)
    marked = _marked_numbers(t)
    if marked:
        return Number(marked[-1], "answer_is")
    nums = _numbers(t)
    if nums:
        return Number(nums[-1], "last_number")
    return Number(None, "none")


def _as_fraction(s: str) -> Fraction | None:
    c = normalize_number(s)
    if c is None:
        return None
    try:
        return Fraction(c)
    except (ValueError, ZeroDivisionError):
        return None


def numbers_equal(a: str | None, b: str | None) -> bool:
    """Equal as numbers: exactly, or, unless both are integers, within 1e-6 relative (so "0.333333" equals "1/3",
    "18.0" equals "18", but "1000001" is not "1000000")."""
    if a is None or b is None:
        return False
    fa, fb = _as_fraction(a), _as_fraction(b)
    if fa is None or fb is None:
        return False
    if fa.denominator == 1 and fb.denominator == 1:
        return fa == fb
    return fa == fb or abs(fa - fb) <= Fraction(1, 10**6) * max(1, abs(fb))


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
        line = re.sub(r"^the\s+answer\s+is\s*:?\s*", "", line, flags=re.I).strip()
        if line:  # a line that is only the label ("Answer:") leaves the answer to the next one
            return line
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
