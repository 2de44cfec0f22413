"""``gendistill.bench(...)`` (the ``gendistill bench`` command's function) and its result."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gendistill.bench.runner import run_benchmark
from gendistill.bench.settings import check_settings, settings_from_options


@dataclass
class BenchResult:
    """What ``gendistill bench`` measured.

    Attributes:
        json_path: the results JSON (every measurement, settings, versions, device).
        plots: the PNG plots written beside it.
        data: the results mapping (``contexts``: per context length, teacher/student cache bytes, TTFT, decode
            tokens/s, peak throughput and their ratios; ``models``; ``settings``).
    """

    json_path: Path
    plots: list[str]
    data: dict[str, Any] = field(repr=False)

    def ratios(self, context: int) -> dict[str, Any]:
        """Student / teacher ratios (cache, TTFT, decode, throughput) at ``context`` tokens."""
        for c in self.data.get("contexts", []):
            if c.get("context") == context:
                return dict(c.get("ratios", {}))
        raise KeyError(f"context {context} was not measured")


def bench(teacher: str | None = None, student: str | None = None, *, config: str = "qwen3-0.6b", tiny: bool = False,
          device: str = "auto", dtype: str = "auto", out: str | Path = "runs/bench", plots: bool = True,
          table: bool = True, **options: Any) -> BenchResult:
    """Measure cache memory, time-to-first-token, decode speed and peak throughput of a teacher and its hybrid
    student in one run. ``teacher``: any model reference (short name, ``.gguf``, folder, hub id); ``student``: a
    saved student (default: the teacher converted at ``attention_layers``). Without a teacher, ``config`` names a
    shape with random weights (``qwen3-0.6b`` or ``tiny``); ``tiny=True`` runs the tiny shape on CPU in seconds.
    ``options``: the other ``gendistill bench`` options under their Python names (``contexts="1k,4k"`` or
    ``(1024, 4096)``, ``attention_layers="0,2"``, ``skip="throughput"``, ``repeats=3``, ``time_limit=400``, ...) and
    the :class:`~gendistill.bench.settings.BenchSettings` fields the command has no option for (``seed``,
    ``attn_implementation``, ``measure_budget_s``, ``decode_warmup_tokens``, ``prefill_graph_max_context``,
    ``sweep_rel_tol``, ``profile_decode_steps``). An unknown keyword raises
    :class:`gendistill.errors.ConfigError` naming it and listing the valid ones, before anything is built or written.

    >>> res = gendistill.bench(tiny=True, out="runs/bench-tiny")  # doctest: +SKIP
    >>> res.ratios(128)["cache_measured_student_over_teacher"]      # doctest: +SKIP
    """
    settings = settings_from_options(teacher=teacher, student=student, config=config, tiny=tiny, device=device,
                                     dtype=dtype, out=str(out), **options)
    check_settings(settings)
    data = run_benchmark(settings, plots=plots, table=table)
    return BenchResult(json_path=Path(data["json_path"]), plots=list(data.get("plots", [])), data=data)


__all__ = ["BenchResult", "bench"]
