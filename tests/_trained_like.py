"""Trained-like students for equivalence tests.

A student fresh from conversion hides whole classes of bugs: its short convs are identities with zero bias (so a
conv that leaks across documents or reads padded positions computes the same thing), its output gate is a constant 1
(second ``g_proj`` matrix zero), its norm weight is 1 and its beta is ~0.5 for every token. :func:`make_trained_like`
moves every KDA parameter that conversion initialises to a value a trained model could have, so a fast path that
drops a mask, a reset or a cached state shows up in the outputs.

Usable by any test module::

    from tests._trained_like import make_trained_like
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def make_trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every KDA mixer of ``model`` (in place; returned for chaining) trained-like parameters, seeded:

    - q/k/v short convs: random taps around the identity (N(0, 0.3) on every tap, +1 on the last) and random biases
      N(0, 0.2) (a conv bias makes padded or foreign positions non-zero after the conv — the case real models have);
    - output gate: the second ``g_proj`` matrix N(0, 0.3 / sqrt(rank)) and its bias perturbed, so the gate depends on
      the token; norm weight 1 + N(0, 0.2);
    - decay and beta: ``A_log`` and ``dt_bias`` perturbed by N(0, 0.3), ``f_proj``/``b_proj`` scaled up so the decay
      and beta vary per token (beta spans roughly (0.1, 0.9) instead of sitting at 0.5).

    Initial recurrent states are not parameters: tests get non-zero ones by continuing from a cache.
    """
    from gendistill.layers.kda import KimiDeltaAttention

    g = torch.Generator().manual_seed(seed)

    def randn_like(p: torch.Tensor, std: float) -> torch.Tensor:
        return (torch.randn(p.shape, generator=g, dtype=torch.float32) * std).to(p.dtype)

    found = 0
    for module in model.modules():
        if not isinstance(module, KimiDeltaAttention):
            continue
        found += 1
        for conv in (module.q_conv1d, module.k_conv1d, module.v_conv1d):
            conv.weight.add_(randn_like(conv.weight, 0.3))
            if conv.bias is not None:
                conv.bias.copy_(randn_like(conv.bias, 0.2))
        rank = module.g_proj[1].weight.shape[1]
        module.g_proj[1].weight.copy_(randn_like(module.g_proj[1].weight, 0.3 / rank**0.5))
        module.g_proj[1].bias.add_(randn_like(module.g_proj[1].bias, 0.5))
        module.o_norm.weight.add_(randn_like(module.o_norm.weight, 0.2))
        module.A_log.add_(randn_like(module.A_log, 0.3))
        module.dt_bias.add_(randn_like(module.dt_bias, 0.3))
        module.f_proj[1].weight.mul_(5.0)
        module.b_proj.weight.mul_(20.0)
    if not found:
        raise ValueError("make_trained_like: the model has no KDA mixer")
    return model
