"""Run logging: metrics JSONL (always), TensorBoard (``run.tensorboard``, on by default; the ``tensorboard`` package
comes with ``pip install 'gendistill[tensorboard]'``), Weights & Biases (``run.wandb``, off by default; ``pip install
'gendistill[wandb]'``), and a progress display with loss, tokens/s and ETA (a rich bar on a terminal, periodic plain
lines otherwise). Only rank 0 logs."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

from gendistill.clock import seconds_since_start
from gendistill.errors import ConfigError
from gendistill.io import atomic_write_text

TENSORBOARD_MISSING = ("TensorBoard logging is off: the tensorboard package is not installed (pip install "
                       "'gendistill[tensorboard]'); run.tensorboard: false silences this note")


def check_wandb(wanted: bool) -> None:
    """``run.wandb: true`` without the wandb package is refused before anything is loaded (one line)."""
    if wanted and importlib.util.find_spec("wandb") is None:
        raise ConfigError("run.wandb: the wandb package is not installed (pip install 'gendistill[wandb]')")


class MetricsLogger:
    """Every record goes to ``metrics.jsonl``; numeric fields also to TensorBoard (``<stage>/<name>`` at the record's
    step) and Weights & Biases when enabled. ``wandb_init``: keyword arguments of ``wandb.init`` (project, name,
    config, ...)."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool = True, wandb: bool = False,
                 wandb_init: dict[str, Any] | None = None):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        self.wandb = None
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415  (optional extra)
                except ImportError:  # tensorboard is an extra: say so once, keep the JSONL
                    print(f"note: {TENSORBOARD_MISSING}", file=sys.stderr, flush=True)
                else:
                    self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            if wandb:
                check_wandb(True)
                import wandb as _wandb  # noqa: PLC0415  (optional extra)

                self.wandb = _wandb.init(dir=str(run_dir), **(wandb_init or {}))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            stage, step = record.get("stage", ""), int(record.get("step", 0))
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "time"):
                    self.tb.add_scalar(f"{stage}/{k}", v, step)
        if self.wandb is not None:
            stage = record.get("stage", "")
            scalars = {f"{stage}/{k}": v for k, v in record.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "time")}
            if scalars:
                self.wandb.log({**scalars, f"{stage}/step": int(record.get("step", 0))})

    def event(self, text: str) -> None:
        """A note for the user (stderr) that is also kept in the metrics file as ``{"event": text}``."""
        if not self.enabled:
            return
        print(f"note: {text}", file=sys.stderr, flush=True)
        self.log({"event": text})

    def rewind(self, stage: str, step: int) -> None:
        """Drop ``stage``'s records after ``step`` (all of them for step 0): a resumed run trains and logs those steps
        again, so the file holds each step once."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:  # a line cut off by a kill
                continue
            if rec.get("stage") == stage and "step" in rec and (step == 0 or int(rec["step"]) > step):
                continue
            kept.append(line + "\n")
        atomic_write_text(self.path, "".join(kept))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def _fmt_eta(s: float) -> str:
    if s != s or s == float("inf"):
        return "?"
    s = int(s)
    h, r = divmod(s, 3600)
    m, sec = divmod(r, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


class Progress:
    """``update(step, loss, tok_s)`` after each optimizer step. The plain lines (not a terminal) come every ``every``
    steps and at the last; the stage's first step always gets one, with the seconds since the process started."""

    def __init__(self, stage: str, total: int, start: int, enabled: bool, mode: str = "auto", every: int = 1):
        self.stage, self.total, self.start, self.every = stage, total, start, every
        self.enabled = enabled and mode != "none"
        self.t0 = time.perf_counter()
        self.bar = None
        if self.enabled and (mode == "bar" or (mode == "auto" and sys.stderr.isatty())):
            self.bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[tps]} tok/s"),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                transient=False,
                console=Console(stderr=True),  # beside the plain lines and the notes, never in a redirected stdout
            )
            self.task = self.bar.add_task(stage, total=total, completed=start, loss="-", tps="-")
            self.bar.start()

    def update(self, step: int, loss: float, tok_s: float) -> None:
        if not self.enabled:
            return
        done = step - self.start
        first = f"first step {seconds_since_start():.1f} s after the process started" if done == 1 else ""
        if self.bar is not None:
            self.bar.update(self.task, completed=step, loss=f"{loss:.4f}", tps=f"{tok_s:,.0f}")
            if first:
                self.message(f"[{self.stage}] {first}")
            return
        if step % self.every == 0 or step == self.total or first:
            el = time.perf_counter() - self.t0
            eta = el / done * (self.total - step) if done else float("nan")
            print(
                f"[{self.stage}] step {step}/{self.total}  loss {loss:.4f}  {tok_s:,.0f} tok/s  ETA {_fmt_eta(eta)}"
                + (f"  ({first})" if first else ""),
                file=sys.stderr,
                flush=True,
            )

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
