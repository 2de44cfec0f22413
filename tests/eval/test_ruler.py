"""RULER-style tasks: deterministic per seed, gold recoverable from the context, sized to the asked token length,
needles at the asked depth, RULER's scoring on constructed replies, and clear errors for bad options."""

from __future__ import annotations

import re

import pytest

from gendistill.errors import ConfigError, DataError
from gendistill.eval.ruler import LongContextSpec, parse_depths, parse_lengths, string_match_all, string_match_part
from gendistill.eval.tasks import get_task, group_tasks

NIAH = [n for n in group_tasks("ruler") if n.startswith("ruler_niah")]
SPEC = LongContextSpec(lengths=(1024,), depths=(0.0, 0.5, 1.0))
CWE_SPEC = LongContextSpec(lengths=(2048,))  # the tiny byte-level tokenizer spends ~8 tokens per list entry


def _build(name, tok, seed=0, n=3, spec=None):
    t = get_task(name)
    spec = spec or (CWE_SPEC if name == "ruler_cwe" else SPEC)
    return t, t.build(tok, spec, n, seed, t.max_new_tokens)


def _needles(context: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in re.findall(r"One special magic \w+ for (\S+) is: (\S+)\.", context):
        out.setdefault(key, []).append(value)
    return out


def _chain(context: str, value: str) -> list[str]:
    """Every variable that holds ``value``, following ``VAR B = VAR A.`` assignments in order."""
    holds = set()
    for lhs, rhs in re.findall(r"VAR (\w+) = (VAR \w+|\d+)\.", context):
        if rhs == value or (rhs.startswith("VAR ") and rhs[4:] in holds):
            holds.add(lhs)
    return sorted(holds)


@pytest.mark.parametrize("name", group_tasks("ruler"))
def test_deterministic_per_seed_and_sized_to_the_length(name, tok):
    t, a = _build(name, tok, seed=0)
    _, b = _build(name, tok, seed=0)
    _, c = _build(name, tok, seed=1)
    assert [e.fields["context"] for e in a] == [e.fields["context"] for e in b]
    assert [e.answer for e in a] == [e.answer for e in b]
    assert [e.fields["context"] for e in a] != [e.fields["context"] for e in c]
    for ex in a:
        budget = ex.fields["length"] - t.max_new_tokens
        n = len(tok(t.generation_prompt(tok, ex, []), add_special_tokens=False)["input_ids"])
        assert n == ex.fields["prompt_tokens"] <= budget
        assert n >= 0.75 * budget  # filled up to the length, not far below it
    assert len({e.id for e in a}) == len(a)


@pytest.mark.parametrize("name", NIAH)
def test_niah_gold_is_recoverable_from_the_context(name, tok):
    t, exs = _build(name, tok)
    for ex in exs:
        needles = _needles(ex.fields["context"])
        queried = re.findall(r"for (.+) mentioned", ex.question)[0]
        keys = [k.strip() for k in re.split(r", | and ", queried)]
        found = sorted(v for k in keys for v in needles[k])
        assert found == sorted(ex.fields["answers"])
        assert len(keys) == t.n_queries and all(len(needles[k]) == t.n_values for k in keys)
        if t.haystack_source != "needles":
            assert len(needles) == t.n_keys  # distractor keys beyond the queried ones
        else:
            assert len(needles) > 3  # a haystack of needles
        assert ex.fields["prefix"] in t.generation_prompt(tok, ex, [])[-300:]


def test_needle_sits_at_the_requested_depth(tok):
    t, exs = _build("ruler_niah_single_2", tok, n=3)
    for ex in exs:
        ctx = ex.fields["context"]
        pos = ctx.index("One special magic") / len(ctx)
        assert abs(pos - ex.fields["depth"]) < 0.1, (pos, ex.fields["depth"])


def test_variable_tracking_and_common_words_gold(tok):
    _, vt = _build("ruler_vt", tok)
    for ex in vt:
        value = re.search(r"assigned the value (\d+)", ex.question).group(1)
        assert _chain(ex.fields["context"], value) == sorted(ex.fields["answers"])
        assert len(ex.fields["answers"]) == 5
    _, cwe = _build("ruler_cwe", tok, n=2)
    for ex in cwe:
        words = re.findall(r"^\d+\. (\S+)$", ex.fields["context"], flags=re.M)
        counts = {w: words.count(w) for w in set(words)}
        top = sorted(counts, key=lambda w: -counts[w])[:10]
        assert sorted(top) == sorted(ex.fields["answers"])
        assert min(counts[w] for w in top) > max(c for w, c in counts.items() if w not in top)


def test_ruler_scoring_on_constructed_replies():
    refs = ["1234567", "7654321", "5555555", "1111111"]
    assert string_match_all(" 1234567, 7654321, 5555555 and 1111111.", refs) == 1.0
    assert string_match_all(" 1234567 and 7654321", refs) == 0.5
    assert string_match_part(" 1234567 and 7654321", refs) == 1.0
    assert string_match_all("none of them", refs) == 0.0 and string_match_part("none", refs) == 0.0
    assert string_match_all(" ABCDE-f", ["abcde-F"]) == 1.0  # case-insensitive, like RULER
    t = get_task("ruler_niah_multivalue")
    from gendistill.eval.task import Example

    ex = Example(id="x", question="q", answer=", ".join(refs), fields={"answers": refs})
    sc = t.score_generation(ex, " 1234567, 7654321 and 9999999.")
    assert sc.score == 0.5 and not sc.correct and sc.extra["match_part"] == 1.0 and sc.valid
    assert t.score_generation(ex, ", ".join(refs)).correct


def test_ruler_answers_agree_when_the_same_needles_are_recalled():
    """The extracted answer is the recalled gold strings: a teacher that stops after the number and a student that
    rambles on agree; a reply recalling another subset, or none, does not (answer agreement reads ``pred``)."""
    from gendistill.eval.fidelity import answer_agreement
    from gendistill.eval.task import Example

    t = get_task("ruler_niah_multivalue")
    refs = ["1234567", "7654321"]
    ex = Example(id="x", question="q", answer=", ".join(refs), fields={"answers": refs})
    teacher = [t.score_generation(ex, r).pred for r in (" 1234567.", " 7654321 and 1234567.", " 42.", " 1234567")]
    student = [t.score_generation(ex, r).pred for r in
               (" 1234567. The magic number is a special magic number that", " 1234567, 7654321\n\nThe next",
                " The next number is 2.", " 7654321")]
    assert teacher == ["1234567", "1234567, 7654321", "", "1234567"]
    assert student[:3] == teacher[:3] and student[3] == "7654321"
    assert answer_agreement(teacher, student)["answer_agreement"] == 0.75


def test_user_haystack_file(tok, tmp_path):
    f = tmp_path / "hay.txt"
    f.write_text("Granite is hard. Water is wet! Is the sky blue? Yes it is.\nFog rolls in.", encoding="utf-8")
    t = get_task("ruler_niah_single_2")
    spec = LongContextSpec(lengths=(1024,), depths=(0.5,), haystack=str(f))
    t.check(spec)
    ex = t.build(tok, spec, 1, 0, t.max_new_tokens)[0]
    assert "Granite is hard." in ex.fields["context"] and "Fog rolls in." in ex.fields["context"]
    with pytest.raises(DataError, match="nope.txt: file not found"):
        t.check(LongContextSpec(haystack=str(tmp_path / "nope.txt")))


def test_bad_options_fail_with_one_line(tok):
    assert parse_lengths("1k,2048, 4K") == (1024, 2048, 4096)
    assert parse_depths("0,50,100") == (0.0, 0.5, 1.0)
    for bad, match in (("1k,abc", "'abc' is not a token count"), ("100", "too short")):
        with pytest.raises(ConfigError, match=match):
            parse_lengths(bad)
    with pytest.raises(ConfigError, match="outside 0..100"):
        parse_depths("0,150")
    t = get_task("ruler_niah_single_1")
    with pytest.raises(ConfigError, match="leaves no room for a haystack"):
        t.build(tok, LongContextSpec(lengths=(256,)), 1, 0, 200)
