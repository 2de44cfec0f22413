"""A distillation on a GPU gendistill ships no fla configurations for keeps the ones fla's autotuning chose, in the
run folder, and says once how to reuse them: the next run (or lease) on that GPU skips minutes of tuning."""

from __future__ import annotations

import json
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from gendistill.distill import pipeline
from gendistill.distill.distributed import World
from gendistill.ops import fla_configs

RECIPE = SimpleNamespace(run=SimpleNamespace(progress="lines"))
CFG = {"kwargs": {"BK": 64}, "num_warps": 4, "num_stages": 2, "num_ctas": 1, "maxnreg": None}
CUDA = torch.device("cuda", 0)
REAL_DUMP = fla_configs.dump_autotuned


@pytest.fixture
def gpu(monkeypatch):
    """fla loaded, no FLA_CONFIG_DIR, one autotuned choice; ``gpu(name)`` names the card. Returns the dump calls."""
    dumps: list = []

    def dump(out):
        dumps.append(out)
        return fla_configs.write_config_files([("chunk_kda_bwd_kernel_intra", (128, "torch.bfloat16"), CFG)], out,
                                              "3.6.0")

    monkeypatch.setitem(sys.modules, "fla", types.ModuleType("fla"))
    monkeypatch.delenv("FLA_CONFIG_DIR", raising=False)
    monkeypatch.setattr(fla_configs, "dump_autotuned", dump)

    def name(gpu_name: str) -> list:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: gpu_name)
        return dumps
    return name


def test_an_unshipped_gpu_keeps_its_tuned_configurations_and_says_so_once(tmp_path, gpu, capsys):
    gpu("NVIDIA H100 80GB HBM3")
    out = tmp_path / "fla_configs" / "NVIDIA_H100_80GB_HBM3"
    pipeline.keep_tuned_kernels(RECIPE, tmp_path, World(device=CUDA))
    doc = json.loads((out / "chunk_kda_bwd_kernel_intra.json").read_text())
    assert [e["config"] for e in doc["autotune_entries"].values()] == [CFG]
    err = capsys.readouterr().err
    assert f"FLA_CONFIG_DIR={out} FLA_CACHE_MODE=strict" in err and "fla_config_files/NVIDIA_H100_80GB_HBM3/" in err
    assert fla_configs.keep_autotuned(tmp_path / "fla_configs", CUDA) == (out, False)  # the next stage: merged
    pipeline.keep_tuned_kernels(RECIPE, tmp_path, World(device=CUDA))
    assert capsys.readouterr().err == ""  # said once


def test_nothing_is_kept_where_it_would_not_help(tmp_path, gpu, monkeypatch):
    root = tmp_path / "fla_configs"
    dumps = gpu("NVIDIA H200")  # gendistill ships its configurations
    assert fla_configs.keep_autotuned(root, CUDA) is None
    gpu("NVIDIA H100 80GB HBM3")
    assert fla_configs.keep_autotuned(root, torch.device("cpu")) is None
    pipeline.keep_tuned_kernels(RECIPE, tmp_path, World(rank=1, world_size=2, device=torch.device("cuda", 1)))
    monkeypatch.setenv("FLA_CONFIG_DIR", str(tmp_path / "mine"))  # the user's own files
    assert fla_configs.keep_autotuned(root, CUDA) is None
    monkeypatch.delenv("FLA_CONFIG_DIR")
    monkeypatch.delitem(sys.modules, "fla")  # fla never loaded (e.g. an all-attention student)
    assert fla_configs.keep_autotuned(root, CUDA) is None
    assert dumps == [] and not root.exists()


def test_a_failure_to_write_is_a_warning_not_the_end_of_the_run(tmp_path, gpu, monkeypatch):
    gpu("NVIDIA H100 80GB HBM3")

    def full_disk(out):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(fla_configs, "dump_autotuned", full_disk)
    with pytest.warns(UserWarning, match="could not keep fla's tuned kernel configurations.*No space left"):
        assert fla_configs.keep_autotuned(tmp_path, CUDA) is None


def test_nothing_tuned_leaves_no_folder(tmp_path, gpu, monkeypatch):
    gpu("NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(fla_configs, "_autotuners", lambda: [])  # fla loaded, nothing autotuned yet
    monkeypatch.setattr(fla_configs, "dump_autotuned", REAL_DUMP)
    assert fla_configs.keep_autotuned(tmp_path / "fla_configs", CUDA) is None
    assert not (tmp_path / "fla_configs").exists()
