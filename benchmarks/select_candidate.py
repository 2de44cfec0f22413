"""What one candidate set of ``gendistill select-layers`` costs to build and to score, on the card.

beam-add scores hundreds of attention-layer sets, each as a fresh student: the teacher converted with the set kept as
attention (``convert_teacher``), then every weight but the kept attention replaced by the aligned all-KDA student's
(``gendistill.select.session.candidate_from``). The conversion's random initialisation is thrown away, so where it runs
is a choice: on the host (then copied to the card: how the first lease ran, docs/results.md section 14) or on the card
(what ``candidate_from`` does by default). This times both on random weights of a teacher's shape, checks that they
give the same student bit for bit, and times the score's forward passes beside them (held-out KL over ``--eval-seqs``
sequences of ``--seq`` tokens: teacher and student forward under bf16 autocast), so the table says what share of a set
the build is.

    python benchmarks/select_candidate.py --config smollm2-135m --sets 8 --out runs/select_candidate.json
    python benchmarks/select_candidate.py --tiny --sets 3              # CPU smoke test

Prints one table; ``--out`` writes the figures as JSON (medians in ms; card, versions).
"""

from __future__ import annotations

import argparse
import platform
import random
import runpy
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

THROUGHPUT = runpy.run_path(str(ROOT / "benchmarks" / "train_throughput.py"), run_name="select_candidate")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=THROUGHPUT["CONFIGS"], default="smollm2-135m")
    ap.add_argument("--tiny", action="store_true", help="4 small layers (a CPU smoke test)")
    ap.add_argument("--sets", type=int, default=8, help="random layer sets timed (sizes 1 to 7)")
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--eval-seqs", type=int, default=16)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    from transformers import AutoModelForCausalLM

    from gendistill.select.session import candidate_from, converted_student

    cfg = THROUGHPUT["model_config"](a.config, a.tiny)
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(cfg).to(device=device, dtype=torch.bfloat16).eval()
    aligned_model = converted_student(teacher, [], device, seed=0)  # stands in for the aligned all-KDA student
    aligned = {k: v.detach().clone() for k, v in aligned_model.state_dict().items()}
    del aligned_model
    L = cfg.num_hidden_layers
    rng = random.Random(0)
    sets = [sorted(rng.sample(range(L), min(1 + i % 7, L))) for i in range(a.sets + 1)]  # the first: warm-up
    ids = torch.randint(0, cfg.vocab_size, (a.eval_seqs, a.seq), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    times: dict[str, list[float]] = {"build_host": [], "build_device": [], "score_forward": []}
    identical = True
    for i, layers in enumerate(sets):
        built = {}
        for name, on_device in (("build_host", False), ("build_device", True)):
            _sync(device)
            t0 = time.perf_counter()
            built[name] = candidate_from(teacher, layers, aligned, device, 0, None if on_device else "cpu")
            _sync(device)
            if i:
                times[name].append((time.perf_counter() - t0) * 1e3)
        host, dev = (built[n].state_dict() for n in ("build_host", "build_device"))
        identical &= host.keys() == dev.keys() and all(host[k].equal(dev[k]) for k in host)
        student = built["build_device"]
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad(), autocast:
            for row in ids.split(8):
                t = teacher(row).logits.float().log_softmax(-1)
                s = student(row).logits.float().log_softmax(-1)
                (t.exp() * (t - s)).sum(-1).mean().item()
        _sync(device)
        if i:
            times["score_forward"].append((time.perf_counter() - t0) * 1e3)
        del built, student
    med = {k: round(statistics.median(v), 1) for k, v in times.items()}
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"{'tiny' if a.tiny else a.config}, {card}: {a.sets} random sets of 1-7 attention layers of {L}")
    print(f"{'part (ms, median)':<30}{'ms':>10}")
    for k, v in med.items():
        print(f"{k:<30}{v:>10}")
    print(f"build on the device vs on the host: {med['build_host'] / max(med['build_device'], 1e-9):.2f}x faster; "
          f"the same student bit for bit: {identical}")
    if a.out is not None:
        from gendistill.io import atomic_write_json, portable_command

        atomic_write_json(a.out, {
            "benchmark": "select_candidate", "config": "tiny" if a.tiny else a.config, "card": card,
            "torch": torch.__version__, "sets": a.sets, "eval_tokens": a.eval_seqs * a.seq, "median_ms": med,
            "all_ms": {k: [round(x, 1) for x in v] for k, v in times.items()}, "identical": identical,
            "command": portable_command(["python", "benchmarks/select_candidate.py",
                                         *(argv if argv is not None else sys.argv[1:])]),
        })
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
