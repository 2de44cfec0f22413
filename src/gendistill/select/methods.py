"""The four selection methods. Each takes a :class:`~gendistill.select.session.Session` and returns a
:class:`Selection`: every layer ranked (most worth keeping as attention first), the chosen set of ``budget`` layers,
and the scores the ranking came from.

* ``uniform``        every n-th layer (``every:L//K``, or ``ratio:K/L`` when that is not K layers); looks at no model.
* ``kl-guided``      from the all-KDA student aligned by stages 1-2, restore one layer at a time to attention, distill
                     briefly, rank by the held-out KL improvement over the all-KDA student distilled the same way
                     (arXiv 2512.20569).
* ``greedy-learned`` a learned per-layer mix alpha_i between the teacher's attention and the KDA output, trained with
                     a sparsity pressure; rank by alpha_i, keep the top K (see ``select.mixing``).
* ``beam-add``       grow the set one layer at a time keeping the best ``beam_width`` partial sets, each candidate
                     distilled briefly and scored on held-out KL + ``recall.weight`` x recall KL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from math import comb
from typing import Any

import torch

from gendistill.convert.layer_spec import parse_attention_layers
from gendistill.distill.config import TrainableConfig
from gendistill.errors import ConfigError
from gendistill.select.cache import Cost
from gendistill.select.mixing import add_sparsity_pressure, build_mixed_model, gate_values
from gendistill.select.session import Session


@dataclass
class Selection:
    ranked: list[int]
    chosen: list[int]
    scores: dict[str, Any] = field(default_factory=dict)


METHODS: dict[str, Callable[[Session], Selection]] = {}


def register_method(name: str):
    def deco(fn: Callable[[Session], Selection]) -> Callable[[Session], Selection]:
        METHODS[name] = fn
        return fn

    return deco


def _fmt(x: float) -> str:
    return f"{x:.4g}"


@register_method("uniform")
def uniform(s: Session) -> Selection:
    """Every n-th layer ending on the last one (``every:n``, n = L // K, the usual baseline and the recipes' default)
    when that gives exactly K layers; otherwise K evenly spaced layers (``ratio:K/L``)."""
    L, K = s.num_layers, s.cfg.budget
    rule = f"every:{L // K}" if K else "none"
    chosen = parse_attention_layers(rule, L)
    if len(chosen) != K:
        rule = f"ratio:{K / L!r}"
        chosen = parse_attention_layers(rule, L)
    return Selection(ranked=chosen + [i for i in range(L) if i not in chosen], chosen=chosen,
                     scores={"rule": rule})


@register_method("kl-guided")
def kl_guided(s: Session) -> Selection:
    L, K = s.num_layers, s.cfg.budget
    with s.bar("kl-guided", L + 1) as bar:
        base = s.score_set([])
        bar.advance(f"all-KDA KL {_fmt(base['heldout_kl'])}")
        per_layer = {}
        for i in range(L):
            rec = s.score_set([i])
            per_layer[i] = {"heldout_kl": rec["heldout_kl"], "kl_improvement": base["heldout_kl"] - rec["heldout_kl"],
                            "recall_kl": rec["recall_kl"], "recall_acc": rec["recall_acc"]}
            bar.advance(f"layer {i}: KL {_fmt(rec['heldout_kl'])}")
    ranked = sorted(range(L), key=lambda i: (-per_layer[i]["kl_improvement"], i))
    return Selection(ranked=ranked, chosen=sorted(ranked[:K]),
                     scores={"all_kda_heldout_kl": base["heldout_kl"], "per_layer": per_layer})


def beam_score(rec: dict[str, Any], recall_weight: float) -> float:
    """beam-add's score of one scored set (a cache record): held-out KL + ``recall_weight`` x recall KL."""
    return rec["heldout_kl"] + recall_weight * rec["recall_kl"]


@register_method("beam-add")
def beam_add(s: Session) -> Selection:
    L, K, B = s.num_layers, s.cfg.budget, s.cfg.beam_width
    beams: list[tuple[tuple[int, ...], float]] = [((), 0.0)]  # (layers in the order they were added, score)
    first: dict[int, float] = {}
    rounds = []
    with s.bar("beam-add", L) as bar:
        for size in range(1, K + 1):
            cands: dict[frozenset[int], tuple[int, ...]] = {}
            for order, _ in beams:  # best parent first: a set reached twice keeps the better parent's order
                for j in range(L):
                    if j not in order:
                        cands.setdefault(frozenset(order) | {j}, order + (j,))
            bar.set_total(bar.done + len(cands) + sum(max(0, L - size - k) * B for k in range(K - size)))
            scored = []
            for layers, order in cands.items():
                rec = s.score_set(sorted(layers))
                sc = beam_score(rec, s.cfg.recall.weight)
                scored.append((order, sc))
                if size == 1:
                    first[order[0]] = sc
                bar.advance(f"size {size} {sorted(layers)}: {_fmt(sc)}")
            scored.sort(key=lambda t: (t[1], sorted(t[0])))
            beams = scored[:B]
            rounds.append([{"attention_layers": sorted(o), "order": list(o), "score": sc} for o, sc in beams])
    best = list(beams[0][0]) if K else []
    rest = sorted((i for i in range(L) if i not in best), key=lambda i: (first.get(i, float("inf")), i))
    return Selection(ranked=best + rest, chosen=sorted(best),
                     scores={"score": "heldout_kl + recall.weight * recall_kl", "recall_weight": s.cfg.recall.weight,
                             "beams_per_size": rounds, "single_layer_scores": first})


@register_method("greedy-learned")
def greedy_learned(s: Session) -> Selection:
    L, K, cfg = s.num_layers, s.cfg.budget, s.cfg
    rec = s.cache.get("greedy-learned")
    if rec is None:
        s.aligned_state()  # timed as its own record, not as the mix's
        cost = Cost()
        with cost.timed():
            teacher, _ = s.teacher()
            aligned = s.candidate_student([])  # the aligned all-KDA student
            model = build_mixed_model(teacher, aligned, scale=cfg.mix_gate_lr / cfg.mix_lr).to(s.world.device)
            del aligned
            tr = TrainableConfig(groups=["kda"], include=[r"\.mix_logit$"])
            stage = s.stage("stage3a", cfg.mix_steps, cfg.mix_lr, tr)
            hooks = add_sparsity_pressure(model, cfg.sparsity, stage.grad_accum_for(s.world.world_size))
            try:
                s.message(f"greedy-learned: training the per-layer mix for {cfg.mix_steps} steps")
                cost.train_tokens += s.train(model, stage, "greedy-learned", progress=s.progress_mode)
            finally:
                for h in hooks:
                    h.remove()
            with torch.no_grad():
                alphas = gate_values(model)
            mixed_scores = s.score_model(model, cost)
        rec = {"alpha": alphas, "mixed_model": mixed_scores, "cost": cost.as_dict()}
        s.cache.put("greedy-learned", rec)
    s.used["greedy-learned"] = rec
    alphas = rec["alpha"]
    if len(alphas) != L:
        raise ConfigError(f"{s.cache.path}: cached gates for {len(alphas)} layers, the teacher has {L}")
    ranked = sorted(range(L), key=lambda i: (-alphas[i], i))
    return Selection(ranked=ranked, chosen=sorted(ranked[:K]),
                     scores={"alpha": {i: alphas[i] for i in range(L)}, "mixed_model": rec["mixed_model"],
                             "sparsity": cfg.sparsity})


def plan(cfg: Any, num_layers: int) -> dict[str, Any]:
    """What a method will do before it runs: candidate sets to score (beam-add: an upper bound, sets reached from two
    beams are scored once), optimizer steps and training tokens (student and teacher see each of them)."""
    L, K, B = num_layers, cfg.budget, cfg.beam_width
    tokens_per_step = cfg.batch_size * cfg.seq_len
    align = 2 * cfg.align_steps if cfg.method != "uniform" else 0
    if cfg.method == "uniform":
        cands, extra = 0, 0
    elif cfg.method == "kl-guided":
        cands, extra = L + 1, 0
    elif cfg.method == "beam-add":
        cands = sum(min(B, comb(L, size - 1)) * (L - size + 1) for size in range(1, K + 1))
        extra = 0
    else:  # greedy-learned: one model, no candidates
        cands, extra = 0, cfg.mix_steps
    steps = align + cands * cfg.candidate_steps + extra
    return {
        "method": cfg.method,
        "num_layers": L,
        "budget": K,
        "candidate_sets": cands,
        "optimizer_steps": steps,
        "train_tokens": steps * tokens_per_step,
        "scored_tokens_per_candidate": cfg.eval_sequences * cfg.seq_len,
    }
