"""FSDP2 sharding of the student and the frozen teacher (``run.distributed: fsdp``).

Layout (``torch.distributed.fsdp.fully_shard``):

* **Student.** One FSDP unit per decoder block, plus a root unit :class:`ShardedRoot` that holds the student and owns
  what is left (embeddings, the final norm and the tied ``lm_head``). The stage modules do not call the student's
  ``forward``: stage 3 runs ``student.model`` and then the chunked KL through ``lm_head.weight``, stages 1-2 call a
  block's mixer / MLP directly. So the root's forward is the *whole* loss computation of a micro-batch
  (``root(stage_module, batch, denom)``): the root parameters stay gathered until the loss is computed, and the
  backward reduce-scatters every gradient, the chunked KL's ``lm_head`` gradient included. Stages 1-2 go through
  :func:`block_call`, a method registered with ``register_fsdp_forward_method`` on each block, so a block's
  parameters are gathered for its mixer alone, too.
* **Precision.** Master weights, gradients, optimizer state and gradient reductions stay fp32
  (``MixedPrecisionPolicy(param_dtype=None, reduce_dtype=float32)``); bf16 compute comes from the trainer's autocast,
  exactly as on one GPU. All-gathering fp32 costs twice the communication of a bf16 all-gather but keeps ``A_log``,
  ``dt_bias`` and the norms in fp32 (a bf16 ``param_dtype`` would cast them too) and keeps the numerics identical to
  the one-GPU trainer.
* **Teacher.** Frozen, no gradients, no optimizer state: each decoder block is its own FSDP unit (gathered for its
  forward, resharded right after); embeddings, final norm and ``lm_head`` stay replicated (the chunked KL reads the
  teacher's ``lm_head.weight`` next to the student's).

Every tensor shape is unchanged by sharding from the caller's point of view: inside a unit's forward its parameters
are ordinary full tensors; outside they are ``DTensor`` shards (``Shard(0)`` over the ranks).
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gendistill.errors import ConfigError


def _fsdp():
    """FSDP2's API, imported where a sharded run uses it (a torch without it fails in :func:`check_support`)."""
    from torch.distributed.fsdp import (FSDPModule, MixedPrecisionPolicy, fully_shard,  # noqa: PLC0415
                                        register_fsdp_forward_method)  # (FSDP2 runs only)

    return FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method


class ShardedRoot(nn.Module):
    """The FSDP root over the student. ``forward(fn, *args)`` returns ``fn(*args)``: the stage module's loss runs
    inside the root's forward, so FSDP2 gathers the root-owned parameters for all of it."""

    def __init__(self, student: nn.Module):
        super().__init__()
        self.student = student

    def forward(self, fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
        return fn(*args)


def _block_call(self: nn.Module, fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
    out = fn(self, *args)
    # FSDP2 hooks its pre-backward on this output and warns that an in-place op on a view would skip it; stage 1's
    # mixer output is a reshape (a view) of the flattened packed batch: hand FSDP2 a tensor of its own
    return out.clone() if out._is_view() else out


def block_call(layer: nn.Module, fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
    """``fn(layer, *args)``; on a sharded block, through the block's registered FSDP forward method (its parameters
    are gathered before ``fn`` and resharded after, and its gradients reduce-scattered in backward)."""
    method = getattr(layer, "gendistill_call", None)
    return method(fn, *args) if method is not None else fn(layer, *args)


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    base = getattr(model, "model", model)
    return base.layers


def is_sharded(model: nn.Module) -> bool:
    FSDPModule = _fsdp()[0]
    return any(isinstance(m, FSDPModule) for m in model.modules())


def shard_student(student: nn.Module, device: torch.device) -> ShardedRoot:
    """Shard ``student`` in place (one unit per decoder block, the rest in the returned root) over all ranks of the
    default process group; its parameters move to ``device``."""
    _, MixedPrecisionPolicy, fully_shard, register = _fsdp()
    mp = MixedPrecisionPolicy(param_dtype=None, reduce_dtype=torch.float32)
    student.to(device)
    for layer in decoder_blocks(student):
        fully_shard(layer, mp_policy=mp)
        layer.gendistill_call = types.MethodType(_block_call, layer)
        register(layer, "gendistill_call")
    root = ShardedRoot(student)
    fully_shard(root, mp_policy=mp)
    return root


def shard_teacher(teacher: nn.Module, device: torch.device) -> nn.Module:
    """Shard the frozen teacher in place: each decoder block is an FSDP unit (no optimizer state ever exists for it);
    embeddings, final norm and lm_head stay replicated on every rank."""
    _, _, fully_shard, _ = _fsdp()
    teacher.to(device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    for layer in decoder_blocks(teacher):
        fully_shard(layer, reshard_after_forward=True)
    return teacher


def reshard_all(model: nn.Module) -> None:
    """Free the gathered parameters of every unit of ``model`` (after a forward that stopped part-way)."""
    FSDPModule = _fsdp()[0]
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a DTensor (a plain tensor as it is)."""
    return t.to_local() if hasattr(t, "to_local") else t


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (a collective: every rank must call it); a plain tensor as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict of a (possibly sharded) model on the CPU (a collective: every rank calls it; with
    ``cpu_offload`` DCP hands the gathered tensors to rank 0 only, the other ranks get ``{}``)."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions,  # noqa: PLC0415
                                                         get_model_state_dict)  # (FSDP2 runs only)

    if not is_sharded(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                               broadcast_from_rank0=False))


def unsharded_copy(model: nn.Module) -> nn.Module | None:
    """A plain CPU copy of a sharded transformers model (for ``save_pretrained``): built on the meta device from the
    model's config, then given the gathered weights. A collective: every rank must call it; rank 0 gets the copy,
    the others None."""
    sd = full_state_dict(model)
    if dist.get_rank() != 0:
        return None
    with torch.device("meta"):
        plain = type(model)(model.config)
    plain.load_state_dict(sd, strict=False, assign=True)
    if hasattr(plain, "tie_weights"):
        plain.tie_weights()
    missing = [n for n, p in plain.named_parameters() if p.is_meta]
    if missing:
        raise RuntimeError(f"unsharded copy: no weights for {missing[:5]}")
    for name, buf in list(plain.named_buffers()):
        if buf.is_meta:  # non-persistent buffers (rotary inv_freq): take them from the sharded model
            src = model.get_buffer(name)
            mod_name, _, attr = name.rpartition(".")
            owner = plain.get_submodule(mod_name) if mod_name else plain
            owner.register_buffer(attr, local(src).detach().cpu().clone(), persistent=False)
    return plain


def check_support() -> None:
    """One line instead of an ImportError deep in a run when this torch lacks what ``run.distributed: fsdp`` uses:
    FSDP2 with ``register_fsdp_forward_method`` and DCP's safetensors writer with ``save_distributed``."""
    try:
        from torch.distributed.checkpoint import HuggingFaceStorageWriter  # noqa: PLC0415  (what is checked here)
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method  # noqa: F401, PLC0415  (same)

        ok = "save_distributed" in inspect.signature(HuggingFaceStorageWriter).parameters
    except ImportError:
        ok = False
    if not ok:
        raise ConfigError(f"run.distributed: fsdp needs FSDP2 and DCP's safetensors checkpoints (tested with torch "
                          f"2.13); this torch {torch.__version__} lacks them: use ddp or a newer torch")


def init_single_process_group(device: torch.device) -> None:
    """A one-rank process group (FSDP2 needs one) when the run was not launched by torchrun."""
    if dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1,
                            device_id=device if device.type == "cuda" else None)
