"""Agreement of our log-likelihood scorer with lm-evaluation-harness on ARC-Easy.

Both score the same requests — context ``"Question: {question}\\nAnswer:"``, continuation ``" {choice}"`` (lm-eval's
``arc_easy`` task format) — on the same loaded model: ours through ``gendistill.eval.loglik.score_requests``, lm-eval's
through ``HFLM.loglikelihood`` (``gendistill.eval.harness.make_lm``). lm-eval's task loader needs the hub, so the
requests are built here from ``shared/data/arc_easy_test.jsonl.gz`` and passed to HFLM as ``Instance`` objects; the
metric code below is lm-eval's (acc: argmax of summed log-probability; acc_norm: divided by the option's length in
characters).

    python benchmarks/lm_eval_agreement.py --model smollm2-135m-instruct --limit 200 --threads 1

Prints both accuracies, their difference in points, and the largest per-option log-probability difference.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from lm_eval.api.instance import Instance

    from gendistill.eval.harness import make_lm
    from gendistill.eval.loglik import mc_metrics, score_requests
    from gendistill.models.loading import load_model
    from gendistill.eval.task import select
    from gendistill.eval.tasks import get_task

    task = get_task("arc_easy")
    examples = select(task.load(), args.limit, args.seed)
    reqs, spans = [], []
    for ex in examples:
        pairs = [(f"Question: {ex.question}\nAnswer:", f" {c}") for c in ex.choices]
        spans.append((len(reqs), len(pairs)))
        reqs.extend(pairs)

    model, tok = load_model(args.model)
    t0 = time.perf_counter()
    ours = [r.logprob for r in score_requests(model, tok, reqs, show_progress=False)]
    t_ours = time.perf_counter() - t0

    lm = make_lm(model, tok, batch_size=args.batch_size)
    inst = [Instance(request_type="loglikelihood", doc={}, arguments=r, idx=i) for i, r in enumerate(reqs)]
    t0 = time.perf_counter()
    theirs = [float(lp) for lp, _ in lm.loglikelihood(inst, disable_tqdm=True)]
    t_theirs = time.perf_counter() - t0

    def accs(lls):
        a = n = 0.0
        for ex, (s, k) in zip(examples, spans):
            m = mc_metrics(lls[s : s + k], list(ex.choices), ex.answer_idx)
            a += m["acc"]
            n += m["acc_norm"]
        return a / len(examples), n / len(examples)

    oa, on = accs(ours)
    ta, tn = accs(theirs)
    diff = max(abs(a - b) for a, b in zip(ours, theirs))
    same_pred = sum(
        max(range(k), key=lambda i: ours[s + i]) == max(range(k), key=lambda i: theirs[s + i]) for s, k in spans
    ) / len(spans)
    out = {
        "model": args.model, "task": "arc_easy", "limit": len(examples), "seed": args.seed,
        "ours": {"acc": oa, "acc_norm": on, "seconds": round(t_ours, 1)},
        "lm_eval": {"acc": ta, "acc_norm": tn, "seconds": round(t_theirs, 1)},
        "diff_pp": {"acc": 100 * (oa - ta), "acc_norm": 100 * (on - tn)},
        "max_abs_logprob_diff": diff, "same_argmax_share": same_pred,
        "torch_threads": torch.get_num_threads(),
    }
    print(f"ARC-Easy, {len(examples)} questions (seed {args.seed}), model {args.model}")
    print(f"  ours    acc {100 * oa:.2f}  acc_norm {100 * on:.2f}   ({t_ours:.1f} s)")
    print(f"  lm-eval acc {100 * ta:.2f}  acc_norm {100 * tn:.2f}   ({t_theirs:.1f} s)")
    print(f"  difference (pp): acc {100 * (oa - ta):+.2f}  acc_norm {100 * (on - tn):+.2f}")
    print(f"  max |log p ours - log p lm-eval| over {len(reqs)} options: {diff:.2e}; same argmax on {100 * same_pred:.1f}%")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
