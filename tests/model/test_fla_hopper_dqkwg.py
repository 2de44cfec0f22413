"""gendistill's fla backend for the gated ``chunk_bwd_dqkwg`` that fla 0.6.0 refuses on Hopper under Triton >= 3.4.0,
< 3.7.1 (fla issue #640; gendistill/ops/fla_hopper_dqkwg.py). The CPU has no Hopper card: fla's own flags are set as
the H100 of 2026-12-06 reported them, and fla's Triton kernel is replaced by a recorder of its launch, so these
tests pin the routing (which calls the backend takes, through fla's own dispatch), the block width and the launcher's
reductions. Whether the kernel's gradients are right at that width is the GPU test's
(tests/gpu/test_mixers_gpu.py::test_fla_gated_kernel_gradients_match_float64)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("fla")

from gendistill.ops import backend, fla_hopper_dqkwg  # noqa: E402


@pytest.fixture
def hopper_triton_3_6(monkeypatch):
    """fla's view of the H100 of 2026-12-06 (a Hopper card, Triton 3.6, no usable tilelang); the backend's
    registration flag restored afterwards."""
    import fla.ops.common.chunk_o as chunk_o
    import fla.utils
    from fla.backends import TileLangBackend

    monkeypatch.delenv("GENDISTILL_KDA_BACKEND", raising=False)
    monkeypatch.delenv(fla_hopper_dqkwg.ENV, raising=False)
    monkeypatch.setattr(backend, "fla_available", lambda: True)
    for module in (fla.utils, chunk_o):  # fla's refusal reads the launcher module's own copies of the flags
        monkeypatch.setattr(module, "IS_NVIDIA_HOPPER", True)
        monkeypatch.setattr(module, "TRITON_ABOVE_3_4_0", True)
        monkeypatch.setattr(module, "TRITON_ABOVE_3_7_1", False)
    monkeypatch.setattr(TileLangBackend, "is_available", classmethod(lambda cls: False))
    from fla.ops.common.backends.tilelang import CommonTileLangBackend

    monkeypatch.setattr(CommonTileLangBackend, "default_enable", True)  # as fla sets it on import on a Hopper card
    monkeypatch.delenv("FLA_TILELANG", raising=False)
    monkeypatch.setattr(fla_hopper_dqkwg, "_registered", False)
    return monkeypatch


class Recorder:
    """Stands for fla's ``chunk_bwd_kernel_dqkwg``: checks that a launch passes exactly the kernel's arguments (its
    ``triton.jit`` names less those its ``triton.heuristics`` fill in), records it and writes known values (each key
    block's dg partial = block index + 1; dq, dk = 1 per value head)."""

    def __init__(self, kernel):
        self.launches = []
        from triton.runtime.jit import JITFunction

        filled = set()
        while not isinstance(kernel, JITFunction):  # heuristics and autotuner wrap the jitted function
            filled |= set(getattr(kernel, "values", {}))
            kernel = kernel.fn
        self.arguments = set(kernel.arg_names) - filled

    def __getitem__(self, grid):
        def launch(**kw):
            assert set(kw) == self.arguments, (set(kw) ^ self.arguments)
            self.launches.append((grid, kw))
            kw["dq"].fill_(1.0)
            kw["dk"].fill_(1.0)
            if kw["dg"] is not None:
                for i in range(kw["dg"].shape[0]):
                    kw["dg"][i].fill_(i + 1.0)
        return launch


def _gated_call(H=2, HV=2, K=64, V=64, T=128, gated=True):
    """fla's dispatched ``chunk_bwd_dqkwg`` as Gated DeltaNet's backward calls it (keywords, bf16, B=1)."""
    from fla.ops.common.chunk_o import chunk_bwd_dqkwg

    r = lambda *s: torch.randn(*s, dtype=torch.bfloat16)  # noqa: E731
    NT = T // 64
    return chunk_bwd_dqkwg(q=r(1, T, H, K), k=r(1, T, H, K), v=r(1, T, HV, V), do=r(1, T, HV, V),
                           h=r(1, NT, HV, K, V), dh=r(1, NT, HV, K, V), w=r(1, T, HV, K),
                           g=torch.randn(1, T, HV) if gated else None, dv=r(1, T, HV, V), scale=K ** -0.5,
                           chunk_size=64)


@pytest.mark.parametrize(("K", "widths"), [(16, (16, 64)), (32, (32, 64)), (48, (32, 32)), (64, (32, 32)),
                                           (100, (128, 64)), (128, (128, 64)), (256, (128, 64))])
def test_block_width_replaces_exactly_the_miscompiled_64(K, widths):
    # fla's rule on Hopper is min(max(next_pow2(K), 16), 128); #640 fails at BK = 64 only (32 and 128 pass); there
    # both widths become fla's small-shared-memory ones (at most 32)
    assert fla_hopper_dqkwg.block_widths(K, 64) == widths
    assert fla_hopper_dqkwg.block_widths(128, 128) == (128, 128)  # not the miscompiled width: fla's own


@pytest.mark.parametrize(("K", "widths"), [(48, (128, 64)), (64, (128, 64)), (32, (32, 64)), (128, (128, 64))])
def test_key_block_of_128_is_the_other_width_a_user_can_choose(K, widths, monkeypatch):
    monkeypatch.setenv(fla_hopper_dqkwg.KEY_BLOCK_ENV, "128")  # only where fla would take 64 does the choice apply
    assert fla_hopper_dqkwg.block_widths(K, 64) == widths


@pytest.mark.parametrize("value", ["64", "16", "wide"])
def test_a_key_block_other_than_32_or_128_is_refused_by_name_before_training(value, hopper_triton_3_6):
    hopper_triton_3_6.setenv(fla_hopper_dqkwg.KEY_BLOCK_ENV, value)
    with pytest.raises(ValueError, match=f"GENDISTILL_FLA_HOPPER_KEY_BLOCK='{value}'"):
        fla_hopper_dqkwg.block_widths(64, 64)
    # distill's and ablate's up-front check says it in one line, instead of the first backward raising mid-run
    assert fla_hopper_dqkwg.register_hopper_dqkwg()
    reason = backend.fla_gated_backward_refused()
    assert reason is not None and reason.startswith(f"GENDISTILL_FLA_HOPPER_KEY_BLOCK='{value}'")


def test_switched_off_the_backend_leaves_fla_refusing_and_gendistill_says_how_to_switch_it_on(hopper_triton_3_6):
    # on by default since its bf16 check passed on an H100 (docs/mixers.md); "0" is the way back to fla's own refusal
    hopper_triton_3_6.setenv(fla_hopper_dqkwg.ENV, "0")
    assert fla_hopper_dqkwg.register_hopper_dqkwg() and not fla_hopper_dqkwg.registered()
    with pytest.raises(RuntimeError, match="#640"):
        _gated_call()
    reason = backend.fla_gated_backward_refused()
    assert reason is not None and f"unset {fla_hopper_dqkwg.ENV}=0" in reason


@pytest.mark.parametrize("switch", [None, "1"], ids=["unset", "on"])
def test_registered_backend_takes_the_refused_call_at_block_width_32(hopper_triton_3_6, switch):
    import fla.ops.common.chunk_o as chunk_o

    rec = Recorder(chunk_o.chunk_bwd_kernel_dqkwg)
    hopper_triton_3_6.setattr(chunk_o, "chunk_bwd_kernel_dqkwg", rec)
    if switch is not None:
        hopper_triton_3_6.setenv(fla_hopper_dqkwg.ENV, switch)
    assert fla_hopper_dqkwg.register_hopper_dqkwg()
    assert backend.fla_gated_backward_refused() is None  # so distill and ablate no longer refuse GDN / Mamba2
    dq, dk, dw, dg = _gated_call(T=128)
    (grid, kw), = rec.launches
    assert kw["BK"] == 32 and kw["BV"] == 32 and grid == (2 * 2, 1 * 2)  # NK * NT programs, B * HV
    assert torch.equal(dg, torch.full((1, 128, 2), 3.0))  # the two key blocks' partials summed (1 + 2)
    assert dq.shape == dk.shape == (1, 128, 2, 64) and dw.shape == (1, 128, 2, 64)
    # the switch is read at every call: off again, fla refuses again
    hopper_triton_3_6.setenv(fla_hopper_dqkwg.ENV, "0")
    with pytest.raises(RuntimeError, match="#640"):
        _gated_call()


def test_fla_own_switch_turns_it_on_too_and_gendistill_agrees(hopper_triton_3_6):
    # fla's BaseBackend.is_enabled also reads FLA_<TYPE>: gendistill's refusal must say what fla will do
    import fla.ops.common.chunk_o as chunk_o

    rec = Recorder(chunk_o.chunk_bwd_kernel_dqkwg)
    hopper_triton_3_6.setattr(chunk_o, "chunk_bwd_kernel_dqkwg", rec)
    hopper_triton_3_6.setenv(f"FLA_{fla_hopper_dqkwg.BACKEND_TYPE.upper()}", "1")
    fla_hopper_dqkwg.register_hopper_dqkwg()
    assert backend.fla_gated_backward_refused() is None
    _gated_call()
    assert len(rec.launches) == 1 and rec.launches[0][1]["BK"] == 32


def test_grouped_value_heads_sum_into_their_key_head(hopper_triton_3_6):
    import fla.ops.common.chunk_o as chunk_o

    rec = Recorder(chunk_o.chunk_bwd_kernel_dqkwg)
    hopper_triton_3_6.setattr(chunk_o, "chunk_bwd_kernel_dqkwg", rec)
    hopper_triton_3_6.setenv(fla_hopper_dqkwg.ENV, "1")
    fla_hopper_dqkwg.register_hopper_dqkwg()
    dq, dk, _, _ = _gated_call(H=2, HV=6, K=128)
    (_, kw), = rec.launches
    assert kw["BK"] == 128  # 128 is not the miscompiled width: fla's own choice
    assert dq.shape == dk.shape == (1, 128, 2, 128) and torch.all(dq == 3) and torch.all(dk == 3)


def test_ungated_calls_are_left_to_fla(hopper_triton_3_6):
    cls = fla_hopper_dqkwg._backend_class()
    ok, why = cls().chunk_bwd_dqkwg_verifier(*[torch.zeros(1)] * 6, g=None)
    assert not ok and "ungated" in why
    assert cls().chunk_bwd_dqkwg_verifier(*[torch.zeros(1)] * 6, g=torch.zeros(1)) == (True, None)


def test_not_registered_where_fla_does_not_refuse(hopper_triton_3_6):
    import fla.utils

    hopper_triton_3_6.setattr(fla.utils, "TRITON_ABOVE_3_7_1", True)
    assert not fla_hopper_dqkwg.register_hopper_dqkwg()
    hopper_triton_3_6.setattr(fla.utils, "TRITON_ABOVE_3_7_1", False)
    hopper_triton_3_6.setenv("FLA_DISABLE_BACKEND_DISPATCH", "1")  # fla would bypass every backend
    assert not fla_hopper_dqkwg.register_hopper_dqkwg()
    # switched on (by default) but kept out of fla's dispatch: the refusal names what keeps it out, not the switch
    reason = backend.fla_gated_backward_refused()
    assert "FLA_DISABLE_BACKEND_DISPATCH=1" in reason and "BK32=0" not in reason


INTERPRETED = textwrap.dedent("""
    import inspect, json
    import torch
    from triton.runtime.autotuner import Autotuner
    import fla.ops.common.chunk_o as chunk_o
    from gendistill.ops.fla_hopper_dqkwg import chunk_bwd_dqkwg_bk32

    kernel = chunk_o.chunk_bwd_kernel_dqkwg
    while not isinstance(kernel, Autotuner):
        kernel = kernel.fn
    kernel.configs = kernel.configs[:1]  # the interpreter cannot time candidates; each computes the same
    chunk_o.check_shared_mem = lambda arch="none", *a, **k: arch == "hopper"  # fla's Hopper widths: 64 at K = 64
    fla_launcher = inspect.unwrap(chunk_o.chunk_bwd_dqkwg)  # fla's own launcher, its dispatch wrapper removed
    torch.manual_seed(0)
    out = {}
    cases = {"gated": (2, 2, None, 64), "grouped": (2, 4, None, 64), "packed": (2, 2, [50, 1, 77], 64),
             "head dimension 48": (2, 2, None, 48)}
    for name, (H, HV, lens, K) in cases.items():
        T, V = (128 if lens is None else sum(lens)), 64
        cu = None if lens is None else torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
        NT = (T + 63) // 64 if cu is None else sum((n + 63) // 64 for n in lens)
        r = torch.randn
        kw = dict(q=r(1, T, H, K), k=r(1, T, H, K), v=r(1, T, HV, V), do=r(1, T, HV, V), h=r(1, NT, HV, K, V),
                  dh=r(1, NT, HV, K, V), w=r(1, T, HV, K), g=-torch.rand(1, T, HV).cumsum(1) * 0.05,
                  dv=r(1, T, HV, V), scale=K ** -0.5, cu_seqlens=cu, chunk_size=64)
        ours, fla = chunk_bwd_dqkwg_bk32(**kw), fla_launcher(**kw)
        out[name] = {n: ((a - b).norm() / b.norm()).item() for n, a, b in zip(("dq", "dk", "dw", "dg"), ours, fla)}
    print(json.dumps(out))
""")


@pytest.mark.parametrize("key_block", ["32", "128"])
def test_safe_widths_compute_what_fla_computes_at_64_in_tritons_interpreter(key_block):
    """fla's real kernel, run by Triton's CPU interpreter (``TRITON_INTERPRET=1``, set before triton is imported, so
    in a fresh process): gendistill's launcher (key and value blocks of 32, or a key block of 128 with its columns
    past K masked) against fla's own launcher at its Hopper widths (64), gated, grouped value heads, packed documents
    and a head dimension of 48, float32. The interpreter does not reproduce #640 (a Hopper code-generation fault); it
    shows that the other widths, the key blocks' dg partials summed, are the same computation: only the order of
    float32 sums changes (~2e-7 relative), which 1e-6 allows and nothing else."""
    env = {**os.environ, "TRITON_INTERPRET": "1", fla_hopper_dqkwg.KEY_BLOCK_ENV: key_block}
    run = subprocess.run([sys.executable, "-c", INTERPRETED], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    errors = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(errors) == {"gated", "grouped", "packed", "head dimension 48"}
    for case, by_name in errors.items():
        assert max(by_name.values()) < 1e-6, (case, by_name)
