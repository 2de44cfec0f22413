"""What a distillation run returns (:func:`gendistill.distill.pipeline.run_recipe` and :func:`gendistill.distill`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class DistillResult:
    """One shape for every run.

    Attributes:
        run_dir: the run folder (``run.output_dir``).
        completed: every stage finished in this run folder, this call's and earlier ones, in order.
        results: this call's stages: name -> :class:`~gendistill.distill.trainer.StageResult` (steps, tokens, losses,
            held-out losses); empty for a dry run or when nothing was left to do.
        plan: per stage: steps, tokens, batch shape, loss, masking, trainable parameters (always filled).
        data: documents per stage and source, counted while checking the data.
        dry_run: True when nothing was trained or written.
        student: the student model in memory (after the last stage run), ``None`` for a dry run.
    """

    run_dir: Path
    completed: list[str] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    plan: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, dict[str, int]] = field(default_factory=dict)
    dry_run: bool = False
    student: Any = field(default=None, repr=False)

    @property
    def student_dirs(self) -> dict[str, Path]:
        """Stage name -> the saved student folder after that stage (``<run_dir>/<stage>``)."""
        return {name: self.run_dir / name for name in self.completed}

    @property
    def final_student_dir(self) -> Path | None:
        """The student after the last completed stage, or ``None`` before the first one finished."""
        return self.run_dir / self.completed[-1] if self.completed else None

    def summary(self) -> dict[str, Any]:
        """A JSON-serialisable digest (what ``gendistill distill --dry-run`` prints)."""
        out: dict[str, Any] = {"run_dir": str(self.run_dir), "dry_run": self.dry_run, "completed": self.completed,
                               "plan": self.plan, "data": self.data}
        if self.results:
            out["stages"] = {name: {"steps": r.steps, "tokens": r.tokens,
                                    "loss_first": r.losses[0] if r.losses else None,
                                    "loss_last": r.losses[-1] if r.losses else None}
                             for name, r in self.results.items()}
        return out


__all__ = ["DistillResult"]
