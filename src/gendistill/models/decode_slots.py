"""Decode slots: static decode buffers and their captured CUDA graph, kept for the next batch of the same shape.

A CUDA-graphed decode step (:class:`gendistill.models.decoding.GraphStep`) reads and writes fixed buffers, so it can
serve any later batch whose cache fits them: the batch's prefilled cache is copied in (rows ``[0, B)``, columns
``[0, W)``) and the captured graph replays from its first step. Capturing costs a few eager steps of host time
(docs/results.md section 9b: 110-160 ms on an H100, against ~1.2 ms for a replayed step of 50 rows); an evaluation
makes dozens of batches of a few shapes, so each shape is captured once instead of once a batch.

A slot has ``R`` rows and ``L`` columns (:meth:`DecodeSlots.shape`): with graphs, rows rounded up to a multiple of
:data:`ROW_STEP` or to a power of two, whichever is fewer (less than twice the batch's rows, whose count the memory
planner chose), and columns (prompt width + new tokens) to a multiple of :data:`COLUMN_STEP`, so batches of nearby
shapes share a slot; without graphs the batch's own shape (nothing to share, no padding work). Rows ``[B, R)`` of a
slot are placeholders: a pad token from position 0, attending to the slot's first columns (whatever they hold: finite
values of earlier batches), recurrent states zeroed; each row's attention and recurrence read only that row, so the
real rows' tokens are those of an unpadded batch. Columns past a
row's current one are masked (:func:`gendistill.models.decoding.make_step`), so what an earlier batch left there is
never read.

:class:`DecodeSlots` is the pool. Its graphs read the model's mixers' joined weights
(:func:`gendistill.layers.base.joined_weights`), so the pool keeps the joins it made for as long as it lives and
puts them in place only inside :meth:`DecodeSlots.active` (elsewhere the model runs on its live weights; joins made
anew, the model's weights having changed, drop every slot). It drops the least recently used slot when a new one
would take it past its byte budget (:data:`POOL_SHARE` of the GPU memory free when it was made). The evaluator keeps
one per model for all its tasks (:func:`gendistill.eval.runner.evaluate_model`); a ``generate`` call without one
makes its own.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import Cache, StaticLayer

from gendistill.devices import available_cuda_bytes
from gendistill.layers.base import TeacherShapedMixer, joined_weights, tensor_version
from gendistill.models.decoding import (
    DecodeState,
    GraphStep,
    cache_tensors_of,
    empty_static_layer,
    make_step,
    map_state_layer,
    row_cache_bytes,
    static_layer_kinds,
)

ROW_STEP = 64  # with graphs, a slot's rows: a multiple of this or a power of two (DecodeSlots.shape)
COLUMN_STEP = 256  # with graphs, a slot's columns: a multiple of this
POOL_SHARE = 0.25  # of the GPU memory free when a pool is made: its slots' byte budget
MAX_SLOTS = 8  # slots kept at most (off the GPU the only bound)


@dataclass
class DecodeSlot:
    """One slot: ``state`` (cache ``[R rows, L columns]``, ids/pos/start ``[R, 1]``, arange ``[L]``), its eager
    ``step`` and, once captured, its ``graph``; ``nbytes``: what its buffers (and graph outputs) hold."""

    rows: int
    columns: int
    state: DecodeState
    step: Callable[[], None]
    graph: GraphStep | None = None
    nbytes: int = 0
    kept: bool = True  # in the pool (False: a batch's own cache, :meth:`DecodeSlots.adopt`)
    eager_steps: int = 0  # decode steps run eagerly in it, over all its batches (the engine's capture rule reads it)


def _weights_state(model: Any) -> tuple:
    """Every parameter and buffer of ``model``: which tensor, where, its dtype and its version (an in-place edit bumps
    it)."""
    return tuple((id(t), t.data_ptr(), t.dtype, tensor_version(t))
                 for t in (*model.parameters(), *model.buffers()))


def _slot_bytes(state: DecodeState, vocab: int) -> int:
    held = sum(t.numel() * t.element_size() for layer in state.cache.layers for t in cache_tensors_of(layer))
    return held + state.ids.shape[0] * vocab * 8  # a graph's private pool keeps the step's fp32 logits and argmax


def copy_rows(dst: Cache, src: Cache, dst_rows: int, src_rows: int, columns: int | None,
              index: torch.Tensor | None = None) -> None:
    """Copy rows of ``src`` (``src_rows`` rows) into rows ``[0, n)`` of ``dst`` (``dst_rows`` rows): ``index`` ``[n]``
    picks them, in that order (default: all ``src_rows``); rows ``[n, dst_rows)`` of recurrent states are zeroed.
    Attention layers: ``columns`` of keys and values (None: all of ``src``'s) and the write position (a dynamic
    layer's: its length)."""
    n = src_rows if index is None else int(index.numel())

    def pick(t: torch.Tensor) -> torch.Tensor:
        return t if index is None else t.index_select(0, index)

    for i, (d, s) in enumerate(zip(dst.layers, src.layers, strict=True)):
        if isinstance(d, StaticLayer):
            w = s.keys.shape[-2] if columns is None else columns
            d.keys[:n, :, :w].copy_(pick(s.keys[:, :, :w]))
            d.values[:n, :, :w].copy_(pick(s.values[:, :, :w]))
            if isinstance(s, StaticLayer):
                d.cumulative_length.copy_(s.cumulative_length)
            else:
                d.cumulative_length.fill_(w)
            continue
        dts, sts = cache_tensors_of(d), cache_tensors_of(s)
        if len(dts) != len(sts):
            raise RuntimeError(f"decode slot: cache layer {i} holds {len(dts)} tensors, the batch's {len(sts)}")
        for dt, st in zip(dts, sts):
            if dt.dim() > 0 and dt.shape[0] == dst_rows and st.shape[0] == src_rows and dt.shape[1:] == st.shape[1:]:
                dt[:n].copy_(pick(st))  # a per-row state
                if n < dst_rows:
                    dt[n:].zero_()
            elif dt.shape == st.shape:
                dt.copy_(st)
            else:
                raise RuntimeError(f"decode slot: cache layer {i} has a tensor {tuple(dt.shape)}, the batch's "
                                   f"{tuple(st.shape)}")


def _empty_cache(template: Cache, config: Any, n: int, rows: int, columns: int) -> Cache:
    """A cache of ``rows`` rows shaped like ``template`` (``n`` rows): attention layers static with ``columns`` zero
    columns, recurrent layers' per-row states zeros (their other tensors copied)."""
    layers = []
    for src, attention in static_layer_kinds(template, config, "decode slot"):
        if attention:
            layers.append(empty_static_layer(src.keys, src.values, rows, columns, 0))
        else:
            layers.append(map_state_layer(
                src, lambda t: t.new_zeros((rows, *t.shape[1:])) if t.shape[0] == n else t.clone()))
    return Cache(layers=layers)


@dataclass
class DecodeSlots:
    """The pool of :class:`DecodeSlot` of one model; as a context it is closed (slots and joins dropped) on exit.

    ``graphs``: capture decode steps (default: when the model is on CUDA); off, slots still hold each batch's buffers
    (the same code path, the batch's own shape). ``budget``: bytes the slots may hold (default on a GPU: :data:`POOL_SHARE` of its memory free
    when the pool is made; elsewhere unbounded, :data:`MAX_SLOTS` the only bound)."""

    model: Any = field(repr=False)
    graphs: bool | None = None
    budget: int | None = None
    slots: OrderedDict = field(default_factory=OrderedDict, repr=False)  # (rows, columns) -> slot, least recent 1st
    joins: dict = field(default_factory=dict, repr=False)  # mixer -> its joined weights, read by the graphs
    weights: tuple = field(default=(), repr=False)  # the model's tensors when the slots' graphs were captured

    def __post_init__(self) -> None:
        device = next(self.model.parameters()).device
        if self.graphs is None:
            self.graphs = device.type == "cuda"
        if self.budget is None and device.type == "cuda":
            self.budget = int(POOL_SHARE * available_cuda_bytes(device))

    @contextlib.contextmanager
    def active(self) -> Iterator[DecodeSlots]:
        """The block in which batches decode in these slots: the model's mixers on the pool's joined weights.

        A graph reads the memory of the tensors it was captured with: when any parameter or buffer of the model was
        replaced, moved or edited in place since (:func:`_weights_state`), every slot is dropped first. Inside
        another :func:`~gendistill.layers.base.joined_weights` block the mixers read that block's joins, which end
        with it: the slots are dropped when this block ends."""
        state = _weights_state(self.model)
        if state != self.weights:
            self.slots.clear()
            self.weights = state
        with joined_weights(self.model, kept=self.joins):
            foreign = any(m._joined is not None and m._joined is not self.joins.get(m)
                          for m in self.model.modules() if isinstance(m, TeacherShapedMixer))
            try:
                yield self
            finally:
                if foreign:
                    self.slots.clear()

    def close(self) -> None:
        """Drop every slot and the joins (graphs first: they read the joins)."""
        self.slots.clear()
        self.joins.clear()

    def __enter__(self) -> DecodeSlots:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.slots.values())

    def shape(self, rows: int, columns: int) -> tuple[int, int]:
        """The slot shape ``(R, L)`` a batch of ``rows`` rows and ``columns`` cache columns decodes in: with graphs,
        ``R`` the smaller of ``rows`` rounded up to a multiple of :data:`ROW_STEP` and to a power of two (never twice
        the batch: a few rows of long prompts, whose batch size memory decided, are not padded to 64), ``L`` rounded
        up to a multiple of :data:`COLUMN_STEP`."""
        if not self.graphs:
            return rows, columns
        r = min(-(-rows // ROW_STEP) * ROW_STEP, 1 << (rows - 1).bit_length())
        return r, -(-columns // COLUMN_STEP) * COLUMN_STEP

    def estimate(self, rows: int, columns: int) -> int:
        """Bytes a new slot of shape ``(rows, columns)`` would hold (attention K/V and recurrent states)."""
        attention, recurrent = row_cache_bytes(self.model, columns)
        return rows * (attention + recurrent + self.model.config.vocab_size * 8)

    def make_room(self, rows: int, columns: int, keep: DecodeSlot | None = None) -> None:
        """Before a batch of this shape allocates anything: drop least recently used slots (never ``keep``) until a
        new slot for it would fit the budget; nothing when a slot of its shape exists."""
        key = self.shape(rows, columns)
        if key in self.slots:
            return
        need = self.estimate(*key)
        for k in list(self.slots):
            over = self.budget is not None and self.nbytes + need > self.budget
            if not over and len(self.slots) < MAX_SLOTS:
                break
            if self.slots[k] is not keep:
                del self.slots[k]

    def _slot(self, template: Cache, n: int, rows: int, columns: int, keep: DecodeSlot | None = None) -> DecodeSlot:
        """The slot for ``rows`` rows and ``columns`` columns, made (shaped like ``template``, ``n`` rows) if new."""
        key = self.shape(rows, columns)
        slot = self.slots.get(key)
        if slot is None:
            self.make_room(rows, columns, keep)
            cache = _empty_cache(template, self.model.config, n, *key)
            device = next(self.model.parameters()).device
            state = DecodeState(cache=cache, ids=torch.zeros((key[0], 1), dtype=torch.long, device=device),
                                pos=torch.zeros((key[0], 1), dtype=torch.long, device=device),
                                arange=torch.arange(key[1], device=device),
                                start=torch.zeros((key[0], 1), dtype=torch.long, device=device))
            slot = DecodeSlot(*key, state=state, step=make_step(self.model, state, keep_logits=False),
                              nbytes=_slot_bytes(state, self.model.config.vocab_size))
            self.slots[key] = slot
        self.slots.move_to_end(key)
        return slot

    def load(self, cache: Cache, first: torch.Tensor, real: torch.Tensor, width: int, columns: int,
             pad: int) -> DecodeSlot:
        """The slot a prefilled batch decodes in, with the batch copied in: ``cache`` (``B`` rows, keys of ``width``
        columns, left-padded), ``first`` ``[B, 1]`` each row's first new token, ``real`` ``[B]`` its prompt tokens,
        ``columns`` = ``width`` + new tokens. Placeholder rows get ``pad``."""
        n = first.shape[0]
        slot = self._slot(cache, n, n, columns)
        copy_rows(slot.state.cache, cache, slot.rows, n, width)
        st = slot.state
        st.ids[:n].copy_(first)
        st.pos[:n, 0].copy_(real)
        st.start[:n, 0].copy_(width - real)
        if n < slot.rows:
            st.ids[n:].fill_(pad)
            st.pos[n:].zero_()
            st.start[n:].zero_()
        return slot

    def adopt(self, cache: Cache, first: torch.Tensor, real: torch.Tensor, width: int, columns: int) -> DecodeSlot:
        """A slot over a batch's own static cache (``columns`` columns, prefilled one row at a time by
        :func:`~gendistill.models.decoding.prefill_rows`), not kept in the pool: the batch planner counted one static
        cache for such a batch (long prompts), so it is neither copied nor padded."""
        n = first.shape[0]
        state = DecodeState(cache=cache, ids=first.clone(), pos=real.reshape(n, 1).clone(),
                            arange=torch.arange(columns, device=first.device), start=(width - real).reshape(n, 1))
        return DecodeSlot(n, columns, state=state, step=make_step(self.model, state, keep_logits=False), kept=False)

    def move(self, slot: DecodeSlot, index: torch.Tensor, pad: int) -> DecodeSlot:
        """Rows ``index`` ``[n]`` of ``slot`` into a slot of fewer rows: the rows' caches, positions and next tokens, in
        that order. With graphs the new slot has at least :data:`ROW_STEP` rows; ``slot`` itself is returned when no
        slot is smaller or it is an adopted cache (:meth:`adopt`)."""
        n = int(index.numel())
        if not slot.kept:  # a batch's own cache: the plan holds no second one
            return slot
        # with graphs a smaller slot has at least ROW_STEP rows: a step of that many rows costs its launches, not its
        # rows (a replayed one 1.2 ms for HellaSwag's 50, docs/results.md 9b), a new slot a capture, and the larger
        # slot's memory is there; so a slot of up to ROW_STEP rows keeps its finished ones
        rows = max(n, min(ROW_STEP, slot.rows)) if self.graphs else n
        if self.shape(rows, slot.columns)[0] >= slot.rows:
            return slot
        self.make_room(rows, slot.columns, keep=slot)
        dst = self._slot(slot.state.cache, slot.rows, rows, slot.columns, keep=slot)
        copy_rows(dst.state.cache, slot.state.cache, dst.rows, slot.rows, None, index)
        for name in ("ids", "pos", "start"):
            d, s = getattr(dst.state, name), getattr(slot.state, name)
            d[:n].copy_(s.index_select(0, index))
            if n < dst.rows:
                d[n:].fill_(pad if name == "ids" else 0)
        return dst
