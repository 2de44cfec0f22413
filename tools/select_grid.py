"""Write the layer-selection grid (issue 27) for the selections that have finished, so the grid can start training
before the slower methods are done.

``select-smollm2-lease`` has one cell per method, each reading ``select/<method>/layers.json`` from the folder the
grid runs in; ``gendistill ablate`` refuses a grid whose layer file is missing. This writes a copy of a shipped grid
that keeps every variant whose layer file exists (and every variant that names no file, e.g. ``uniform: every:4``),
with the same cell names, recipes and ``output_dir``, so its cells' stage runs and evaluations are the shipped grid's
(the node ids hash the layers a file lists, docs/ablate.md "Sharing"). Run ``gendistill ablate`` on it again after
each further selection finishes: the cells already done are skipped, and the last run's report has every cell.

    python tools/select_grid.py select-smollm2-lease --root JOB --out JOB/select-grid.yaml
    (cd JOB && gendistill ablate select-grid.yaml ...)

Prints the kept variants on one line (``kept: uniform kl-guided``); exit 2 on a bad grid.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from gendistill.convert.layer_spec import layer_file
from gendistill.distill.shipped import recipe_file
from gendistill.errors import GendistillError
from gendistill.io import atomic_write_text

LAYERS_KEY = "student.attention_layers"


def available_grid(grid: str, root: Path) -> tuple[dict, list[str]]:
    """The grid ``grid`` (a shipped name or a file) with only the variants whose layer file exists under ``root``,
    and the names of those kept. The base becomes an absolute path, so the copy may live anywhere."""
    path = Path(grid) if Path(grid).exists() else recipe_file(grid)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("axes"), dict):
        raise GendistillError(f"{path}: not a grid (no axes mapping)")
    if isinstance(data.get("base"), str) and not Path(data["base"]).is_absolute():
        data["base"] = str((path.parent / data["base"]).resolve())
    kept: list[str] = []
    for axis, variants in data["axes"].items():
        if not isinstance(variants, dict):
            raise GendistillError(f"{path}: axes.{axis}: expected a mapping of named variants")
        keep = {}
        for name, sets in variants.items():
            spec = (sets or {}).get(LAYERS_KEY)
            file = layer_file(spec) if isinstance(spec, str) else None
            if file is None or (root / file).is_file():
                keep[name] = sets
                kept.append(name)
        if not keep:
            raise GendistillError(f"{path}: axes.{axis}: no variant has its layer file under {root}")
        data["axes"][axis] = keep
    return data, kept


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("grid", help="a shipped grid name or a grid file, e.g. select-smollm2-lease")
    ap.add_argument("--root", type=Path, required=True, help="the folder the grid runs in (holds select/<method>/)")
    ap.add_argument("--out", type=Path, required=True, help="where to write the grid copy")
    a = ap.parse_args(argv)
    try:
        data, kept = available_grid(a.grid, a.root)
    except (GendistillError, OSError, yaml.YAMLError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    atomic_write_text(a.out, yaml.safe_dump(data, sort_keys=False))
    print("kept:", " ".join(kept))
    return 0


if __name__ == "__main__":
    sys.exit(main())
