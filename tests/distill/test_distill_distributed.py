"""Data-parallel training on CPU: two gloo processes (world size 2, DDP) train on the same global batches as one
process, and end with the same losses and parameters."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, recipe, result_path: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK="0"
    )
    torch.set_num_threads(1)
    import torch.distributed as dist
    from _distill_helpers import _train_tokenizer, tiny_llama

    from gendistill.distill.distributed import init_world
    from gendistill.distill.pipeline import run_recipe

    world = init_world("cpu")
    assert dist.is_initialized() and world.world_size == 2
    tok = _train_tokenizer()
    teacher = tiny_llama(len(tok))
    out = run_recipe(recipe, teacher=teacher, tokenizer=tok, world=world)
    if rank == 0:
        torch.save(
            {
                "losses": out.results["stage1"].losses + out.results["stage3a"].losses,
                "params": {n: p.detach().clone() for n, p in out.student.named_parameters()},
            },
            result_path,
        )
    dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_two_processes_match_one(tmp_path, tok, teacher):
    from test_distill_trainer import make_recipe

    from gendistill.distill.pipeline import run_recipe

    # two stages: a fresh DDP wrapper per stage over the same student (stage 1 trains the KDA mixers only)
    one = make_recipe(tmp_path / "one", ["stage1", "stage3a"], steps=3)
    ref = run_recipe(one, teacher=teacher, tokenizer=tok)

    two = make_recipe(tmp_path / "two", ["stage1", "stage3a"], steps=3)
    assert two.stages[1].grad_accum_for(2) == 1  # 4 = 2 ranks x micro 2
    result = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(2, _free_port(), two, str(result)), nprocs=2, join=True)
    got = torch.load(result, weights_only=True)  # floats and tensors only: no pickle of arbitrary objects
    ref_losses = ref.results["stage1"].losses + ref.results["stage3a"].losses
    assert got["losses"] == pytest.approx(ref_losses, rel=1e-5)
    for n, p in ref.student.named_parameters():
        torch.testing.assert_close(got["params"][n], p.detach(), rtol=1e-5, atol=1e-6, msg=n)
    # rank 0 alone wrote the run folder
    assert (tmp_path / "two" / "run" / "stage3a" / "config.json").exists()
