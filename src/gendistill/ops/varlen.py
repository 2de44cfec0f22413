"""Packed documents (``cu_seqlens``) for the pure-PyTorch recurrences: run an op on each document separately."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def over_sequences(
    fn: Callable[..., tuple[torch.Tensor, torch.Tensor | None]],
    tensors: Sequence[torch.Tensor],
    cu_seqlens: torch.LongTensor,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Call ``fn(*[t[:, start:end] for t in tensors], initial_state=..., output_final_state=..., **kwargs)`` per document.

    Args:
        tensors: per-token inputs ``[1, T, ...]`` (packed sequences need batch size 1).
        cu_seqlens: ``[N + 1]`` document boundaries.  initial_state: ``[N, ...]`` one state per document, or None.

    Returns:
        ``(o [1, T, ...], final states [N, ...] or None)``: outputs stitched back together, states stacked.
    """
    if tensors[0].shape[0] != 1:
        raise ValueError(f"packed sequences (cu_seqlens) need batch size 1, got {tensors[0].shape[0]}")
    bounds = cu_seqlens.tolist()
    outs, states = [], []
    for n, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        h0 = None if initial_state is None else initial_state[n : n + 1]
        o_n, s_n = fn(*(t[:, start:end] for t in tensors), initial_state=h0, output_final_state=output_final_state,
                      **kwargs)
        outs.append(o_n)
        states.append(s_n)
    return torch.cat(outs, dim=1), (torch.cat(states, dim=0) if output_final_state else None)
