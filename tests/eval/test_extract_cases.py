"""Answer extraction on real-looking generations: a table of replies of the kind chat models give to GSM8K / MATH /
MMLU / ARC prompts (chain of thought, LaTeX, markdown, self-corrections, explanations after the answer) with the
answer a careful human grader would extract. The rules are in docs/eval.md ("Answer extraction rules")."""

from __future__ import annotations

import pytest

from gendistill.eval.extract import extract_choice, extract_number, numbers_equal

# ------------------------------------------------------------------------------------------------ numbers
# (reply, extracted canonical number or None)
NUMBERS = [
    # GSM8K-style chain of thought
    ("Natalia sold 48/2 = 24 clips in May.\nAltogether she sold 48 + 24 = 72 clips.\n#### 72", "72"),
    ("Weng earns 12/60 = $0.2 per minute. For 50 minutes she earned 0.2 x 50 = $10.\nThe answer is 10.", "10"),
    ("Betty has 100/2 = $50. Her grandparents give her 15*2 = $30. She needs 100-50-30-15 = $5 more.\n"
     "The answer is $5.", "5"),
    ("Julie read 12 x 2 = 24 pages today, so 12 + 24 = 36 pages so far. 120 - 36 = 84 remain; half is 42.\n"
     "#### 42", "42"),
    ("James writes 3 * 2 = 6 pages a week, so 6 * 52 = 312 pages a year. The answer is 312.", "312"),
    ("The answer depends on 5 factors, so the total is 12.", "12"),
    ("First, 3 boxes of 12 is 36. Then she gives away 4, leaving 32.", "32"),
    ("So the answer is 3 + 4 = 7.", "7"),
    ("The answer is 18. (9 eggs at $2 each.)", "18"),
    ("Answer: 1,234", "1234"),
    ("The total cost is $1,234,567.89.", "1234567.89"),
    ("She saves 25% of her income, which is 0.25 * 2000 = 500 dollars per month.", "500"),
    ("The answer is 45%.", "45"),
    ("He drives at 60 km/h for 2.5 hours, so he covers 150 km.", "150"),
    ("The final answer is 3.50 dollars.", "3.5"),
    ("So she has 18.00 dollars left.", "18"),
    ("The temperature dropped to -5 degrees.", "-5"),
    ("The difference is 10-12 minutes, let's say 12.", "12"),
    ("Pages 10-12 are missing.", "12"),
    ("The answer is −3.", "-3"),
    ("Final answer: 0.5", "0.5"),
    ("The answer is .5", "0.5"),
    ("The answer is 1e3.", "1000"),
    ("That is 2.5e-3 meters, i.e. the answer is 2.5e-3", "0.0025"),
    ("The answer is 3/4 of the pie.", "3/4"),
    ("Each gets 6/8 = 3/4 of a cake.", "3/4"),
    ("It works 24/7, so 168 hours a week.", "168"),
    ("Answer: 007", "7"),
    ("The count is 1, 2, 3 and then 4.", "4"),
    ("The sequence continues 1,2,3,5,8,13", "13"),
    ("**Answer:** 42", "42"),
    ("The answer is **15** apples.", "15"),
    ("Therefore, the answer is: 2,000 people.", "2000"),
    ("We have x = 4, so y = 2x + 1 = 9.", "9"),
    ("answer = 256", "256"),
    ("The answer is\n\n64", "64"),
    ("<think>maybe 20? no</think>The answer is 21.", "21"),
    ("The answer is 8, because 2 + 6 = 8 and 5 apples were eaten earlier.", "8"),
    ("The answer is 12; the other 3 are distractors.", "12"),
    ("Step 1: 5 * 4 = 20\nStep 2: 20 + 3 = 23\nFinal Answer: 23", "23"),
    ("I cannot determine the answer from the information given.", None),
    ("", None),
    ("The answer is x.", None),
    # MATH-style LaTeX
    (r"Thus the probability is $\boxed{\frac{1}{2}}$.", "1/2"),
    (r"So the answer is $\boxed{\dfrac{3}{4}}$.", "3/4"),
    (r"We get $\frac{6}{8} = \boxed{\frac34}$.", "3/4"),
    (r"The answer is $\boxed{-\frac{1}{3}}$.", "-1/3"),
    (r"Hence $x = \boxed{5}$.", "5"),
    (r"$\boxed{x = 7}$", "7"),
    (r"The area is $\boxed{12\text{ cm}^2}$.", "12"),
    (r"The angle measures $\boxed{30^\circ}$.", "30"),
    (r"The total is $\boxed{1{,}234}$.", "1234"),
    (r"She earned $\boxed{\$1,\!250}$.", "1250"),
    (r"The answer is $\boxed{12\%}$.", "12"),
    (r"First guess $\boxed{4}$, but correcting the arithmetic gives $\boxed{6}$.", "6"),
    (r"The population is $1\,000$ people.", "1000"),
    (r"We have $\frac{10}{4} = \frac{5}{2}$.", "5/2"),
    (r"Final answer: \( \frac{7}{2} \)", "7/2"),
    (r"$$\boxed{0.125}$$", "0.125"),
    (r"The answer is $\boxed{2.50}$", "2.5"),
    (r"\boxed{100}", "100"),
    (r"The sum is $3 + 4 = 7$, so the answer is $\boxed{7}$. Check: $7 - 4 = 3$.", "7"),
]


@pytest.mark.parametrize("text,expected", NUMBERS, ids=[f"num{i}" for i in range(len(NUMBERS))])
def test_extract_number_cases(text, expected):
    assert extract_number(text).value == expected


@pytest.mark.parametrize("a,b,equal", [
    ("3/4", "0.75", True), ("1/3", "0.333333", True), ("1000", "1e3", True), ("$1,234", "1234", True),
    ("18.0", "18", True), ("-0.5", "-1/2", True), ("2/4", "1/2", True), ("0.3", "1/3", False), ("18", "19", False),
    ("12", "1.2", False), (None, "1", False), ("abc", "1", False),
    ("1000001", "1000000", False), ("1000000.0", "1e6", True),  # two integers: exactly, however large
])
def test_numbers_equal_cases(a, b, equal):
    assert numbers_equal(a, b) is equal


# ------------------------------------------------------------------------------------------------ choices
MMLU = ["Mitochondria", "Ribosome", "Golgi apparatus", "Nucleus"]  # "Which organelle makes ATP?" gold A
ARC = ["a seed", "a spore", "pollen", "an immature flower"]

# (reply, options, extracted 0-based index or None)
CHOICES = [
    ("A", MMLU, 0),
    ("A.", MMLU, 0),
    ("(A)", MMLU, 0),
    ("A) Mitochondria", MMLU, 0),
    ("The answer is A.", MMLU, 0),
    ("The answer is (A) Mitochondria.", MMLU, 0),
    ("answer: a", MMLU, 0),
    ("answer: b", MMLU, 1),
    ("Answer: (c)", MMLU, 2),
    ("The correct answer is **D**.", MMLU, 3),
    ("I'd go with B.", MMLU, 1),
    ("I would choose (D) because the nucleus stores DNA.", MMLU, 3),
    ("I'll go with C", MMLU, 2),
    ("My choice is A.", MMLU, 0),
    ("Let's go with option B.", MMLU, 1),
    ("The correct option is C.", MMLU, 2),
    ("Option A is correct: mitochondria make ATP.", MMLU, 0),
    ("Option D is the best answer here.", MMLU, 3),
    ("The answer is A because mitochondria produce ATP through respiration.", MMLU, 0),
    ("The answer is B. Option A is wrong because ribosomes make proteins.", MMLU, 1),
    ("A. Mitochondria are the powerhouse of the cell.", MMLU, 0),
    ("Mitochondria", MMLU, 0),
    ("mitochondria.", MMLU, 0),
    ("The answer is the Golgi apparatus.", MMLU, 2),
    ("It's the nucleus.", MMLU, 3),
    ("Answer: Ribosome", MMLU, 1),
    ("ATP is made in the mitochondria during cellular respiration.", MMLU, 0),
    ("\\boxed{A}", MMLU, 0),
    ("The final answer is $\\boxed{C}$.", MMLU, 2),
    ("**B**", MMLU, 1),
    ("Answer: I think it is C", MMLU, 2),
    ("Let me think step by step.\nRibosomes make proteins. Mitochondria make ATP.\nAnswer: A", MMLU, 0),
    ("<think>Could be B... no.</think>\nA", MMLU, 0),
    ("D\n\nExplanation: the nucleus holds the genome.", MMLU, 3),
    ("B - Ribosome", MMLU, 1),
    ("[C]", MMLU, 2),
    ("It is (D).", MMLU, 3),
    ("E", MMLU, None),  # out of range
    ("The answer is E.", MMLU, None),
    ("I don't know.", MMLU, None),
    ("Both (A) and (B) seem plausible.", MMLU, None),
    ("A man walks into a bar.", MMLU, None),
    ("b", MMLU, None),  # a lone lower-case letter without a marker is not trusted
    ("", MMLU, None),
    ("The answer is a spore.", ARC, 1),  # "a" is an article here, not option A
    ("The answer is a.", ARC, 0),
    ("Not a seed; the answer is pollen.", ARC, 2),
    ("I believe it's a spore, since ferns reproduce that way.", ARC, 1),
    ("An immature flower.", ARC, 3),
    ("Pollen", ARC, 2),
    ("The answer: (b) a spore", ARC, 1),
    ("Yes", ["no", "yes"], 1),
    ("No, it is not.", ["no", "yes"], 0),
    ("Answer: yes", ["no", "yes"], 1),
    ("True", ["False", "True"], 1),
    ("false.", ["False", "True"], 0),
    ("I'd go with red wine.", ["red", "red wine", "water"], 1),
    ("Paris is the capital of France.", ["Berlin", "Paris", "Rome", "Madrid"], 1),
    ("The answer is (B) Paris.", ["Berlin", "Paris", "Rome", "Madrid"], 1),
    ("The capital is either Paris or Rome.", ["Berlin", "Paris", "Rome", "Madrid"], None),
    # the first explicit statement in the reply, whichever its form; "Answer A is …" names option A, not a choice
    ("The correct option is C. Answer A is wrong because ribosomes make proteins.", MMLU, 2),
    ("I'd go with B. Answer A is tempting but wrong.", MMLU, 1),
    ("I would choose D; many would say the answer is A, but no.", MMLU, 3),
    ("Answer A is incorrect because ribosomes make proteins. Answer B is correct.", MMLU, 1),
    ("Option C is correct. The answer is not B.", MMLU, 2),
    ("Final answer A.", MMLU, 0),
]


@pytest.mark.parametrize("text,options,expected", CHOICES, ids=[f"mc{i}" for i in range(len(CHOICES))])
def test_extract_choice_cases(text, options, expected):
    assert extract_choice(text, options).index == expected


def test_the_table_is_large_enough():
    assert len(NUMBERS) + len(CHOICES) >= 100


# A closing bracket right after the letter makes it a label, for every letter: "A" and "I" (also English words) as
# well as the rest (docs/eval.md, "Answer extraction rules"). 26 options, so every letter is in range.
OPTIONS_26 = [f"option text number {k}" for k in range(26)]
LABELLED = [(form.format(L=L, l=L.lower()), i) for i, L in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
            for form in ("The correct answer is {L}) Sunlight is the source of energy for most ecosystems.",
                         "Answer: {L}) sunlight", "answer: {l}) sunlight", "The answer is {L}] sunlight")]


@pytest.mark.parametrize("text,expected", LABELLED, ids=[f"label{i}" for i in range(len(LABELLED))])
def test_letter_with_closing_bracket_is_a_label(text, expected):
    got = extract_choice(text, OPTIONS_26)
    assert (got.index, got.method) == (expected, "answer_is")


# The word rule still holds where no bracket follows: "A" and "I" after a marker are words, not labels.
WORDS = [
    ("Answer: I think it is C", MMLU, 2),
    ("Answer: A good choice is pollen.", ARC, 2),
    ("The answer is A good choice, pollen.", ARC, 2),
    ("The answer is a spore.", ARC, 1),
    ("It is a spore (the answer).", ARC, 1),
    ("I would choose a spore.", ARC, 1),
    ("The answer is I believe pollen.", ARC, 2),
]


@pytest.mark.parametrize("text,options,expected", WORDS, ids=[f"word{i}" for i in range(len(WORDS))])
def test_word_letters_without_bracket_stay_words(text, options, expected):
    assert extract_choice(text, options).index == expected
