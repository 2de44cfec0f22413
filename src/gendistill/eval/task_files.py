"""Tasks a user defines without code: a JSONL file of questions (multiple choice or short answer, sniffed from the
first record) or a YAML task definition."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from gendistill.errors import ConfigError, DataError
from gendistill.eval.task import EXTRACTIONS, KINDS, MATH, MC_GEN, MULTIPLE_CHOICE, SHORT_ANSWER, Task
from gendistill.io import iter_jsonl

_YAML_KEYS = {
    "name", "type", "data", "fields", "prompt", "loglik_prompt", "loglik_choice", "fewshot", "fewshot_answer",
    "max_new_tokens", "extraction", "system", "description",
}


def _sniff_kind(path: Path) -> str:
    for _, obj in iter_jsonl(path):
        return MULTIPLE_CHOICE if "choices" in obj else SHORT_ANSWER
    raise DataError(f"{path}: no examples")


def task_from_jsonl(path: str | Path, kind: str | None = None) -> Task:
    """A generic task over a JSONL file: multiple choice (``question``, ``choices``, ``answer_idx``) or short answer
    (``question``, ``answer``, optional ``aliases``), sniffed from the first record unless ``kind`` is given."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: task file not found")
    kind = kind or _sniff_kind(path)
    name = re.sub(r"\.jsonl(\.gz)?$", "", path.name)
    if kind == MULTIPLE_CHOICE:
        return Task(name=name, kind=kind, data_file=str(path.resolve()), gen_prompt="Question: " + MC_GEN)
    return Task(
        name=name, kind=kind, data_file=str(path.resolve()), extraction="number" if kind == MATH else "alias",
        gen_prompt="Answer the following question with just the answer, a few words at most.\n\nQuestion: {question}",
        max_new_tokens=32 if kind == SHORT_ANSWER else 256,
    )


def task_from_yaml(path: str | Path) -> Task:
    """A task defined in YAML, so a new benchmark needs no code. Keys (unknown ones are an error)::

        name: my_quiz                      # required
        type: multiple_choice              # multiple_choice | short_answer | math
        data: quiz.jsonl                   # required; relative to this file
        fields: {question: q, choices: options, answer_idx: label}   # optional field renames
        prompt: "Question: {question}\\n{options}\\nAnswer with the letter."  # generation user turn
        loglik_prompt: "Question: {question}\\nAnswer:"      # log-likelihood context
        loglik_choice: " {choice}"                          # log-likelihood continuation per option
        fewshot: {source: dev.jsonl, n: 3, seed: 0}         # source defaults to `data` (example excluded)
        fewshot_answer: "Answer: {letter}"                  # assistant turn of each shot
        max_new_tokens: 32
        extraction: letter_or_text        # letter | text | letter_or_text | number | alias
        system: "You are a careful grader."                 # optional system prompt
        description: ""                                     # prefix of the log-likelihood context
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: task definition not found")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loc = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{loc}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a mapping of task keys")
    unknown = sorted(set(cfg) - _YAML_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key '{unknown[0]}' (known: {', '.join(sorted(_YAML_KEYS))})")
    for key in ("name", "data"):
        if key not in cfg:
            raise ConfigError(f"{path}: missing key '{key}'")
    kind = cfg.get("type", MULTIPLE_CHOICE)
    if kind not in KINDS:
        raise ConfigError(f"{path}: type '{kind}' is not one of {', '.join(KINDS)}")
    extraction = cfg.get("extraction", {MULTIPLE_CHOICE: "letter_or_text", SHORT_ANSWER: "alias", MATH: "number"}[kind])
    if extraction not in EXTRACTIONS:
        raise ConfigError(f"{path}: extraction '{extraction}' is not one of {', '.join(EXTRACTIONS)}")
    fields = cfg.get("fields") or {}
    if not isinstance(fields, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items()):
        raise ConfigError(f"{path}: 'fields' must map our field names to the file's")
    mnt = cfg.get("max_new_tokens", 64 if kind == MULTIPLE_CHOICE else 256 if kind == MATH else 32)
    if not isinstance(mnt, int) or isinstance(mnt, bool) or mnt <= 0:
        raise ConfigError(f"{path}: max_new_tokens must be a positive integer, got {mnt!r}")
    fs = cfg.get("fewshot") or {}
    if isinstance(fs, int) and not isinstance(fs, bool):
        fs = {"n": fs}
    if not isinstance(fs, dict) or set(fs) - {"source", "n", "seed"}:
        raise ConfigError(f"{path}: 'fewshot' must be a number or a mapping with source, n, seed")
    n_shot = fs.get("n", 0)
    if not isinstance(n_shot, int) or n_shot < 0:
        raise ConfigError(f"{path}: fewshot.n must be a non-negative integer, got {n_shot!r}")
    default_prompt = "Question: " + MC_GEN if kind == MULTIPLE_CHOICE else (
        "Answer the following question with just the answer, a few words at most.\n\nQuestion: {question}"
        if kind == SHORT_ANSWER else
        "Solve the following math problem step by step. Put the final answer in \\boxed{{}}.\n\nQuestion: {question}"
    )
    default_shot = {MULTIPLE_CHOICE: "Answer: {letter}", SHORT_ANSWER: "{answer}",
                    MATH: "The answer is \\boxed{{{final_answer}}}."}[kind]
    for key in ("prompt", "loglik_prompt", "loglik_choice", "fewshot_answer", "system", "description", "name"):
        if key in cfg and not isinstance(cfg[key], str):
            raise ConfigError(f"{path}: '{key}' must be a string")
    task = Task(
        name=cfg["name"], kind=kind, data_file=str(cfg["data"]), fields=fields, base_dir=path.resolve().parent,
        loglik_prompt=cfg.get("loglik_prompt", "Question: {question}\nAnswer:"),
        loglik_choice=cfg.get("loglik_choice", " {choice}"), gen_prompt=cfg.get("prompt", default_prompt),
        fewshot_answer=cfg.get("fewshot_answer", default_shot), system=cfg.get("system"),
        description=cfg.get("description", ""), n_fewshot=n_shot, fewshot_file=fs.get("source"),
        fewshot_seed=int(fs.get("seed", 1234)), max_new_tokens=mnt, extraction=extraction, doc=f"defined in {path}",
    )
    if not task.resolve(task.data_file).is_file():
        raise ConfigError(f"{path}: data file {task.resolve(task.data_file)} not found")
    if task.fewshot_file and not task.resolve(task.fewshot_file).is_file():
        raise ConfigError(f"{path}: fewshot source {task.resolve(task.fewshot_file)} not found")
    return task
