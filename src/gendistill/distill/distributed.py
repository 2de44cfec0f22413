"""torch.distributed helpers: one process per GPU launched by ``torchrun`` (or ``accelerate launch``), NCCL on
CUDA, gloo on CPU (which is how the tests run two processes on a laptop)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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
    one-rank group is created."""
    want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        from gendistill.errors import ConfigError

        raise ConfigError("run.device: cuda requested but no CUDA device is available")
    if distributed == "fsdp":
        from gendistill.distill.fsdp import check_support

        check_support()
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if want_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if ws > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if want_cuda else "gloo", device_id=dev if want_cuda else None)
    if distributed == "fsdp":
        from gendistill.distill.fsdp import init_single_process_group

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


RANK_ERROR_GRACE_S = 5.0


def error_prefix(grace_s: float = RANK_ERROR_GRACE_S) -> str:
    """Called by a rank about to print a user error and exit. Rank 0 (or a single process) prints at once. Every
    check of the run is made on every rank with the same inputs (recipe, data, all-reduced loss, DCP's gathered
    write errors), so the same error usually stops all ranks: another rank first waits ``grace_s`` seconds, in which
    the launcher (torchrun / accelerate launch, which stop every worker ~0.1 s after the first one exits) ends it
    after rank 0 has reported. An error only that rank saw (rank 0 is then blocked in a collective) is printed after
    the wait, prefixed ``[rank N]``; the launcher then stops the others. One message either way."""
    import time

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or rank == 0:
        return ""
    time.sleep(grace_s)
    return f"[rank {rank}] "


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
