"""GPU checks (skipped without CUDA) of the fused forms the KDA mixer uses on CUDA without a cache — fla's
``causal_conv1d`` and fused gated RMSNorm — against our PyTorch forms on the same device, forward and backward, and
of the whole mixer against the PyTorch path (``GENDISTILL_KDA_BACKEND=torch``).

Tolerances (relative L2 error against the PyTorch form in float64): fp32 elementwise kernels differ only by rounding
order (we allow 1e-5); bf16 inputs round to 8 mantissa bits (we allow 1e-2).
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run through the device tool)")]

from gendistill.layers.norm import GatedRMSNorm  # noqa: E402
from gendistill.ops.conv import causal_conv1d, causal_conv1d_btd  # noqa: E402
from gendistill.ops.backend import fla_available  # noqa: E402

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


@pytest.fixture(autouse=True)
def _need_fla():
    if not fla_available():
        pytest.skip("flash-linear-attention kernels unavailable")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("packed", [False, True])
def test_fla_conv_matches_torch_conv(dtype, packed):
    g = torch.Generator(device="cuda").manual_seed(3)
    B, T, D, W = (1, 700, 384, 4) if packed else (2, 333, 384, 4)
    x = torch.randn(B, T, D, device="cuda", generator=g).to(dtype).requires_grad_()
    w = torch.randn(D, W, device="cuda", generator=g).requires_grad_()
    b = torch.randn(D, device="cuda", generator=g).requires_grad_()
    cu = torch.tensor([0, 5, 260, 261, 700], device="cuda", dtype=torch.int32) if packed else None
    y, _ = causal_conv1d_btd(x, w, b, None, cu_seqlens=cu)
    dy = torch.randn_like(y)
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), dy)
    xr, wr, br = (t.detach().double().requires_grad_() for t in (x, w, b))
    yr = causal_conv1d(xr.transpose(1, 2), wr, br, None, cu_seqlens=None if cu is None else cu.long()).transpose(1, 2)
    rx, rw, rb = torch.autograd.grad(yr, (xr, wr, br), dy.double())
    for got, want in ((y, yr), (gx, rx), (gw, rw), (gb, rb)):
        assert rel(got, want) < TOL[dtype], rel(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("activation", ["silu", "sigmoid"])
def test_fla_gated_norm_matches_reference(dtype, activation):
    g = torch.Generator(device="cuda").manual_seed(4)
    norm = GatedRMSNorm(64, eps=1e-5, activation=activation).cuda()
    with torch.no_grad():
        norm.weight.copy_(torch.rand(64, device="cuda", generator=g) + 0.5)
    x = torch.randn(2, 100, 4, 64, device="cuda", generator=g).to(dtype).requires_grad_()
    gate = torch.randn(2, 100, 4, 64, device="cuda", generator=g).to(dtype).requires_grad_()
    y = norm(x, gate)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, gate, norm.weight), dy)
    xr, gr = x.detach().double().requires_grad_(), gate.detach().double().requires_grad_()
    ref = GatedRMSNorm(64, eps=1e-5, activation=activation).cuda().double()
    with torch.no_grad():
        ref.weight.copy_(norm.weight.double())
    yr = ref.reference(xr, gr)
    # the reference upcasts to float32 internally; in float64 that is the identity for float32 inputs' error scale
    rgrads = torch.autograd.grad(yr, (xr, gr, ref.weight), dy.double())
    assert y.dtype == dtype
    for got, want in zip((y, *grads), (yr, *rgrads)):
        assert rel(got, want) < TOL[dtype], rel(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fla_conv_with_states_in_pieces_matches_torch_conv(dtype):
    """Cached prefill: fla's conv continued from the previous piece's final state (pieces shorter than W included,
    batch 2 so a wrong batch stride in the state would show) equals the whole sequence through the PyTorch form."""
    g = torch.Generator(device="cuda").manual_seed(5)
    B, T, D, W = 2, 301, 384, 4
    x = torch.randn(B, T, D, device="cuda", generator=g).to(dtype)
    w, b = torch.randn(D, W, device="cuda", generator=g), torch.randn(D, device="cuda", generator=g)
    ref = causal_conv1d(x.double().transpose(1, 2), w.double(), b.double()).transpose(1, 2)
    # a state that is a column slice of a wider [B, 3D, W] cache tensor, as the mixer passes it
    wide = torch.zeros(B, 3 * D, W, device="cuda", dtype=dtype)
    state, outs, start = wide[:, D:2 * D], [], 0
    for n in (3, 200, 1, 97):
        y, state = causal_conv1d_btd(x[:, start:start + n], w, b, None, initial_state=state, output_final_state=True)
        outs.append(y)
        start += n
    assert rel(torch.cat(outs, 1), ref) < TOL[dtype], rel(torch.cat(outs, 1), ref)
    assert torch.equal(state, x[:, -W:].transpose(1, 2))
