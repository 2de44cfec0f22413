"""Where a grid's work lives, keyed by content so that cells share what they have in common.

A cell's recipe runs its stages as a chain of **nodes**, one per stage. A node's id hashes everything that fixes the
student after that stage: the teacher, the student's construction, the run's seed and precision, and every stage
up to and including it (with its effective data). Cells whose recipes agree on a prefix of stages therefore get
the same node ids for that prefix and train it once — all stage-3b variants reuse one stage-3a student. Settings
that only change I/O (output folder, progress display, logging and checkpoint intervals) are not hashed.

Inputs named by a path are hashed by what they hold, so that a changed file gives new nodes instead of reusing
students trained on the old one: a layer file (``student.attention_layers: select/<method>/layers.json``) by the
layers it lists, and every local data file a stage reads by its content (SHA-256; see :func:`file_digest`). A layer
file that does not exist yet (``--dry-run`` before ``select-layers`` made it) and a hub dataset are hashed by name.

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
from gendistill.convert.layer_spec import layer_file, read_layer_file
from gendistill.distill.config import DataConfig, Recipe, SourceConfig, StudentConfig
from gendistill.distill.data.sources import Source
from gendistill.errors import ConfigError, DataError, LayerSpecError

ID_LEN = 12
_IO_ONLY_STAGE_KEYS = ("log_every", "checkpoint_every")
_DIGESTS: dict[tuple[str, int, int], str] = {}  # (resolved path, size, mtime_ns) -> SHA-256: one read per file


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:ID_LEN]


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, read once per process and file version (a changed size or modification time reads
    it again). Content rather than (size, mtime): a data file copied to another machine without its times (the
    device tools' ``cp``) keeps its nodes, and a rewrite of the same size is still seen; at about 1 GB/s it costs
    a fraction of a second for the shipped data (86 MB in all) and about a second for a file of hundreds of MB."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        with open(path, "rb") as fh:
            _DIGESTS[key] = hashlib.file_digest(fh, "sha256").hexdigest()
    return _DIGESTS[key]


def _student_key(student: StudentConfig) -> dict[str, Any]:
    """The student's settings, a layer file replaced by the layers it lists (sorted, as the conversion keeps them),
    so that two files listing the same layers share nodes and a rewritten file does not. A file not there yet keeps
    its path (``--dry-run``; a run stops first: :func:`gendistill.ablate.runner.check_layer_files`)."""
    d = student.model_dump(mode="json")
    path = layer_file(student.attention_layers) if student.attention_layers is not None else None
    if path is not None and path.is_file():
        d["attention_layers"] = sorted(read_layer_file(path))
    return d


def _root_key(recipe: Recipe) -> dict[str, Any]:
    return {"teacher": recipe.teacher.model_dump(mode="json"), "student": _student_key(recipe.student),
            "seed": recipe.run.seed, "precision": recipe.run.precision}


def _source_files(src: SourceConfig) -> list[Path] | None:
    """The local files a source reads, sorted: the file, a folder's data files, or a saved dataset folder's files
    (without ``datasets``' ``cache-*`` files); None for a hub dataset or a path that is not there (the stage's
    trainer stops on it with its own error)."""
    try:
        files = Source(src).local_files()
    except DataError:
        return None
    p = Path(src.path)
    if files is None and not src.hub and not src.path.startswith("hf://") and p.is_dir():
        files = sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith("cache-"))
    return files


def _data_content(data: DataConfig) -> list[Any] | None:
    """Per source, ``[[file relative to the source's path, SHA-256], ...]`` (None for a hub dataset); None when no
    source is local, which leaves the stage key as it was before contents were hashed."""
    out: list[Any] = []
    for src in data.sources:
        files = _source_files(src)
        root = Path(src.path)
        out.append(None if files is None else
                   [[f.relative_to(root).as_posix() if f != root else "", file_digest(f)] for f in files])
    return out if any(x is not None for x in out) else None


def _stage_key(recipe: Recipe, i: int) -> dict[str, Any]:
    st = recipe.stages[i]
    d = st.model_dump(mode="json")
    for k in _IO_ONLY_STAGE_KEYS:
        d.pop(k, None)
    data = recipe.stage_data(st)
    d["data"] = data.model_dump(mode="json")
    content = _data_content(data)
    if content is not None:
        d["data_content"] = content
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
        """``done`` (student saved), ``partial`` (a run folder with a checkpoint of its stage: resumed from it),
        ``retrain`` (a run folder with nothing to continue from: a lease's collected results keep a stage run's
        metrics but neither its student nor its checkpoints, or a run stopped before its first checkpoint; trained
        again from its start, the folder cleared) or ``todo``."""
        prog = self.dir / "progress.json"
        if prog.is_file() and (self.student_dir / "config.json").is_file():
            try:
                if self.stage in json.loads(prog.read_text()).get("completed", []):
                    return "done"
            except (OSError, json.JSONDecodeError):
                pass
        if not (self.dir / "recipe.yaml").is_file():
            return "todo"
        return "partial" if any((self.dir / "checkpoints").glob("*/step-*")) else "retrain"


def cell_nodes(cell: Cell, root: Path) -> list[Node]:
    """The chain of nodes of a cell's recipe, first stage first."""
    nodes: list[Node] = []
    try:
        parent_key = _digest(_root_key(cell.recipe))
    except LayerSpecError as e:
        raise ConfigError(f"cell {cell.name}: student.attention_layers: {e}") from None
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
