"""Sharded checkpoints of an FSDP2 run with ``torch.distributed.checkpoint`` (DCP), pickle-free on disk.

A sharded checkpoint is the same folder as a plain one (``checkpoints/<stage>/step-00000120/``, written into
``.tmp-step-00000120/`` and renamed into place by rank 0, ``manifest.json`` last, see :mod:`checkpoint`), holding

- ``shard-<rank+1>-model-00001-of-00001.safetensors``  each rank's shards of the student's parameters (keys
  ``model.<fqn>``) and of the optimizer state (``optim.<fqn>.<exp_avg|exp_avg_sq|step>``), written by every rank
  at once with DCP's ``HuggingFaceStorageWriter(save_distributed=True)``; each file's safetensors metadata records
  where its pieces sit in the full tensors (``DCP_SHARDING_INFO``: offsets, JSON);
- ``optimizer.json``  parameter groups (by parameter name) and non-tensor optimizer state;
- ``rng-<rank>.safetensors``, ``state.json`` (``"sharded": true``, ``world_size``), ``manifest.json``.

**Why not DCP's default format.** ``dcp.save`` with the default ``FileSystemWriter`` writes a ``.metadata`` file with
``pickle.dump`` and tensors with ``torch.save``; ``FileSystemReader.read_metadata`` loads it with ``pickle.load``
(tensors with ``torch.load(weights_only=True)``), so resuming from a folder someone else wrote would unpickle
untrusted data. The safetensors writer/reader pair stores tensors and the sharding metadata as safetensors + JSON,
and ``HuggingFaceStorageReader.read_metadata`` rebuilds DCP's metadata from the safetensors headers: loading never
unpickles anything from disk (tested by making ``pickle.load(s)`` and ``torch.load`` raise during a resume). What
DCP still pickles is its *planning* messages between the ranks of the live process group (``gather_object`` /
``broadcast_object``), never file contents.

**Resharding.** The reader reads, for each tensor this rank needs, the overlapping slices of every saved shard
(``safe_open(...).get_slice``), so a checkpoint written by N ranks loads on M ranks (tested: 2 -> 2, 2 -> 1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gendistill.distill.checkpoint import CheckpointError, read_state, restore_rng, written_state
from gendistill.distill.checkpoint_state import param_groups_from_json
from gendistill.ownership import OutputError, check_free_space, tensor_bytes

_MODEL, _OPTIM = "model.", "optim."


def _first_line(e: BaseException) -> str:
    """One line for an error of any rank: DCP gathers every rank's exception into one ``CheckpointException`` (a
    ``BaseException`` whose text is every rank's traceback) raised on all ranks."""
    from torch.distributed.checkpoint.api import CheckpointException  # noqa: PLC0415  (sharded runs only)

    if isinstance(e, CheckpointException) and e.failures:
        rank, (exc, _) = sorted(e.failures.items())[0]
        return f"rank {rank}: {_first_line(exc)}"
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    from torch.distributed.checkpoint.state_dict import get_state_dict  # noqa: PLC0415  (sharded runs only)

    return get_state_dict(model, optimizer)  # sharded (DTensor) model and optimizer state, keyed by parameter name


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """``{alias: name}`` for every parameter reachable under two names (a tied ``lm_head.weight``)."""
    first: dict[int, str] = {}
    out = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            out[n] = first[id(p)]
        else:
            first[id(p)] = n
    return out


def flatten(model_sd: dict[str, Any], optim_sd: dict[str, Any],
            aliases: dict[str, str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """One flat ``{key: tensor}`` dict for DCP (``model.<fqn>``, ``optim.<fqn>.<name>``) and the JSON-able rest
    (parameter groups, non-tensor state, and ``aliases``: tied weights, e.g. ``lm_head.weight`` ->
    ``model.embed_tokens.weight``, stored once)."""
    tensors = {_MODEL + k: v for k, v in model_sd.items() if k not in aliases}
    other: dict[str, dict[str, Any]] = {}
    for fqn, st in optim_sd.get("state", {}).items():
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{_OPTIM}{fqn}.{name}"] = v
            else:
                other.setdefault(fqn, {})[name] = v
    return tensors, {"param_groups": optim_sd.get("param_groups", []), "other_state": other, "aliases": aliases}


def unflatten(tensors: dict[str, torch.Tensor], rest: dict[str, Any], names: list[str]) -> tuple[dict, dict]:
    """Inverse of :func:`flatten`; ``names`` are the optimizer's parameter names (an FQN may contain dots)."""
    model_sd = {k[len(_MODEL):]: v for k, v in tensors.items() if k.startswith(_MODEL)}
    for alias, orig in rest.get("aliases", {}).items():
        model_sd[alias] = model_sd[orig]
    state: dict[str, dict[str, Any]] = {}
    for fqn in sorted(names, key=len, reverse=True):
        prefix = f"{_OPTIM}{fqn}."
        for k, v in tensors.items():
            if k.startswith(prefix) and "." not in k[len(prefix):]:
                state.setdefault(fqn, {})[k[len(prefix):]] = v
    for fqn, st in rest.get("other_state", {}).items():
        state.setdefault(fqn, {}).update(st)
    return model_sd, {"state": state, "param_groups": param_groups_from_json(rest)}


def save_sharded(tmp: Path, model: nn.Module, optimizer: torch.optim.Optimizer, is_main: bool) -> None:
    """Every rank: write this rank's shards of model and optimizer into ``tmp`` (a collective); rank 0 also writes
    ``optimizer.json``. The caller publishes the folder (manifest, rename) after a barrier."""
    import torch.distributed.checkpoint as dcp  # noqa: PLC0415  (sharded runs only; checked by fsdp.check_support)
    from torch.distributed.checkpoint import HuggingFaceStorageWriter  # noqa: PLC0415  (sharded runs only)
    from torch.distributed.checkpoint.api import CheckpointException  # noqa: PLC0415  (sharded runs only)

    tensors, rest = flatten(*_state_dicts(model, optimizer), tied_aliases(model))
    # every rank checks the whole checkpoint's size (DTensor numel is global) against the shared folder's free space,
    # so all ranks agree before any of them writes
    check_free_space(tmp, tensor_bytes(tensors.values()), f"checkpoint {tmp.parent / tmp.name.removeprefix('.tmp-')}")
    try:
        dcp.save(tensors, storage_writer=HuggingFaceStorageWriter(str(tmp), save_distributed=True))
        if is_main:
            (tmp / "optimizer.json").write_text(json.dumps(rest, indent=1))
    except (OSError, CheckpointException) as e:  # a write error of any rank, on every rank
        raise OutputError(f"cannot write checkpoint {tmp}: {_first_line(e)}") from None


def load_sharded(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """Every rank: load a sharded checkpoint into the sharded ``model`` (and ``optimizer``), whatever the number of
    ranks that wrote it (a collective). Safetensors and JSON only. The optimizer keeps the hyper-parameters it was
    built with (as :func:`gendistill.distill.checkpoint.load_checkpoint` does)."""
    import torch.distributed.checkpoint as dcp  # noqa: PLC0415  (sharded runs only; checked by fsdp.check_support)
    from torch.distributed.checkpoint import HuggingFaceStorageReader  # noqa: PLC0415  (sharded runs only)
    from torch.distributed.checkpoint.api import CheckpointException  # noqa: PLC0415  (sharded runs only)
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, set_model_state_dict,  # noqa: PLC0415
                                                         set_state_dict)  # (sharded runs only)

    try:
        if optimizer is None:
            tensors, mine = flatten(get_model_state_dict(model), {}, tied_aliases(model))
            dcp.load(tensors, storage_reader=HuggingFaceStorageReader(str(path)))
            set_model_state_dict(model, unflatten(tensors, {"param_groups": [], **mine}, [])[0])
            return
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        model_sd, optim_sd = _state_dicts(model, optimizer)  # also creates the optimizer's state tensors to fill
        tensors, mine = flatten(model_sd, optim_sd, tied_aliases(model))
        rest = {**json.loads((path / "optimizer.json").read_text()), "aliases": mine["aliases"]}
        dcp.load(tensors, storage_reader=HuggingFaceStorageReader(str(path)))
        names = [n for g in optim_sd["param_groups"] for n in g["params"]]
        msd, osd = unflatten(tensors, rest, names)
        set_state_dict(model, optimizer, model_state_dict=msd, optim_state_dict=osd)
        for group, hyper in zip(optimizer.param_groups, fresh):
            group.update(hyper)
    except (OSError, ValueError, KeyError, RuntimeError, CheckpointException) as e:  # a missing key, a bad shard
        raise CheckpointError(f"{path}: cannot load the sharded checkpoint into this student/optimizer "
                              f"({_first_line(e)})") from None


def load_sharded_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, rank: int = 0,
                            load_weights: bool = True) -> dict[str, Any]:
    """Every rank: what :func:`gendistill.distill.checkpoint.load_checkpoint` is to a plain checkpoint, for a sharded
    one (written by any number of ranks): its shards of the weights and optimizer state, this rank's generators,
    and its state."""
    written_state(path, sharded=True)
    if load_weights:
        load_sharded(path, model, optimizer)
    restore_rng(path, rank)
    return read_state(path)
