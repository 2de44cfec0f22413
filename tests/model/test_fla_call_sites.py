"""Every call gendistill makes into flash-linear-attention (fla), checked on the CPU.

fla's Triton kernels need CUDA, so the CUDA branches (``use_fla(x)`` true) only ever run on a rented GPU. Here they run
on CPU tensors: ``use_fla`` is forced to True in every gendistill module that asks it, and each fla function gendistill
calls is replaced by a stand-in that

1. binds the call against the real function's signature (``inspect.signature(real).bind``) and refuses a keyword that
   would fall into the real function's ``**kwargs`` without the real function ever reading it (``A_log`` and
   ``dt_bias`` reach ``chunk_kda`` that way, so a misspelling would be silently ignored);
2. runs the real fla Python wrapper up to its kernel launch (the launch replaced by a sentinel): fla's own argument
   checks (``initial_state must be in float32``, ``lower_bound`` in the safe range, batch 1 with ``cu_seqlens``,
   shapes ...) run on the arguments gendistill passes;
3. checks the preconditions the kernels need without asserting them (:func:`check_preconditions`: ``[B, T, H, K]``
   head layout, ``g`` / ``beta`` / state shapes, float32 ``g`` and states, ``cu_seqlens`` integer, on ``q``'s device,
   ``0 ... T``, with ``cu_seqlens_cpu`` its host copy, a conv state ``[N, D, W]``, a norm gate shaped like its input,
   an activation name fla's kernel knows);
4. computes the result from fla's CPU reference (``fla.ops.*.naive``, fla's gate references, ``rms_norm_ref``) with
   each option applied as fla documents it (``use_qk_l2norm_in_kernel``: q, k L2-normalised; ``use_gate_in_kernel``:
   ``naive_kda_gate`` / ``naive_kda_lowerbound_gate`` of ``g`` with ``A_log``, ``dt_bias``, ``lower_bound``;
   ``use_beta_sigmoid_in_kernel``: ``sigmoid(beta)``; ``cu_seqlens``: every segment from its own initial state).
   The conv (no CPU reference in fla) is computed from the kernel's indexing of ``x``, ``weight`` and its state
   (``fla/modules/causal_conv1d/ops.py``); the fused KL (no CPU reference) from its docstring, ``batchmean`` of
   ``KL(softmax(target_x target_weight^T) || softmax(x weight^T))``.

The whole gendistill forward with the forced fla branch (so: our reading of every fla option) is then compared with
the same forward on gendistill's own PyTorch path, in float32. Tolerances: both sides compute in float32 (fla's naive
references are float32), step-by-step against chunked forms; observed differences are ~1e-6 on O(1) logits, so
``TOL = 1e-4`` absolute (the other model tests' tolerance) leaves room for rounding and none for a misread option
(a wrong gate, a missing L2 norm or sigmoid, a state not reset at a segment start each move logits by >1e-2).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import sys
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("fla.ops.kda.naive", reason="flash-linear-attention not installed")

import fla.modules.causal_conv1d  # noqa: E402
import fla.modules.causal_conv1d.ops  # noqa: E402
import fla.modules.fused_kl_div  # noqa: E402
import fla.modules.fused_kl_div.ops  # noqa: E402
import fla.modules.fused_linear_cross_entropy  # noqa: E402
import fla.modules.fused_linear_cross_entropy.ops  # noqa: E402
import fla.modules.norm.fused_norm_gate  # noqa: E402
import fla.ops.gated_delta_rule  # noqa: E402
import fla.ops.gated_delta_rule.chunk  # noqa: E402
import fla.ops.gated_delta_rule.fused_recurrent  # noqa: E402
import fla.ops.gla  # noqa: E402
import fla.ops.gla.chunk  # noqa: E402
import fla.ops.gla.fused_recurrent  # noqa: E402
import fla.ops.kda  # noqa: E402
import fla.ops.kda.chunk  # noqa: E402
import fla.ops.kda.fused_recurrent  # noqa: E402
import fla.ops.simple_gla  # noqa: E402
import fla.ops.simple_gla.chunk  # noqa: E402
import fla.ops.simple_gla.fused_recurrent  # noqa: E402
from fla.modules.norm.layernorm_gated import rms_norm_ref  # noqa: E402
from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule  # noqa: E402
from fla.ops.gla.naive import naive_recurrent_gla  # noqa: E402
from fla.ops.kda.gate import naive_kda_gate, naive_kda_lowerbound_gate  # noqa: E402
from fla.ops.kda.naive import naive_recurrent_kda  # noqa: E402
from fla.ops.simple_gla.naive import naive_recurrent_simple_gla  # noqa: E402

import gendistill  # noqa: E402, F401  (registers the Auto classes)
from gendistill.convert import convert_teacher  # noqa: E402
from gendistill.distill.losses import chunked_logit_loss, fused_forward_kl  # noqa: E402
from gendistill.ops import backend  # noqa: E402
from gendistill.ops.conv import causal_conv1d_btd  # noqa: E402
from gendistill.ops.kda import kda_from_projections  # noqa: E402
from tests.conftest import make_teacher  # noqa: E402

TOL = 1e-4


# --------------------------------------------------------------------------------------------- the fla stand-ins
class _Launched(Exception):
    """Raised by the stubbed kernel launch: the real fla wrapper got that far, every check before it passed."""


@dataclass
class Site:
    """One fla function gendistill calls: where gendistill imports it from, the real function, the name (in the real
    function's module) of the kernel launch its Python wrapper ends in, and the CPU reference."""

    module: object
    name: str
    launch: str
    reference: callable

    @property
    def real(self):
        return getattr(self.module, self.name)


def _read_kwargs(fn) -> set[str]:
    """The keywords a function with ``**kwargs`` reads from them (``kwargs.get('x')``, ``kwargs.pop('x')``,
    ``kwargs['x']``, ``'x' in kwargs``): anything else passed there is silently dropped."""
    src = inspect.getsource(inspect.unwrap(fn))
    pats = [r"kwargs\.(?:get|pop)\(\s*['\"](\w+)['\"]", r"kwargs\[\s*['\"](\w+)['\"]\s*\]",
            r"['\"](\w+)['\"]\s+in\s+kwargs"]
    return {m for p in pats for m in re.findall(p, src)}


class FlaSpy:
    """Installs the stand-ins; ``calls[name]`` lists the bound arguments of every call, ``split_switch[name]`` fla's
    intra-card switch (``FLA_INTRACARD_CP``) as fla would have read it in each."""

    def __init__(self, monkeypatch):
        self.calls: dict[str, list[dict]] = {}
        self.split_switch: dict[str, list[str | None]] = {}
        for site in SITES:
            monkeypatch.setattr(site.module, site.name, self._stand_in(site))
        # the CUDA branch everywhere gendistill asks (every module that imported backend.use_fla by name)
        forced = [m for name, m in list(sys.modules.items())
                  if name.startswith("gendistill.") and getattr(m, "use_fla", None) is backend.use_fla]
        assert forced, "no gendistill module imports use_fla: the dispatch moved, update this test"
        for m in forced:
            monkeypatch.setattr(m, "use_fla", lambda x: True)
        self.forced_modules = {m.__name__ for m in forced}

    def _stand_in(self, site: Site):
        real = site.real
        sig = inspect.signature(real)
        var_kw = next((p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD), None)
        read = _read_kwargs(real) if var_kw else set()

        def stand_in(*args, **kwargs):
            bound = sig.bind(*args, **kwargs)  # TypeError: a keyword the real function does not take
            if var_kw:
                dropped = set(bound.arguments.get(var_kw, {})) - read
                assert not dropped, f"{site.name}: {sorted(dropped)} fall into **{var_kw} and are never read"
            _run_front(real, args, kwargs, site.launch)
            bound.apply_defaults()
            a = dict(bound.arguments)
            a.update(a.pop(var_kw, {}) if var_kw else {})
            check_preconditions(site.name, a)
            self.calls.setdefault(site.name, []).append(a)
            self.split_switch.setdefault(site.name, []).append(os.environ.get(backend.FLA_INTRACARD_ENV))
            return site.reference(**a)

        return stand_in

    def called(self, *names: str) -> None:
        for n in names:
            assert self.calls.get(n), f"the forced fla branch never called {n} (called: {sorted(self.calls)})"


def _run_front(real, args, kwargs, launch: str) -> None:
    """Run fla's Python wrapper ``real`` up to ``launch`` (a name in ``real``'s module), which is replaced by a
    sentinel: fla's own argument checks run on gendistill's arguments, no Triton kernel does."""
    mod = sys.modules[inspect.unwrap(real).__module__]
    original = getattr(mod, launch)

    def stop(*a, **k):
        raise _Launched

    setattr(mod, launch, SimpleNamespace(apply=stop) if inspect.isclass(original) else stop)
    try:
        with contextlib.suppress(_Launched):
            real(*args, **kwargs)
            raise AssertionError(f"{real.__name__} returned without reaching {launch}: the stub misses its launch")
    finally:
        setattr(mod, launch, original)


# ------------------------------------------------------------------------------------------------- preconditions
def _check_cu(a: dict, T: int, dev: torch.device, N_dim0=None) -> int | None:
    cu = a.get("cu_seqlens")
    if cu is None:
        assert a.get("cu_seqlens_cpu") is None, "cu_seqlens_cpu without cu_seqlens"
        return None
    assert cu.dim() == 1 and cu.dtype in (torch.int32, torch.int64), f"cu_seqlens {cu.dtype} {tuple(cu.shape)}"
    assert cu.device == dev, f"cu_seqlens on {cu.device}, the inputs on {dev}"
    assert cu[0].item() == 0 and cu[-1].item() == T and bool((cu[1:] >= cu[:-1]).all()), f"cu_seqlens {cu.tolist()}"
    host = a.get("cu_seqlens_cpu")  # kda_chunk passes it with a padded batch packed into one row
    if host is not None:
        assert host.device.type == "cpu" and torch.equal(host.long(), cu.cpu().long()), "cu_seqlens_cpu != cu_seqlens"
    return cu.numel() - 1


def check_preconditions(name: str, a: dict) -> None:
    """What fla's kernels need of the arguments without asserting all of it (they index raw pointers)."""
    if name in ("causal_conv1d",):
        x, w = a["x"], a["weight"]
        B, T, D = x.shape
        assert w.shape[0] == D and w.dim() == 2, f"weight {tuple(w.shape)} for x [B, T, D] = {tuple(x.shape)}"
        assert a["backend"] == "triton" and a["residual"] is None
        assert a["activation"] in (None, "silu", "swish"), a["activation"]
        N = _check_cu(a, T, x.device) or B
        if a["initial_state"] is not None:
            assert a["initial_state"].shape == (N, D, w.shape[1]), "conv state must be [N, D, W]"
        return
    if name == "rms_norm_gated":
        x, g = a["x"], a["g"]
        assert g.shape == x.shape, f"gate {tuple(g.shape)} != x {tuple(x.shape)} (the kernel indexes g like x)"
        assert a["weight"].shape == (x.shape[-1],) and a["bias"] is None
        assert a["activation"] in ("swish", "silu", "sigmoid"), f"fla's kernel has no gate {a['activation']!r}"
        assert a["residual"] is None and not a["prenorm"]
        return
    if name == "fused_kl_div_loss":
        x, tx, w, tw = a["x"], a["target_x"], a["weight"], a["target_weight"]
        assert x.dim() == tx.dim() == 2 and x.shape[0] == tx.shape[0], "x, target_x: [N, D]"
        assert w.shape == (tw.shape[0], x.shape[1]) and tw.shape[1] == tx.shape[1], "weights: [V, D]"
        assert x.dtype == w.dtype and tx.dtype == tw.dtype, "each matmul's operands in one dtype"
        assert a["reduction"] == "batchmean"
        return
    if name == "fused_linear_cross_entropy_loss":
        x, y, w = a["x"], a["target"], a["weight"]
        assert x.dim() == 2 and y.shape == (x.shape[0],) and w.shape[1] == x.shape[1], "x [N, D], target [N], w [V, D]"
        assert x.dtype == w.dtype, "the matmul's operands in one dtype"
        assert y.dtype == torch.long and bool(((y >= 0) | (y == a["ignore_index"])).all()), "targets: ids or ignored"
        assert a["reduction"] == "sum" and a["bias"] is None and a["label_smoothing"] == 0.0
        assert a["logit_scale"] == 1.0 and a["logit_softcapping"] is None and not a["use_l2warp"]
        return
    # the recurrent kernels: q, k [B, T, H, K], v [B, T, H, V]
    q, k, v = a["q"], a["k"], a["v"]
    B, T, H, K = q.shape
    assert k.shape == q.shape and v.dim() == 4 and v.shape[:3] == (B, T, H), \
        f"q {tuple(q.shape)} k {tuple(k.shape)} v {tuple(v.shape)}: not [B, T, H, *]"
    g = a.get("gk") if name == "fused_recurrent_gla" else a.get("g")
    per_head = name in ("chunk_simple_gla", "fused_recurrent_simple_gla", "chunk_gated_delta_rule",
                        "fused_recurrent_gated_delta_rule")
    assert g is not None and g.shape == ((B, T, H) if per_head else (B, T, H, K)), f"{name}: g {tuple(g.shape)}"
    if not a.get("use_gate_in_kernel"):
        assert g.dtype == torch.float32, f"{name}: g (log decay, cumulated by the kernel) in {g.dtype}"
    else:
        assert a["A_log"].shape == (H,) and a["dt_bias"].shape == (H * K,), "A_log [H], dt_bias [H * K]"
    if "beta" in a:
        assert a["beta"].shape == (B, T, H), f"{name}: beta {tuple(a['beta'].shape)}"
    for off in ("allow_neg_eigval", "state_v_first", "use_graph", "return_intermediate_states", "reverse"):
        assert not a.get(off), f"{name}: {off} is on (the references here do not model it)"
    assert a.get("cp_context") is None and a.get("gv") is None and a.get("g_gamma") is None
    N = _check_cu(a, T, q.device) or B
    if N != B:
        assert B == 1, "packed sequences need batch 1"
    h0 = a["initial_state"]
    if h0 is not None:
        assert h0.dtype == torch.float32 and h0.shape == (N, H, K, v.shape[-1]), \
            f"{name}: initial_state {h0.dtype} {tuple(h0.shape)}, want float32 [N, H, K, V]"


# --------------------------------------------------------------------------------------------- CPU references
def _l2norm(x: torch.Tensor) -> torch.Tensor:
    """fla's ``l2norm_fwd`` (``fla/modules/norm/l2norm.py``): ``x / sqrt(sum(x^2) + 1e-6)`` in float32."""
    x = x.float()
    return x / torch.sqrt(x.pow(2).sum(-1, keepdim=True) + 1e-6)


def _per_sequence(fn, tensors, cu_seqlens, initial_state, output_final_state):
    """``fn(*slices, h0)`` over each packed sequence (batch 1) or the whole batch; outputs concatenated along T,
    final states stacked."""
    if cu_seqlens is None:
        return fn(*tensors, initial_state, output_final_state)
    bounds = cu_seqlens.tolist()
    outs, states = [], []
    for i, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        h0 = None if initial_state is None else initial_state[i:i + 1]
        o, st = fn(*(t[:, s:e] for t in tensors), h0, True)
        outs.append(o)
        states.append(st)
    return torch.cat(outs, 1), (torch.cat(states) if output_final_state else None)


def ref_kda(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, use_qk_l2norm_in_kernel=False,
            use_gate_in_kernel=False, use_beta_sigmoid_in_kernel=False, lower_bound=None, cu_seqlens=None,
            A_log=None, dt_bias=None, **_):
    """``chunk_kda`` / ``fused_recurrent_kda`` with their options as documented, on ``naive_recurrent_kda``."""
    if use_qk_l2norm_in_kernel:
        q, k = _l2norm(q), _l2norm(k)
    if use_gate_in_kernel:
        g = (naive_kda_gate(g, A_log, dt_bias) if lower_bound is None
             else naive_kda_lowerbound_gate(g, A_log, dt_bias, lower_bound=lower_bound))
    if use_beta_sigmoid_in_kernel:
        beta = torch.sigmoid(beta.float())

    def one(q, k, v, g, beta, h0, want):
        return naive_recurrent_kda(q, k, v, g, beta, scale=scale, initial_state=h0, output_final_state=want)

    o, s = _per_sequence(one, (q, k, v, g, beta), cu_seqlens, initial_state, output_final_state)
    return o.to(v.dtype), s


def ref_gdn(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, use_qk_l2norm_in_kernel=False,
            cu_seqlens=None, use_gate_in_kernel=False, use_beta_sigmoid_in_kernel=False, **_):
    """``chunk_gated_delta_rule`` / ``fused_recurrent_gated_delta_rule`` on ``naive_recurrent_gated_delta_rule``."""
    assert not use_gate_in_kernel and not use_beta_sigmoid_in_kernel, "not modelled here"
    if use_qk_l2norm_in_kernel:
        q, k = _l2norm(q), _l2norm(k)

    def one(q, k, v, g, beta, h0, want):
        return naive_recurrent_gated_delta_rule(q, k, v.float(), beta, g, scale=scale, initial_state=h0,
                                                output_final_state=want)

    o, s = _per_sequence(one, (q, k, v, g, beta), cu_seqlens, initial_state, output_final_state)
    return o.to(v.dtype), s


def ref_gla(q, k, v, g=None, gk=None, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None, **_):
    """``chunk_gla`` (``g``) / ``fused_recurrent_gla`` (``gk``) on ``naive_recurrent_gla`` (which scales q by
    ``K ** -0.5``: another ``scale`` is folded into q)."""
    g = gk if g is None else g
    K = q.shape[-1]
    if scale is not None:
        q = q.float() * (scale / K ** -0.5)

    def one(q, k, v, g, h0, want):
        return naive_recurrent_gla(q.float(), k, v, g, initial_state=h0, output_final_state=want)

    o, s = _per_sequence(one, (q, k, v, g), cu_seqlens, initial_state, output_final_state)
    return o.to(v.dtype), s


def ref_simple_gla(q, k, v, g=None, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None, **_):
    """``chunk_simple_gla`` / ``fused_recurrent_simple_gla`` on ``naive_recurrent_simple_gla``."""
    def one(q, k, v, g, h0, want):
        return naive_recurrent_simple_gla(q, k, v, g, scale=scale, initial_state=h0, output_final_state=want)

    o, s = _per_sequence(one, (q, k, v, g), cu_seqlens, initial_state, output_final_state)
    return o.to(v.dtype), s


def ref_conv(x, weight=None, bias=None, initial_state=None, output_final_state=False, activation=None,
             cu_seqlens=None, **_):
    """fla ``causal_conv1d`` as its Triton kernel indexes memory: ``x [B, T, D]``, ``weight [D, W]``; output
    ``y_t = sum_j weight[:, j] x_{t - (W-1) + j} + bias``, where ``x_{-i}`` (before a sequence) is
    ``initial_state[n, :, W - i]`` (column ``W - 1`` the most recent input) or 0; the final state is the last ``W``
    inputs of each sequence, the initial state (or zeros) showing through on the left."""
    W = weight.shape[1]

    def one(xs, h0, want):  # xs [1, L, D]
        prev = xs.new_zeros(W, xs.shape[-1]) if h0 is None else h0[0].T.to(xs.dtype)  # [W, D]
        full = torch.cat([prev, xs[0]], 0)
        L = xs.shape[1]
        y = sum(weight[:, j] * full[1 + j:1 + j + L] for j in range(W))
        if bias is not None:
            y = y + bias
        if activation in ("silu", "swish"):
            y = F.silu(y)
        return y[None], full[-W:].T[None]

    if cu_seqlens is None:
        outs = [one(x[b:b + 1], None if initial_state is None else initial_state[b:b + 1], True) for b in
                range(x.shape[0])]
        y, s = torch.cat([o for o, _ in outs]), torch.cat([s for _, s in outs])
    else:
        y, s = _per_sequence(one, (x,), cu_seqlens, initial_state, True)
    return y, (s.contiguous() if output_final_state else None)


def ref_rms_norm_gated(x, g, weight, bias, activation="swish", eps=1e-6, **_):
    """``rms_norm_gated``: fla's ``rms_norm_ref`` (``norm(x) * weight * silu(g)``) for swish / silu; for sigmoid the
    kernel's ``y * sigmoid(g)`` (``fused_norm_gate.py``) on the same normalisation."""
    if activation in ("swish", "silu"):
        return rms_norm_ref(x, weight, bias, z=g, eps=eps).to(x.dtype)
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    return (y * torch.sigmoid(g.float())).to(x.dtype)


def ref_fused_kl(x, target_x, weight, target_weight, reduction="batchmean", **_):
    """fla ``fused_kl_div_loss`` as documented: ``batchmean`` of ``KL(softmax(target_x target_weight^T) ||
    softmax(x weight^T))`` (no CPU reference in fla)."""
    s = F.log_softmax((x @ weight.T).float(), -1)
    t = F.log_softmax((target_x @ target_weight.T).float(), -1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean")


def ref_fused_linear_ce(x, target, weight, ignore_index=-100, reduction="mean", **_):
    """fla ``fused_linear_cross_entropy_loss`` as documented: cross-entropy of ``x weight^T`` against ``target``,
    ``ignore_index`` rows left out, summed or averaged over the rest."""
    return F.cross_entropy((x @ weight.T).float(), target, ignore_index=ignore_index, reduction=reduction)


SITES = [
    Site(fla.ops.kda, "chunk_kda", "ChunkKDAFunction", ref_kda),
    Site(fla.ops.kda, "fused_recurrent_kda", "fused_recurrent_kda_fwd", ref_kda),
    Site(fla.ops.gated_delta_rule, "chunk_gated_delta_rule", "ChunkGatedDeltaRuleFunction", ref_gdn),
    Site(fla.ops.gated_delta_rule, "fused_recurrent_gated_delta_rule", "FusedRecurrentFunction", ref_gdn),
    Site(fla.ops.gla, "chunk_gla", "ChunkGLAFunction", ref_gla),
    Site(fla.ops.gla, "fused_recurrent_gla", "fused_recurrent", ref_gla),
    Site(fla.ops.simple_gla, "chunk_simple_gla", "ChunkSimpleGLAFunction", ref_simple_gla),
    Site(fla.ops.simple_gla, "fused_recurrent_simple_gla", "fused_recurrent", ref_simple_gla),
    Site(fla.modules.causal_conv1d, "causal_conv1d", "CausalConv1dFunction", ref_conv),
    Site(fla.modules.norm.fused_norm_gate, "rms_norm_gated", "LayerNormGatedFunction", ref_rms_norm_gated),
    Site(fla.modules.fused_kl_div, "fused_kl_div_loss", "FusedKLDivLossFunction", ref_fused_kl),
    Site(fla.modules.fused_linear_cross_entropy, "fused_linear_cross_entropy_loss", "FusedLinearCrossEntropyFunction",
         ref_fused_linear_ce),
]


# --------------------------------------------------------------------------------------------------- the checks
def compare_paths(monkeypatch, run):
    """``run()`` on gendistill's PyTorch path, then with the forced fla branch on the stand-ins; returns
    ``(max abs difference, spy)``. ``run`` returns a tensor or a tuple of tensors (None entries skipped)."""
    torch_out = run()
    spy = FlaSpy(monkeypatch)
    fla_out = run()
    pairs = [(a, b) for a, b in zip(_flat(torch_out), _flat(fla_out), strict=True) if a is not None or b is not None]
    for a, b in pairs:
        assert a is not None and b is not None and a.shape == b.shape, "the two paths return different things"
    return max((a.double() - b.double()).abs().max().item() for a, b in pairs), spy


def _flat(out):
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat(o)]
    return [out]


def perturbed_student(mixer: str, **options):
    """A tiny float32 student (layer 0 attention, the rest ``mixer``) whose convs, output gate and decay are moved off
    their identity initialisation, so that each of them matters."""
    torch.manual_seed(1)
    student = convert_teacher(make_teacher("llama", seed=0), "0", linear_attention_type=mixer, **options)
    with torch.no_grad():
        for layer in student.model.layers:
            if layer.layer_type == "linear_attention":
                for name, p in layer.linear_attn.named_parameters():
                    if "conv1d." in name or name.startswith("g_proj.1") or name.startswith("o_norm"):
                        p.add_(0.3 * torch.randn_like(p))
                    elif name in ("dt_bias", "gk_bias"):  # a stronger decay than at initialisation
                        p.add_(2.0)
    return student


MIXERS = {  # name -> (convert options, the fla functions its forced forward must call)
    "kda": ({"linear_attention_type": "kda"}, ["chunk_kda", "fused_recurrent_kda"]),
    "kda_bounded": ({"linear_attention_type": "kda", "kda_gate_lower_bound": -4.0},
                    ["chunk_kda", "fused_recurrent_kda"]),
    "gated_deltanet": ({"linear_attention_type": "gated_deltanet"},
                       ["chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule"]),
    "gla": ({"linear_attention_type": "gla"}, ["chunk_gla", "fused_recurrent_gla"]),
    "mamba2": ({"linear_attention_type": "mamba2"}, ["chunk_simple_gla", "fused_recurrent_simple_gla"]),
}


@pytest.mark.parametrize("mixer", list(MIXERS))
def test_student_forward_on_forced_fla_branch_equals_the_torch_path(monkeypatch, mixer):
    """A whole student as a user drives it (scoring a batch, packed documents, a left-padded batch, a cached prefill,
    a long continuation from the cache (> 64 tokens: chunked kernel with initial states), decode steps (recurrent
    kernel)): every fla call binds, passes fla's checks and the kernels' preconditions, and the fla references give
    the logits of gendistill's PyTorch path."""
    options, expected = MIXERS[mixer]
    options = dict(options)
    student = perturbed_student(options.pop("linear_attention_type"), **options)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 40), generator=g)
    docs = [torch.randint(0, 256, (n,), generator=g) for n in (11, 7, 13)]
    ids, pos = torch.cat(docs)[None], torch.cat([torch.arange(len(d)) for d in docs])[None]
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[1, :9] = 0
    long_x = torch.randint(0, 256, (1, 115), generator=g)

    def run():
        with torch.no_grad():
            outs = [student(x).logits, student(ids, position_ids=pos).logits,
                    student(x, attention_mask=mask).logits[1, 9:]]
            out = student(long_x[:, :23], use_cache=True)
            outs.append(out.logits)
            out = student(long_x[:, 23:110], cache=out.cache, use_cache=True)
            outs.append(out.logits)
            for t in range(110, 115):
                out = student(long_x[:, t:t + 1], cache=out.cache, use_cache=True)
                outs.append(out.logits)
        return outs

    diff, spy = compare_paths(monkeypatch, run)
    spy.called(*expected, "causal_conv1d", "rms_norm_gated")
    assert diff < TOL, f"{mixer}: forced fla branch differs from the torch path by {diff:.2e}"
    assert {"gendistill.ops.kda", "gendistill.ops.conv", "gendistill.layers.norm"} <= spy.forced_modules
    conv_calls = spy.calls["causal_conv1d"]
    assert any(c["cu_seqlens"] is not None for c in conv_calls), "packed documents never reached fla's conv"
    assert any(c["initial_state"] is not None and c["output_final_state"] for c in conv_calls), \
        "the cached continuation never passed a conv state to fla"
    chunk = spy.calls[expected[0]]
    assert any(c["cu_seqlens"] is not None for c in chunk) and any(c["initial_state"] is not None for c in chunk)
    assert all(c["initial_state"] is not None for c in spy.calls[expected[1]])


@pytest.mark.parametrize("mixer", list(MIXERS))
def test_bfloat16_student_meets_the_kernels_preconditions(monkeypatch, mixer):
    """The dtype a GPU run uses: a bfloat16 student (float32 decay parameters) on the forced branch binds every call
    and meets every precondition (float32 ``g`` and recurrent states, conv states in the input dtype). The logits are
    only sanity-checked (0.1 on O(1) logits): bf16 rounds q, k after gendistill's L2 norm but not inside fla's kernel
    (observed up to 3e-2); the float32 test above is the semantic check."""
    options = dict(MIXERS[mixer][0])
    student = convert_teacher(make_teacher("llama", seed=0).to(torch.bfloat16), "0",
                              linear_attention_type=options.pop("linear_attention_type"), **options)
    x = torch.randint(0, 256, (1, 75), generator=torch.Generator().manual_seed(0))
    pos = torch.cat([torch.arange(30), torch.arange(45)])[None]

    def run():
        with torch.no_grad():
            outs = [student(x, position_ids=pos).logits]
            out = student(x[:, :10], use_cache=True)
            out = student(x[:, 10:74], cache=out.cache, use_cache=True)
            outs += [out.logits, student(x[:, 74:], cache=out.cache, use_cache=True).logits]
        return [o.float() for o in outs]

    diff, spy = compare_paths(monkeypatch, run)
    spy.called(*MIXERS[mixer][1], "causal_conv1d", "rms_norm_gated")
    assert diff < 0.1


def kda_raw_inputs(B, T, H, K, lower_bound, seed, N=None):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    A_log = torch.rand(H, generator=g).mul(2.0).log() if lower_bound is None else torch.zeros(H)
    dt_bias = r(H * K) - (2.0 if lower_bound is None else 0.0)
    h0 = r(B if N is None else N, H, K, K) * 0.3
    return dict(q=r(B, T, H, K), k=r(B, T, H, K), v=r(B, T, H, K), f=r(B, T, H, K) * 2, b=r(B, T, H) * 2,
                A_log=A_log, dt_bias=dt_bias), h0


@pytest.mark.parametrize("lower_bound", [None, -5.0])
@pytest.mark.parametrize("recurrent", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_kda_from_projections_fused_options(monkeypatch, lower_bound, recurrent, packed):
    """kda_from_projections' fused call (``use_qk_l2norm_in_kernel``, ``use_gate_in_kernel`` with ``A_log``,
    ``dt_bias`` and the bounded gate's ``lower_bound`` / ``safe_gate``, ``use_beta_sigmoid_in_kernel``,
    ``cu_seqlens`` with one initial state per sequence, ``output_final_state``) equals the PyTorch path."""
    cu = torch.tensor([0, 9, 30, 37]) if packed else None
    raw, h0 = kda_raw_inputs(1 if packed else 2, 37, 3, 16, lower_bound, seed=3, N=3 if packed else None)

    def run():
        return kda_from_projections(**raw, recurrent=recurrent, initial_state=h0, output_final_state=True,
                                    cu_seqlens=cu, gate_lower_bound=lower_bound)

    diff, spy = compare_paths(monkeypatch, run)
    name = "fused_recurrent_kda" if recurrent else "chunk_kda"
    spy.called(name)
    a = spy.calls[name][0]
    assert a["use_qk_l2norm_in_kernel"] and a["use_gate_in_kernel"] and a["use_beta_sigmoid_in_kernel"]
    assert a["lower_bound"] == lower_bound and a.get("safe_gate", False) == (lower_bound is not None and not recurrent)
    assert tuple(a["q"].shape[:2]) == ((1, 37) if packed else (2, 37))  # rows kept: the shipped kernel keys
    assert diff < TOL, f"forced fla branch differs from the torch path by {diff:.2e}"


@pytest.mark.parametrize("call", ["fused_rows", "fused_packed", "padded_batch", "gated_deltanet",
                                  "gated_deltanet_packed", "one_row"])
def test_fla_split_is_never_taken_on_more_than_one_sequence(monkeypatch, call):
    """With fla's intra-card split switched on by the user, under inference mode: a fused prefill keeps its rows (no
    ``cu_seqlens``: fla splits packed calls only), and every packed call of more than one sequence (given bounds, a
    padded batch packed by gendistill, another mixer's kernel, packed by gendistill or given packed) reaches fla with
    the switch off, which fla 0.6.0 would
    get wrong (gendistill.ops.backend.fla_split_guard); a single packed sequence keeps the user's switch. The results
    equal the PyTorch path's and the user's switch is back after the call."""
    from gendistill.ops.gated_delta_rule import gdn_chunk

    monkeypatch.setenv(backend.FLA_INTRACARD_ENV, "1")
    B, T = (1, 37) if call in ("fused_packed", "gated_deltanet_packed", "one_row") else (2, 37)
    N = {"fused_packed": 3, "gated_deltanet_packed": 2}.get(call)
    raw, h0 = kda_raw_inputs(B, T, 3, 16, None, seed=4, N=N)
    cu = {3: torch.tensor([0, 9, 30, 37]), 2: torch.tensor([0, 20, 37])}.get(N)
    pad = torch.ones(B, T) if call in ("padded_batch", "one_row") else None  # activated here, packed by kda_chunk
    if call == "padded_batch":
        pad[0, :5] = 0

    def run():
        with torch.inference_mode():
            if call.startswith("gated_deltanet"):
                g, beta = -torch.rand(2, B, T, 3, generator=torch.Generator().manual_seed(2))
                return gdn_chunk(raw["q"], raw["k"], raw["v"], g, -beta, initial_state=h0, cu_seqlens=cu,
                                 output_final_state=True, use_qk_l2norm_in_kernel=True)
            return kda_from_projections(**raw, recurrent=False, initial_state=h0, output_final_state=True,
                                        cu_seqlens=cu, pad_mask=pad)

    diff, spy = compare_paths(monkeypatch, run)
    name = "chunk_gated_delta_rule" if call.startswith("gated_deltanet") else "chunk_kda"
    a, switch = spy.calls[name][0], spy.split_switch[name][0]
    if call == "fused_rows":
        assert a["cu_seqlens"] is None and tuple(a["q"].shape[:2]) == (2, 37)  # rows kept: nothing fla may split
    else:
        sequences = a["cu_seqlens"].numel() - 1
        assert sequences == {"fused_packed": 3, "one_row": 1}.get(call, 2)
        assert switch == ("1" if sequences == 1 else "0"), (call, switch)
    assert os.environ[backend.FLA_INTRACARD_ENV] == "1"
    assert diff < TOL, f"forced fla branch differs from the torch path by {diff:.2e}"


def test_kda_padded_batch_takes_the_unfused_fla_call(monkeypatch):
    """With a pad mask the activations are applied by gendistill and chunk_kda gets the activated inputs (no
    in-kernel options): still the PyTorch path's result."""
    raw, h0 = kda_raw_inputs(2, 21, 2, 16, None, seed=5)
    pad = torch.ones(2, 21)
    pad[0, :6] = 0

    def run():
        return kda_from_projections(**raw, recurrent=False, initial_state=h0, output_final_state=True, pad_mask=pad)

    diff, spy = compare_paths(monkeypatch, run)
    a = spy.calls["chunk_kda"][0]
    assert not (a["use_gate_in_kernel"] or a["use_qk_l2norm_in_kernel"] or a["use_beta_sigmoid_in_kernel"])
    # the two rows go to fla as one packed row with a bound every 21 tokens (kda_chunk)
    assert tuple(a["v"].shape[:2]) == (1, 42) and a["cu_seqlens"].tolist() == [0, 21, 42]
    assert diff < TOL


def _chunk_op(op: str, B: int, T: int, with_states: bool):
    """``(call, fla function name)`` of one chunked operator on a padded batch of fresh inputs: KDA, Gated DeltaNet,
    GLA (per-channel decay) and simple GLA (per-head decay: Mamba2's)."""
    from gendistill.ops.gated_delta_rule import gdn_chunk
    from gendistill.ops.gla import gla_chunk
    from gendistill.ops.kda import kda_chunk

    g_ = torch.Generator().manual_seed(B * T)
    q, k = (torch.nn.functional.normalize(torch.randn(B, T, 2, 16, generator=g_), dim=-1) for _ in range(2))
    v = torch.randn(B, T, 2, 16, generator=g_)
    g_channel = -0.1 * torch.rand(B, T, 2, 16, generator=g_)
    g_head = -0.1 * torch.rand(B, T, 2, generator=g_)
    beta = torch.rand(B, T, 2, generator=g_)
    h0 = torch.randn(B, 2, 16, 16, generator=g_) if with_states else None
    kw = dict(initial_state=h0, output_final_state=True)
    return {"kda": (lambda: kda_chunk(q, k, v, g_channel, beta, **kw), "chunk_kda"),
            "gdn": (lambda: gdn_chunk(q, k, v, g_head, beta, **kw), "chunk_gated_delta_rule"),
            "gla": (lambda: gla_chunk(q, k, v, g_channel, **kw), "chunk_gla"),
            "simple_gla": (lambda: gla_chunk(q, k, v, g_head, **kw), "chunk_simple_gla")}[op]


@pytest.mark.parametrize("op", ["kda", "gdn", "gla", "simple_gla"])
@pytest.mark.parametrize("B, T, with_states", [(3, 150, True), (3, 150, False), (1, 70, True), (4, 5, False)])
def test_a_chunked_op_packs_a_batch_into_one_row_for_fla(monkeypatch, op, B, T, with_states):
    """Every chunked operator on fla (KDA, Gated DeltaNet, GLA, Mamba2's simple GLA): B rows without bounds run as one
    packed row with int32 bounds every T tokens, on the device and on the host (fla's cumulative sums compile the
    batch in and key their configurations on it; training's bounds are int32), each row from its own state. Same
    output and final states as the PyTorch path, with rows of whole and partial chunks; without initial states a
    bound in the wrong place shows in the values."""
    run, name = _chunk_op(op, B, T, with_states)
    diff, spy = compare_paths(monkeypatch, run)
    a = spy.calls[name][0]
    assert tuple(a["q"].shape[:2]) == (1, B * T)
    assert a["cu_seqlens"].tolist() == list(range(0, B * T + 1, T)) and a["cu_seqlens"].dtype == torch.int32
    assert a["cu_seqlens_cpu"].device.type == "cpu" and a["cu_seqlens_cpu"].tolist() == a["cu_seqlens"].tolist()
    assert diff < TOL


@pytest.mark.parametrize("case", ["plain", "packed", "states", "short_with_states"])
@pytest.mark.parametrize("W", [4, 3])
def test_causal_conv_on_forced_fla_branch(monkeypatch, case, W):
    """causal_conv1d_btd's fla call (``[B, T, D]`` input, ``[D, W]`` weight, ``[N, D, W]`` state with column
    ``W - 1`` the latest input, int32 ``cu_seqlens``) equals the PyTorch conv, output and final state."""
    g = torch.Generator().manual_seed(W)
    T = 2 if case == "short_with_states" else 19
    B = 1 if case == "packed" else 2
    x, w, b = torch.randn(B, T, 12, generator=g), torch.randn(12, W, generator=g), torch.randn(12, generator=g)
    kw = {}
    if case == "packed":
        kw["cu_seqlens"] = torch.tensor([0, 5, 6, 19])
    if case in ("states", "short_with_states"):
        kw.update(initial_state=torch.randn(B, 12, W, generator=g), output_final_state=True)

    diff, spy = compare_paths(monkeypatch, lambda: causal_conv1d_btd(x, w, b, "silu", **kw))
    spy.called("causal_conv1d")
    assert diff < 1e-5, f"conv differs by {diff:.2e}"


@pytest.mark.parametrize("activation", ["silu", "sigmoid"])
def test_gated_norm_on_forced_fla_branch(monkeypatch, activation):
    from gendistill.layers.norm import GatedRMSNorm

    norm = GatedRMSNorm(16, eps=1e-5, activation=activation)
    with torch.no_grad():
        norm.weight.add_(torch.randn(16))
    x, gate = torch.randn(2, 7, 3, 16), torch.randn(2, 7, 3, 16)
    diff, spy = compare_paths(monkeypatch, lambda: norm(x, gate))
    spy.called("rms_norm_gated")
    assert diff < 1e-5


def test_fused_kl_on_forced_fla_call(monkeypatch):
    """fused_forward_kl's call binds, passes fla's checks (frozen teacher) and, with the documented meaning of
    ``batchmean``, gives the chunked forward KL (temperature folded into both weights, times ``N T^2``)."""
    g = torch.Generator().manual_seed(2)
    h_s, h_t = torch.randn(10, 8, generator=g), torch.randn(10, 6, generator=g)
    w_s, w_t = torch.randn(40, 8, generator=g), torch.randn(40, 6, generator=g)
    cfg = SimpleNamespace(kind="forward_kl", temperature=2.0, ce_weight=0.0, top_k=0, jsd_beta=0.5, chunk_size=4,
                          implementation="chunked")
    want = chunked_logit_loss(h_s, w_s, h_t, w_t, torch.zeros(10, dtype=torch.long), cfg)
    spy = FlaSpy(monkeypatch)
    got = fused_forward_kl(h_s.requires_grad_(), w_s, h_t.requires_grad_(), w_t.requires_grad_(), 2.0, torch.float32)
    spy.called("fused_kl_div_loss")
    assert abs(got.item() - want.item()) < 1e-5 * max(1.0, abs(want.item()))


def test_fused_kl_with_cross_entropy_on_forced_fla_calls(monkeypatch):
    """forward KL + ce_weight x CE on the forced CUDA branch: ``logit_loss`` takes the fused path for both terms
    (fla's linear-KL and linear cross-entropy; rows without a target, label -100 or -1, left out of the CE) and gives
    the chunked reference's value: the CE at temperature 1 while the KL runs at T."""
    from gendistill.distill import losses as losses_module
    from gendistill.distill.config import LossConfig
    from gendistill.distill.losses import logit_loss

    g = torch.Generator().manual_seed(3)
    h_s, h_t = torch.randn(12, 8, generator=g), torch.randn(12, 6, generator=g)
    w_s, w_t = torch.randn(40, 8, generator=g), torch.randn(40, 6, generator=g)
    labels = torch.randint(0, 40, (12,), generator=g)
    labels[[2, 7]] = torch.tensor([-100, -1])
    cfg = LossConfig(temperature=2.0, ce_weight=0.3, chunk_size=5)
    want = chunked_logit_loss(h_s, w_s, h_t, w_t, labels, cfg)
    spy = FlaSpy(monkeypatch)
    monkeypatch.setattr(losses_module, "fused_forward_kl_applies", lambda *a: None)  # as on a card with fla
    got = logit_loss(h_s, w_s, h_t, w_t, labels, cfg)
    spy.called("fused_kl_div_loss", "fused_linear_cross_entropy_loss")
    (ce_call,) = spy.calls["fused_linear_cross_entropy_loss"]
    assert ce_call["target"].tolist() == torch.where(labels >= 0, labels, -100).tolist()
    assert abs(got.item() - want.item()) < 1e-5 * max(1.0, abs(want.item()))
    without_ce = chunked_logit_loss(h_s, w_s, h_t, w_t, labels, LossConfig(temperature=2.0, chunk_size=5))
    assert abs(want.item() - without_ce.item()) > 0.1  # the CE term is there to be got wrong


# ------------------------------------------------------------------------------ the checks themselves can fail
def test_stand_ins_refuse_what_the_gpu_would_refuse_or_ignore(monkeypatch):
    FlaSpy(monkeypatch)
    raw, h0 = kda_raw_inputs(1, 8, 2, 16, None, seed=1)
    q, k, v, f, b = (raw[n] for n in "qkvfb")
    ok = dict(A_log=raw["A_log"], dt_bias=raw["dt_bias"], use_gate_in_kernel=True)
    fla.ops.kda.chunk_kda(q, k, v, f, b, initial_state=h0, **ok)  # the reference call passes
    with pytest.raises(AssertionError, match="never read"):  # a misspelt fused-gate keyword would be dropped
        fla.ops.kda.chunk_kda(q, k, v, f, b, A_Log=raw["A_log"], dt_bias=raw["dt_bias"], use_gate_in_kernel=True)
    with pytest.raises(TypeError):  # chunk_gla has no **kwargs: a wrong keyword fails to bind
        fla.ops.gla.chunk_gla(q, k, v, f, scael=1.0)
    with pytest.raises(AssertionError, match="float32"):  # fla's own check, run before the launch
        fla.ops.kda.chunk_kda(q, k, v, f, b, initial_state=h0.double(), **ok)
    with pytest.raises(ValueError, match="lower_bound"):  # fla's safe range of the bounded gate
        fla.ops.kda.chunk_kda(q, k, v, f, b, safe_gate=True, lower_bound=-6.0, **ok)
    with pytest.raises(AssertionError, match="cu_seqlens"):  # bounds that do not cover the tokens
        fla.ops.kda.chunk_kda(q, k, v, f, b, cu_seqlens=torch.tensor([0, 3, 7]), **ok)
    with pytest.raises(AssertionError, match="layout|shape"):  # heads and time swapped
        fla.ops.kda.chunk_kda(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), f.transpose(1, 2), b, **ok)
    x = torch.randn(1, 5, 4)
    with pytest.raises(AssertionError, match="gate"):  # the kernel would read a [.., 8] gate with x's strides
        fla.modules.norm.fused_norm_gate.rms_norm_gated(x, torch.randn(1, 5, 8), torch.ones(4), None)
    with pytest.raises(AssertionError, match="no gate"):  # an activation fla's kernel silently skips
        fla.modules.norm.fused_norm_gate.rms_norm_gated(x, x, torch.ones(4), None, activation="gelu")


def test_every_fla_function_gendistill_imports_is_checked_here():
    """A new fla call site in src/ must be added to SITES (backend.py only probes that fla imports; fla_configs.py
    reads fla's autotuners; fla_hopper_dqkwg.py's one launch is checked against the kernel's argument names in
    tests/model/test_fla_hopper_dqkwg.py)."""
    from pathlib import Path

    src = Path(gendistill.__file__).parent
    checked = {(s.module.__name__, s.name) for s in SITES}
    found = set()
    for path in src.rglob("*.py"):
        if path.name in ("backend.py", "fla_configs.py", "fla_hopper_dqkwg.py"):
            continue
        for mod, names in re.findall(r"from (fla[\w.]*) import ([\w, ]+?)(?:\s+as\s+\w+)?\s*(?:#|$)",
                                     path.read_text(), flags=re.M):
            found |= {(mod, n.strip()) for n in names.split(",")}
    assert found, "no fla import found in src: the scan is broken"
    assert found <= checked, f"fla functions called but not checked here: {sorted(found - checked)}"
