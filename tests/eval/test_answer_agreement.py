"""Answer agreement with the teacher, and the agreement the two models' answer shares give by chance alone: with a
weak teacher that answers one option almost always, the raw figure is mostly that chance."""

from __future__ import annotations

import random

import pytest

from gendistill.eval.fidelity import answer_agreement


def test_a_collapsed_teacher_makes_raw_agreement_mostly_chance():
    # the teacher answers A (0) on 90 of 100 questions; the student on 60, on questions unrelated to the teacher's
    teacher = [0] * 90 + [1] * 10
    student = [0] * 54 + [3] * 36 + [0] * 6 + [1] * 4
    r = answer_agreement(teacher, student)
    assert r["answer_agreement"] == pytest.approx(0.58)
    assert r["answer_agreement_chance"] == pytest.approx(0.9 * 0.6 + 0.1 * 0.04)
    assert r["answer_kappa"] == pytest.approx((0.58 - 0.544) / (1 - 0.544))
    assert abs(r["answer_kappa"]) < 0.1  # 58 % looks like agreement; it is the shares


def test_kappa_is_one_for_a_copy_and_undefined_when_both_always_give_one_answer():
    answers = [0, 1, 2, 3, None, 2, 1]
    assert answer_agreement(answers, list(answers))["answer_kappa"] == pytest.approx(1.0)
    r = answer_agreement([2] * 5, [2] * 5)
    assert r["answer_agreement"] == r["answer_agreement_chance"] == 1.0 and r["answer_kappa"] is None


def test_chance_is_the_agreement_of_every_teacher_answer_with_every_student_answer():
    # the slow reference: chance agreement = the mean of [t_i == s_j] over all n^2 pairs (random pairing)
    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(1, 40)
        pool = [0, 1, 2, 3, None, "Paris", ["paris", "Paris, France"]]
        teacher = [rng.choice(pool) for _ in range(n)]
        student = [rng.choice(pool) for _ in range(n)]
        r = answer_agreement(teacher, student)
        pairs = sum(t == s for t in teacher for s in student) / (n * n)
        assert r["answer_agreement_chance"] == pytest.approx(pairs, abs=1e-12)
        assert r["answer_agreement"] == pytest.approx(sum(t == s for t, s in zip(teacher, student)) / n)


def test_the_two_lists_must_answer_the_same_questions():
    with pytest.raises(ValueError, match="same questions"):
        answer_agreement([0, 1], [0])
    assert answer_agreement([], []) == {}


def test_the_eval_report_prints_each_agreement_beside_its_chance_level():
    from gendistill.eval.report import markdown

    teacher, student = [0] * 9 + [1], [0] * 6 + [2] * 3 + [1]
    row = {"student": "s", "task": "quiz", "exact_match": 0.5, "mean_first_divergence": 1.0,
           **answer_agreement(teacher, student)}
    md = markdown({"meta": {"models": ["t", "s"]}, "rows": [], "comparisons": [], "fidelity": [row]})
    line = next(ln for ln in md.splitlines() if ln.startswith("| s | quiz |"))
    # agreement 7/10; by chance 0.9 * 0.6 + 0.1 * 0.1 = 55 %
    assert "| 70.0 | 55.0 |" in line.replace("%", "")
    assert "by chance" in md
