"""Haystack text for the long-context tasks, made here (licence-clean, no download) or read from a user's file.

A haystack is a list of *units* (sentences) that the task generator joins, inserting needles between units. Sources:

* ``noise`` — five short filler sentences repeated (RULER's idea of a haystack that carries no information);
* ``essay`` — a seeded essay: sentences from a small grammar over the word lists below, grouped in paragraphs; it reads
  like (dull) prose, so a needle does not stand out by style alone;
* a text file (``--haystack notes.txt``): split into sentences, repeated from the start if shorter than needed.

Every source is deterministic in ``(source, seed)``. The word lists also provide needle keys (``adjective-noun``) and
the vocabulary of the common-words task; they are ordinary English words written for this project.
"""

from __future__ import annotations

import random
import re
import string
import uuid
from pathlib import Path

from gendistill.errors import DataError

ADJECTIVES = (
    "able ancient angry bitter black blue bold brave bright broad calm careful cheap clean clever cold cool curious "
    "damp dark deep dense dry dull eager early easy empty equal faint fair famous fast fierce flat fresh friendly "
    "gentle giant glad golden grand gray great green happy hard heavy hidden high hollow honest huge humble icy "
    "jolly keen kind large late lazy light little lively long loud lucky mighty mild modern narrow neat nervous new "
    "noble odd old orange pale patient plain polite poor proud purple quick quiet rapid rare raw red rich rough round "
    "royal rusty sad safe salty sharp shiny short shy silent silver simple slow small smooth soft solid sour spare "
    "steady steep stiff strange strict strong sturdy sudden sunny sweet swift tall tame thick thin tidy tiny tired "
    "tough true vast violet warm weak wet white wide wild wise witty yellow young"
).split()
NOUNS = (
    "anchor apple arrow badge basket beacon bell blanket boat bottle bridge brush bucket button cabin camera candle "
    "canyon carpet castle cellar chair chimney circle cliff clock cloud coin comet compass cottage crayon crown "
    "curtain desert diamond dragon drum eagle engine falcon feather fence field flute forest fountain garden gate "
    "glacier globe guitar hammer harbor helmet hill island jacket jewel kettle kite ladder lake lamp lantern leaf "
    "lemon library lighthouse lion map marble meadow mirror moon mountain needle nest ocean orchard otter owl palace "
    "panda parrot pebble pencil piano pillow planet pocket pond pumpkin puzzle quilt rabbit river robot rocket saddle "
    "sail scarf shadow shell ship shovel signal silk sled spoon statue stone storm stream sugar sunset table teapot "
    "tiger tower train trumpet tulip tunnel turtle umbrella valley vase violin wagon wallet whale whistle window "
    "wizard wolf yacht zebra"
).split()
VERBS = (
    "admires builds carries changes cleans collects covers crosses describes draws explains finds follows gathers "
    "guards holds imagines joins keeps lifts measures moves notices opens paints passes places protects reaches "
    "repairs returns shapes shares studies supports touches trades visits watches"
).split()
PLACES = ("near the", "behind the", "beside the", "under the", "above the", "across the", "inside the", "beyond the")
CONNECTIVES = ("Meanwhile,", "Later,", "In the end,", "For a while,", "Every morning,", "Sometimes", "As a rule,",
               "Now and then,", "By evening,", "Once again,")

NOISE = (
    "The road winds on through the hills.",
    "The lake is calm and the air is still.",
    "A bird sings somewhere far away.",
    "Nothing new happens here today.",
    "The day goes by and then another.",
)

SOURCES = ("noise", "essay")

# Compound words ``adjective-noun`` are substring-free when no adjective ends another one and no noun starts another:
# then substring scoring can never credit one key (or common word) for another.
KEY_ADJECTIVES = tuple(a for a in ADJECTIVES if not any(b != a and b.endswith(a) for b in ADJECTIVES))
KEY_NOUNS = tuple(n for n in NOUNS if not any(m != n and m.startswith(n) for m in NOUNS))


def _np(rng: random.Random) -> str:
    return f"the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"


def essay_sentences(n: int, seed: int) -> list[str]:
    """``n`` sentences of a seeded essay; every sixth starts a new paragraph (a leading newline)."""
    rng = random.Random(f"essay:{seed}")
    out = []
    for i in range(n):
        form = rng.randrange(4)
        if form == 0:
            s = f"{_np(rng).capitalize()} {rng.choice(VERBS)} {_np(rng)} {rng.choice(PLACES)} {rng.choice(NOUNS)}."
        elif form == 1:
            s = f"{rng.choice(CONNECTIVES)} {_np(rng)} {rng.choice(VERBS)} {_np(rng)}."
        elif form == 2:
            s = (f"Nobody knows why {_np(rng)} {rng.choice(VERBS)} {_np(rng)}, but it {rng.choice(VERBS)} "
                 f"{_np(rng)} all the same.")
        else:
            s = f"It is said that {_np(rng)} is as {rng.choice(ADJECTIVES)} as {_np(rng)}."
        out.append(("\n\n" if i and i % 6 == 0 else "") + s[0].upper() + s[1:])
    return out


def noise_sentences(n: int) -> list[str]:
    return [NOISE[i % len(NOISE)] for i in range(n)]


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def file_sentences(path: str | Path) -> list[str]:
    """The sentences of a UTF-8 text file (the user's haystack)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"--haystack {p}: file not found (or give 'noise' or 'essay')")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"--haystack {p}: not UTF-8 text (byte {exc.start})") from None
    units = [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]
    if len(units) < 2:
        raise DataError(f"--haystack {p}: needs at least two sentences of text, found {len(units)}")
    return units


class Haystack:
    """A source of haystack units: ``take(n, seed)`` returns ``n`` units (deterministic)."""

    def __init__(self, source: str):
        self.source = source
        self._file_units = None if source in SOURCES else file_sentences(source)

    def take(self, n: int, seed: int) -> list[str]:
        if self.source == "noise":
            return noise_sentences(n)
        if self.source == "essay":
            return essay_sentences(n, seed)
        units = self._file_units
        start = random.Random(f"file:{seed}").randrange(len(units))
        return [units[(start + i) % len(units)] for i in range(n)]


# ------------------------------------------------------------------------------------------------ needle vocabulary


def word_key(rng: random.Random) -> str:
    return f"{rng.choice(KEY_ADJECTIVES)}-{rng.choice(KEY_NOUNS)}"


def compound_words(rng: random.Random, n: int) -> list[str]:
    """``n`` distinct ``adjective-noun`` words (at most ``len(KEY_ADJECTIVES) * len(KEY_NOUNS)``)."""
    total = len(KEY_ADJECTIVES) * len(KEY_NOUNS)
    picks = rng.sample(range(total), min(n, total))
    return [f"{KEY_ADJECTIVES[i // len(KEY_NOUNS)]}-{KEY_NOUNS[i % len(KEY_NOUNS)]}" for i in picks]


def number_value(rng: random.Random) -> str:
    return str(rng.randrange(1_000_000, 10_000_000))


def uuid_value(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def word_value(rng: random.Random) -> str:
    return rng.choice(KEY_NOUNS)


MAKERS = {"words": word_key, "numbers": number_value, "uuids": uuid_value, "noun": word_value}


def distinct(maker, rng: random.Random, n: int, avoid: set[str] = frozenset()) -> list[str]:
    """``n`` distinct values from ``maker``, none in ``avoid`` and none a substring of another (so substring scoring
    cannot credit one needle for another)."""
    out: list[str] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 100 * n + 1000:
            raise DataError(f"cannot draw {n} distinct needle values from {maker.__name__}")
        v = maker(rng)
        if v in avoid or any(v in o or o in v for o in out) or any(v in a or a in v for a in avoid):
            continue
        out.append(v)
    return out


def variable_name(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_uppercase) for _ in range(5))
