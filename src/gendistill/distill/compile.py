"""``torch.compile`` of the elementwise-heavy parts of every decoder block during training: the two RMSNorms and the
SwiGLU MLP of teacher and student (in the student's blocks the second norm and the MLP with both residual adds, as one
graph: :data:`FUSED`), and the per-head query/key RMSNorms of attention layers that have them (Qwen3's
``q_norm``/``k_norm``, run on ``[B, T, H, d_head]``: in eager mode six kernels over every query and key of every
attention layer). The norm's kernels and the MLP's activation and product each become one fused kernel, forward and
backward, and each block's first norm returns the autocast dtype (:data:`CAST_TO_AUTOCAST`). The mixers (fla's
Triton kernels, FlashAttention) stay as they are.

Each module class's ``forward`` (and the hybrid layer's ``feed_forward``) is compiled once and shared by every
instance (its parameters are graph inputs), so a 30-layer pair compiles a handful of graphs — seconds on a GPU
machine — not one per layer. One class serves in
several variants (the block norms on ``[B, T, D]`` and Qwen3's per-head q/k norms on ``[B, T, H, d_head]``; teacher
without and student with gradients; held-out evaluation; a stage that trains other parameters), more than Dynamo's
default of 8 compiled versions per function, after which it would run the rest eagerly: inside the block the limit
is :data:`RECOMPILE_LIMIT`.
:func:`compiled_blocks` installs the compiled ``forward`` on the instances for the duration of a ``with`` block and
removes it after, so the models the trainer returns are plain modules. ``tests/distill/test_distill_compile.py``
checks a compiled step against the eager one; ``benchmarks/train_parts.py`` times the part.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from torch import nn

#: the block parts compiled, by attribute path on a decoder layer (a path a layer lacks is skipped: Llama's attention
#: has no q_norm, a KDA layer no self_attn)
PARTS = ("input_layernorm", "post_attention_layernorm", "mlp", "self_attn.q_norm", "self_attn.k_norm")

#: a decoder layer method compiled as one graph in place of the parts it calls: the hybrid's ``feed_forward`` (both
#: residual adds, the second norm and the MLP), so the adds fuse into the norm's and the MLP's kernels instead of
#: running as eager kernels over the ``[B, T, D]`` residual stream (the teacher's transformers layers have none)
FUSED = {"feed_forward": ("post_attention_layernorm", "mlp")}

#: parts whose compiled ``forward`` returns the autocast dtype (bf16) instead of the residual stream's (fp32): the
#: block's first norm, whose output the mixer reads. In an attention layer its three projections would each cast the
#: fp32 output to bf16 again (a copy of ``[B, T, D]`` apiece); a KDA layer's input is cast once by the trainer's
#: pre-hook (:func:`gendistill.distill.stages.cast_mixer_inputs`), a separate kernel that reads the fp32 output back.
#: Cast inside the norm's kernel there are no such copies, and the projections see the same bf16 values. What changes
#: is the attention layers' backward: their projections' input gradients are summed in bf16 (in a KDA layer they were
#: already; measured on one attention-like block: 1.13x the fp32 block's speed, the input gradient's error against
#: float64 2.65e-3 instead of 2.46e-3; docs/results.md section 8d)
CAST_TO_AUTOCAST = ("input_layernorm",)


#: a decoder layer's attention module, compiled whole (``compiled_blocks(attention=False)`` leaves it eager): its
#: projections, the rotary embedding, the layout copies around the attention kernel and the per-head q/k norms in one
#: graph. The rotary embedding and the copies around the kernel were about 30 ms of eager kernels in a stage-3a step of
#: the SmolLM2 pair (docs/results.md section 8d); compiled, the step ran 1.10-1.12x the eager-attention one on an H100,
#: and on a fresh machine compiling them added 3.6 s to a first step that came 44.5 s after process start (section 23)
ATTENTION = "self_attn"

#: Dynamo's compiled versions per function inside :func:`compiled_blocks` (its default is 8)
RECOMPILE_LIMIT = 64


def _autocast_output(fn):
    """``fn`` with its tensor output cast to the autocast dtype while autocast is on (unchanged outside it)."""

    @functools.wraps(fn)
    def cast(self, *args, **kwargs):
        out = fn(self, *args, **kwargs)
        device = out.device.type
        return out.to(torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else out

    return cast


@functools.cache
def _compiled_method(cls: type, name: str, cast: bool) -> object:
    fn = getattr(cls, name)
    return torch.compile(_autocast_output(fn) if cast else fn)


def block_part(layer: nn.Module, path: str) -> nn.Module | None:
    """The sub-module at the dotted ``path`` of ``layer`` (one of :data:`PARTS`), or None where the layer has none."""
    m: object = layer
    for name in path.split("."):
        m = getattr(m, name, None)
    return m if isinstance(m, nn.Module) else None


def _layers(model: nn.Module) -> nn.ModuleList:
    base = getattr(model, "model", model)
    return getattr(base, "layers", nn.ModuleList())


@contextlib.contextmanager
def compiled_blocks(*models: nn.Module, enabled: bool = True, fused: bool = True,
                    cast: bool = True, attention: bool = True) -> Iterator[int]:
    """Inside the block, the norms, MLPs and attention modules (:data:`ATTENTION`, each compiled whole) of ``models``'
    decoder layers and their final norm run compiled, the parts in :data:`CAST_TO_AUTOCAST` returning the autocast
    dtype. ``fused=False`` compiles the parts apart even where a layer has a :data:`FUSED` method, ``cast=False``
    keeps every part's output dtype, ``attention=False`` leaves the attention modules eager (the comparisons
    ``benchmarks/train_throughput.py --variants`` makes). Yields how many modules and methods were switched (0 when
    ``enabled`` is False)."""
    switched: list[tuple[nn.Module, str]] = []
    limit = contextlib.ExitStack()
    try:
        if enabled:
            current = torch._dynamo.config.recompile_limit
            limit.enter_context(torch._dynamo.config.patch(recompile_limit=max(current, RECOMPILE_LIMIT)))
            for model in models:
                base = getattr(model, "model", model)
                parts: list[tuple[nn.Module, str, bool]] = []
                for layer in _layers(model):
                    methods = [name for name in FUSED if fused and callable(getattr(type(layer), name, None))]
                    inside = {path for name in methods for path in FUSED[name]}
                    paths = PARTS
                    if attention and block_part(layer, ATTENTION) is not None:
                        paths = (*PARTS, ATTENTION)
                        inside |= {path for path in PARTS if path.startswith(ATTENTION + ".")}
                    parts += [(layer, name, False) for name in methods]
                    parts += [(m, "forward", cast and path in CAST_TO_AUTOCAST) for path in paths
                              if path not in inside and (m := block_part(layer, path)) is not None]
                if isinstance(getattr(base, "norm", None), nn.Module):
                    parts.append((base.norm, "forward", False))
                for m, name, to_autocast in parts:
                    # an instance attribute, removed on exit
                    setattr(m, name, _compiled_method(type(m), name, to_autocast).__get__(m))
                    switched.append((m, name))
        yield len(switched)
    finally:
        for m, name in switched:
            delattr(m, name)
        limit.close()
