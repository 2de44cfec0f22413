"""Task registry, prompt formats, generic JSONL and YAML tasks, and the errors bad task input gives."""

from __future__ import annotations

import pytest

from gendistill.errors import ConfigError, DataError
from gendistill.io import data_dir
from gendistill.eval.task import MULTIPLE_CHOICE, SHORT_ANSWER, select
from gendistill.eval.task_files import task_from_yaml
from gendistill.eval.tasks import get_task, known_tasks, parse_tasks
from tests.eval.conftest import MC_ROWS, QA_ROWS, write_jsonl

BUILTINS = ["arc_challenge", "arc_easy", "boolq", "gsm8k", "hellaswag", "mmlu", "piqa", "triviaqa", "winogrande"]
needs_data = pytest.mark.skipif(data_dir() is None, reason="shared/data not found (set GENDISTILL_DATA_DIR)")


def test_registry_lists_all_builtins():
    assert set(BUILTINS) < set(known_tasks()) and "humaneval" in known_tasks() and "ruler_vt" in known_tasks()
    assert [t.name for t in parse_tasks("all")] == BUILTINS


def test_unknown_task_lists_known_ones():
    with pytest.raises(ConfigError) as e:
        parse_tasks("arc_easy,arc_medium")
    msg = str(e.value)
    assert "arc_medium" in msg and all(t in msg for t in BUILTINS) and "\n" not in msg


def test_generic_mc_jsonl(tmp_path):
    f = write_jsonl(tmp_path / "quiz.jsonl", MC_ROWS)
    t = get_task(str(f))
    assert t.kind == MULTIPLE_CHOICE and t.name == "quiz"
    ex = t.load()
    assert len(ex) == 6 and ex[1].answer_idx == 1
    reqs = t.loglik_requests(ex[0], [])
    assert reqs == [("Question: Which word number 0?\nAnswer:", f" {c}") for c in MC_ROWS[0]["choices"]]
    msgs = t.gen_messages(ex[0], [])
    assert "A. Paris\nB. Rome\nC. Berlin\nD. capital" in msgs[-1]["content"]
    assert t.score_generation(ex[1], "Answer: B").correct
    assert not t.score_generation(ex[1], "The answer is (C)").correct
    s = t.score_generation(ex[1], "no idea")
    assert not s.valid and s.pred is None


def test_generic_short_answer_jsonl_gz(tmp_path):
    f = write_jsonl(tmp_path / "qa.jsonl.gz", QA_ROWS, gz=True)
    t = get_task(str(f))
    assert t.kind == SHORT_ANSWER and t.name == "qa"
    ex = t.load()
    assert ex[0].aliases == ["Paris", "paris", "Paris city"]
    assert t.score_generation(ex[0], "Paris city.").correct
    assert not t.score_generation(ex[1], "Paris").correct
    assert t.loglik_requests(ex[2], []) == [("Question: How many? 123 or 456\nAnswer:", " 456")]


def test_deterministic_subsample():
    items = list(range(100))
    from gendistill.eval.task import Example

    exs = [Example(id=str(i), question=str(i)) for i in items]
    a, b, c = select(exs, 10, 0), select(exs, 10, 0), select(exs, 10, 1)
    assert [e.id for e in a] == [e.id for e in b] != [e.id for e in c]
    assert [int(e.id) for e in a] == sorted(int(e.id) for e in a)
    assert len(select(exs, None, 0)) == 100 and len(select(exs, 1000, 0)) == 100


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "row,needle",
    [
        ({"question": "q", "answer_idx": 0}, "missing field 'choices'"),
        ({"choices": ["a", "b"], "answer_idx": 0}, "missing field 'question'"),
        ({"question": "q", "choices": ["a", "b"]}, "missing field 'answer_idx'"),
        ({"question": "q", "choices": ["a", "b"], "answer_idx": 2}, "'answer_idx' = 2 is out of range for 2 choices"),
        ({"question": "q", "choices": ["a", "b"], "answer_idx": -1}, "out of range"),
        ({"question": "q", "choices": ["a", "b"], "answer_idx": "1"}, "'answer_idx' must be an integer"),
        ({"question": "q", "choices": ["a"], "answer_idx": 0}, "at least 2 options"),
        ({"question": "q", "choices": ["a", 3], "answer_idx": 0}, "option 1 must be a string"),
    ],
)
def test_bad_mc_record_names_file_line_and_field(tmp_path, row, needle):
    f = write_jsonl(tmp_path / "bad.jsonl", [MC_ROWS[0], MC_ROWS[1], row])
    with pytest.raises(DataError) as e:
        get_task("mc:" + str(f)).load()
    msg = str(e.value)
    assert f"{f}:3:" in msg and needle in msg and "\n" not in msg


def test_bad_json_line(tmp_path):
    f = tmp_path / "broken.jsonl"
    f.write_text('{"question": "q", "choices": ["a","b"], "answer_idx": 0}\n{"question": \n')
    with pytest.raises(DataError, match=r"broken.jsonl:2: malformed JSON line"):
        get_task("mc:" + str(f)).load()


def test_missing_task_file(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: task file not found"):
        get_task(str(tmp_path / "nope.jsonl"))


def test_short_answer_missing_answer(tmp_path):
    f = write_jsonl(tmp_path / "qa.jsonl", [QA_ROWS[0], {"question": "x"}])
    with pytest.raises(DataError, match=r"qa.jsonl:2: missing field 'answer'"):
        get_task("qa:" + str(f)).load()


# ------------------------------------------------------------------------------------------------ YAML


def test_yaml_task(tmp_path):
    rows = [{"q": f"Is {i} even?", "opts": ["yes", "no"], "label": i % 2} for i in range(6)]
    write_jsonl(tmp_path / "even.jsonl", rows)
    write_jsonl(tmp_path / "dev.jsonl", rows[:2])
    y = tmp_path / "even.yaml"
    y.write_text(
        "name: even\ntype: multiple_choice\ndata: even.jsonl\n"
        "fields: {question: q, choices: opts, answer_idx: label}\n"
        "prompt: \"Q: {question}\\n{options}\\nReply with a letter.\"\n"
        "loglik_prompt: \"Q: {question}\\nA:\"\nfewshot: {source: dev.jsonl, n: 2, seed: 0}\n"
        "max_new_tokens: 5\nextraction: letter\n"
    )
    t = get_task(str(y))
    ex = t.load()
    assert t.name == "even" and t.max_new_tokens == 5 and len(ex) == 6
    shots = t.fewshot_for(ex[3], ex)
    assert len(shots) == 2
    msgs = t.gen_messages(ex[3], shots)
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant", "user"]
    assert msgs[-1]["content"] == "Q: Is 3 even?\nA. yes\nB. no\nReply with a letter."
    assert msgs[1]["content"] in ("Answer: A", "Answer: B")
    reqs = t.loglik_requests(ex[3], shots)
    assert reqs[0][0].endswith("Q: Is 3 even?\nA:") and reqs[0][0].count("Q: ") == 3 and reqs[1][1] == " no"
    assert t.score_generation(ex[3], "B").correct
    assert t.score_generation(ex[3], "no").pred is None  # extraction: letter ignores option text


@pytest.mark.parametrize(
    "body,needle",
    [
        ("name: x\ndata: d.jsonl\npromt: hi\n", "unknown key 'promt'"),
        ("name: x\n", "missing key 'data'"),
        ("name: x\ndata: d.jsonl\ntype: essay\n", "type 'essay' is not one of"),
        ("name: x\ndata: d.jsonl\nextraction: vibes\n", "extraction 'vibes'"),
        ("name: x\ndata: d.jsonl\nmax_new_tokens: -3\n", "max_new_tokens must be a positive integer"),
        ("name: x\ndata: missing.jsonl\n", "data file"),
        ("name: [x\n", "not valid YAML"),
    ],
)
def test_bad_yaml(tmp_path, body, needle):
    write_jsonl(tmp_path / "d.jsonl", MC_ROWS)
    y = tmp_path / "t.yaml"
    y.write_text(body)
    with pytest.raises(ConfigError) as e:
        task_from_yaml(y)
    assert needle in str(e.value) and str(y) in str(e.value)


def test_template_with_unknown_field(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", MC_ROWS)
    y = tmp_path / "t.yaml"
    y.write_text("name: x\ndata: d.jsonl\nprompt: '{question} {passage}'\n")
    t = task_from_yaml(y)
    with pytest.raises(ConfigError, match=r"uses \{passage\}, which .*d.jsonl:1 does not have"):
        t.gen_messages(t.load()[0], [])


# ------------------------------------------------------------------------------------------------ built-ins on the real files


@needs_data
@pytest.mark.shared_data
def test_builtin_formats_on_shared_data():
    arc = get_task("arc_easy")
    ex = arc.load()
    assert len(ex) == 2376
    assert arc.loglik_requests(ex[0], [])[0] == (f"Question: {ex[0].question}\nAnswer:", f" {ex[0].choices[0]}")

    wg = get_task("winogrande")
    w = wg.load()[0]
    reqs = wg.loglik_requests(w, [])
    assert reqs == [("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
                    ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases.")]
    assert w.choices == ["Sarah", "Maria"] and w.answer_idx == 1

    mmlu = get_task("mmlu")
    m_all = mmlu.load()
    assert len(m_all) == 14042 and len({e.fields["subject"] for e in m_all}) == 57
    m = m_all[0]
    shots = mmlu.fewshot_for(m, m_all)
    assert len(shots) == 5 and all(s.fields["subject"] == m.fields["subject"] for s in shots)
    assert all("/dev/" in s.id for s in shots)
    reqs = mmlu.loglik_requests(m, shots)
    assert [c for _, c in reqs] == [" A", " B", " C", " D"]
    assert reqs[0][0].startswith("The following are multiple choice questions (with answers) about abstract algebra.")
    assert reqs[0][0].count("\nAnswer:") == 6
    assert len(mmlu.gen_messages(m, shots)) == 11

    g = get_task("gsm8k")
    gx = g.load()
    assert gx[0].answer == "18"
    shots = g.fewshot_for(gx[0], gx)
    assert len(shots) == 4 and all("/train/" in s.id for s in shots)
    msgs = g.gen_messages(gx[0], shots)
    assert "<<" not in msgs[1]["content"] and msgs[1]["content"].endswith(f"\\boxed{{{shots[0].answer}}}.")
    assert g.loglik_requests(gx[0], shots) is None
    assert g.score_generation(gx[0], "9 * 2 = 18 dollars. The answer is \\boxed{18}.").correct

    b = get_task("boolq")
    bx = b.load()[0]
    assert bx.choices == ["no", "yes"] and b.loglik_requests(bx, [])[1][1] == " yes"
    assert b.score_generation(bx, "No, it does not.").pred == 0

    h = get_task("hellaswag")
    hx = h.load()[0]
    assert h.loglik_requests(hx, [])[3] == (hx.fields["query"], " " + hx.choices[3])

    tq = get_task("triviaqa")
    tx = tq.load()[0]
    assert tq.score_generation(tx, "Onions").correct
    assert tq.loglik_requests(tx, []) == [(f"Question: {tx.question}\nAnswer:", " Onion")]

    p = get_task("piqa")
    assert len(p.load()) == 1838


def test_hf_converters_map_hub_rows_to_our_schema():
    from gendistill.eval import benchmarks as T
    from gendistill.eval.task import mc_example

    arc = T._hf_arc({"id": "x", "question": "Q?", "choices": {"text": ["a", "b", "c"], "label": ["A", "B", "C"]},
                     "answerKey": "C"}, 0)
    assert arc["answer_idx"] == 2 and mc_example(arc, "hf")
    wg = T._hf_winogrande({"sentence": "Tom beat Bob so _ won.", "option1": "Tom", "option2": "Bob", "answer": "1"}, 0)
    assert wg["context_options"] == ["Tom beat Bob so Tom", "Tom beat Bob so Bob"] and wg["continuation"] == "won."
    assert T._hf_boolq({"question": "is it", "passage": "p", "answer": True}, 0)["answer_idx"] == 1
    assert T._hf_gsm8k({"question": "q", "answer": "x\n#### 1,234"}, 0)["final_answer"] == "1234"
    tq = T._hf_triviaqa({"question": "q", "answer": {"value": "V", "aliases": ["v", "vee"]}}, 0)
    assert tq["answer"] == "V" and tq["aliases"] == ["v", "vee"]
    hs = T._hf_hellaswag({"activity_label": "Cooking", "ctx": "He stirs", "endings": ["a", "b", "c", "d"],
                          "label": "2"}, 0)
    assert hs["query"] == "Cooking: He stirs" and hs["answer_idx"] == 2
