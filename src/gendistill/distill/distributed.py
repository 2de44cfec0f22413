"""torch.distributed helpers: one process per GPU launched by ``torchrun`` (or ``accelerate launch``), NCCL on
CUDA, gloo on CPU (which is how the tests run two processes on a laptop)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from gendistill.devices import device_name, resolve_device
from gendistill.distill.fsdp import check_support, init_single_process_group
from gendistill.errors import ConfigError


@dataclass
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    sharded: bool = False  # run.distributed: fsdp (the student and teacher are FSDP2-sharded, checkpoints are DCP)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_world(device: str = "auto", distributed: str = "ddp") -> World:
    """Initialise the process group from the ``torchrun`` environment (RANK, WORLD_SIZE, LOCAL_RANK) if present.
    ``distributed="fsdp"`` shards with FSDP2, which needs a process group even for one process: without torchrun a
    one-rank group is created. ``device`` is ``run.device``: ``cuda:N`` runs one process on GPU N; under torchrun
    every rank takes its LOCAL_RANK's GPU, so there only ``cuda`` or ``auto`` make sense."""
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    named = device_name(device, "run.device")
    if named.startswith("cuda:") and ws > 1:
        raise ConfigError(f"run.device: {named} names one GPU, but under torchrun each of the {ws} ranks takes its "
                          "LOCAL_RANK's GPU; use cuda or auto")
    want_cuda = named.startswith("cuda") or (named == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise ConfigError(f"run.device: {named} requested but no CUDA device is available")
    if distributed == "fsdp":
        check_support()
    if want_cuda:
        dev = resolve_device(named, "run.device") if named.startswith("cuda:") else torch.device("cuda", local)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if ws > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if want_cuda else "gloo", device_id=dev if want_cuda else None)
    if distributed == "fsdp":
        init_single_process_group(dev)  # a no-op when torchrun's group exists
    return World(rank=rank, world_size=ws, local_rank=local, device=dev, sharded=distributed == "fsdp")


def all_reduce_sum(x: torch.Tensor, world: World) -> torch.Tensor:
    if world.distributed:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def broadcast_object(obj, world: World):
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
