"""Distillation losses: a registry of small per-token functions plus a masked reduction.

Logit losses take ``(student_logits [N, V], teacher_logits [N, V], labels [N], cfg)`` in fp32 and return a per-token
loss ``[N]``; hidden-state losses take ``(student [N, D], teacher [N, D])``. :func:`chunked_logit_loss` applies a logit
loss to hidden states through the vocabulary projection ``chunk_size`` tokens at a time: the full ``[N, V]`` fp32
logits of a batch are never materialised (only one chunk's, in the forward and the gradient), which is what lets a
151,936-token vocabulary at 4096 tokens x batch 4 fit. :func:`logit_loss` is what the stages call: the forward KL on
CUDA goes through fla's fused linear-KL kernel (:func:`fused_forward_kl`; logits, softmaxes and their gradient in one
Triton pass per row; an added cross-entropy through fla's fused linear cross-entropy), everything else through the
chunked reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F

from gendistill.errors import ConfigError
from gendistill.ops.backend import fla_available


class LossSettings(Protocol):
    """The loss settings the functions here read: a recipe stage's ``loss``
    (:class:`gendistill.distill.config.LossConfig`, whose ``kind`` is one of the names registered here)."""

    kind: str
    temperature: float
    ce_weight: float
    top_k: int
    jsd_beta: float
    chunk_size: int
    implementation: str


LogitLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, LossSettings], torch.Tensor]
HiddenLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

LOGIT_LOSSES: dict[str, LogitLoss] = {}
HIDDEN_LOSSES: dict[str, HiddenLoss] = {}


def register_logit_loss(name: str) -> Callable[[LogitLoss], LogitLoss]:
    def deco(fn: LogitLoss) -> LogitLoss:
        LOGIT_LOSSES[name] = fn
        return fn

    return deco


def register_hidden_loss(name: str) -> Callable[[HiddenLoss], HiddenLoss]:
    def deco(fn: HiddenLoss) -> HiddenLoss:
        HIDDEN_LOSSES[name] = fn
        return fn

    return deco


# ------------------------------------------------------------------------------------------------------ logit losses
@register_logit_loss("forward_kl")
def forward_kl(s: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, cfg: LossSettings) -> torch.Tensor:
    """KL(p_teacher || p_student) at temperature T, scaled by T^2 (Hinton)."""
    T = cfg.temperature
    ls = F.log_softmax(s / T, dim=-1)
    lt = F.log_softmax(t / T, dim=-1)
    return (lt.exp() * (lt - ls)).sum(-1) * (T * T)


@register_logit_loss("reverse_kl")
def reverse_kl(s: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, cfg: LossSettings) -> torch.Tensor:
    """KL(p_student || p_teacher) at temperature T, scaled by T^2."""
    T = cfg.temperature
    ls = F.log_softmax(s / T, dim=-1)
    lt = F.log_softmax(t / T, dim=-1)
    return (ls.exp() * (ls - lt)).sum(-1) * (T * T)


@register_logit_loss("jsd")
def jsd(s: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, cfg: LossSettings) -> torch.Tensor:
    """Generalised Jensen-Shannon: beta*KL(p_t||m) + (1-beta)*KL(p_s||m), m = beta*p_t + (1-beta)*p_s."""
    T, b = cfg.temperature, cfg.jsd_beta
    ls = F.log_softmax(s / T, dim=-1)
    lt = F.log_softmax(t / T, dim=-1)
    lm = torch.logsumexp(torch.stack([lt + math.log(b), ls + math.log(1 - b)]), dim=0)
    return (b * (lt.exp() * (lt - lm)).sum(-1) + (1 - b) * (ls.exp() * (ls - lm)).sum(-1)) * (T * T)


@register_logit_loss("topk_kl")
def topk_kl(s: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, cfg: LossSettings) -> torch.Tensor:
    """Forward KL restricted to the teacher's top-k tokens: the teacher distribution renormalised over its top k,
    against the student's full-vocabulary log-probabilities at those tokens."""
    T = cfg.temperature
    k = min(cfg.top_k, t.shape[-1])
    tv, ti = t.topk(k, dim=-1)
    lt = F.log_softmax(tv / T, dim=-1)
    ls = F.log_softmax(s / T, dim=-1).gather(-1, ti)
    return (lt.exp() * (lt - ls)).sum(-1) * (T * T)


def cross_entropy(s: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(s, labels.clamp_min(0), reduction="none") * (labels >= 0)


def logit_loss_fn(cfg: LossSettings) -> LogitLoss:
    """The configured logit loss plus ``ce_weight`` x cross-entropy on the next token."""
    if cfg.kind not in LOGIT_LOSSES:
        raise KeyError(f"unknown logit loss {cfg.kind!r} (registered: {', '.join(LOGIT_LOSSES)})")
    base = LOGIT_LOSSES[cfg.kind]
    if cfg.ce_weight == 0:
        return base

    def with_ce(s: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, c: LossSettings) -> torch.Tensor:
        return base(s, t, labels, c) + c.ce_weight * cross_entropy(s, labels)

    return with_ce


# ----------------------------------------------------------------------------------------------------- hidden losses
@register_hidden_loss("mse")
def mse(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Mean squared error per token (averaged over the hidden dimension)."""
    return (s.float() - t.float()).pow(2).mean(-1)


@register_hidden_loss("l2")
def l2(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """L2 distance per token divided by sqrt(D) (the RADLADS / hybrid-distillation stage-1 loss)."""
    d = s.shape[-1]
    return (s.float() - t.float()).norm(dim=-1) / math.sqrt(d)


@register_hidden_loss("cosine")
def cosine(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 1 - F.cosine_similarity(s.float(), t.float(), dim=-1, eps=1e-6)


# --------------------------------------------------------------------------------------------------------- reduction
def masked_sum(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (per_token * mask.to(per_token.dtype)).sum()


def masked_mean(per_token: torch.Tensor, mask: torch.Tensor, denom: float | torch.Tensor | None = None) -> torch.Tensor:
    """Sum of the loss over masked-in tokens divided by ``denom`` (default: their count). Passing the token count of
    the whole global batch makes accumulation and data parallelism give the same gradient as one big batch."""
    total = masked_sum(per_token, mask)
    if denom is None:
        denom = mask.sum().clamp_min(1)
    return total / denom


# ---------------------------------------------------------------------------------------------------- chunked logits
def _project(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    out = h.to(dtype) @ (w if w.dtype == dtype else w.to(dtype)).t()
    if b is not None:
        out = out + b.to(dtype)
    return out.to(torch.promote_types(dtype, torch.float32))  # the loss in float32 (float64 for float64)


class _ChunkedLogitLoss(torch.autograd.Function):
    """sum_i loss(h_s[i] @ W_s^T + b_s, h_t[i] @ W_t^T + b_t), computed chunk by chunk; the gradients w.r.t.
    ``h_s`` (and ``W_s``, ``b_s`` when they train) are computed in the forward pass per chunk and only they are
    kept."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        h_s: torch.Tensor,
        w_s: torch.Tensor,
        h_t: torch.Tensor,
        w_t: torch.Tensor,
        labels: torch.Tensor,
        b_s: torch.Tensor | None,
        b_t: torch.Tensor | None,
        fn: LogitLoss,
        cfg: LossSettings,
        chunk: int,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        need_h = ctx.needs_input_grad[0]
        need_w = ctx.needs_input_grad[1]
        need_b = b_s is not None and ctx.needs_input_grad[5]
        acc = torch.promote_types(h_s.dtype, torch.float32)  # float32 accumulators (float64 for float64 inputs)
        total = torch.zeros((), dtype=acc, device=h_s.device)
        grad_h = torch.zeros_like(h_s, dtype=acc) if need_h else None
        grad_w = torch.zeros_like(w_s, dtype=acc) if need_w else None
        grad_b = torch.zeros_like(b_s, dtype=acc) if need_b else None
        n = h_s.shape[0]
        dev_type = h_s.device.type
        with torch.autocast(device_type=dev_type, enabled=False):
            # cast the projection weights to the compute dtype once, not once per chunk
            wt_c = w_t.detach().to(dtype)
            ws = w_s.detach().requires_grad_(need_w)
            ws_c = None if need_w else ws.to(dtype)
            bs = b_s.detach().requires_grad_(need_b) if b_s is not None else None
            for i in range(0, n, chunk):
                hs = h_s[i : i + chunk].detach().requires_grad_(need_h)
                with torch.no_grad():
                    tl = _project(h_t[i : i + chunk], wt_c, b_t, dtype)
                with torch.enable_grad():
                    sl = _project(hs, ws if need_w else ws_c, bs, dtype)
                    loss = fn(sl, tl, labels[i : i + chunk], cfg).sum()
                inputs = [x for x, need in ((hs, need_h), (ws, need_w), (bs, need_b)) if need]
                if inputs:
                    grads = iter(torch.autograd.grad(loss, inputs))  # in the order of ``inputs``
                    if need_h:
                        grad_h[i : i + chunk] = next(grads)  # type: ignore[index]
                    if need_w:
                        grad_w += next(grads).to(acc)  # type: ignore[operator]
                    if need_b:
                        grad_b += next(grads).to(acc)  # type: ignore[operator]
                total += loss.detach()
                del sl, tl, loss
        ctx.save_for_backward(*(x if x is not None else torch.empty(0) for x in (grad_h, grad_w, grad_b)))
        ctx.need = (need_h, need_w, need_b)
        ctx.dtypes = (h_s.dtype, w_s.dtype, b_s.dtype if b_s is not None else None)
        return total

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        grad_h, grad_w, grad_b = ctx.saved_tensors
        need_h, need_w, need_b = ctx.need
        gh = (grad_h * g).to(ctx.dtypes[0]) if need_h else None
        gw = (grad_w * g).to(ctx.dtypes[1]) if need_w else None
        gb = (grad_b * g).to(ctx.dtypes[2]) if need_b else None
        return gh, gw, None, None, None, gb, None, None, None, None, None


def chunked_logit_loss(
    h_s: torch.Tensor,
    w_s: torch.Tensor,
    h_t: torch.Tensor,
    w_t: torch.Tensor,
    labels: torch.Tensor,
    cfg: LossSettings,
    *,
    b_s: torch.Tensor | None = None,
    b_t: torch.Tensor | None = None,
    compute_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Sum over the ``N`` rows of the configured logit loss between ``h_s @ w_s^T`` and ``h_t @ w_t^T``.

    ``h_s``/``h_t``: the final (normed) hidden states of student and teacher at the masked-in positions only,
    ``[N, D]``; ``labels`` ``[N]`` next-token ids (for the optional CE term). ``compute_dtype`` is the dtype of the
    projection matmul (bf16 under autocast); the loss itself is always fp32.
    """
    fn = logit_loss_fn(cfg)
    return _ChunkedLogitLoss.apply(h_s, w_s, h_t, w_t, labels, b_s, b_t, fn, cfg, cfg.chunk_size, compute_dtype)


def fused_forward_kl_applies(cfg: LossSettings, h_s: torch.Tensor, b_s: torch.Tensor | None,
                             b_t: torch.Tensor | None) -> str | None:
    """None when :func:`fused_forward_kl` computes ``cfg``'s loss for these inputs, else the reason it does not."""
    if cfg.kind != "forward_kl":
        return f"loss kind {cfg.kind!r} (the fused kernel computes forward_kl)"
    if b_s is not None or b_t is not None:
        return "a vocabulary projection with a bias"
    if not h_s.is_cuda:
        return "not on CUDA (fla's Triton kernel)"
    if not fla_available():  # also the first import of fla: the shipped kernel configurations must be set before it
        return "fla's kernels are not importable here"
    return None


def fused_forward_kl(
    h_s: torch.Tensor, w_s: torch.Tensor, h_t: torch.Tensor, w_t: torch.Tensor, temperature: float,
    dtype: torch.dtype, labels: torch.Tensor | None = None, ce_weight: float = 0.0,
) -> torch.Tensor:
    """Sum over the ``N`` rows of KL(softmax(h_t W_t^T / T) || softmax(h_s W_s^T / T)) * T^2 through fla's fused
    linear-KL kernel (``fla.modules.fused_kl_div``): the projections in ``dtype`` chunk by chunk, the KL and its
    gradient w.r.t. the student logits in one Triton pass per row, the gradients w.r.t. ``h_s`` (and ``w_s`` when it
    trains) computed in the forward. The same function as :func:`chunked_logit_loss` with ``forward_kl`` (the
    temperature enters as a scale of both weights); ``tests/gpu/test_distill_gpu.py`` checks the two against each
    other. A trained ``w_s`` gets its gradient summed in fp32 and rounded to ``dtype`` once (fla's ``dw.to(weight)``;
    its matmuls need the weight in the hidden states' dtype); the chunked loss rounds each chunk's to ``dtype``.

    ``ce_weight > 0`` adds ``ce_weight`` x the summed next-token cross-entropy of the student's logits at temperature
    1 against ``labels`` ``[N]`` (negative ids: no target), as :func:`logit_loss_fn` does, through fla's fused
    linear cross-entropy (``fla.modules.fused_linear_cross_entropy``): neither term materialises ``[N, V]``."""
    from fla.modules.fused_kl_div import fused_kl_div_loss  # noqa: PLC0415  (Triton kernels, CUDA only)

    n = h_s.shape[0]
    if n == 0:
        return h_s.sum() * 0.0
    ws, wt = w_s.to(dtype), w_t.detach().to(dtype)
    if temperature != 1.0:
        ws, wt = ws / temperature, wt / temperature
    with torch.autocast(device_type=h_s.device.type, enabled=False):
        mean = fused_kl_div_loss(h_s.to(dtype), h_t.detach().to(dtype), ws, wt, reduction="batchmean")
        total = mean * (n * temperature * temperature)
        if ce_weight:
            if labels is None:
                raise ValueError("fused_forward_kl: ce_weight > 0 needs the labels")
            from fla.modules.fused_linear_cross_entropy import (  # noqa: PLC0415  (Triton kernels, CUDA only)
                fused_linear_cross_entropy_loss,
            )

            target = torch.where(labels >= 0, labels, torch.full_like(labels, -100))
            # fla's kernel forms the head's gradient whether or not it trains: in fp32 only when it is used
            ce = fused_linear_cross_entropy_loss(h_s.to(dtype), target, w_s.to(dtype), ignore_index=-100,
                                                 reduction="sum", accumulate_grad_in_fp32=w_s.requires_grad)
            total = total + ce_weight * ce
    return total


def logit_loss(
    h_s: torch.Tensor,
    w_s: torch.Tensor,
    h_t: torch.Tensor,
    w_t: torch.Tensor,
    labels: torch.Tensor,
    cfg: LossSettings,
    *,
    b_s: torch.Tensor | None = None,
    b_t: torch.Tensor | None = None,
    compute_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The stages' logit loss: :func:`chunked_logit_loss`'s arguments and result, computed by
    :func:`fused_forward_kl` when ``cfg.implementation`` allows it and it applies, else by the chunked reference.
    ``implementation: fused`` where the fused kernel does not apply is a :class:`ConfigError` naming why."""
    why_not = None if cfg.implementation == "chunked" else fused_forward_kl_applies(cfg, h_s, b_s, b_t)
    if cfg.implementation == "fused" and why_not is not None:
        raise ConfigError(f"loss.implementation: fused does not apply: {why_not}; use 'auto' or 'chunked'")
    if cfg.implementation != "chunked" and why_not is None:
        return fused_forward_kl(h_s, w_s, h_t, w_t, cfg.temperature, compute_dtype, labels, cfg.ce_weight)
    return chunked_logit_loss(h_s, w_s, h_t, w_t, labels, cfg, b_s=b_s, b_t=b_t, compute_dtype=compute_dtype)


def full_logit_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, labels: torch.Tensor,
                    cfg: LossSettings) -> torch.Tensor:
    """Reference (unchunked) per-token loss on full logits; used in tests and the naive benchmark baseline."""
    dt = torch.promote_types(s_logits.dtype, torch.float32)
    return logit_loss_fn(cfg)(s_logits.to(dt), t_logits.to(dt), labels, cfg)
