"""Which parameters train: named groups plus include/exclude regexes over parameter names, on any ``nn.Module``.

Groups (matched against every name a parameter has, so a tied ``lm_head``/``embed_tokens`` weight is reached by
either name):

============  ===========================================================================================
``kda``        every parameter of the KDA mixers (``...linear_attn.*``)
``kda_new``    KDA mixer parameters not copied from the teacher (convs, gates, A_log, dt_bias, o_norm)
``attention``  the kept softmax-attention modules (``...self_attn.*``, q_norm/k_norm included)
``mlp``        every MLP (``...mlp.*``)
``norms``      block and final RMSNorms (``input_layernorm``, ``post_attention_layernorm``, ``model.norm``, ...)
``embeddings`` ``embed_tokens``
``lm_head``    ``lm_head``
============  ===========================================================================================

Selection = union of the groups and ``include`` regexes, minus ``exclude`` regexes (``re.search``). The groups'
patterns: :data:`gendistill.distill.stage_facts.GROUP_PATTERNS`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from gendistill.distill.config import TrainableConfig
from gendistill.distill.stage_facts import GROUP_PATTERNS
from gendistill.errors import ConfigError

@dataclass
class Selection:
    trainable: list[str]  # one canonical name per trainable parameter
    frozen: list[str]

    @property
    def n_trainable(self) -> int:
        return len(self.trainable)


def _names_by_param(model: nn.Module) -> list[tuple[nn.Parameter, list[str]]]:
    seen: dict[int, tuple[nn.Parameter, list[str]]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        seen.setdefault(id(p), (p, []))[1].append(name)
    return list(seen.values())


def apply_trainable(model: nn.Module, cfg: TrainableConfig, where: str = "trainable") -> Selection:
    """Set ``requires_grad`` on every parameter of ``model`` per ``cfg``. Raises ConfigError (naming ``where``) if a
    group or regex matches nothing, or if nothing would train."""
    entries = _names_by_param(model)
    patterns = [(f"groups[{i}] ({g!r})", re.compile(GROUP_PATTERNS[g])) for i, g in enumerate(cfg.groups)]
    patterns += [(f"include[{i}] ({p!r})", re.compile(p)) for i, p in enumerate(cfg.include)]
    excludes = [(f"exclude[{i}] ({p!r})", re.compile(p)) for i, p in enumerate(cfg.exclude)]
    hits = {label: 0 for label, _ in patterns + excludes}
    trainable, frozen = [], []
    for p, names in entries:
        sel = False
        for label, rx in patterns:
            if any(rx.search(n) for n in names):
                hits[label] += 1
                sel = True
        for label, rx in excludes:
            if any(rx.search(n) for n in names):
                hits[label] += 1
                sel = False
        p.requires_grad_(sel)
        (trainable if sel else frozen).append(names[0])
    for label, n in hits.items():
        if n == 0:
            raise ConfigError(f"{where}.{label}: matches no parameter of the student")
    if not trainable:
        raise ConfigError(f"{where}: selects no parameter to train")
    return Selection(trainable, frozen)


def no_weight_decay(name: str, p: torch.Tensor) -> bool:
    """A_log, dt_bias, norm weights, biases and other vectors get no weight decay."""
    leaf = name.rsplit(".", 1)[-1]
    return p.ndim < 2 or leaf in ("A_log", "dt_bias") or "norm" in name.lower() or leaf == "bias"


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups of the trainable parameters: with ``weight_decay``, and without it
    (:func:`no_weight_decay`)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if no_weight_decay(name, p) else decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups
