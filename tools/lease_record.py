"""Turn what a device lease of ``tools/device_e2e.sh`` brought back into the committed result of ``docs/results``.

    python tools/lease_record.py BUNDLE --out docs/results/e2e_smollm2-135m_h100.json \\
        --call "COMMIT=45b5d80 bash tools/device_e2e.sh setup  (carry .whl .device/carry1)" --call ... \\
        --versions "torch 2.11.0+cu130 | triton 3.6.0 | transformers 5.24.0 | fla 0.6.0" --device-seconds 1663

BUNDLE is the folder a ``watch``/``collect`` call returned: ``summary.json``, ``e2e.log`` (its first two lines are
the card as nvidia-smi names it and the commit) and ``e2e_bundle.tgz`` (the run's ``run/metrics.jsonl`` inside). The
output is the job's summary with three changes: ``distill_metrics``, ``evaluation`` and ``targets_met`` recomputed
from the bundled metrics and evaluation records by tools/e2e.py's own functions (so a record written by an older
e2e.py gains what the current one adds, such as each stage's seconds or the chance level of answer agreement), and a
``lease`` key: the
card, its memory and driver, the commit, versions, the device calls, the session's device seconds, and per stage the
seconds, the first step's seconds, the median tokens/s and the trainer's own held-out KL / top-1 at its end. Every
absolute path is cut to its last part (committed JSON carries no machine paths); the file is written atomically.
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
import tarfile
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gendistill.io import atomic_write_json, portable_paths  # noqa: E402

E2E = runpy.run_path(str(Path(__file__).with_name("e2e.py")))
METRICS_MEMBER = "run/metrics.jsonl"


def unpack_bundle(bundle: Path, dest: Path) -> Path:
    """``BUNDLE/e2e_bundle.tgz`` unpacked into ``dest`` (tarfile's ``data`` filter: no links out, no absolute
    names); refused without ``run/metrics.jsonl`` inside."""
    archive = bundle / "e2e_bundle.tgz"
    if not hasattr(tarfile, "data_filter"):  # Python 3.10.12 / 3.11.4 and later
        raise SystemExit("error: tools/lease_record.py needs a Python with tarfile's data filter (3.10.12, 3.11.4 or "
                         "later)")
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(dest, filter="data")
    except tarfile.FilterError as e:
        raise SystemExit(f"error: {archive}: refused an unsafe member ({e}); nothing of it is used") from None
    except (OSError, tarfile.TarError) as e:
        raise SystemExit(f"error: {archive}: not a readable .tgz ({e})") from None
    if not (dest / METRICS_MEMBER).is_file():
        raise SystemExit(f"error: {archive}: no {METRICS_MEMBER} inside (was the distillation started?)")
    return dest


def stage_record(metrics: dict[str, Any]) -> dict[str, Any]:
    """Per stage: seconds, first step's seconds, median tokens/s and the trainer's last held-out figures."""
    out: dict[str, Any] = {}
    for stage, m in metrics.items():
        rec = {k: m[k] for k in ("seconds", "first_step_seconds", "median_tokens_per_s", "steps", "tokens") if k in m}
        if m.get("eval_fidelity"):
            step, kl, top1 = m["eval_fidelity"][-1]
            rec["trainer_heldout_at_end"] = {"step": step, "eval_kl": kl, "eval_top1": top1}
            if m.get("eval_tokens"):
                rec["trainer_heldout_at_end"]["eval_tokens"] = m["eval_tokens"]
        out[stage] = rec
    return out


def lease_record(bundle: Path, calls: list[str], versions: str, device_seconds: float | None,
                 day: str, notes: list[str] | None = None) -> dict[str, Any]:
    """The committed result: the bundle's summary, its stage metrics recomputed, and the ``lease`` key."""
    try:
        summary = json.loads((bundle / "summary.json").read_text())
        head = (bundle / "e2e.log").read_text().splitlines()[:2]
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {bundle}: no readable summary.json and e2e.log ({e})") from None
    if not summary.get("complete"):
        raise SystemExit(f"error: {bundle / 'summary.json'}: the job did not finish (complete is not true)")
    with tempfile.TemporaryDirectory() as tmp:
        job = unpack_bundle(bundle, Path(tmp))
        summary["distill_metrics"] = E2E["_stage_metrics"](job / METRICS_MEMBER)
        if (job / "eval" / "base" / "results.json").is_file():
            summary["evaluation"] = E2E["_evaluation_summary"](job / "eval")
            summary["targets_met"] = E2E["_targets"](summary, summary["budgets"][-1]["stage"])
    card = [part.strip() for part in head[0].split(",")] if head else [""]  # nvidia-smi: name, memory, driver
    summary["lease"] = {
        "card": card[0],
        "card_memory": card[1] if len(card) > 1 else None,
        "driver": card[2] if len(card) > 2 else None,
        "commit": head[1].strip() if len(head) > 1 else None,
        "versions": versions,
        "date": day,
        "calls": calls,
        "device_seconds_session": device_seconds,
        "stages": stage_record(summary["distill_metrics"]),
        **({"notes": notes} if notes else {}),
        "source": "tools/lease_record.py: the bundle's summary.json, run/metrics.jsonl and the head of e2e.log",
    }
    return portable_paths(summary)


def check_replaceable(out: Path) -> None:
    """``out`` may be written: it does not exist, or it is an end-to-end result (a JSON object with ``complete``, as
    tools/e2e.py writes and this tool rewrites). Any other file is the user's, and is refused, untouched."""
    if not out.exists():
        return
    try:
        data = json.loads(out.read_text()) if out.is_file() else None
    except (OSError, ValueError):
        data = None
    ok = isinstance(data, dict) and "complete" in data
    if not ok:
        raise SystemExit(f"error: --out {out}: exists and is not an end-to-end result file; refusing to replace it")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path, help="the folder a device_e2e.sh watch/collect call brought back")
    ap.add_argument("--out", type=Path, required=True, help="the JSON to write (docs/results/e2e_<recipe>_<card>.json)")
    ap.add_argument("--call", action="append", default=[], help="one device call as run (repeatable, in order)")
    ap.add_argument("--versions", default="", help="the versions line the setup call printed")
    ap.add_argument("--device-seconds", type=float, default=None, help="the session's device time at the end")
    ap.add_argument("--date", default=date.today().isoformat(), help="the lease's date (default: today)")
    ap.add_argument("--note", action="append", default=[], help="what a reader should know of the lease (repeatable)")
    args = ap.parse_args()
    check_replaceable(args.out)
    record = lease_record(args.bundle, args.call, args.versions, args.device_seconds, args.date, args.note)
    atomic_write_json(args.out, record)
    stages = record["lease"]["stages"]
    print(f"wrote {args.out}: {record['lease']['card']}, commit {record['lease']['commit']}, "
          + ", ".join(f"{s} {r.get('seconds')} s" for s, r in stages.items()))


if __name__ == "__main__":
    main()
