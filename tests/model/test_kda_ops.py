"""KDA operators: our chunked CPU path vs the step-by-step recurrence and fla's naive references, in float64."""

from __future__ import annotations

import math

import pytest
import torch

from gendistill.ops.kda import kda_gate, l2norm
from gendistill.ops.kda.chunk import chunk_kda
from gendistill.ops.kda.recurrent import recurrent_kda

naive = pytest.importorskip("fla.ops.kda.naive", reason="flash-linear-attention not installed")

# fla's naive references compute in float32 internally, so agreement with them is bounded by float32 rounding
# (observed ~1e-7 relative); our two implementations both run in float64 and agree to rounding (~1e-15).
TOL_VS_FLA = 1e-6
TOL_F64 = 1e-10


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def random_inputs(B, T, H, K, V, seed, decay_scale=1.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = l2norm(torch.randn(B, T, H, K, generator=g, dtype=dtype))
    k = l2norm(torch.randn(B, T, H, K, generator=g, dtype=dtype))
    v = torch.randn(B, T, H, V, generator=g, dtype=dtype)
    A_log = torch.rand(H, generator=g, dtype=dtype) * decay_scale
    gate = kda_gate(torch.randn(B, T, H, K, generator=g, dtype=dtype), A_log, torch.randn(H * K, generator=g, dtype=dtype))
    beta = torch.rand(B, T, H, generator=g, dtype=dtype)
    h0 = torch.randn(B, H, K, V, generator=g, dtype=dtype)
    return q, k, v, gate, beta, h0


@pytest.mark.parametrize("T", [1, 17, 64, 100])
@pytest.mark.parametrize("chunk_size", [16, 32])
def test_chunk_matches_fla_naive_recurrent(T, chunk_size):
    q, k, v, g, beta, h0 = random_inputs(2, T, 3, 16, 8, seed=T + chunk_size)
    o_ref, s_ref = naive.naive_recurrent_kda(q, k, v, g, beta, initial_state=h0, output_final_state=True)
    o, s = chunk_kda(q, k, v, g, beta, initial_state=h0, output_final_state=True, chunk_size=chunk_size)
    assert rel(o, o_ref) < TOL_VS_FLA
    assert rel(s, s_ref) < TOL_VS_FLA


def test_chunk_matches_fla_naive_chunk_without_initial_state():
    q, k, v, g, beta, _ = random_inputs(1, 128, 2, 32, 32, seed=7)
    o_ref, s_ref = naive.naive_chunk_kda(q, k, v, g, beta, output_final_state=True, chunk_size=64)
    o, s = chunk_kda(q, k, v, g, beta, output_final_state=True)
    assert rel(o, o_ref) < TOL_VS_FLA and rel(s, s_ref) < TOL_VS_FLA


@pytest.mark.parametrize("T", [5, 33, 97])
def test_chunk_equals_recurrent_in_float64(T):
    q, k, v, g, beta, h0 = random_inputs(2, T, 2, 8, 12, seed=100 + T)
    o_c, s_c = chunk_kda(q, k, v, g, beta, initial_state=h0, output_final_state=True, chunk_size=16)
    o_r, s_r = recurrent_kda(q, k, v, g, beta, initial_state=h0, output_final_state=True)
    assert rel(o_c, o_r) < TOL_F64 and rel(s_c, s_r) < TOL_F64


def test_packed_sequences_reset_state_per_document():
    lens = [7, 30, 1, 45]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
    q, k, v, g, beta, _ = random_inputs(1, sum(lens), 2, 8, 8, seed=3)
    h0 = torch.randn(len(lens), 2, 8, 8, dtype=torch.float64)
    o, s = chunk_kda(q, k, v, g, beta, initial_state=h0, output_final_state=True, cu_seqlens=cu, chunk_size=16)
    for n, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        o_ref, s_ref = naive.naive_recurrent_kda(q[:, a:b], k[:, a:b], v[:, a:b], g[:, a:b], beta[:, a:b],
                                                 initial_state=h0[n:n + 1], output_final_state=True)
        assert rel(o[:, a:b], o_ref) < TOL_VS_FLA
        assert rel(s[n:n + 1], s_ref) < TOL_VS_FLA


def test_state_carry_across_calls_equals_one_call():
    q, k, v, g, beta, h0 = random_inputs(1, 90, 2, 8, 8, seed=11)
    o_full, s_full = chunk_kda(q, k, v, g, beta, initial_state=h0, output_final_state=True)
    o1, s1 = chunk_kda(q[:, :41], k[:, :41], v[:, :41], g[:, :41], beta[:, :41], initial_state=h0, output_final_state=True)
    o2, s2 = recurrent_kda(q[:, 41:], k[:, 41:], v[:, 41:], g[:, 41:], beta[:, 41:], initial_state=s1, output_final_state=True)
    assert rel(torch.cat([o1, o2], 1), o_full) < TOL_F64 and rel(s2, s_full) < TOL_F64


def test_strong_decay_stays_finite_in_float32():
    q, k, v, g, beta, h0 = random_inputs(1, 256, 2, 16, 16, seed=5, decay_scale=3.0, dtype=torch.float32)
    g = g * 50  # log decays down to about -1e3 per step: exp(-G) would overflow in a naive chunked form
    o, s = chunk_kda(q, k, v, g, beta, initial_state=h0, output_final_state=True, chunk_size=64)
    o_ref, s_ref = recurrent_kda(q, k, v, g, beta, initial_state=h0, output_final_state=True)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    assert rel(o, o_ref) < 1e-4  # float32 accumulation over a 64-token chunk


def test_gradients_match_recurrent():
    inputs = [x.requires_grad_() for x in random_inputs(1, 40, 2, 8, 8, seed=9)]
    o_c, s_c = chunk_kda(*inputs[:5], initial_state=inputs[5], output_final_state=True, chunk_size=16)
    grads_c = torch.autograd.grad((o_c.sin().sum() + s_c.cos().sum()), inputs)
    o_r, s_r = recurrent_kda(*inputs[:5], initial_state=inputs[5], output_final_state=True)
    grads_r = torch.autograd.grad((o_r.sin().sum() + s_r.cos().sum()), inputs)
    for gc, gr in zip(grads_c, grads_r):
        assert rel(gc, gr) < 1e-9


def test_gate_matches_fla_naive_gate():
    gate_mod = pytest.importorskip("fla.ops.kda.gate")
    f = torch.randn(2, 9, 3, 8, dtype=torch.float64)
    A_log, dt_bias = torch.randn(3, dtype=torch.float64), torch.randn(24, dtype=torch.float64)
    ours = kda_gate(f, A_log, dt_bias)
    ref = gate_mod.naive_kda_gate(f, A_log, dt_bias, output_dtype=torch.float64)
    assert rel(ours, ref.to(torch.float64)) < TOL_VS_FLA
    assert (ours <= 0).all()


# ----------------------------------------------------------------------------------------- bounded gate (safe_gate)
def fla_bounded_gate_f64(f, A_log, dt_bias, lower_bound):
    """fla's bounded gate transcribed from ``kda_gate_chunk_cumsum_vector_kernel`` (fla/ops/kda/gate.py), in float64:
    ``b_s = f + dt_bias``; ``lower_bound * sigmoid(exp(A_log) * b_s)``; no clamp (the range is the sigmoid's)."""
    H, K = f.shape[-2:]
    x = A_log.double().exp().view(H, 1) * (f.double() + dt_bias.double().view(H, K))
    return lower_bound / (1.0 + torch.exp(-x))


def gate_inputs(seed, B=2, T=9, H=3, K=8, spread=4.0):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(B, T, H, K, generator=g, dtype=torch.float64) * spread  # sigmoid inputs over roughly (-30, 30)
    return f, torch.randn(H, generator=g, dtype=torch.float64), torch.randn(H * K, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("lower_bound", [-5.0, -1.0, -0.25])
def test_bounded_gate_equals_fla_formula_and_stays_in_range(lower_bound):
    f, A_log, dt_bias = gate_inputs(seed=int(-lower_bound * 4))
    ref = fla_bounded_gate_f64(f, A_log, dt_bias, lower_bound)
    ours64 = kda_gate(f, A_log, dt_bias, lower_bound=lower_bound)
    assert ours64.dtype == torch.float64 and rel(ours64, ref) < TOL_F64  # same formula in float64: rounding only
    ours32 = kda_gate(f.float(), A_log.float(), dt_bias.float(), lower_bound=lower_bound)
    assert ours32.dtype == torch.float32
    assert (ours32.double() - ref).abs().max().item() < 1e-6 * abs(lower_bound)  # float32 rounding of O(|lb|) values
    assert (ours64 >= lower_bound).all() and (ours64 < 0).all()
    # float32: sigmoid(x) underflows to 0 below x ~ -103, so a gate can be exactly 0 (no decay) as in fla's kernel
    assert (ours32 >= lower_bound).all() and (ours32 <= 0).all()
    assert not torch.allclose(ours64, kda_gate(f, A_log, dt_bias))  # a different function from the paper's gate


@pytest.mark.parametrize("lower_bound", [-5.0, -2.0])
def test_bounded_gate_matches_fla_naive_lowerbound_gate(lower_bound):
    gate_mod = pytest.importorskip("fla.ops.kda.gate")
    f, A_log, dt_bias = gate_inputs(seed=3)
    ref = gate_mod.naive_kda_lowerbound_gate(f, A_log, dt_bias, lower_bound=lower_bound, output_dtype=torch.float64)
    assert rel(kda_gate(f, A_log, dt_bias, lower_bound=lower_bound), ref) < TOL_VS_FLA  # fla's reference is float32


def test_bounded_gate_gradients_are_autograd_exact():
    """The CPU path's gradients w.r.t. f, A_log, dt_bias (what distillation trains) against finite differences."""
    f, A_log, dt_bias = (x.requires_grad_() for x in gate_inputs(seed=4, B=1, T=3, H=2, K=4, spread=1.0))
    assert torch.autograd.gradcheck(lambda *a: kda_gate(*a, lower_bound=-5.0), (f, A_log, dt_bias))


@pytest.mark.parametrize("lower_bound, max_fraction", [(-5.0, 0.5), (-1.0, 0.5)])
def test_bounded_init_starts_at_the_paper_gates_initial_decay(lower_bound, max_fraction):
    from gendistill.ops.kda import bounded_gate_init

    H, K = 4, 16
    g = torch.Generator().manual_seed(0)
    A_log = torch.empty(H).uniform_(1.0, 16.0, generator=g).log()  # the Mamba-style init of the paper gate
    dt = torch.exp(torch.empty(H * K).uniform_(math.log(1e-3), math.log(1e-1), generator=g))
    dt_bias = dt + torch.log(-torch.expm1(-dt))
    A_b, dt_b = bounded_gate_init(A_log, dt_bias, lower_bound, max_fraction=max_fraction)
    assert torch.equal(A_b, torch.zeros(H)) and dt_b.dtype == dt_bias.dtype
    zero = torch.zeros(1, 1, H, K)
    paper = kda_gate(zero, A_log, dt_bias)
    bounded = kda_gate(zero, A_b, dt_b, lower_bound=lower_bound)
    expected = paper.clamp(min=max_fraction * lower_bound)  # beyond max_fraction * lb a channel starts there
    assert (bounded - expected).abs().max().item() < 1e-6
    assert (lower_bound == -5.0) == torch.equal(expected, paper)  # the Mamba init's |g0| <= 1.6 fits in [-5, 0)


@pytest.mark.parametrize("recurrent", [False, True])
def test_kda_from_projections_applies_the_bounded_gate(recurrent):
    """The CPU path of the mixer's entry point computes KDA with the bounded gate (fla's formula), in float64."""
    from gendistill.ops.kda import kda_from_projections

    B, T, H, K = 2, 21, 2, 8
    g = torch.Generator().manual_seed(5)
    q, k, v, f = (torch.randn(B, T, H, K, generator=g, dtype=torch.float64) for _ in range(4))
    b = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    A_log, dt_bias = torch.randn(H, generator=g, dtype=torch.float64), torch.randn(H * K, generator=g, dtype=torch.float64)
    o, s = kda_from_projections(q, k, v, f, b, A_log, dt_bias, recurrent=recurrent, output_final_state=True,
                                gate_lower_bound=-5.0)
    gate = fla_bounded_gate_f64(f, A_log, dt_bias, -5.0)
    o_ref, s_ref = naive.naive_recurrent_kda(l2norm(q), l2norm(k), v, gate, torch.sigmoid(b), output_final_state=True)
    assert rel(o, o_ref) < TOL_VS_FLA and rel(s, s_ref) < TOL_VS_FLA
    o_paper, _ = kda_from_projections(q, k, v, f, b, A_log, dt_bias, recurrent=recurrent)
    assert rel(o_paper, o_ref) > 1e-2  # the option changes the function


def test_bounded_init_keeps_the_parameters_device():
    """Re-initialising parameters that already live on a device (here ``meta``, as transformers builds models) keeps
    them there: the init's working tensors follow the parameters."""
    from gendistill.ops.kda import bounded_gate_init

    A_log, dt_bias = torch.zeros(3, device="meta"), torch.zeros(12, device="meta")
    a, d = bounded_gate_init(A_log, dt_bias, -5.0)
    assert a.device.type == d.device.type == "meta" and a.shape == (3,) and d.shape == (12,)
