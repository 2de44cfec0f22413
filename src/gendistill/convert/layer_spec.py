"""Parse ``--attention-layers``: which teacher layers keep softmax attention."""

from __future__ import annotations

import json
import numbers
import os
from pathlib import Path

from gendistill.errors import LayerSpecError


def layer_file(spec: str | list[int]) -> Path | None:
    """The JSON file an ``--attention-layers`` spec names, else None: a name ending in ``.json``, or a path with a
    folder part and no ``:`` (``./layers``; a ``select-layers`` run folder names its ``layers.json``). A bare word is
    never a file: a stray file named ``1`` or ``all`` in the working folder must not change what
    ``--attention-layers 1`` or ``all`` means, nor is ``ratio:1/4`` a path."""
    if isinstance(spec, (list, tuple)):
        return None
    text = spec.strip()
    if text.endswith(".json"):
        return Path(text)
    if ("/" in text or os.sep in text) and ":" not in text:
        path = Path(text)
        return path / "layers.json" if path.is_dir() else path
    return None


def parse_attention_layers(spec: str | list[int], num_layers: int) -> list[int]:
    """Return the sorted 0-based indices of the layers that keep attention.

    Accepted forms:
        ``"0,2,6,11"``   explicit indices (negative counts from the end);
        ``"every:4"``    every 4th layer, ending on the last one (layers 3, 7, 11, ... as in Qwen3-Next);
        ``"ratio:0.25"`` or ``"0.25"``  that fraction of the layers, evenly spaced, ending on the last one;
        ``"none"``       no attention (all KDA);  ``"all"``  every layer (a student identical to the teacher);
        ``"path/to/layers.json"``  a JSON list of indices or an object with ``"attention_layers"`` (layer selection);
        ``"attention:0,2,6;kda:1,3,4,5"``  what :meth:`HybridConfig.layer_spec` writes (every layer listed once).
    """
    if isinstance(spec, (list, tuple)):
        return _check(_integers(list(spec), str(spec)), num_layers, str(spec))
    text = spec.strip()
    if not text:
        raise LayerSpecError("empty --attention-layers; give indices like '0,2,6', 'every:4', 'ratio:0.25' or 'none'")
    path = layer_file(text)
    if path is not None:
        return _from_json(path, num_layers)
    low = text.lower()
    if low.startswith("attention:"):
        return _from_layout(text, num_layers)
    if low == "none":
        return []
    if low == "all":
        return list(range(num_layers))
    if low.startswith("every:"):
        n = _number(text[6:], int, text)
        if n < 1:
            raise LayerSpecError(f"'{text}': the interval must be >= 1")
        if n > num_layers:
            raise LayerSpecError(f"'{text}': the teacher has only {num_layers} layers, so no layer would keep "
                                 "attention; use 'none' for an all-KDA student")
        return [i for i in range(num_layers) if (i + 1) % n == 0]
    if low.startswith("ratio:") or _is_float(text):
        r = _number(text[6:] if low.startswith("ratio:") else text, float, text)
        if not 0.0 <= r <= 1.0:
            raise LayerSpecError(f"'{text}': the ratio must be between 0 and 1")
        n = round(r * num_layers)
        if n == 0 and r > 0:
            raise LayerSpecError(f"'{text}': {r} of {num_layers} layers rounds to no attention layer; use a ratio of "
                                 f"at least {1 / num_layers:.3g}, or 'none' for an all-KDA student")
        return sorted({int((k + 1) * num_layers / n) - 1 for k in range(n)}) if n else []
    try:
        indices = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise LayerSpecError(
            f"cannot parse --attention-layers '{text}': use indices like '0,2,6', 'every:4', 'ratio:0.25', 'none', "
            "'all' or a JSON file"
        ) from None
    if not indices:
        raise LayerSpecError(f"--attention-layers '{text}' names no layer; give indices like '0,2,6', or 'none' for an "
                             "all-KDA student")
    return _check(indices, num_layers, text)


def _check(indices: list[int], num_layers: int, where: str) -> list[int]:
    resolved = []
    for i in indices:
        j = i + num_layers if i < 0 else i
        if not 0 <= j < num_layers:
            raise LayerSpecError(f"attention layer {i} in '{where}' is out of range: the teacher has {num_layers} layers (0..{num_layers - 1})")
        resolved.append(j)
    dupes = sorted({i for i in resolved if resolved.count(i) > 1})
    if dupes:
        raise LayerSpecError(f"attention layers {dupes} appear more than once in '{where}'")
    return sorted(resolved)


def _from_layout(text: str, num_layers: int) -> list[int]:
    """``attention:0,2,6;kda:1,3,4,5`` (the form :meth:`HybridConfig.layer_spec` writes): the attention layers, after
    checking that the two lists together name every layer exactly once."""
    parts = [p.strip() for p in text.split(";")]
    if len(parts) != 2 or any(":" not in p for p in parts):
        raise LayerSpecError(f"cannot parse '{text}': expected 'attention:0,2,6;kda:1,3,4,5'")
    lists = []
    for part in parts:
        items = part.split(":", 1)[1]
        try:
            lists.append([int(i) for i in items.split(",") if i.strip()])
        except ValueError:
            raise LayerSpecError(f"cannot parse '{text}': '{part}' is not a list of layer indices") from None
    attention = _check(lists[0], num_layers, text)
    linear = _check(lists[1], num_layers, text)
    if sorted(attention + linear) != list(range(num_layers)):
        raise LayerSpecError(f"'{text}' does not list each of the teacher's {num_layers} layers exactly once")
    return attention


def _from_json(path: Path, num_layers: int) -> list[int]:
    return _check(read_layer_file(path), num_layers, str(path))


def read_layer_file(path: Path) -> list[int]:
    """The layer indices a JSON layer file names, as written (before they are checked against a teacher's layer
    count): a list of integers, or an object whose ``attention_layers`` is one (what ``select-layers`` writes)."""
    if not path.is_file():
        raise LayerSpecError(f"layer file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LayerSpecError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError as e:
        raise LayerSpecError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})") from None
    if isinstance(data, dict):
        if "attention_layers" not in data:
            raise LayerSpecError(f"{path}: expected a list of layer indices or an object with 'attention_layers'")
        data = data["attention_layers"]
    if not isinstance(data, list):
        raise LayerSpecError(f"{path}: 'attention_layers' must be a list of integers")
    return _integers(data, str(path))


def _integers(items: list, where: str) -> list[int]:
    """``items`` as layer indices: integers only (numpy's too; ``1.9`` or ``true`` is refused, not read as layer 1)."""
    bad = [i for i in items if isinstance(i, bool) or not isinstance(i, numbers.Integral)]
    if bad:
        raise LayerSpecError(f"{where}: layer indices must be integers, not {bad[0]!r}")
    return [int(i) for i in items]


def _number(text: str, kind, where: str):
    try:
        return kind(text)
    except ValueError:
        raise LayerSpecError(f"cannot parse '{where}': '{text}' is not a {kind.__name__}") from None


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return "." in text
