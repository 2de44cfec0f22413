"""The four GenDistill stages as ``nn.Module`` objects whose ``forward(batch, denom)`` returns the loss of a
micro-batch already divided by ``denom`` (the masked-in token count of the whole global batch), so gradient
accumulation and data parallelism give exactly the gradient of one big batch.

Each module holds the student as a sub-module (what DDP wraps) and the teacher as a plain attribute (never
wrapped, never trained, run under ``torch.no_grad``).

* Stage 1 — one teacher pass with forward hooks on the attention of every replaced layer captures its input (after
  ``input_layernorm``) and output; each KDA mixer ``linear_attn`` gets the captured input and is trained to reproduce
  the captured output. No student forward beyond the mixers; the teacher pass stops after the last needed layer.
* Stage 2 — hooks on the teacher's decoder layers capture each block's input and output; each student KDA block
  (``input_layernorm -> linear_attn -> residual -> post_attention_layernorm -> mlp -> residual``) is fed the teacher's
  input and matched to the teacher's output.
* Stage 3a / 3b — full forward of both models to the final normed hidden state; the logit loss (forward KL, ...) is
  computed through the two vocabulary projections over the masked-in tokens only (fla's fused linear-KL kernel on
  CUDA, else in chunks: :func:`gendistill.distill.losses.logit_loss`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gendistill.distill.config import LossConfig, StageConfig
from gendistill.distill.fsdp import block_call, is_sharded, reshard_all
from gendistill.distill.losses import HIDDEN_LOSSES, logit_loss, masked_sum
from gendistill.distill.profiling import phase
from gendistill.distill.stage_facts import STAGES
from gendistill.errors import ConfigError
from gendistill.models.hybrid.modeling_hybrid import document_boundaries
from gendistill.models.packed_attention import PACKED_KEYS, packed_attention_kwargs


class _StopForward(Exception):
    """Raised from a hook to end the teacher's forward once every needed layer has run."""


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise ConfigError(f"{type(model).__name__}: no .model.layers; not a supported decoder model")
    return layers


def kda_layer_indices(student: nn.Module) -> list[int]:
    return [i for i, layer in enumerate(decoder_layers(student)) if hasattr(layer, "linear_attn")]


def _first(x: Any) -> torch.Tensor:
    return x[0] if isinstance(x, (tuple, list)) else x


def _hidden_arg(args: tuple, kwargs: dict) -> torch.Tensor:
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    return args[0]


def run_mixer(mixer: nn.Module, x: torch.Tensor, position_ids: torch.Tensor,
              cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """Run a KDA mixer on ``x [B, T, D]`` of packed documents exactly as the student's own forward does: when a row
    restarts its positions, the batch is flattened to one row and the document boundaries (every position restart
    and every row start) go in as ``cu_seqlens``, so the state and the short convolutions restart at each document.
    ``cu_seqlens`` ``[N + 1]``: those boundaries when the caller has them already (computed from ``position_ids``
    otherwise)."""
    B, T, D = x.shape
    cu = document_boundaries(position_ids, cu_seqlens)
    if cu is None:
        return _first(mixer(x, attention_mask=None))
    return _first(mixer(x.reshape(1, B * T, D), attention_mask=None, cu_seqlens=cu)).reshape(B, T, -1)


class _TeacherCapture:
    """Forward hooks on teacher modules ``{layer_index: module}``, recording (input hidden state, output)."""

    def __init__(self, modules: dict[int, nn.Module]):
        self.modules = modules
        self.last = max(modules) if modules else -1
        self.store: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.handles: list[Any] = []

    def __enter__(self) -> "_TeacherCapture":
        self.store = {}
        for i, m in self.modules.items():
            self.handles.append(m.register_forward_hook(self._hook(i), with_kwargs=True))
        return self

    def _hook(self, i: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            self.store[i] = (_hidden_arg(args, kwargs).detach(), _first(output).detach())
            if i == self.last:
                raise _StopForward

        return hook

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def packed_kwargs(batch: dict[str, Any]) -> dict[str, Any]:
    """The documents' boundaries of a prepared batch (:meth:`StageModule.prepare`) as the keyword arguments every
    model forward takes (transformers' flash-attention names; the hybrid's KDA layers read them too); empty for a
    batch that was not prepared (the models then find the boundaries in ``position_ids`` themselves)."""
    return {k: batch[k] for k in PACKED_KEYS if k in batch}


def teacher_forward_until(teacher: nn.Module, batch: dict[str, Any], capture: _TeacherCapture) -> None:
    base = getattr(teacher, "model", teacher)
    with torch.no_grad(), capture:
        try:
            base(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False,
                 **packed_kwargs(batch))
        except _StopForward:
            if is_sharded(teacher):  # the block that stopped the forward never reached its post-forward reshard
                reshard_all(teacher)


def _mixer_of(layer: nn.Module, x: torch.Tensor, position_ids: torch.Tensor,
              cu: torch.Tensor | None = None) -> torch.Tensor:
    """Stage 1's student computation on one block: its KDA mixer alone on the teacher's captured input."""
    return run_mixer(layer.linear_attn, x.to(_param_dtype(layer.linear_attn)), position_ids, cu)


def _kda_block(layer: nn.Module, h: torch.Tensor, position_ids: torch.Tensor,
               cu: torch.Tensor | None = None) -> torch.Tensor:
    """Stage 2's student computation on one KDA block fed the teacher's block input ``h [B, T, D]``."""
    h = h.to(_param_dtype(layer))
    return layer.feed_forward(h, run_mixer(layer.linear_attn, layer.input_layernorm(h), position_ids, cu))


class StageModule(nn.Module):
    """Base: ``forward(batch, denom) -> loss``; ``count(batch)`` is the number of tokens the loss averages over."""

    mask_key = "token_mask"

    def __init__(self, student: nn.Module, teacher: nn.Module, stage: StageConfig):
        super().__init__()
        self.student = student
        object.__setattr__(self, "teacher", teacher)  # not a sub-module: never wrapped, moved or trained
        self.stage = stage
        self.loss_cfg: LossConfig = stage.loss  # type: ignore[assignment]

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch[self.mask_key].sum())

    def prepare(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Work on the CPU batch before it goes to the device (the trainer calls it on its data thread): the
        documents' boundaries (:func:`gendistill.models.packed_attention.packed_attention_kwargs`), so that no forward
        has to find them on the device (a host sync each)."""
        return {**batch, **packed_attention_kwargs(batch["position_ids"])}


class Stage1Module(StageModule):
    def __init__(self, student: nn.Module, teacher: nn.Module, stage: StageConfig):
        super().__init__(student, teacher, stage)
        self.layers = pick_layers(student, stage)
        t_layers = decoder_layers(teacher)
        self.capture = _TeacherCapture({i: t_layers[i].self_attn for i in self.layers})
        self.fn = HIDDEN_LOSSES[self.loss_cfg.kind]

    def forward(self, batch: dict[str, torch.Tensor], denom: float) -> torch.Tensor:
        with phase("teacher_forward"):
            teacher_forward_until(self.teacher, batch, self.capture)
        s_layers = decoder_layers(self.student)
        mask = batch[self.mask_key]
        total = 0.0
        with phase("student_forward"):
            for i in self.layers:
                x, y = self.capture.store[i]
                out = block_call(s_layers[i], _mixer_of, x, batch["position_ids"], batch.get("cu_seq_lens_q"))
                total = total + masked_sum(self.fn(out, y), mask)
        self.capture.store = {}
        return total / (denom * len(self.layers))


class Stage2Module(StageModule):
    def __init__(self, student: nn.Module, teacher: nn.Module, stage: StageConfig):
        super().__init__(student, teacher, stage)
        self.layers = pick_layers(student, stage)
        t_layers = decoder_layers(teacher)
        self.capture = _TeacherCapture({i: t_layers[i] for i in self.layers})
        self.fn = HIDDEN_LOSSES[self.loss_cfg.kind]

    def block(self, i: int, h: torch.Tensor, position_ids: torch.Tensor,
              cu: torch.Tensor | None = None) -> torch.Tensor:
        return block_call(decoder_layers(self.student)[i], _kda_block, h, position_ids, cu)

    def forward(self, batch: dict[str, torch.Tensor], denom: float) -> torch.Tensor:
        with phase("teacher_forward"):
            teacher_forward_until(self.teacher, batch, self.capture)
        mask = batch[self.mask_key]
        total = 0.0
        with phase("student_forward"):
            for i in self.layers:
                x, y = self.capture.store[i]
                out = self.block(i, x, batch["position_ids"], batch.get("cu_seq_lens_q"))
                total = total + masked_sum(self.fn(out, y), mask)
        self.capture.store = {}
        return total / (denom * len(self.layers))


class Stage3Module(StageModule):
    """End-to-end logit distillation (3a on text, 3b on chat with completion-only masking)."""

    mask_key = "loss_mask"

    def prepare(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Adds ``loss_index`` ``[N]``: the flat positions of the masked-in tokens, found on the CPU (a ``nonzero`` on
        the device would stall the step until the GPU catches up)."""
        return {**super().prepare(batch), "loss_index": batch[self.mask_key].reshape(-1).nonzero().squeeze(-1)}

    def forward(self, batch: dict[str, torch.Tensor], denom: float) -> torch.Tensor:
        ids, pos = batch["input_ids"], batch["position_ids"]
        sel = batch.get("loss_index")
        if sel is None:
            sel = batch[self.mask_key].reshape(-1).nonzero().squeeze(-1)
        packed = packed_kwargs(batch)
        t_base = getattr(self.teacher, "model", self.teacher)
        with torch.no_grad(), phase("teacher_forward"):
            h_t = t_base(input_ids=ids, position_ids=pos, use_cache=False, **packed).last_hidden_state
            h_t = h_t.reshape(-1, h_t.shape[-1]).index_select(0, sel)
        s_base = self.student.model
        with phase("student_forward"):
            h_s = s_base(input_ids=ids, position_ids=pos, use_cache=False, **packed).last_hidden_state
            h_s = h_s.reshape(-1, h_s.shape[-1]).index_select(0, sel)
        labels = batch["labels"].reshape(-1).index_select(0, sel)
        with phase("logit_loss"):
            return self.hidden_loss(h_s, h_t, labels) / denom

    def hidden_loss(self, h_s: torch.Tensor, h_t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The stage's logit loss summed over ``n`` scored positions, from the student's and the teacher's final
        hidden states ``h_s``, ``h_t`` ``[n, D]`` and the labels ``[n]`` (the heads applied inside, in chunks or
        fused): what a training step and the held-out evaluation compute."""
        s_head, t_head = self.student.lm_head, self.teacher.lm_head
        dev = h_s.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else h_s.dtype
        return logit_loss(
            h_s,
            s_head.weight,
            h_t,
            t_head.weight,
            labels,
            self.loss_cfg,
            b_s=getattr(s_head, "bias", None),
            b_t=getattr(t_head, "bias", None),
            compute_dtype=dtype,
        )


def cast_mixer_inputs(student: nn.Module, dtype: torch.dtype) -> list[Any]:
    """Under bf16 autocast with fp32 master weights the residual stream (and so each KDA mixer's input) is fp32, and
    the mixer would hand fla's kernels fp32 q/k next to bf16 v. A forward pre-hook casts every ``linear_attn`` input
    to ``dtype`` (what autocast does to matmul inputs anyway) so the kernels see one dtype. Returns the hook handles
    (``.remove()`` them when done)."""

    def hook(module: nn.Module, args: tuple, kwargs: dict):
        if args:
            return (args[0].to(dtype), *args[1:]), kwargs
        kwargs["hidden_states"] = kwargs["hidden_states"].to(dtype)
        return args, kwargs

    return [
        layer.linear_attn.register_forward_pre_hook(hook, with_kwargs=True)
        for layer in decoder_layers(student)
        if hasattr(layer, "linear_attn")
    ]


def _param_dtype(m: nn.Module) -> torch.dtype:
    for p in m.parameters():
        return p.dtype
    return torch.float32


def pick_layers(student: nn.Module, stage: StageConfig) -> list[int]:
    """The KDA layers a stage 1 or 2 aligns: every one, or the recipe's ``layers`` (checked to be KDA layers)."""
    kda = kda_layer_indices(student)
    if not kda:
        raise ConfigError(f"{stage.name}: the student has no KDA (linear_attn) layers to align")
    if stage.layers is None:
        return kda
    bad = [i for i in stage.layers if i not in kda]
    if bad:
        raise ConfigError(f"{stage.name}.layers: {bad} are not KDA layers of the student (KDA layers: {kda})")
    return sorted(stage.layers)


#: the module of each kind of alignment (:data:`gendistill.distill.stage_facts.STAGES` says which stage aligns what)
STAGE_MODULES: dict[str, type[StageModule]] = {
    "mixer": Stage1Module,
    "block": Stage2Module,
    "logits": Stage3Module,
}


def build_stage_module(student: nn.Module, teacher: nn.Module, stage: StageConfig) -> StageModule:
    return STAGE_MODULES[STAGES[stage.name].aligns](student, teacher, stage)
