"""Each loss against a direct, loop-free textbook formula; the chunked vocabulary projection against the full one
(values and gradients); the masked reduction."""

from __future__ import annotations

import math
import subprocess
import sys
import types

import pytest
import torch

import gendistill.distill.losses as losses
from gendistill.distill.config import LossConfig
from gendistill.distill.losses import (
    HIDDEN_LOSSES,
    LOGIT_LOSSES,
    chunked_logit_loss,
    full_logit_loss,
    fused_forward_kl_applies,
    logit_loss,
    masked_mean,
)
from gendistill.errors import ConfigError


def _probs(logits: torch.Tensor, T: float) -> torch.Tensor:
    e = torch.exp((logits - logits.max(-1, keepdim=True).values) / T).double()
    return e / e.sum(-1, keepdim=True)


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (p * (p.log() - q.log())).sum(-1)


@pytest.fixture()
def logits():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(7, 50, generator=g) * 2
    t = torch.randn(7, 50, generator=g) * 3
    labels = torch.randint(0, 50, (7,), generator=g)
    return s, t, labels


@pytest.mark.parametrize("T", [1.0, 2.0])
def test_forward_kl(logits, T):
    s, t, y = logits
    got = LOGIT_LOSSES["forward_kl"](s, t, y, LossConfig(kind="forward_kl", temperature=T))
    ref = _kl(_probs(t, T), _probs(s, T)) * T * T
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)
    assert (got >= 0).all()


@pytest.mark.parametrize("T", [1.0, 0.5])
def test_reverse_kl(logits, T):
    s, t, y = logits
    got = LOGIT_LOSSES["reverse_kl"](s, t, y, LossConfig(kind="reverse_kl", temperature=T))
    ref = _kl(_probs(s, T), _probs(t, T)) * T * T
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("beta", [0.5, 0.1])
def test_jsd(logits, beta):
    s, t, y = logits
    got = LOGIT_LOSSES["jsd"](s, t, y, LossConfig(kind="jsd", jsd_beta=beta))
    p, q = _probs(t, 1.0), _probs(s, 1.0)
    m = beta * p + (1 - beta) * q
    ref = beta * _kl(p, m) + (1 - beta) * _kl(q, m)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)
    # the symmetric JSD is bounded by log 2
    if beta == 0.5:
        assert (got <= math.log(2) + 1e-6).all()


def test_topk_kl(logits):
    s, t, y = logits
    k = 5
    got = LOGIT_LOSSES["topk_kl"](s, t, y, LossConfig(kind="topk_kl", top_k=k))
    ref = []
    for i in range(s.shape[0]):
        idx = t[i].topk(k).indices
        p = _probs(t[i, idx][None], 1.0)[0]
        logq = torch.log(_probs(s[i][None], 1.0)[0, idx])
        ref.append((p * (p.log() - logq)).sum())
    torch.testing.assert_close(got.double(), torch.stack(ref), rtol=1e-5, atol=1e-6)
    # with k = V it is the full forward KL
    full = LOGIT_LOSSES["topk_kl"](s, t, y, LossConfig(kind="topk_kl", top_k=50))
    torch.testing.assert_close(full, LOGIT_LOSSES["forward_kl"](s, t, y, LossConfig()), rtol=1e-5, atol=1e-6)


def test_ce_weight_adds_cross_entropy(logits):
    s, t, y = logits
    cfg = LossConfig(kind="forward_kl", ce_weight=0.3)
    got = full_logit_loss(s, t, y, cfg)
    ce = -torch.log(_probs(s, 1.0)[torch.arange(7), y])
    ref = _kl(_probs(t, 1.0), _probs(s, 1.0)) + 0.3 * ce
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)


def test_identical_distributions_give_zero(logits):
    s, _, y = logits
    for kind in ("forward_kl", "reverse_kl", "jsd", "topk_kl"):
        got = LOGIT_LOSSES[kind](s, s.clone(), y, LossConfig(kind=kind))
        assert got.abs().max() < 1e-5, kind


def test_hidden_losses():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 6, 16, generator=g), torch.randn(4, 6, 16, generator=g)
    torch.testing.assert_close(HIDDEN_LOSSES["mse"](a, b), ((a - b) ** 2).sum(-1) / 16)
    torch.testing.assert_close(HIDDEN_LOSSES["l2"](a, b), torch.sqrt(((a - b) ** 2).sum(-1)) / 4.0)
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    torch.testing.assert_close(HIDDEN_LOSSES["cosine"](a, b), 1 - cos, rtol=1e-5, atol=1e-6)


def test_masked_mean_counts_only_masked_tokens():
    per = torch.tensor([[1.0, 2.0, 100.0], [3.0, 50.0, 4.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    assert masked_mean(per, mask).item() == pytest.approx((1 + 2 + 3 + 4) / 4)
    assert masked_mean(per, mask, denom=10).item() == pytest.approx(1.0)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd", "topk_kl"])
@pytest.mark.parametrize("train_head", [False, True])
def test_chunked_matches_full_values_and_gradients(kind, train_head):
    g = torch.Generator().manual_seed(2)
    N, D, V = 37, 12, 90
    h_s = torch.randn(N, D, generator=g, dtype=torch.float64).requires_grad_(True)
    w_s = (torch.randn(V, D, generator=g, dtype=torch.float64) * 0.5).requires_grad_(train_head)
    h_t = torch.randn(N, D, generator=g, dtype=torch.float64)
    w_t = torch.randn(V, D, generator=g, dtype=torch.float64) * 0.5
    labels = torch.randint(0, V, (N,), generator=g)
    cfg = LossConfig(kind=kind, temperature=1.5, ce_weight=0.1, top_k=7, chunk_size=8)

    got = chunked_logit_loss(h_s, w_s, h_t, w_t, labels, cfg, compute_dtype=torch.float64)
    (got * 0.7).backward()
    g_h = h_s.grad.clone()
    g_w = w_s.grad.clone() if train_head else None

    h2 = h_s.detach().clone().requires_grad_(True)
    w2 = w_s.detach().clone().requires_grad_(train_head)
    ref = full_logit_loss(h2 @ w2.t(), h_t @ w_t.t(), labels, cfg).sum()
    (ref * 0.7).backward()
    torch.testing.assert_close(got.double(), ref.double(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_h, h2.grad, rtol=1e-4, atol=1e-6)
    if train_head:
        torch.testing.assert_close(g_w, w2.grad, rtol=1e-4, atol=1e-6)
    else:
        assert w_s.grad is None


@pytest.mark.parametrize("train_head", [False, True])
def test_chunked_heads_with_biases_match_full_logits_and_train_the_student_bias(train_head):
    """Vocabulary projections with a bias: the loss and every gradient (the student's hidden states, and its head's
    weight and bias when the head trains) equal full logits' in float64; a frozen bias gets none."""
    g = torch.Generator().manual_seed(4)
    N, D, V = 29, 10, 70
    h_s = torch.randn(N, D, generator=g, dtype=torch.float64).requires_grad_(True)
    w_s = (torch.randn(V, D, generator=g, dtype=torch.float64) * 0.5).requires_grad_(train_head)
    b_s = torch.randn(V, generator=g, dtype=torch.float64).requires_grad_(train_head)
    h_t = torch.randn(N, D, generator=g, dtype=torch.float64)
    w_t, b_t = torch.randn(V, D, generator=g, dtype=torch.float64) * 0.5, torch.randn(V, generator=g, dtype=torch.float64)
    labels = torch.randint(0, V, (N,), generator=g)
    cfg = LossConfig(kind="forward_kl", temperature=2.0, ce_weight=0.1, chunk_size=8)
    got = chunked_logit_loss(h_s, w_s, h_t, w_t, labels, cfg, b_s=b_s, b_t=b_t, compute_dtype=torch.float64)
    (got * 0.7).backward()
    h2, w2, b2 = (x.detach().clone().requires_grad_(x.requires_grad) for x in (h_s, w_s, b_s))
    ref = full_logit_loss(h2 @ w2.t() + b2, h_t @ w_t.t() + b_t, labels, cfg).sum()
    (ref * 0.7).backward()
    torch.testing.assert_close(got.double(), ref.double(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(h_s.grad, h2.grad, rtol=1e-9, atol=1e-12)
    if train_head:
        torch.testing.assert_close(w_s.grad, w2.grad, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(b_s.grad, b2.grad, rtol=1e-9, atol=1e-12)
    else:
        assert w_s.grad is None and b_s.grad is None


def test_chunk_size_does_not_change_the_result():
    g = torch.Generator().manual_seed(3)
    h_s, h_t = torch.randn(50, 8, generator=g), torch.randn(50, 8, generator=g)
    w = torch.randn(30, 8, generator=g)
    y = torch.zeros(50, dtype=torch.long)
    vals = [
        chunked_logit_loss(h_s, w, h_t, w * 0.5, y, LossConfig(chunk_size=c)).item() for c in (1, 7, 50, 1000)
    ]
    assert max(vals) - min(vals) < 1e-4 * abs(vals[0])


def test_chunked_peak_memory_is_one_chunk_of_logits():
    """The largest tensor the chunked loss allocates is one chunk of logits, never [N, V]: track allocations with
    a TorchDispatchMode over the forward and backward."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        biggest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for o in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(o, torch.Tensor):
                    Largest.biggest = max(Largest.biggest, o.numel())
            return out

    N, D, V, C = 512, 16, 2000, 64
    h_s = torch.randn(N, D, requires_grad=True)
    w = torch.randn(V, D)
    y = torch.zeros(N, dtype=torch.long)
    with Largest():
        loss = chunked_logit_loss(h_s, w, torch.randn(N, D), w, y, LossConfig(chunk_size=C))
        loss.backward()
    assert Largest.biggest <= C * V, Largest.biggest
    assert Largest.biggest < N * V // 4


# ------------------------------------------------------------------------------------ the stages' loss: fused or not
def _proj_inputs(N=37, D=16, V=90, seed=4):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N, D, generator=g), torch.randn(V, D, generator=g) * 0.3, torch.randn(N, D, generator=g),
            torch.randn(V, D, generator=g) * 0.3, torch.randint(0, V, (N,), generator=g))


def test_logit_loss_off_cuda_is_the_chunked_reference():
    """'auto' off CUDA (and 'chunked' anywhere) computes exactly the chunked loss; the fused kernel needs CUDA."""
    h_s, w_s, h_t, w_t, y = _proj_inputs()
    for impl in ("auto", "chunked"):
        cfg = LossConfig(chunk_size=8, implementation=impl)
        assert torch.equal(logit_loss(h_s, w_s, h_t, w_t, y, cfg), chunked_logit_loss(h_s, w_s, h_t, w_t, y, cfg))


@pytest.mark.parametrize("cfg, why", [
    (LossConfig(implementation="fused"), "not on CUDA"),
    (LossConfig(kind="reverse_kl", implementation="fused"), "reverse_kl"),
    (LossConfig(kind="jsd", ce_weight=0.5, implementation="fused"), "jsd"),
])
def test_fused_logit_loss_where_it_does_not_apply_is_one_clear_error(cfg, why):
    h_s, w_s, h_t, w_t, y = _proj_inputs()
    with pytest.raises(ConfigError, match=f"loss.implementation: fused does not apply: .*{why}"):
        logit_loss(h_s, w_s, h_t, w_t, y, cfg)


def test_fused_forward_kl_applies_only_to_what_the_kernel_computes():
    h = torch.zeros(2, 3)
    assert fused_forward_kl_applies(LossConfig(), h, None, None) == "not on CUDA (fla's Triton kernel)"
    assert "bias" in fused_forward_kl_applies(LossConfig(), h, torch.zeros(3), None)
    assert "jsd" in fused_forward_kl_applies(LossConfig(kind="jsd"), h, None, None)


def test_fused_forward_kl_asks_fla_available_first(monkeypatch):
    """On CUDA the fused loss applies only where fla's kernels import, and asking is what points fla at gendistill's
    shipped kernel configurations before its first import (``fla_available`` -> ``fla_configs.activate``): a process
    whose first fla kernel was the loss's autotuned every KDA kernel from scratch (the GPU suite on an H100)."""
    asked: list[bool] = []
    on_cuda = types.SimpleNamespace(is_cuda=True)  # the check reads only where the hidden states live
    for importable in (False, True):
        monkeypatch.setattr(losses, "fla_available", lambda v=importable: asked.append(v) or v)
        why = fused_forward_kl_applies(LossConfig(), on_cuda, None, None)
        assert why == (None if importable else "fla's kernels are not importable here")
    assert asked == [False, True]


def test_importing_the_trainer_imports_no_fla():
    """fla reads its kernel-configuration settings once, at its own import; gendistill sets them in
    ``fla_available()``. So no module of the trainer may import fla when it is imported (fla comes in only behind
    ``fla_available()`` / ``use_fla``), or a GPU run would autotune every kernel from scratch."""
    code = ("import sys\nimport gendistill.distill.losses, gendistill.distill.stages, gendistill.distill.trainer\n"
            "import gendistill.distill.pipeline, gendistill.distill.compile\n"
            "print(sorted(m for m in sys.modules if m == 'fla' or m.startswith('fla.')))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "[]"
