"""Gated DeltaNet, GLA and Mamba2-SSD operators: our chunked CPU paths vs the step-by-step recurrences (float64, with
gradients) and vs fla's naive references."""

from __future__ import annotations

import pytest
import torch

from gendistill.ops.gated_delta_rule import gdn_gate, torch_chunk_gdn, torch_recurrent_gdn
from gendistill.ops.gla import torch_chunk_gla, torch_recurrent_gla
from gendistill.ops.kda import l2norm
from gendistill.ops.mamba2 import mamba2_dt, mamba2_ssd

gdn_naive = pytest.importorskip("fla.ops.gated_delta_rule.naive", reason="flash-linear-attention not installed")
gla_naive = pytest.importorskip("fla.ops.gla.naive")
simple_gla_naive = pytest.importorskip("fla.ops.simple_gla.naive")

# fla's naive references compute in float32, so agreement with them is bounded by float32 rounding (observed ~1e-7
# relative); our chunked and recurrent forms both run in float64 and agree to rounding (~1e-15).
TOL_VS_FLA = 1e-6
TOL_F64 = 1e-10


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def gen(seed):
    return torch.Generator().manual_seed(seed)


def gdn_inputs(B, T, H, K, V, seed):
    g = gen(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    q, k, v = l2norm(r(B, T, H, K)), l2norm(r(B, T, H, K)), r(B, T, H, V)
    gate = gdn_gate(r(B, T, H), torch.rand(H, generator=g, dtype=torch.float64) * 2, r(H))
    beta = torch.rand(B, T, H, generator=g, dtype=torch.float64)
    return q, k, v, gate, beta, r(B, H, K, V)


def gla_inputs(B, T, H, K, V, seed, per_head=False):
    g = gen(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    # GLA's gate: logsigmoid(.) / 16 as in fla's layer, made stronger here so decay matters within a chunk
    decay = torch.nn.functional.logsigmoid(r(B, T, H) if per_head else r(B, T, H, K)) / 4
    return r(B, T, H, K), r(B, T, H, K), r(B, T, H, V), decay, r(B, H, K, V)


# ------------------------------------------------------------------------------------------------- Gated DeltaNet
@pytest.mark.parametrize("T", [1, 37, 100])
def test_gdn_chunk_matches_fla_naive_recurrent(T):
    q, k, v, g, beta, h0 = gdn_inputs(2, T, 3, 16, 8, seed=T)
    o_ref, s_ref = gdn_naive.naive_recurrent_gated_delta_rule(q, k, v, beta, g, initial_state=h0, output_final_state=True)
    o, s = torch_chunk_gdn(q, k, v, g, beta, initial_state=h0, output_final_state=True, chunk_size=16)
    assert rel(o, o_ref) < TOL_VS_FLA and rel(s, s_ref) < TOL_VS_FLA


def test_gdn_chunk_matches_fla_naive_chunk():
    q, k, v, g, beta, h0 = gdn_inputs(1, 96, 2, 16, 16, seed=4)
    o_ref, s_ref = gdn_naive.naive_chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0.float(),
                                                         output_final_state=True, chunk_size=32)
    o, s = torch_chunk_gdn(q, k, v, g, beta, initial_state=h0, output_final_state=True)
    assert rel(o, o_ref) < TOL_VS_FLA and rel(s, s_ref) < TOL_VS_FLA


def test_gdn_gate_matches_fla_naive_gate():
    fn = pytest.importorskip("fla.ops.gated_delta_rule.gate").naive_gdn_gate
    a = torch.randn(2, 9, 3, dtype=torch.float64)
    A_log, dt_bias = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    assert rel(gdn_gate(a, A_log, dt_bias), fn(a, A_log, dt_bias).double()) < TOL_VS_FLA


def test_gdn_chunk_equals_recurrent_with_gradients():
    inputs = [x.requires_grad_() for x in gdn_inputs(2, 45, 2, 8, 8, seed=9)]
    o_c, s_c = torch_chunk_gdn(*inputs[:5], initial_state=inputs[5], output_final_state=True, chunk_size=16)
    o_r, s_r = torch_recurrent_gdn(*inputs[:5], initial_state=inputs[5], output_final_state=True)
    assert rel(o_c, o_r) < TOL_F64 and rel(s_c, s_r) < TOL_F64
    grads_c = torch.autograd.grad(o_c.sin().sum() + s_c.cos().sum(), inputs)
    grads_r = torch.autograd.grad(o_r.sin().sum() + s_r.cos().sum(), inputs)
    for name, gc, gr in zip("q k v g beta h0".split(), grads_c, grads_r):
        assert rel(gc, gr) < 1e-9, name


def test_gdn_packed_documents_match_each_document_alone():
    lens = [7, 30, 1, 20]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
    q, k, v, g, beta, _ = gdn_inputs(1, sum(lens), 2, 8, 8, seed=3)
    h0 = torch.randn(len(lens), 2, 8, 8, dtype=torch.float64)
    o, s = torch_chunk_gdn(q, k, v, g, beta, initial_state=h0, output_final_state=True, cu_seqlens=cu, chunk_size=16)
    for n, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        o_ref, s_ref = gdn_naive.naive_recurrent_gated_delta_rule(q[:, a:b], k[:, a:b], v[:, a:b], beta[:, a:b],
                                                                  g[:, a:b], initial_state=h0[n:n + 1],
                                                                  output_final_state=True)
        assert rel(o[:, a:b], o_ref) < TOL_VS_FLA and rel(s[n:n + 1], s_ref) < TOL_VS_FLA


# ------------------------------------------------------------------------------------------------------------ GLA
@pytest.mark.parametrize("T", [1, 37, 100])
def test_gla_chunk_matches_fla_naive_recurrent(T):
    q, k, v, g, h0 = gla_inputs(2, T, 3, 16, 8, seed=T)
    o_ref, s_ref = gla_naive.naive_recurrent_gla(q, k, v, g, initial_state=h0, output_final_state=True)
    o, s = torch_chunk_gla(q, k, v, g, initial_state=h0, output_final_state=True, chunk_size=16)
    assert rel(o, o_ref) < TOL_VS_FLA and rel(s, s_ref) < TOL_VS_FLA


@pytest.mark.parametrize("per_head", [False, True], ids=["gla", "per_head_decay"])
def test_gla_chunk_equals_recurrent_with_gradients(per_head):
    inputs = [x.requires_grad_() for x in gla_inputs(2, 45, 2, 8, 8, seed=5, per_head=per_head)]
    o_c, s_c = torch_chunk_gla(*inputs[:4], initial_state=inputs[4], output_final_state=True, chunk_size=16)
    o_r, s_r = torch_recurrent_gla(*inputs[:4], initial_state=inputs[4], output_final_state=True)
    assert rel(o_c, o_r) < TOL_F64 and rel(s_c, s_r) < TOL_F64
    grads_c = torch.autograd.grad(o_c.sin().sum() + s_c.cos().sum(), inputs)
    grads_r = torch.autograd.grad(o_r.sin().sum() + s_r.cos().sum(), inputs)
    for name, gc, gr in zip("q k v g h0".split(), grads_c, grads_r):
        assert rel(gc, gr) < 1e-9, name


def test_gla_strong_decay_stays_finite_in_float32():
    q, k, v, g, h0 = (x.float() for x in gla_inputs(1, 128, 2, 16, 16, seed=6))
    g = g * 200  # log decays down to about -1e3 per step: exp(-G) would overflow in a naive chunked form
    o, s = torch_chunk_gla(q, k, v, g, initial_state=h0, output_final_state=True, chunk_size=64)
    o_ref, s_ref = torch_recurrent_gla(q, k, v, g, initial_state=h0, output_final_state=True)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    assert rel(o, o_ref) < 1e-5 and rel(s, s_ref) < 1e-5


@pytest.mark.parametrize("T", [1, 50])
def test_per_head_decay_matches_fla_naive_simple_gla(T):
    q, k, v, g, h0 = gla_inputs(2, T, 3, 8, 8, seed=20 + T, per_head=True)
    o_ref, s_ref = simple_gla_naive.naive_recurrent_simple_gla(q, k, v, g, initial_state=h0, output_final_state=True)
    o, s = torch_chunk_gla(q, k, v, g, initial_state=h0, output_final_state=True, chunk_size=16)
    assert rel(o, o_ref) < TOL_VS_FLA and rel(s, s_ref) < TOL_VS_FLA
    o_r, s_r = torch_recurrent_gla(q, k, v, g, initial_state=h0, output_final_state=True)
    assert rel(o, o_r) < TOL_F64 and rel(s, s_r) < TOL_F64


def test_gla_packed_documents_match_each_document_alone():
    lens = [9, 1, 40]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
    q, k, v, g, _ = gla_inputs(1, sum(lens), 2, 8, 8, seed=8)
    o, s = torch_chunk_gla(q, k, v, g, output_final_state=True, cu_seqlens=cu, chunk_size=16)
    for n, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        o_ref, s_ref = gla_naive.naive_recurrent_gla(q[:, a:b], k[:, a:b], v[:, a:b], g[:, a:b], output_final_state=True)
        assert rel(o[:, a:b], o_ref) < TOL_VS_FLA and rel(s[n:n + 1], s_ref) < TOL_VS_FLA


# ---------------------------------------------------------------------------------------------------- Mamba2 SSD
def mamba2_step_by_step(C, B, x, dt, A_log, D, scale, h0):
    """Mamba2's selective-scan recurrence written out per token (the definition, independent of the GLA mapping)."""
    h, ys = h0.clone(), []
    A = -A_log.exp()
    for t in range(x.shape[1]):
        h = torch.exp(dt[:, t] * A)[..., None, None] * h + torch.einsum("bhn,bhp->bhnp", B[:, t], dt[:, t, :, None] * x[:, t])
        ys.append(torch.einsum("bhn,bhnp->bhp", scale * C[:, t], h) + D[:, None] * x[:, t])
    return torch.stack(ys, 1), h


@pytest.mark.parametrize("recurrent", [False, True])
def test_mamba2_ssd_matches_the_selective_scan(recurrent):
    g = gen(1)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    Bsz, T, H, N, P = 2, 41, 3, 8, 6
    C, Bm, x = r(Bsz, T, H, N), r(Bsz, T, H, N), r(Bsz, T, H, P)
    dt = mamba2_dt(r(Bsz, T, H), r(H))
    A_log, D, h0 = r(H), r(H), r(Bsz, H, N, P)
    y, s = mamba2_ssd(C, Bm, x, dt, A_log, D, recurrent=recurrent, initial_state=h0, output_final_state=True)
    y_ref, s_ref = mamba2_step_by_step(C, Bm, x, dt, A_log, D, N**-0.5, h0)
    assert rel(y, y_ref) < TOL_F64 and rel(s, s_ref) < TOL_F64


def test_mamba2_skip_term_keeps_float32_d_in_a_bf16_model():
    """``D`` is a float32 parameter in a bf16 model (docs/mixers.md): the skip term ``D * x`` is computed in float32,
    so D = 1.003 and D = 1.0 give different bf16 outputs (cast to bf16 first, both would be 1.0)."""
    g = torch.Generator().manual_seed(0)
    B, T, H, N, P = 1, 8, 2, 16, 16
    C, Bm = (torch.randn(B, T, H, N, generator=g).bfloat16() for _ in range(2))
    x = torch.randn(B, T, H, P, generator=g).bfloat16()
    dt, A_log = torch.rand(B, T, H, generator=g) * 0.1, torch.zeros(H)
    y1, _ = mamba2_ssd(C, Bm, x, dt, A_log, torch.full((H,), 1.0))
    y2, _ = mamba2_ssd(C, Bm, x, dt, A_log, torch.full((H,), 1.003))
    assert y1.dtype == torch.bfloat16 and not torch.equal(y1, y2)
    ref = (y1.float() + 0.003 * x.float())  # y2 - y1 is 0.003 * x, up to bf16's rounding of each output
    torch.testing.assert_close(y2.float(), ref, rtol=1e-2, atol=1e-2)
