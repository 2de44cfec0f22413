"""The standard benchmarks (the ``all`` group): ARC, MMLU, HellaSwag, PIQA, WinoGrande, BoolQ, GSM8K, TriviaQA, read
from ``shared/data`` or, with ``--data-source hf``, from the hub datasets they were derived from. Registered in
:mod:`gendistill.eval.tasks`."""

from __future__ import annotations

import re
from typing import Any

from gendistill.eval import extract as X
from gendistill.eval.prompts import format_options
from gendistill.eval.task import MATH, MC_GEN, MULTIPLE_CHOICE, SHORT_ANSWER, Example, Task

def _winogrande_loglik(task: Task, ex: Example, shots: list[Example]) -> list[tuple[str, str]]:
    """Partial scoring (lm-eval): each option substituted into the prefix, the shared continuation scored."""
    f = ex.fields
    opts = f.get("context_options")
    cont = f.get("continuation")
    if not (isinstance(opts, list) and isinstance(cont, str)):
        s = ex.question
        i = s.index("_") if "_" in s else len(s)
        opts = [s[:i] + c for c in ex.choices or []]
        cont = s[i + 1 :].strip()
    return [(o, " " + cont) for o in opts]


def _winogrande_pre(obj: dict) -> dict:
    if "choices" not in obj and "option1" in obj and "option2" in obj:
        obj = {**obj, "choices": [obj["option1"], obj["option2"]]}
    return obj


def _mmlu_fields(ex: Example) -> dict[str, Any]:
    subj = str(ex.fields.get("subject", "")).replace("_", " ")
    return {"subject": subj}


def _mmlu_fewshot(task: Task, ex: Example, pool: list[Example]) -> list[Example]:
    subj = ex.fields.get("subject")
    same = [p for p in pool if p.fields.get("subject") == subj and p.id != ex.id]
    return same[: task.n_fewshot]  # the dev split has exactly 5 per subject, used in file order (as lm-eval)


def _mmlu_loglik(task: Task, ex: Example, shots: list[Example]) -> list[tuple[str, str]]:
    subj = _mmlu_fields(ex)["subject"]
    ctx = f"The following are multiple choice questions (with answers) about {subj}.\n\n"
    for s in shots:
        ctx += f"{s.question.strip()}\n{format_options(s.choices)}\nAnswer: {X.LETTERS[s.answer_idx]}\n\n"
    ctx += f"{ex.question.strip()}\n{format_options(ex.choices)}\nAnswer:"
    return [(ctx, " " + X.LETTERS[i]) for i in range(len(ex.choices))]


def _gsm8k_fields(ex: Example) -> dict[str, Any]:
    sol = str(ex.fields.get("answer", ""))
    body = sol.split("####")[0].strip()
    body = re.sub(r"<<[^>]*>>", "", body)
    return {"solution": body}


def _hf_arc(row: dict, i: int) -> dict:
    labels = list(row["choices"]["label"])
    return {"id": row.get("id", str(i)), "question": row["question"], "choices": list(row["choices"]["text"]),
            "answer_idx": labels.index(row["answerKey"])}


def _hf_mmlu(row: dict, i: int) -> dict:
    return {"id": f"{row.get('subject', '')}/{i}", "subject": row.get("subject", ""), "question": row["question"],
            "choices": list(row["choices"]), "answer_idx": int(row["answer"])}


def _hf_hellaswag(row: dict, i: int) -> dict:
    query = f"{row['activity_label']}: {row['ctx']}"
    return {"id": str(row.get("ind", i)), "question": query, "query": query, "choices": list(row["endings"]),
            "answer_idx": int(row["label"])}


def _hf_piqa(row: dict, i: int) -> dict:
    return {"id": str(i), "question": row["goal"], "goal": row["goal"], "choices": [row["sol1"], row["sol2"]],
            "answer_idx": int(row["label"])}


def _hf_winogrande(row: dict, i: int) -> dict:
    s = row["sentence"]
    k = s.index("_")
    return {"id": str(i), "question": s, "sentence": s, "choices": [row["option1"], row["option2"]],
            "answer_idx": int(row["answer"]) - 1, "context_options": [s[:k] + row["option1"], s[:k] + row["option2"]],
            "continuation": s[k + 1 :].strip()}


def _hf_boolq(row: dict, i: int) -> dict:
    return {"id": str(i), "question": row["question"] + "?", "passage": row["passage"], "choices": ["no", "yes"],
            "answer_idx": int(bool(row["answer"]))}


def _hf_gsm8k(row: dict, i: int) -> dict:
    final = row["answer"].split("####")[-1].strip().replace(",", "")
    return {"id": str(i), "question": row["question"], "answer": row["answer"], "final_answer": final}


def _hf_triviaqa(row: dict, i: int) -> dict:
    a = row["answer"]
    return {"id": row.get("question_id", str(i)), "question": row["question"], "answer": a["value"],
            "aliases": list(a.get("aliases", []))}


def standard_tasks() -> dict[str, Task]:
    """The standard benchmarks by name."""
    arc = dict(
        kind=MULTIPLE_CHOICE, hf_convert=_hf_arc, loglik_prompt="Question: {question}\nAnswer:",
        gen_prompt="Question: " + MC_GEN, max_new_tokens=64,
    )
    tasks = [
        Task(name="arc_easy", data_file="arc_easy_test.jsonl.gz", hf=("allenai/ai2_arc", "ARC-Easy", "test"),
             doc="ARC-Easy test (2,376), 0-shot", **arc),
        Task(name="arc_challenge", data_file="arc_challenge_test.jsonl.gz",
             hf=("allenai/ai2_arc", "ARC-Challenge", "test"), doc="ARC-Challenge test (1,172), 0-shot", **arc),
        Task(name="mmlu", kind=MULTIPLE_CHOICE, data_file="mmlu_test.jsonl.gz", hf=("cais/mmlu", "all", "test"),
             hf_convert=_hf_mmlu, n_fewshot=5, fewshot_file="mmlu_dev.jsonl.gz", fewshot_select=_mmlu_fewshot,
             make_loglik=_mmlu_loglik, make_fields=_mmlu_fields,
             gen_prompt="The following is a multiple choice question about {subject}.\n\n" + MC_GEN,
             fewshot_answer="Answer: {letter}", max_new_tokens=64,
             doc="MMLU test (57 subjects, 14,042), 5-shot from the subject's dev split"),
        Task(name="hellaswag", kind=MULTIPLE_CHOICE, data_file="hellaswag_validation.jsonl.gz",
             hf=("Rowan/hellaswag", None, "validation"), hf_convert=_hf_hellaswag,
             fields={"question": "query"}, loglik_prompt="{question}", loglik_choice=" {choice}",
             gen_prompt="Which ending is the most plausible continuation of the text?\n\n{question} ...\n\n{options}\n\n"
                        "Answer with the letter ({letters}) of the correct option.",
             max_new_tokens=64, doc="HellaSwag validation (10,042), 0-shot"),
        Task(name="piqa", kind=MULTIPLE_CHOICE, data_file="piqa_validation.jsonl.gz",
             hf=("ybisk/piqa", None, "validation"), hf_convert=_hf_piqa,
             loglik_prompt="Question: {question}\nAnswer:",
             gen_prompt="Goal: {question}\n\nWhich solution achieves the goal?\n\n{options}\n\n"
                        "Answer with the letter ({letters}) of the correct option.",
             max_new_tokens=64, doc="PIQA validation (1,838), 0-shot"),
        Task(name="winogrande", kind=MULTIPLE_CHOICE, data_file="winogrande_validation.jsonl.gz",
             hf=("allenai/winogrande", "winogrande_xl", "validation"), hf_convert=_hf_winogrande,
             fields={"question": "sentence"}, make_loglik=_winogrande_loglik, preprocess=_winogrande_pre,
             gen_prompt="Fill in the blank (_) in the sentence with the correct option.\n\nSentence: {question}\n\n"
                        "{options}\n\nAnswer with the letter ({letters}) of the correct option.",
             max_new_tokens=64, doc="WinoGrande xl validation (1,267), 0-shot, partial scoring under log-likelihood"),
        Task(name="boolq", kind=MULTIPLE_CHOICE, data_file="boolq_validation.jsonl.gz",
             hf=("google/boolq", None, "validation"), hf_convert=_hf_boolq,
             loglik_prompt="{passage}\nQuestion: {question}\nAnswer:", loglik_choice=" {choice}",
             gen_prompt="{passage}\n\nQuestion: {question}\n\nAnswer yes or no.", extraction="letter_or_text",
             max_new_tokens=16, doc="BoolQ validation (3,270), 0-shot; generation answers yes/no"),
        Task(name="gsm8k", kind=MATH, data_file="gsm8k_test.jsonl.gz", hf=("openai/gsm8k", "main", "test"),
             hf_convert=_hf_gsm8k, n_fewshot=4, fewshot_file="gsm8k_train.jsonl.gz", make_fields=_gsm8k_fields,
             gen_prompt="Solve the following math problem step by step. Put the final answer in \\boxed{{}}.\n\n"
                        "Question: {question}",
             fewshot_answer="{solution}\nThe answer is \\boxed{{{final_answer}}}.", extraction="number",
             max_new_tokens=256, doc="GSM8K test (1,319), 4-shot chain of thought (seeded pick from train), final "
                                     "number; generation only"),
        Task(name="triviaqa", kind=SHORT_ANSWER, data_file="triviaqa_validation_3k.jsonl.gz",
             hf=("mandarjoshi/trivia_qa", "rc.nocontext", "validation"), hf_convert=_hf_triviaqa,
             loglik_prompt="Question: {question}\nAnswer:",
             gen_prompt="Answer the following trivia question with just the answer, a few words at most.\n\n"
                        "Question: {question}",
             extraction="alias", max_new_tokens=32,
             doc="TriviaQA validation subset (3,000), 0-shot; generation: exact match against aliases; "
                 "log-likelihood: greedy match of the canonical answer"),
    ]
    return {t.name: t for t in tasks}
