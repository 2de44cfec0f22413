"""Where a grid's work lives, keyed by content so that cells share what they have in common.

A cell's recipe runs its stages as a chain of **nodes**, one per stage. A node's id hashes everything that fixes the
student after that stage: the teacher, the student's construction, the run's seed and precision, and every stage
up to and including it (with its effective data). Cells whose recipes agree on a prefix of stages therefore get
the same node ids for that prefix and train it once — all stage-3b variants reuse one stage-3a student. Settings
that only change I/O (output folder, progress display, logging and checkpoint intervals) are not hashed.

Layout under the grid's ``output_dir``::

    stages/<stage>-<id>/           one node: a one-stage ``gendistill distill`` run folder (recipe.yaml,
                                   progress.json, metrics.jsonl, checkpoints/) whose student is <stage>/; node.json
    evals/<id>/                    one evaluation (results.json/.md/.png, examples/) of a node's student
    cells/<cell name>/             recipe.yaml, cell.json, metrics.json(l), eval/ (copies of the evaluation), student
    report.md, report.json, report.png
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gendistill.ablate.grid import Cell, GridEvalConfig
from gendistill.distill.config import Recipe

ID_LEN = 12
_IO_ONLY_STAGE_KEYS = ("log_every", "checkpoint_every")


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:ID_LEN]


def _root_key(recipe: Recipe) -> dict[str, Any]:
    return {"teacher": recipe.teacher.model_dump(mode="json"), "student": recipe.student.model_dump(mode="json"),
            "seed": recipe.run.seed, "precision": recipe.run.precision}


def _stage_key(recipe: Recipe, i: int) -> dict[str, Any]:
    st = recipe.stages[i]
    d = st.model_dump(mode="json")
    for k in _IO_ONLY_STAGE_KEYS:
        d.pop(k, None)
    d["data"] = recipe.stage_data(st).model_dump(mode="json")
    return d


@dataclass(frozen=True)
class Node:
    """The student after ``stage`` (index ``index`` of the cell's stages), trained from ``parent``'s student (or
    built from the teacher when ``parent`` is None)."""

    id: str
    stage: str
    index: int
    parent: str | None
    dir: Path

    @property
    def student_dir(self) -> Path:
        return self.dir / self.stage

    def status(self) -> str:
        """``done`` (student saved), ``partial`` (a run folder, not finished: resumed from its checkpoint) or
        ``todo``."""
        prog = self.dir / "progress.json"
        if prog.is_file() and (self.student_dir / "config.json").is_file():
            try:
                if self.stage in json.loads(prog.read_text()).get("completed", []):
                    return "done"
            except (OSError, json.JSONDecodeError):
                pass
        return "partial" if (self.dir / "recipe.yaml").is_file() else "todo"


def cell_nodes(cell: Cell, root: Path) -> list[Node]:
    """The chain of nodes of a cell's recipe, first stage first."""
    nodes: list[Node] = []
    parent_key = _digest(_root_key(cell.recipe))
    parent: str | None = None
    for i, st in enumerate(cell.recipe.stages):
        nid = _digest([parent_key, _stage_key(cell.recipe, i)])
        nodes.append(Node(id=nid, stage=st.name, index=i, parent=parent, dir=root / "stages" / f"{st.name}-{nid}"))
        parent, parent_key = nid, nid
    return nodes


def eval_id(final: Node, teacher_spec: str, ev: GridEvalConfig) -> str:
    settings = ev.model_dump(mode="json")
    for key in ("context_lengths", "depths"):  # added later: unset, they leave earlier grids' evaluation ids as they were
        if settings[key] is None:
            del settings[key]
    return _digest([final.id, teacher_spec, settings])


def eval_dir(root: Path, final: Node, teacher_spec: str, ev: GridEvalConfig) -> Path:
    return root / "evals" / f"{final.stage}-{final.id}-{eval_id(final, teacher_spec, ev)}"


def eval_done(path: Path) -> bool:
    p = path / "results.json"
    if not p.is_file():
        return False
    try:
        return bool(json.loads(p.read_text()).get("meta", {}).get("complete"))
    except (OSError, json.JSONDecodeError):
        return False
