"""FSDP2 on CPU: two gloo processes with ``run.distributed: fsdp`` (student and teacher sharded per decoder block,
DCP checkpoints) train on the same global batches as one plain process, and resume from a sharded checkpoint on 2
processes and on 1.

Tolerance: the runs are fp32 on CPU and see the same data; they differ only in the order of floating-point sums
(each rank's share of the loss and of every gradient is reduced across ranks, and the gradient norm is summed over
shards), so losses agree to a relative 1e-5 and parameters to rtol 1e-5 / atol 1e-6, as in the DDP test (measured:
~1e-7)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket

import pytest
import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fsdp(recipe, out: str | None = None):
    over = {"run": recipe.run.model_copy(update={"distributed": "fsdp", **({"output_dir": out} if out else {})})}
    return recipe.model_copy(update=over)


def _worker(rank: int, world_size: int, port: int, full, cut, cut_copy: str, result_path: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK="0"
    )
    torch.set_num_threads(1)
    import torch.distributed as dist
    from _distill_helpers import _train_tokenizer, tiny_llama

    from gendistill.distill.distributed import barrier, init_world
    from gendistill.distill.pipeline import run_recipe

    world = init_world("cpu", "fsdp")
    assert dist.is_initialized() and world.world_size == 2 and world.sharded
    tok = _train_tokenizer()
    teacher = tiny_llama(len(tok))
    out = run_recipe(full, teacher=teacher, tokenizer=tok, world=world)
    student = out.student
    shard = student.model.layers[1].mlp.up_proj.weight
    assert shard.to_local().shape[0] == shard.shape[0] // 2  # really sharded
    # the planner's sharded terms are what this rank holds
    from gendistill.distill.memory import GIB, plan_models

    plan = plan_models(full.stages[1:], teacher, student, 2, 80 * GIB, ("fsdp",), teacher_bytes_per_param=4)[0]
    held = {"student": sum(p.to_local().numel() * 4 for p in student.parameters()),
            "teacher": sum((p.to_local() if hasattr(p, "to_local") else p).numel() * 4 for p in teacher.parameters())}
    # a NaN in one rank's shard is found by every rank (no rank checkpoints while another stops)
    from gendistill.distill.stage_files import agreed_non_finite

    assert agreed_non_finite(student, None, world) is None
    if rank == 1:
        with torch.no_grad():
            student.model.layers[3].mlp.down_proj.weight.to_local()[0, 0] = float("nan")
    nan_found = agreed_non_finite(student, None, world)
    first = run_recipe(cut, teacher=tiny_llama(len(tok)), tokenizer=tok, world=world, stop_after=3)
    if rank == 0:
        shutil.copytree(cut.run.output_dir, cut_copy)  # the stopped run, for the resume on one process
    barrier(world)
    second = run_recipe(cut, teacher=tiny_llama(len(tok)), tokenizer=tok, world=world, resume=True)
    if rank == 0:
        res = {
            "losses": out.results["stage1"].losses + out.results["stage3a"].losses,
            "cut": first.results["stage3a"].losses,
            "resumed": second.results["stage3a"].losses,
            "resumed_from": second.results["stage3a"].resumed_from,
            "held": held, "planned": {"student": plan.params, "teacher": plan.teacher}, "nan_found": nan_found,
        }
        with open(result_path, "w") as f:
            json.dump(res, f)
    dist.destroy_process_group()


def _no_pickle_from_disk(*a, **k):
    raise AssertionError("a checkpoint was read with pickle / torch.load")


@pytest.mark.timeout(300)
def test_fsdp_two_processes_match_one_and_resume_on_two_and_one(tmp_path, tok, monkeypatch, capsys):
    from _distill_helpers import tiny_llama
    from safetensors.torch import load_file
    from test_distill_trainer import make_recipe

    import torch.distributed as dist

    from gendistill.distill.pipeline import run_recipe

    # one plain process: the reference curves
    ref = run_recipe(make_recipe(tmp_path / "one", ["stage1", "stage3a"], steps=3), teacher=tiny_llama(len(tok)),
                     tokenizer=tok)
    ref_losses = ref.results["stage1"].losses + ref.results["stage3a"].losses
    straight = run_recipe(make_recipe(tmp_path / "straight", ["stage3a"], steps=4), teacher=tiny_llama(len(tok)),
                          tokenizer=tok).results["stage3a"].losses

    # gradient checkpointing under sharding: the recomputation re-gathers each block (same math as without it)
    full = _fsdp(make_recipe(tmp_path / "two", ["stage1", "stage3a"], steps=3,
                             stage3a={"gradient_checkpointing": True}))
    cut = _fsdp(make_recipe(tmp_path / "cut", ["stage3a"], steps=4))
    cut_copy = str(tmp_path / "cut-copy")
    result = tmp_path / "rank0.json"
    mp.spawn(_worker, args=(2, _free_port(), full, cut, cut_copy, str(result)), nprocs=2, join=True)
    got = json.loads(result.read_text())
    print("max relative loss difference, 2 FSDP2 ranks vs 1 plain process:",
          max(abs(a - b) / abs(b) for a, b in zip(got["losses"], ref_losses)))

    # 2 FSDP2 processes == 1 plain process, step by step
    assert got["losses"] == pytest.approx(ref_losses, rel=1e-5)
    # what a rank holds is what the memory planner says (to FSDP2's padding of odd first dimensions)
    for what in ("student", "teacher"):
        assert got["held"][what] == pytest.approx(got["planned"][what], rel=0.01), what
    assert got["nan_found"] == "model.layers.3.mlp.down_proj.weight"
    # the final student is a normal unsharded model folder equal to the one-process student
    saved = load_file(str(tmp_path / "two" / "run" / "stage3a" / "model.safetensors"))
    for n, p in ref.student.state_dict().items():
        if n in saved:
            torch.testing.assert_close(saved[n], p.detach(), rtol=1e-5, atol=1e-6, msg=n)
    assert {n for n, _ in ref.student.named_parameters()} - set(saved) <= {"lm_head.weight"}  # tied to embed

    # the sharded checkpoint: safetensors shards of both ranks + JSON, no pickle file
    ck = tmp_path / "cut-copy" / "checkpoints" / "stage3a" / "step-00000002"
    names = sorted(p.name for p in ck.iterdir())
    assert sum(n.startswith("shard-") and n.endswith(".safetensors") for n in names) == 2, names
    assert not [n for n in names if n.endswith((".pt", ".bin", ".distcp", ".metadata", ".pkl"))], names
    assert not [n for n in names if (ck / n).read_bytes()[:1] == b"\x80"], names  # no pickle protocol header
    # every rank's files with the umask's mode, like any result file (safetensors creates its files 0600)
    from gendistill.ownership import file_mode

    modes = {n: (ck / n).stat().st_mode & 0o777 for n in names}
    assert {n: oct(m) for n, m in modes.items() if m != file_mode()} == {}

    # resume on 2 processes from a checkpoint written by 2
    assert got["resumed_from"] == 3
    assert got["cut"] + got["resumed"] == pytest.approx(straight, rel=1e-5)

    # resume on 1 process (FSDP2 over a one-rank group) from a checkpoint written by 2; nothing read with pickle. The
    # newest checkpoint (step 3) has a truncated shard: it is skipped with a warning, step 2 is loaded
    newest = tmp_path / "cut-copy" / "checkpoints" / "stage3a" / "step-00000003"
    shard = sorted(newest.glob("shard-*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-100])
    one = _fsdp(cut, out=cut_copy)
    monkeypatch.setattr(pickle, "load", _no_pickle_from_disk)
    monkeypatch.setattr(pickle, "loads", _no_pickle_from_disk)
    monkeypatch.setattr(torch, "load", _no_pickle_from_disk)
    try:
        resumed = run_recipe(one, teacher=tiny_llama(len(tok)), tokenizer=tok, resume=True).results["stage3a"]
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert resumed.resumed_from == 2
    assert "is damaged" in capsys.readouterr().err
    assert got["cut"][:2] + resumed.losses == pytest.approx(straight, rel=1e-5)


@pytest.mark.timeout(120)
def test_an_error_on_every_rank_is_reported_once_under_torchrun(tmp_path):
    """Two ranks under torchrun hit the same bad recipe value: one ``error:`` line, exit status != 0."""
    import subprocess
    import sys

    import yaml

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "teacher": {"spec": "smollm2-135m-instruct"},
        "student": {"attention_layers": "every:4"},
        "data": {"sources": [{"path": str(tmp_path / "d.txt"), "format": "text"}]},
        "stages": [{"name": "stage3a", "steps": 1, "seq_len": 16, "batch_size": 2, "micro_batch_size": 1,
                    "optim": {"lr": 1e-3}}],
        "run": {"output_dir": str(blocker), "distributed": "fsdp", "device": "cpu"},
    }))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
         "-m", "gendistill", "distill", str(recipe)],
        capture_output=True, text=True, env=env, timeout=110,
    )
    out = p.stdout + p.stderr
    assert p.returncode != 0
    assert out.count("error:") == 1, out
    assert f"run.output_dir: {blocker} is a file" in out


@pytest.mark.timeout(120)
def test_accelerate_launch_two_processes_fsdp(tmp_path, tok):
    """The documented accelerate config launches 2 processes that train with FSDP2 through the CLI; rank 0 alone
    logs, and the student after the stage is a normal model folder that loads with transformers."""
    import subprocess
    import sys
    from pathlib import Path

    import yaml
    from _distill_helpers import text_records, tiny_llama, write_jsonl
    from transformers import AutoModelForCausalLM

    import gendistill  # noqa: F401

    teacher_dir = tmp_path / "teacher"
    tiny_llama(len(tok)).save_pretrained(teacher_dir)
    tok.save_pretrained(teacher_dir)
    data = write_jsonl(tmp_path / "text.jsonl", text_records(40))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "teacher": {"spec": str(teacher_dir)},
        "student": {"attention_layers": [0, 2]},
        "data": {"sources": [{"path": str(data), "format": "text"}], "heldout_documents": 4},
        "stages": [{"name": "stage3a", "steps": 2, "seq_len": 32, "batch_size": 4, "micro_batch_size": 2,
                    "eval_every": 100, "optim": {"lr": 1e-3}}],
        "run": {"output_dir": str(tmp_path / "run"), "distributed": "fsdp", "device": "cpu", "progress": "lines",
                "tensorboard": False},
    }))
    config = Path(__file__).resolve().parents[2] / "launch" / "accelerate.yaml"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes", "2",
         "--main_process_port", str(_free_port()), "-m", "gendistill", "distill", str(recipe)],
        capture_output=True, text=True, env=env, timeout=110,
    )
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    assert out.count("stage3a: 2 steps") == 1, out  # the summary, from rank 0 only
    assert out.count("[stage3a] step 2/2") == 1, out  # progress lines from rank 0 only
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2]  # one writer
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "stage3a")
    assert not any(hasattr(p, "to_local") for p in student.parameters())


def test_a_checkpoint_of_the_other_mode_is_refused_with_one_line(tmp_path, tok):
    """A run stopped under ddp is not resumed under fsdp (and the other way round): one line naming both modes."""
    from _distill_helpers import tiny_llama
    from test_distill_trainer import make_recipe

    import torch.distributed as dist

    from gendistill.distill.checkpoint import CheckpointError
    from gendistill.distill.pipeline import run_recipe

    cut = make_recipe(tmp_path, ["stage3a"], steps=4)
    run_recipe(cut, teacher=tiny_llama(len(tok)), tokenizer=tok, stop_after=2)
    try:
        with pytest.raises(CheckpointError, match="written by a run.distributed: ddp run; this run uses fsdp"):
            run_recipe(_fsdp(cut), teacher=tiny_llama(len(tok)), tokenizer=tok, resume=True)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_a_sharded_checkpoint_that_does_not_fit_is_one_line(tmp_path, tok):
    """A sharded checkpoint whose files match their manifest but lack a tensor the student needs (here: written by
    hand without one) is refused with one CheckpointError line naming the checkpoint, not DCP's per-rank traceback."""
    from _distill_helpers import tiny_llama
    from safetensors.torch import load_file, save_file
    from test_distill_trainer import make_recipe

    import torch.distributed as dist

    from gendistill.distill.checkpoint import CheckpointError, write_manifest
    from gendistill.distill.pipeline import run_recipe

    cut = _fsdp(make_recipe(tmp_path, ["stage3a"], steps=4))
    try:
        run_recipe(cut, teacher=tiny_llama(len(tok)), tokenizer=tok, stop_after=2)
        ck = tmp_path / "run" / "checkpoints" / "stage3a" / "step-00000002"
        (shard,) = ck.glob("shard-*.safetensors")
        from safetensors import safe_open

        with safe_open(str(shard), framework="pt") as f:
            meta = f.metadata()
        tensors = load_file(str(shard))
        tensors.pop("model.model.norm.weight")
        save_file(tensors, str(shard), metadata=meta)
        write_manifest(ck)
        with pytest.raises(CheckpointError) as e:
            run_recipe(cut, teacher=tiny_llama(len(tok)), tokenizer=tok, resume=True)
        msg = str(e.value)
        assert "step-00000002: cannot load the sharded checkpoint" in msg and "\n" not in msg, msg
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
