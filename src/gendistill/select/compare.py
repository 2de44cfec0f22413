"""Several ``select-layers`` results side by side: the layers each method chose, how far the choices overlap, what
each cost, and a plot of the chosen layers per method (``gendistill select-compare``).

Each input is a ``layers.json`` (or the run folder holding one), as ``select-layers`` writes it. All must come from the
same teacher (name and number of layers); budgets may differ. The comparison (:func:`compare_selections`):

* ``selections``: per input, its label (the method; ``method (folder)`` when two inputs share a method), budget,
  chosen layers, ranking and cost (device minutes, tokens trained and scored, candidate sets) as recorded;
* ``overlap``: for every pair, the layers both chose (``shared``) and the Jaccard index ``|A ∩ B| / |A ∪ B|``;
* ``votes``: for every layer, how many inputs chose it; ``chosen_by_all`` and ``chosen_by_any``.

No path is written into the result (labels and file names only), so it can be committed as it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gendistill.errors import ConfigError
from gendistill.reporting import figure_png, num, pyplot, write_report_files
from gendistill.select.cache import device_minutes

STEM = "select_compare"
REPORT_FILES = (f"{STEM}.json", f"{STEM}.md", f"{STEM}.png")
_REQUIRED = ("attention_layers", "ranked", "method", "budget", "num_layers")


def read_selection(path: str | Path) -> dict[str, Any]:
    """One ``select-layers`` result: ``path`` is its ``layers.json`` or the run folder holding it."""
    p = Path(path)
    f = p / "layers.json" if p.is_dir() else p
    if not f.is_file():
        raise ConfigError(f"{path}: no select-layers result here (expected a layers.json file or a folder holding one)")
    try:
        d = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{f}: not a JSON select-layers result ({e})") from None
    missing = [k for k in _REQUIRED if not isinstance(d, dict) or k not in d]
    if missing:
        raise ConfigError(f"{f}: not a select-layers result (missing {', '.join(missing)}); "
                          f"a plain list of layers has no method or ranking to compare")
    L = d["num_layers"]
    index = lambda i: isinstance(i, int) and not isinstance(i, bool) and 0 <= i < L  # noqa: E731
    if (not index(L - 1) or not isinstance(d["attention_layers"], list) or not isinstance(d["ranked"], list)
            or not all(index(i) for i in [*d["attention_layers"], *d["ranked"]])):
        raise ConfigError(f"{f}: attention_layers and ranked must be lists of layer indices below num_layers ({L})")
    d["_name"] = f.resolve().parent.name
    d["_teacher"] = teacher_name(d.get("teacher"))
    return d


def teacher_name(spec: Any) -> str | None:
    """The teacher as a result may show it: a short name or hub id as written, a file or folder by its own name (no
    path: the comparison is committed as it is)."""
    if spec is None:
        return None
    text = str(spec)
    path = Path(text)
    is_path = path.is_absolute() or text.startswith(("~", ".")) or text.endswith(".gguf") or path.exists()
    return path.name if is_path else text  # a hub id (owner/name) never starts with / ~ or .


def _labels(sels: list[dict[str, Any]]) -> list[str]:
    methods = [s["method"] for s in sels]
    labels = [m if methods.count(m) == 1 else f"{m} ({s['_name']})" for m, s in zip(methods, sels)]
    if len(set(labels)) < len(labels):
        labels = [f"{lab} #{i + 1}" for i, lab in enumerate(labels)]
    return labels


def compare_selections(paths: list[str | Path]) -> dict[str, Any]:
    """The comparison of two or more ``select-layers`` results (the module docstring lists its keys)."""
    if len(paths) < 2:
        raise ConfigError("select-compare: give two or more select-layers results (layers.json files or run folders)")
    sels = [read_selection(p) for p in paths]
    first = sels[0]
    for p, s in zip(paths[1:], sels[1:]):
        if s["num_layers"] != first["num_layers"] or s["_teacher"] != first["_teacher"]:
            raise ConfigError(f"{p}: chosen for {s['_teacher']} ({s['num_layers']} layers), but {paths[0]} for "
                              f"{first['_teacher']} ({first['num_layers']} layers): compare one teacher's choices")
    labels = _labels(sels)
    chosen = [set(s["attention_layers"]) for s in sels]
    L = first["num_layers"]
    votes = [sum(i in c for c in chosen) for i in range(L)]
    shared = [[len(a & b) for b in chosen] for a in chosen]
    jaccard = [[len(a & b) / len(a | b) if a | b else 1.0 for b in chosen] for a in chosen]
    return {
        "teacher": first["_teacher"],
        "num_layers": L,
        "selections": [{"label": lab, "method": s["method"], "budget": s["budget"],
                        "attention_layers": sorted(s["attention_layers"]), "ranked": list(s["ranked"]),
                        "cost": s.get("cost", {}), "source": s["_name"]} for lab, s in zip(labels, sels)],
        "overlap": {"labels": labels, "shared": shared, "jaccard": jaccard},
        "votes": votes,
        "chosen_by_all": [i for i in range(L) if votes[i] == len(sels)],
        "chosen_by_any": [i for i in range(L) if votes[i] > 0],
    }


def cost_text(cost: dict[str, Any]) -> str:
    """``12.5 GPU-min, 3.4M trained, 0.2M scored, 31 sets`` (what was recorded)."""
    if not cost:
        return "–"
    minutes, unit = device_minutes(cost)
    parts = [f"{num(minutes, 1)} {unit}-min" if minutes is not None else None,
             f"{cost.get('train_tokens', 0) / 1e6:.2f}M trained", f"{cost.get('eval_tokens', 0) / 1e6:.2f}M scored",
             f"{cost.get('candidates_scored', 0)} sets"]
    return ", ".join(p for p in parts if p)


def markdown(cmp: dict[str, Any]) -> str:
    sels, ov = cmp["selections"], cmp["overlap"]
    out = [f"# Layer selections compared — {cmp['teacher']} ({cmp['num_layers']} layers)", "",
           "| method | budget | attention layers | cost |", "|---|---:|---|---|"]
    out += [f"| {s['label']} | {s['budget']} | {', '.join(map(str, s['attention_layers']))} | {cost_text(s['cost'])} |"
            for s in sels]
    out += ["", "Layers both chose (Jaccard index in brackets):", "",
            "| | " + " | ".join(ov["labels"]) + " |", "|---|" + "---:|" * len(ov["labels"])]
    for i, lab in enumerate(ov["labels"]):
        out.append(f"| {lab} | " + " | ".join(f"{ov['shared'][i][j]} ({ov['jaccard'][i][j]:.2f})"
                                              for j in range(len(ov["labels"]))) + " |")
    fmt = lambda xs: ", ".join(map(str, xs)) or "none"  # noqa: E731
    out += ["", f"Chosen by every method: {fmt(cmp['chosen_by_all'])}. Chosen by at least one: "
                f"{fmt(cmp['chosen_by_any'])}.", ""]
    return "\n".join(out)


def plot_png(cmp: dict[str, Any]) -> bytes | None:
    """One row per method, one column per layer: a filled square where the method keeps attention, the layer's rank
    in the method's ranking written small in every cell; a last row counts the methods choosing each layer."""
    plt = pyplot()
    if plt is None:
        return None
    sels, L = cmp["selections"], cmp["num_layers"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * L + 2.5), 0.55 * (len(sels) + 1) + 1.2))
    for r, s in enumerate(sels):
        rank = {layer: k + 1 for k, layer in enumerate(s["ranked"])}
        for i in range(L):
            on = i in s["attention_layers"]
            ax.add_patch(plt.Rectangle((i - 0.45, r - 0.4), 0.9, 0.8, color="C0" if on else "0.92"))
            if i in rank:
                ax.text(i, r, str(rank[i]), ha="center", va="center", fontsize=6, color="white" if on else "0.45")
    r = len(sels)
    for i, v in enumerate(cmp["votes"]):
        ax.text(i, r, str(v) if v else "·", ha="center", va="center", fontsize=8,
                fontweight="bold" if v == len(sels) else "normal")
    ax.set_xlim(-0.6, L - 0.4)
    ax.set_ylim(r + 0.6, -0.6)
    ax.set_xticks(range(L))
    ax.set_xticklabels([str(i) for i in range(L)], fontsize=7)
    ax.set_yticks(range(r + 1))
    ax.set_yticklabels([f"{s['label']} (k={s['budget']})" for s in sels] + ["methods choosing"], fontsize=8)
    ax.set_xlabel("layer (number: the layer's rank in the method's ranking)")
    ax.set_title(f"Attention layers chosen — {cmp['teacher']}", fontsize=10)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    return figure_png(fig, dpi=130)


def write_comparison(cmp: dict[str, Any], out_dir: str | Path) -> dict[str, str]:
    """``select_compare.json``, ``select_compare.md`` and ``select_compare.png`` in ``out_dir``."""
    return write_report_files(out_dir, STEM, cmp, lambda: markdown(cmp),
                              {"plot": (f"{STEM}.png", lambda: plot_png(cmp))})


__all__ = ["REPORT_FILES", "compare_selections", "markdown", "plot_png", "read_selection", "teacher_name",
           "write_comparison"]
