"""fla 0.6.0 refuses the backward of Gated DeltaNet and simple GLA (so Mamba2) on a Hopper GPU under Triton >= 3.4.0
and < 3.7.1 (fla issue #640; met on an H100 with Triton 3.6, docs/results.md section 17). gendistill says so before
training, in one line naming the mixers and the ways out, instead of failing at the first backward. The CPU has no
Hopper card: fla's own flags are set here as the device reported them."""

from __future__ import annotations

import pytest
import torch

from gendistill.ops import backend

pytest.importorskip("fla")


@pytest.fixture
def hopper_triton_3_6(monkeypatch):
    """fla's view of the H100 of 2026-12-06: a Hopper card, Triton 3.6, no usable tilelang."""
    import fla.utils
    from fla.backends import TileLangBackend

    monkeypatch.delenv("GENDISTILL_KDA_BACKEND", raising=False)
    monkeypatch.setattr(backend, "fla_available", lambda: True)
    monkeypatch.setattr(fla.utils, "IS_NVIDIA_HOPPER", True)
    monkeypatch.setattr(fla.utils, "TRITON_ABOVE_3_4_0", True)
    monkeypatch.setattr(fla.utils, "TRITON_ABOVE_3_7_1", False)
    monkeypatch.setattr(TileLangBackend, "is_available", classmethod(lambda cls: False))
    from fla.ops.common.backends.tilelang import CommonTileLangBackend

    monkeypatch.setattr(CommonTileLangBackend, "default_enable", True)  # as fla sets it on import on a Hopper card
    monkeypatch.delenv("FLA_TILELANG", raising=False)
    return monkeypatch


def test_refused_on_hopper_with_triton_before_3_7_1(hopper_triton_3_6):
    reason = backend.fla_gated_backward_refused()
    assert reason is not None and "#640" in reason and "3.7.1" in reason and "tilelang" in reason


@pytest.mark.parametrize("way_out", ["triton_3_7_1", "tilelang", "not_hopper", "torch_backend", "no_fla"])
def test_not_refused_where_fla_runs_it_or_does_not_run(hopper_triton_3_6, way_out):
    import fla.utils
    from fla.backends import TileLangBackend

    mp = hopper_triton_3_6
    if way_out == "triton_3_7_1":
        mp.setattr(fla.utils, "TRITON_ABOVE_3_7_1", True)
    elif way_out == "tilelang":
        mp.setattr(TileLangBackend, "is_available", classmethod(lambda cls: True))
    elif way_out == "not_hopper":
        mp.setattr(fla.utils, "IS_NVIDIA_HOPPER", False)
    elif way_out == "torch_backend":
        mp.setenv("GENDISTILL_KDA_BACKEND", "torch")
    else:
        mp.setattr(backend, "fla_available", lambda: False)
    assert backend.fla_gated_backward_refused() is None


def test_tilelang_is_no_way_out_when_switched_off_or_for_float32_states(hopper_triton_3_6):
    # fla's TileLang backend: FLA_TILELANG=0 switches it off; it declines simple GLA's backward (float32 states)
    from fla.backends import TileLangBackend

    mp = hopper_triton_3_6
    mp.setattr(TileLangBackend, "is_available", classmethod(lambda cls: True))
    assert backend.fla_gated_backward_refused() is None
    assert backend.fla_gated_backward_refused(fp32_states=True) is not None
    mp.setenv("FLA_TILELANG", "0")
    assert backend.fla_gated_backward_refused() is not None


def _student(mixer: str):
    from gendistill.convert.convert import convert_teacher
    from tests.fixtures_teachers import tiny_model

    return convert_teacher(tiny_model("llama", 64, seed=0), [0], linear_attention_type=mixer)


@pytest.mark.parametrize("mixer", ["kda", "gated_deltanet", "gla", "mamba2"])
def test_training_refusal_names_the_mixers_fla_refuses(hopper_triton_3_6, mixer):
    from gendistill.layers.registry import training_refusal

    line = training_refusal(_student(mixer), torch.device("cuda"))
    if mixer in ("gated_deltanet", "mamba2"):
        assert line is not None and mixer in line and "\n" not in line
        assert "kda" in line and "GENDISTILL_KDA_BACKEND=torch" in line  # the ways out
    else:
        assert line is None
    assert training_refusal(_student(mixer), torch.device("cpu")) is None  # the CPU path is PyTorch's

