"""``gendistill.evaluate(...)`` (the ``gendistill eval`` command's function) and its result."""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gendistill.errors import GendistillError
from gendistill.eval.report import REPORT_FILES, markdown
from gendistill.eval.config import EvalConfig
from gendistill.eval.runner import run_eval
from gendistill.io import atomic_write_text
from gendistill.models.card import update_evaluation
from gendistill.models.loading import resolve_model
from gendistill.ownership import check_report_folder, check_writable, claim_report_folder, marker_kind
from gendistill.runlock import acquire


@dataclass
class EvalResult:
    """What ``gendistill eval`` reports.

    Attributes:
        models: the models' labels, the first is the teacher.
        rows: one per (task, model, protocol): ``acc``, ``stderr``, ``n``, ``metric``, ``chance`` and more.
        comparisons: per student, task and protocol: retention vs the teacher and the protocol gap.
        fidelity: greedy agreement (and teacher-forced top-1 / KL when asked) per student and task.
        paths: the report files written (``results.json``, ``results.md``, ``results.png``).
        meta: settings, versions, device, command, wall time.
        raw: the whole results mapping, as written to ``results.json``.
    """

    models: list[str]
    rows: list[dict[str, Any]]
    comparisons: list[dict[str, Any]]
    fidelity: list[dict[str, Any]]
    paths: dict[str, str]
    meta: dict[str, Any]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_results(cls, results: dict[str, Any]) -> EvalResult:
        meta = results.get("meta", {})
        return cls(models=list(meta.get("models", [])), rows=list(results.get("rows", [])),
                   comparisons=list(results.get("comparisons", [])), fidelity=list(results.get("fidelity", [])),
                   paths=dict(results.get("paths", {})), meta=meta, raw=results)

    def accuracy(self, model: str, task: str, protocol: str = "generate") -> float:
        """The accuracy of ``model`` (a label from :attr:`models`) on ``task`` under ``protocol``."""
        for r in self.rows:
            if r["model"] == model and r["task"] == task and r["protocol"] == protocol:
                return float(r["acc"])
        raise KeyError(f"no result for model {model!r}, task {task!r}, protocol {protocol!r}")

    def markdown(self) -> str:
        """The report table (what ``gendistill eval`` prints)."""
        return markdown(self.raw)


def evaluate(models: str | list[str], tasks: str | list[str] = "arc_easy", *, out: str | Path = "runs/eval",
             protocols: str | list[str] = ("loglik", "generate"), limit: int | None = None, device: str = "auto",
             dtype: str = "auto", update_card: bool = False, **options: Any) -> EvalResult:
    """Evaluate ``models`` (model references; the first is the teacher) on ``tasks`` (built-in names, ``all``,
    ``ruler``, ``.jsonl`` or ``.yaml`` task files) under both protocols: log-likelihood ranking and generation with
    answer extraction. Writes the report to ``out``, holding the folder's lock (:mod:`gendistill.runlock`) for the
    whole run: an evaluation into a folder another gendistill process is writing stops at once with one line. After
    a successful run, the example files an earlier run into ``out`` listed and this one did not rewrite are removed,
    so the folder holds this run's examples only. ``options`` are the other fields of
    :class:`gendistill.eval.config.EvalConfig` (``seed``, ``smoke``, ``batch_size``, ``samples``,
    ``max_new_tokens``, ``fidelity_chat``, ...). ``update_card`` writes each evaluated student's rows into its
    model card (only in folders gendistill wrote). Tasks that execute model-written code (``humaneval``) are refused
    where the bubblewrap sandbox is missing unless ``unsafe_allow_unsandboxed_code=True`` (docs/eval.md, Sandbox).

    >>> res = gendistill.evaluate(["smollm2-135m-instruct", "runs/student"], "arc_easy,gsm8k", limit=50)  # doctest: +SKIP
    >>> print(res.markdown())                                                                           # doctest: +SKIP
    """
    models = [models] if isinstance(models, (str, Path)) else [str(m) for m in models]
    tasks = tasks if isinstance(tasks, str) else ",".join(tasks)
    protocols = [p.strip() for p in protocols.split(",")] if isinstance(protocols, str) else list(protocols)
    if options.get("max_new_tokens") is not None and options["max_new_tokens"] < 1:
        raise GendistillError(f"--max-new-tokens must be at least 1, got {options['max_new_tokens']}")
    check_report_folder(out, REPORT_FILES, "--out")  # checked before any model is loaded or task is run
    check_writable(out, "--out")
    options.setdefault("command", " ".join(shlex.quote(a) for a in sys.argv))
    cfg = EvalConfig(models=[str(m) for m in models], tasks=tasks, protocols=[p for p in protocols if p],
                     limit=limit, out=str(out), device=device, dtype=dtype, **options)
    lock = acquire(out, "--out")  # another eval writing the folder: one line, before any model is loaded
    finished = False
    try:
        claim_report_folder(out, REPORT_FILES, "--out")  # again under the lock; then the folder is ours
        previous = _previous_example_files(out)
        result = EvalResult.from_results(run_eval(cfg))
        _remove_stale(previous, result.raw.get("example_files", []))
        if update_card:
            update_cards(models, result)
        finished = True
    finally:
        lock.release(remove_created=not finished)  # a refused run leaves no folder it created behind
    return result


def _previous_example_files(out: str | Path) -> set[str]:
    """Example files an earlier eval into ``out`` listed in its results (only files this project wrote, and only in
    a folder gendistill marked as its own)."""
    found: set[str] = set()
    if marker_kind(out) is None:
        return found
    examples = (Path(out) / "examples").resolve()
    for name in ("results.json", "results.partial.json"):
        try:
            listed = json.loads((Path(out) / name).read_text(encoding="utf-8")).get("example_files", [])
        except (OSError, ValueError, AttributeError):
            continue
        for f in listed if isinstance(listed, list) else []:
            p = Path(str(f)).resolve()
            if p.parent == examples and p.suffix == ".jsonl" and "__" in p.name:
                found.add(str(p))
    return found


def _remove_stale(previous: set[str], current: list[str]) -> None:
    """After a successful run: delete the example files of the earlier run that this run did not write again, so
    ``--out`` holds only this run's examples (nothing is deleted when the run fails)."""
    keep = {str(Path(f).resolve()) for f in current}
    for f in previous - keep:
        Path(f).unlink(missing_ok=True)


def update_cards(models: list[str], result: EvalResult) -> None:
    """Write each evaluated student folder's rows into its README.md (folders gendistill wrote only)."""
    for spec, label in zip(models, result.models):
        ref = resolve_model(spec)
        folder = Path(ref.location)
        if ref.kind != "student" or marker_kind(folder) != "student":
            continue
        card = folder / "README.md"
        text = card.read_text(encoding="utf-8") if card.is_file() else ""
        rows = [r for r in result.rows if r["model"] == label]
        atomic_write_text(card, update_evaluation(text, rows))


__all__ = ["EvalResult", "evaluate", "update_cards"]
