"""Encoding log-likelihood requests on the host: the ids lm-eval's rule gives (trailing context spaces to the
continuation; the whole string encoded, cut at the context's token count), computed by encoding every whole string
(the baseline) and by the tail rule of ``gendistill.eval.pair_encoding`` (each distinct context once, then only its
last two pre-tokens with each option), on the same requests of the built-in multiple-choice tasks, in one run.

Why: a few-shot task repeats a long context in every option (MMLU: four options after a ~3,000-character five-shot
context), and encoding those whole strings was most of the host's work in a log-likelihood evaluation, for each model.
Both methods must give identical ids (checked here on every request; ``tests/eval/test_pair_encoding.py`` checks the
rule on random requests for several tokenizers).

    python benchmarks/loglik_encoding.py [--tasks mmlu,hellaswag,arc_easy,boolq] [--limit 500] [--repeats 3]
        [--teacher smollm2-135m-instruct] [--out docs/results/loglik_encoding_cpu.json]

Run with ``TOKENIZERS_PARALLELISM=false`` for one-thread figures (as the lease scripts run); the JSON records it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from gendistill.eval.pair_encoding import encode_pairs  # noqa: E402
from gendistill.eval.task import select  # noqa: E402
from gendistill.eval.tasks import get_task  # noqa: E402
from gendistill.io import portable_command  # noqa: E402
from gendistill.teachers import _load_tokenizer, resolve_teacher  # noqa: E402


def requests_of(task_name: str, limit: int, seed: int) -> list[tuple[str, str]]:
    """The task's log-likelihood requests for its ``limit`` selected examples with their few-shot examples, as
    ``gendistill eval`` builds a multiple-choice task's by default (no chat template)."""
    task = get_task(task_name)
    pool = task.load("local")
    return [r for ex in select(pool, limit, seed) for r in (task.loglik_requests(ex, task.fewshot_for(ex, pool)) or [])]


def best_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default="mmlu,hellaswag,arc_easy,arc_challenge,piqa,winogrande,boolq")
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per method (the fastest counts)")
    ap.add_argument("--teacher", default="smollm2-135m-instruct", help="whose tokenizer")
    ap.add_argument("--out", default="docs/results/loglik_encoding_cpu.json")
    args = ap.parse_args()

    tok = _load_tokenizer(resolve_teacher(args.teacher))
    rows = []
    print(f"{'task':<14} {'requests':>8} {'whole s':>8} {'tail s':>8} {'speed-up':>8}  identical")
    for name in args.tasks.split(","):
        reqs = requests_of(name, args.limit, args.seed)
        whole = encode_pairs(tok, reqs, tail=False)
        fast = encode_pairs(tok, reqs)
        same = sum(a == b for a, b in zip(whole, fast))
        t_whole = best_seconds(lambda: encode_pairs(tok, reqs, tail=False), args.repeats)
        t_tail = best_seconds(lambda: encode_pairs(tok, reqs), args.repeats)
        row = {"task": name, "requests": len(reqs), "contexts": len({c for c, _ in reqs}),
               "context_chars_mean": round(sum(len(c) for c, _ in reqs) / max(1, len(reqs))),
               "whole_s": round(t_whole, 3), "tail_s": round(t_tail, 3), "speedup": round(t_whole / t_tail, 2),
               "identical": same, "of": len(reqs)}
        rows.append(row)
        print(f"{name:<14} {len(reqs):>8} {t_whole:>8.2f} {t_tail:>8.2f} {row['speedup']:>7.2f}x  {same}/{len(reqs)}")
        if same != len(reqs):
            raise SystemExit(f"{name}: the tail rule's ids differ from the whole-string ids on {len(reqs) - same} "
                             "requests")
    total_whole = sum(r["whole_s"] for r in rows)
    total_tail = sum(r["tail_s"] for r in rows)
    print(f"{'all':<14} {sum(r['requests'] for r in rows):>8} {total_whole:>8.2f} {total_tail:>8.2f} "
          f"{total_whole / total_tail:>7.2f}x")
    out = {"benchmark": "loglik_encoding", "teacher": args.teacher, "limit": args.limit, "seed": args.seed,
           "repeats": args.repeats, "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM", "unset"),
           "cpus": os.cpu_count(), "machine": platform.machine(), "rows": rows,
           "total": {"whole_s": round(total_whole, 3), "tail_s": round(total_tail, 3),
                     "speedup": round(total_whole / total_tail, 2)},
           "command": portable_command(sys.argv)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
