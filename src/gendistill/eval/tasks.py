"""Every task gendistill knows: the built-in ones by name (the standard benchmarks, the generated long-context tasks
and the code tasks each register their family here), the groups (``all``, ``ruler``, ``code``), and the lookup of a
name, a ``.jsonl`` file or a ``.yaml`` definition."""

from __future__ import annotations

import dataclasses

from gendistill.errors import ConfigError
from gendistill.eval.benchmarks import standard_tasks
from gendistill.eval.humaneval import humaneval_tasks
from gendistill.eval.ruler import ruler_tasks
from gendistill.eval.task import MATH, MULTIPLE_CHOICE, SHORT_ANSWER, Task
from gendistill.eval.task_files import task_from_jsonl, task_from_yaml

#: the built-in tasks by name
BUILTIN: dict[str, Task] = {}
GROUPS = ("all", "ruler", "code")  # 'all' = every standard benchmark (the shared/data ones)


def register(tasks: dict[str, Task]) -> None:
    """Add a family of built-in tasks (each task's ``group`` says which group it belongs to)."""
    for name, task in tasks.items():
        if name in BUILTIN:
            raise ValueError(f"task {name!r} is registered twice")
        BUILTIN[name] = task


register(standard_tasks())
register(ruler_tasks())  # the generated long-context tasks (group "ruler")
register(humaneval_tasks())  # the code tasks (group "code")


def builtin_tasks() -> dict[str, Task]:
    """Every built-in task by name."""
    return BUILTIN


def known_tasks() -> list[str]:
    return sorted(builtin_tasks())


def group_tasks(group: str) -> list[str]:
    want = "standard" if group == "all" else group
    return sorted(n for n, t in builtin_tasks().items() if t.group == want)


def get_task(spec: str) -> Task:
    """A built-in name, a ``.yaml``/``.yml`` task definition, or a ``.jsonl``/``.jsonl.gz`` file (``mc:``/``qa:``/
    ``math:`` prefixes force the kind)."""
    spec = spec.strip()
    if spec in builtin_tasks():
        return dataclasses.replace(BUILTIN[spec], _pool=None)
    forced = None
    for prefix, kind in (("mc:", MULTIPLE_CHOICE), ("qa:", SHORT_ANSWER), ("math:", MATH)):
        if spec.startswith(prefix):
            forced, spec = kind, spec[len(prefix) :]
    if spec.endswith((".yaml", ".yml")):
        return task_from_yaml(spec)
    if spec.endswith((".jsonl", ".jsonl.gz")):
        return task_from_jsonl(spec, forced)
    raise ConfigError(
        f"unknown task '{spec}'; known tasks: {', '.join(known_tasks())}; groups: {', '.join(GROUPS)} "
        "(or a .jsonl/.jsonl.gz file, or a .yaml task definition)"
    )


def parse_tasks(spec: str) -> list[Task]:
    names = [s for s in (x.strip() for x in spec.split(",")) if s]
    if not names:
        raise ConfigError(f"no tasks given; known tasks: {', '.join(known_tasks())}")
    names = [m for n in names for m in (group_tasks(n) if n in GROUPS else [n])]
    return [get_task(n) for n in dict.fromkeys(names)]
