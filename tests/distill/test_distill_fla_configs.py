"""A distillation on a GPU gendistill ships no fla configurations for keeps the ones fla's autotuning chose, in the
run folder, and says once how to reuse them: the next run (or lease) on that GPU skips minutes of tuning."""

from __future__ import annotations

import json
from types import SimpleNamespace

import torch

from gendistill.distill import pipeline
from gendistill.distill.distributed import World
from gendistill.ops import fla_configs

RECIPE = SimpleNamespace(run=SimpleNamespace(progress="lines"))
CFG = {"kwargs": {"BK": 64}, "num_warps": 4, "num_stages": 2, "num_ctas": 1, "maxnreg": None}


def _tuned(monkeypatch, gpu: str) -> list:
    """A GPU named ``gpu`` whose fla autotuners hold one choice; returns the folders dumps went to."""
    dumps: list = []

    def dump(out):
        dumps.append(out)
        return fla_configs.write_config_files([("chunk_kda_bwd_kernel_intra", (128, "torch.bfloat16"), CFG)], out,
                                              "3.6.0")

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: gpu)
    monkeypatch.setattr(pipeline, "dump_autotuned", dump)
    return dumps


def test_an_unshipped_gpu_keeps_its_tuned_configurations_and_says_so_once(tmp_path, monkeypatch, capsys):
    _tuned(monkeypatch, "NVIDIA H100 80GB HBM3")
    world = World(device=torch.device("cuda", 0))
    out = pipeline.keep_autotuned_configs(RECIPE, tmp_path, world)
    assert out == tmp_path / "fla_configs" / "NVIDIA_H100_80GB_HBM3"
    doc = json.loads((out / "chunk_kda_bwd_kernel_intra.json").read_text())
    assert [e["config"] for e in doc["autotune_entries"].values()] == [CFG]
    err = capsys.readouterr().err
    assert f"FLA_CONFIG_DIR={out} FLA_CACHE_MODE=fuzzy" in err and "fla_config_files/NVIDIA_H100_80GB_HBM3/" in err
    assert pipeline.keep_autotuned_configs(RECIPE, tmp_path, world) == out  # after the next stage: merged, quiet
    assert capsys.readouterr().err == ""


def test_a_shipped_gpu_a_cpu_run_and_other_ranks_write_nothing(tmp_path, monkeypatch):
    dumps = _tuned(monkeypatch, "NVIDIA H200")  # gendistill ships its configurations
    assert pipeline.keep_autotuned_configs(RECIPE, tmp_path, World(device=torch.device("cuda", 0))) is None
    _tuned(monkeypatch, "NVIDIA H100 80GB HBM3")
    assert pipeline.keep_autotuned_configs(RECIPE, tmp_path, World()) is None  # CPU
    assert pipeline.keep_autotuned_configs(RECIPE, tmp_path, World(rank=1, world_size=2,
                                                                    device=torch.device("cuda", 1))) is None
    assert dumps == [] and not (tmp_path / "fla_configs").exists()


def test_nothing_tuned_leaves_no_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(fla_configs, "_autotuners", lambda: [])
    monkeypatch.setattr(pipeline, "dump_autotuned", fla_configs.dump_autotuned)
    assert pipeline.keep_autotuned_configs(RECIPE, tmp_path, World(device=torch.device("cuda", 0))) is None
    assert not (tmp_path / "fla_configs").exists()
