"""Packed documents (``cu_seqlens``): run a pure-PyTorch recurrence on each document separately
(:func:`over_sequences`), and hand fla's chunked kernels a padded batch as one packed row (:func:`call_as_one_row`)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch

from gendistill.ops.backend import fla_split_guard


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


def call_as_one_row(fn: Callable[..., tuple[torch.Tensor, Any]], tensors: Sequence[torch.Tensor], *,
                    cu_seqlens: torch.Tensor | None = None, **kwargs) -> tuple[torch.Tensor, Any]:
    """Call fla's chunked ``fn(*tensors, cu_seqlens=..., **kwargs)`` with ``B`` rows of ``T`` tokens (no
    ``cu_seqlens``: a padded batch, an evaluation's prefill) as one packed row of ``B * T`` tokens with a bound every
    ``T`` (:func:`row_bounds`, also passed as ``cu_seqlens_cpu``): the same function, each row from its own initial
    state (``initial_state [B, ...]`` is per sequence either way). fla's cumulative-sum kernels put the batch into
    their autotuning key and compile it in as a constant, so batches of many sizes would each compile (and, under
    gendistill's exact-key kernel configurations, autotune) new variants; packed, every batch has the keys of a
    packed training row. Called as is with ``cu_seqlens`` given, no tokens, or inside a CUDA-graph capture (copying
    new bounds to the device is not capturable: a capture of this path must be warmed up under capture conditions).
    A call of more than one sequence, packed here or given packed, runs with fla's intra-card split off
    (:func:`gendistill.ops.backend.fla_split_guard`: fla 0.6.0 splits such calls wrongly).

    ``tensors``: the per-token inputs ``[B, T, ...]``, in ``fn``'s positional order. Returns ``(o [B, T, ...],
    what fn returns second)``."""
    B, T = tensors[0].shape[:2]
    x = tensors[0]
    if cu_seqlens is not None or T == 0 or (x.is_cuda and torch.cuda.is_current_stream_capturing()):
        with fla_split_guard(cu_seqlens):
            return fn(*tensors, cu_seqlens=cu_seqlens, **kwargs)
    host, dev = row_bounds(B, T, x.device)
    with fla_split_guard(dev):
        o, rest = fn(*(t.reshape(1, B * T, *t.shape[2:]) for t in tensors), cu_seqlens=dev, cu_seqlens_cpu=host,
                     **kwargs)
    return o.view(B, T, *o.shape[2:]), rest


@functools.lru_cache(maxsize=64)
def row_bounds(rows: int, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``cu_seqlens`` ``[rows + 1]`` of ``rows`` packed rows of ``length`` tokens, int32 (the dtype of training's
    bounds, so fla's kernels see training's keys), on the host and on ``device``. Cached: one host-to-device copy
    (a stream sync) per shape instead of one per layer, and one tensor object for every layer, which fla's own
    identity-keyed cache of the chunk indices then serves. Made outside inference mode, so a training step may save
    them for its backward after an evaluation made them."""
    with torch.inference_mode(False):
        host = torch.arange(0, rows * length + 1, length, dtype=torch.int32)
        return host, host.to(device)
