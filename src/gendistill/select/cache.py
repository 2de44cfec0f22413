"""Per-run score cache and cost accounting.

``<out>/scores.json`` holds ``{"fingerprint": ..., "scores": {key: record}}`` and is rewritten atomically after every
scored candidate, so a stopped run resumed with ``--resume`` re-scores nothing it already has. Each record carries its
own cost (seconds, tokens), so a resumed run still reports what the whole selection cost.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from gendistill.errors import ConfigError
from gendistill.io import atomic_write_json


def set_key(layers: list[int] | tuple[int, ...]) -> str:
    """Cache key of an attention-layer set: ``"attn:0,3,7"`` (``"attn:"`` for none)."""
    return "attn:" + ",".join(str(i) for i in sorted(layers))


class ScoreCache:
    def __init__(self, path: Path, fingerprint: str):
        self.path, self.fingerprint = path, fingerprint
        self.scores: dict[str, dict[str, Any]] = {}
        self.hits = 0
        if path.exists():
            data = json.loads(path.read_text())
            if data.get("fingerprint") != fingerprint:
                raise ConfigError(
                    f"{path}: the scores were computed with other settings; rerun with the settings of that run, "
                    "or pass --overwrite"
                )
            self.scores = data.get("scores", {})

    def get(self, key: str) -> dict[str, Any] | None:
        rec = self.scores.get(key)
        if rec is not None:
            self.hits += 1
        return rec

    def put(self, key: str, record: dict[str, Any]) -> None:
        self.scores[key] = record
        atomic_write_json(self.path, {"fingerprint": self.fingerprint, "scores": self.scores})


class Cost:
    """Wall time and tokens of one piece of work: ``with cost.timed(): ...``; ``train_tokens`` and ``eval_tokens``
    are added by the caller (tokens through student and teacher: training sequences x steps, scored sequences)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.train_tokens = 0
        self.eval_tokens = 0

    def timed(self) -> "_Timer":
        return _Timer(self)

    def as_dict(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 3), "train_tokens": self.train_tokens, "eval_tokens": self.eval_tokens}


class _Timer:
    def __init__(self, cost: Cost):
        self.cost = cost

    def __enter__(self) -> Cost:
        self.t0 = time.perf_counter()
        return self.cost

    def __exit__(self, *exc: Any) -> None:
        self.cost.seconds += time.perf_counter() - self.t0


def device_minutes(cost: dict[str, Any]) -> tuple[float | None, str]:
    """``(minutes, "GPU" or "CPU")`` of a cost :func:`total_cost` wrote (its key names the device kind)."""
    if "gpu_minutes" in cost:
        return cost["gpu_minutes"], "GPU"
    return cost.get("cpu_minutes"), "CPU"


def total_cost(records: list[dict[str, Any]], device: str, devices: int, this_run_seconds: float,
               candidates: int, cached: int) -> dict[str, Any]:
    """The cost of a whole selection from the records it used (cached ones included)."""
    seconds = sum(r.get("cost", {}).get("seconds", 0.0) for r in records)
    unit = "gpu_minutes" if device == "cuda" else "cpu_minutes"
    return {
        "device": device,
        "devices": devices,
        unit: round(seconds * devices / 60, 3),
        "train_tokens": sum(r.get("cost", {}).get("train_tokens", 0) for r in records),
        "eval_tokens": sum(r.get("cost", {}).get("eval_tokens", 0) for r in records),
        "candidates_scored": candidates,
        "cached_records_reused": cached,
        "wall_seconds_this_invocation": round(this_run_seconds, 3),
    }
