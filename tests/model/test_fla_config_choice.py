"""Which shipped fla kernel configurations a GPU reads: its own folder, else one tuned on a card of the same compute
capability (H100 borrows the H200's: a fresh H100 spent 195 s compiling and autotuning before its first step), never
one of another capability; the user's own settings win and a bad ``GENDISTILL_FLA_CONFIGS`` is one clear error."""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import pytest
import torch

from gendistill.ops import fla_configs

H100 = ("NVIDIA H100 80GB HBM3", (9, 0), 132)


def test_a_card_with_its_own_folder_reads_it():
    choice = fla_configs.choose_folder("NVIDIA H200", (9, 0), 132)
    assert choice == fla_configs.ConfigChoice(fla_configs.SHIPPED / "NVIDIA_H200")
    assert "shipped for NVIDIA H200" in choice.describe("NVIDIA H200")


def test_a_sibling_of_the_same_capability_borrows_and_says_so():
    choice = fla_configs.choose_folder(*H100)
    assert choice.folder == fla_configs.SHIPPED / "NVIDIA_H200" and choice.borrowed_from == "NVIDIA H200"
    line = choice.describe(H100[0])
    assert "none shipped for NVIDIA H100 80GB HBM3" in line and "NVIDIA H200" in line and "exact" in line
    assert fla_configs.choose_folder(*H100, borrow=False) is None


@pytest.mark.parametrize("capability", [(8, 0), (9, 1), (10, 0)])
def test_another_capability_borrows_nothing(capability):
    assert fla_configs.choose_folder("Some GPU", capability, 132) is None


def test_the_closest_number_of_sms_wins(monkeypatch, tmp_path):
    for name in ("CARD_A", "CARD_B"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "k.json").write_text("{}")
    (tmp_path / "CARD_EMPTY").mkdir()  # a folder with no file is never chosen
    monkeypatch.setattr(fla_configs, "SHIPPED", tmp_path)
    monkeypatch.setattr(fla_configs, "TUNED_ON", {"CARD_A": ((9, 0), 132), "CARD_B": ((9, 0), 78),
                                                  "CARD_EMPTY": ((9, 0), 114)})
    assert fla_configs.choose_folder("H20", (9, 0), 78).folder == tmp_path / "CARD_B"
    assert fla_configs.choose_folder("H100 PCIe", (9, 0), 114).folder == tmp_path / "CARD_A"  # |132-114| < |78-114|


def test_every_shipped_folder_names_the_card_it_was_tuned_on():
    folders = {p.name for p in fla_configs.SHIPPED.iterdir() if p.is_dir() and any(p.glob("*.json"))}
    assert folders and folders <= set(fla_configs.TUNED_ON), sorted(folders - set(fla_configs.TUNED_ON))


@pytest.fixture
def fresh_gpu(monkeypatch):
    """A process on a (pretend) H100 before fla is imported, with no fla settings of the user's."""
    for var in ("FLA_CONFIG_DIR", "FLA_CACHE_MODE", "GENDISTILL_FLA_CONFIGS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delitem(sys.modules, "fla.ops.utils.cache", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    props = SimpleNamespace(name=H100[0], major=9, minor=0, multi_processor_count=132)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda _=0: props)
    monkeypatch.setattr(fla_configs, "_DECISION", [])
    return monkeypatch


def test_activate_points_fla_at_the_borrowed_folder(fresh_gpu):
    choice = fla_configs.activate()
    assert choice is not None and choice.borrowed_from == "NVIDIA H200"
    assert os.environ["FLA_CONFIG_DIR"] == str(fla_configs.SHIPPED / "NVIDIA_H200")
    assert os.environ["FLA_CACHE_MODE"] == "strict"
    assert "using those tuned on NVIDIA H200" in fla_configs.describe_active(H100[0])


@pytest.mark.parametrize("mode", ["exact", "0"])
def test_exact_or_off_leaves_fla_to_autotune(fresh_gpu, mode):
    fresh_gpu.setenv("GENDISTILL_FLA_CONFIGS", mode)
    assert fla_configs.activate() is None
    assert "FLA_CONFIG_DIR" not in os.environ and "FLA_CACHE_MODE" not in os.environ
    assert "fla autotunes" in fla_configs.describe_active(H100[0])


def test_the_users_own_settings_win(fresh_gpu, tmp_path):
    fresh_gpu.setenv("FLA_CONFIG_DIR", str(tmp_path))
    assert fla_configs.activate() is None
    assert fla_configs.describe_active(H100[0]) == (
        f"fla kernel configurations: as the environment sets them (FLA_CONFIG_DIR={tmp_path})")
    fresh_gpu.delenv("FLA_CONFIG_DIR")
    fresh_gpu.setenv("FLA_CACHE_MODE", "strict")  # fla's own folder, the user's mode: not "none shipped"
    assert fla_configs.activate() is None
    assert "FLA_CACHE_MODE=strict" in fla_configs.describe_active(H100[0])


def test_fla_imported_first_is_said_so(fresh_gpu):
    fresh_gpu.setitem(sys.modules, "fla.ops.utils.cache", object())
    assert fla_configs.activate() is None
    assert "fla was imported before" in fla_configs.describe_active(H100[0])


def test_a_bad_setting_is_one_clear_error(fresh_gpu):
    from gendistill.errors import ConfigError

    fresh_gpu.setenv("GENDISTILL_FLA_CONFIGS", "yes")
    with pytest.raises(ConfigError, match=r"GENDISTILL_FLA_CONFIGS='yes'.*exact.*0"):
        fla_configs.activate()


def test_activating_twice_keeps_the_choice(fresh_gpu):
    """fla_available() activates once per process; anything else that may import fla first (the hopper backend's
    ``affected()``) activates too: the second call keeps the folder and the line that describes it."""
    first = fla_configs.activate()
    fresh_gpu.setitem(sys.modules, "fla.ops.utils.cache", object())  # fla imported since
    assert fla_configs.activate() == first
    assert "using those tuned on NVIDIA H200" in fla_configs.describe_active(H100[0])


def test_asking_whether_fla_refuses_the_gated_backward_activates_the_configurations_first(fresh_gpu):
    """``fla_hopper_dqkwg.affected()`` imports fla: as a process's first fla import (benchmarks/mixer_throughput.py
    asked it before any kernel ran, 2026-12-06) it left fla without the shipped configurations, and an H100 autotuned
    every KDA kernel for minutes. It now points fla at them before importing it."""
    from gendistill.ops import fla_hopper_dqkwg

    fla_hopper_dqkwg.affected()
    assert os.environ.get("FLA_CONFIG_DIR") == str(fla_configs.SHIPPED / "NVIDIA_H200")
    assert "using those tuned on NVIDIA H200" in fla_configs.describe_active(H100[0])
