"""Answer extraction over real-looking model outputs."""

from __future__ import annotations

import pytest

from gendistill.eval.extract import (
    extract_choice,
    extract_number,
    extract_short_answer,
    match_aliases,
    normalize_number,
    normalize_text,
    numbers_equal,
)

ABCD = ["a seed", "a spore", "pollen", "an immature flower"]

CHOICE_CASES = [
    ("B", 1),
    ("B.", 1),
    ("(B)", 1),
    ("B) a spore", 1),
    ("  C", 2),
    ("Answer: B", 1),
    ("answer: (D)", 3),
    ("The answer is C.", 2),
    ("The correct answer is **D**.", 3),
    ("The best answer is (A) because seeds are dormant.", 0),
    ("I think the answer would be B, since spores ...", 1),
    ("**Answer:** C", 2),
    ("Let me think.\nThe egg is dormant like a seed.\nAnswer: A", 0),
    ("Option B is correct.", 1),
    ("The correct option is (C) pollen.", 2),
    ("\\boxed{D}", 3),
    ("So the final answer is $\\boxed{B}$.", 1),
    ("A. a seed\nB. a spore", 0),  # echoes the list: the first line is the pick
    ("B - a spore", 1),
    ("D\n\nExplanation: flowers…", 3),
    ("<think>Maybe A? no, C.</think>\nB", 1),  # reasoning is ignored
    ("It is (C).", 2),
    ("pollen", 2),  # the option text itself
    ("An immature flower.", 3),
    ("The answer is pollen.", 2),
    ("I believe it's a spore, since ferns reproduce that way.", 1),
    ("b", None),  # a lone lower-case letter is not trusted
    ("E", None),  # out of range for 4 options
    ("Answer: E", None),
    ("A man walks into a bar.", None),  # "A" as an article is not an answer
    ("I don't know.", None),
    ("", None),
    ("Both (A) and (C) are plausible.", None),  # ambiguous
]


@pytest.mark.parametrize("text,expected", CHOICE_CASES)
def test_extract_choice(text, expected):
    assert extract_choice(text, ABCD).index == expected


def test_letter_only_mode_ignores_option_text():
    assert extract_choice("pollen", ABCD, allow_text=False).index is None
    assert extract_choice("C", ABCD, allow_text=False).index == 2


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Yes", 1), ("No.", 0), ("yes, it is", 1), ("No, there is no sequel.", 0), ("Yes. No doubt about it.", 1),
        ("B", 1), ("Answer: no", 0), ("Maybe.", None),
    ],
)
def test_yes_no(text, expected):
    assert extract_choice(text, ["no", "yes"]).index == expected


def test_longer_option_wins_when_one_contains_another():
    opts = ["red", "red wine", "water"]
    assert extract_choice("I would pick red wine for this.", opts).index == 1


NUMBER_CASES = [
    ("Janet sells 9 eggs. She makes 9 * 2 = $18 every day.\nThe answer is \\boxed{18}.", "18"),
    ("The answer is 1,234.", "1234"),
    ("#### 72", "72"),
    ("So she earns $18.00 in total.", "18"),
    ("The answer is: $1,000,000", "1000000"),
    ("Answer: -5", "-5"),
    ("\\boxed{\\frac{1}{2}} hmm \\boxed{0.5}", "0.5"),
    ("He has 3 apples, then 5, then 12 apples.", "12"),
    ("The final answer is 3.50 dollars, not 4.", "3.5"),
    ("\\boxed{1{,}234}", "1234"),
    ("No numbers here.", None),
    ("<think>it's 7</think> The answer is 8", "8"),
]


@pytest.mark.parametrize("text,expected", NUMBER_CASES)
def test_extract_number(text, expected):
    assert extract_number(text).value == expected


def test_number_equality_and_normalisation():
    assert numbers_equal("18.0", "18")
    assert numbers_equal("$1,234", "1234")
    assert not numbers_equal("18", "19")
    assert not numbers_equal(None, "1")
    assert normalize_number("abc") is None
    assert normalize_number("-0.50") == "-0.5"


def test_short_answers_and_aliases():
    aliases = ["Onion", "Allium cepa", "Onions"]
    assert match_aliases("Onion", aliases) == (True, True)
    assert match_aliases("Answer: onions.", aliases) == (True, True)
    assert match_aliases("The onion, a bulb vegetable", aliases)[0] is True
    assert match_aliases("It is the onion family of vegetables.", aliases) == (False, True)
    assert match_aliases("Garlic", aliases) == (False, False)
    assert match_aliases("", aliases) == (False, False)
    assert extract_short_answer("\n\nAnswer: Paris\nMore text") == "Paris"
    # a line that is only the label: the answer is on the next one
    for reply in ("**Answer:**\nParis", "Answer:\n\nParis", "The answer is:\nParis"):
        assert extract_short_answer(reply) == "Paris", reply
        assert match_aliases(reply, ["Paris"]) == (True, True), reply
    assert normalize_text("The  Beatles!") == "beatles"
    assert normalize_text("Café") == "cafe"
