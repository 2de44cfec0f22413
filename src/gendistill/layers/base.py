"""What every teacher-shaped linear mixer shares: q/k/v/o projections shaped like the teacher attention they replace
(so they can be copied from it), short causal convs on q/k/v, GQA repeat of k/v, left padding kept out of the state,
packed documents, the generation cache, and the gated per-head RMSNorm before ``o_proj``.

A mixer subclasses :class:`TeacherShapedMixer`, creates its decay/gate parameters, and implements
:meth:`~TeacherShapedMixer.mix` (the recurrence on already-convolved, head-shaped q/k/v) and
:meth:`~TeacherShapedMixer.reset_decay_parameters`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from gendistill.layers.norm import GatedRMSNorm
from gendistill.ops.conv import causal_conv1d, causal_conv1d_btd
from gendistill.ops.kda.gate import inverse_softplus, silu_inverse_of_one

# Up to this many new tokens with a cached state, the step-by-step kernel is used (fla's own rule for decode).
RECURRENT_MAX_TOKENS = 64


def _states_to_record(cache: Any, layer_idx: int, T: int) -> int:
    """How many recurrent states a forward of ``T`` tokens hands the cache: 1 (the final one), or, while transformers
    records the past to crop rejected tokens (assisted decoding; ``generate`` returning its cache) and asks for the
    states of the last ``keep`` tokens (``get_recurrent_states_to_keep``, transformers >= 5.25), the ``min(keep + 1,
    T)`` states after each of the last tokens: ``crop(-j)`` then restores the state after token ``T - j``."""
    if cache is None or T == 1 or not cache.is_recording_past(layer_idx):
        return 1
    keep = getattr(cache, "get_recurrent_states_to_keep", None)
    keep = int(keep(layer_idx) or 0) if keep is not None else 0
    return min(keep + 1, T) if keep else 1


def _count_prefill_tokens(cache: Any, layer_idx: int, extra: int) -> None:
    """A linear-attention cache layer counts the tokens it has seen by the width of each conv state it is handed
    (transformers >= 5.25 reads layer 0's count as the cache's sequence length, so a student whose first layer is
    linear must count right: the positions of a cached forward without ``position_ids``, and ``generate`` continuing
    a returned cache, read it). A chunked prefill hands over its final conv state, ``W`` columns for ``T`` tokens:
    ``extra`` = ``T - W`` more are counted here. Older transformers keep no such count (nothing to correct)."""
    count = getattr(cache.layers[layer_idx], "cumulative_length_linear", None)
    if isinstance(count, torch.Tensor):
        count.add_(extra)


class TeacherShapedMixer(nn.Module):
    """Base of the linear mixers (KDA, Gated DeltaNet, GLA, Mamba2).

    Config fields read (see :class:`gendistill.models.hybrid.HybridConfig`; named ``kda_*`` for compatibility, they
    apply to every mixer): ``hidden_size``, ``kda_num_heads`` (H), ``kda_num_kv_heads`` (H_kv, divides H),
    ``kda_head_dim`` (K = V), ``kda_conv_size`` (W), ``kda_conv_bias``, ``kda_conv_activation``,
    ``kda_gate_activation``, ``kda_gate_rank``, ``kda_qkv_bias``, ``kda_o_bias``, ``kda_norm_eps``.

    Parameters: ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` (teacher shapes), ``q_conv1d``/``k_conv1d``/``v_conv1d``,
    ``g_proj`` (low-rank output gate), ``o_norm``; subclasses add theirs.
    """

    #: parameters kept in float32 whatever the model dtype (decay rates: bf16 would round them)
    fp32_parameters: tuple[str, ...] = ()
    #: whether the mixer's backward on fla runs fla's gated ``chunk_bwd_dqkwg``, which fla 0.6 refuses on some
    #: machines (:func:`gendistill.ops.backend.fla_gated_backward_refused`)
    fla_gated_dqkwg_backward: bool = False
    #: whether that backward keeps its states in float32 (simple GLA's does), which fla's TileLang backend declines
    fla_dqkwg_fp32_states: bool = False

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.hidden_size = D = config.hidden_size
        self.num_heads = H = config.kda_num_heads
        self.num_kv_heads = Hkv = config.kda_num_kv_heads
        self.head_dim = K = config.kda_head_dim
        if H % Hkv:
            raise ValueError(f"kda_num_heads ({H}) must be a multiple of kda_num_kv_heads ({Hkv})")
        self.conv_size = W = config.kda_conv_size
        self.conv_activation = config.kda_conv_activation
        self.q_dim, self.k_dim, self.v_dim = H * K, Hkv * K, Hkv * K

        self.q_proj = nn.Linear(D, self.q_dim, bias=config.kda_qkv_bias)
        self.k_proj = nn.Linear(D, self.k_dim, bias=config.kda_qkv_bias)
        self.v_proj = nn.Linear(D, self.v_dim, bias=config.kda_qkv_bias)
        self.q_conv1d = nn.Conv1d(self.q_dim, self.q_dim, W, groups=self.q_dim, padding=W - 1, bias=config.kda_conv_bias)
        self.k_conv1d = nn.Conv1d(self.k_dim, self.k_dim, W, groups=self.k_dim, padding=W - 1, bias=config.kda_conv_bias)
        self.v_conv1d = nn.Conv1d(self.v_dim, self.v_dim, W, groups=self.v_dim, padding=W - 1, bias=config.kda_conv_bias)
        self.g_proj = nn.Sequential(nn.Linear(D, config.kda_gate_rank, bias=False),
                                    nn.Linear(config.kda_gate_rank, H * K, bias=True))
        self.o_norm = GatedRMSNorm(K, eps=config.kda_norm_eps, activation=config.kda_gate_activation)
        self.o_proj = nn.Linear(H * K, D, bias=config.kda_o_bias)
        self._joined: JoinedWeights | None = None  # set inside joined_weights()

    # ------------------------------------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def reset_mixer_parameters(self, initializer_range: float = 0.02) -> None:
        """Initialise everything the teacher does not provide: identity convs (last tap 1), identity output gate
        (second g_proj matrix 0, bias so the activation gives 1 for SiLU; sigmoid gets 0.99), norm weight 1,
        N(0, ``initializer_range``) for the first g_proj matrix, then :meth:`reset_decay_parameters`."""
        for conv in (self.q_conv1d, self.k_conv1d, self.v_conv1d):
            conv.weight.zero_()
            conv.weight[..., -1] = 1.0
            if conv.bias is not None:
                conv.bias.zero_()
        self.g_proj[0].weight.normal_(0.0, initializer_range)
        self.g_proj[1].weight.zero_()
        self.g_proj[1].bias.fill_(silu_inverse_of_one() if self.o_norm.activation == "silu" else math.log(99.0))
        self.o_norm.weight.fill_(1.0)
        self.o_norm.weight._no_weight_decay = True
        self.reset_decay_parameters(initializer_range)

    def reset_decay_parameters(self, initializer_range: float) -> None:
        raise NotImplementedError

    @staticmethod
    @torch.no_grad()
    def init_mamba_decay(A_log: nn.Parameter, dt_bias: nn.Parameter) -> None:
        """Mamba-style decay: ``A_log = log U(1, 16)``, ``dt_bias = softplus^-1(dt)``, ``dt`` log-uniform in
        [1e-3, 1e-1]; both excluded from weight decay."""
        A_log.copy_(torch.empty_like(A_log).uniform_(1.0, 16.0).log())
        dt = torch.exp(torch.empty_like(dt_bias).uniform_(math.log(1e-3), math.log(1e-1)))
        dt_bias.copy_(inverse_softplus(dt))
        A_log._no_weight_decay = dt_bias._no_weight_decay = True

    # ------------------------------------------------------------------------------------------------------- forward
    def input_projections(self) -> tuple[nn.Linear, ...]:
        """The linears besides q/k/v that read the layer input ``x``, in a fixed order: :func:`joined_weights` joins
        them into the q/k/v GEMM for decode steps (one launch instead of one per linear; :meth:`project_input`). Here
        the output gate's first matrix; each mixer adds its decay and beta projections."""
        return (self.g_proj[0],)

    def _joinable(self) -> list[torch.Tensor]:
        """The parameters :func:`joined_weights` joins: the q/k/v projections', the convs' and the
        :meth:`input_projections`', in a fixed order."""
        mods = (self.q_proj, self.k_proj, self.v_proj, self.q_conv1d, self.k_conv1d, self.v_conv1d,
                *self.input_projections())
        return [t for mod in mods for t in mod.parameters()]

    def _join_qkv(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The q, k and v projections' weights joined, ``[Dq + Dk + Dv, D]``, and their biases (or None)."""
        projs = (self.q_proj, self.k_proj, self.v_proj)
        bias = torch.cat([p.bias for p in projs]) if self.q_proj.bias is not None else None
        return torch.cat([p.weight for p in projs]), bias

    def _join_convs(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The three depthwise convs as one: weight ``[Dq + Dk + Dv, W]`` and bias ``[Dq + Dk + Dv]`` or None."""
        convs = (self.q_conv1d, self.k_conv1d, self.v_conv1d)
        bias = torch.cat([c.bias for c in convs]) if self.q_conv1d.bias is not None else None
        return torch.cat([c.weight.squeeze(1) for c in convs]), bias

    def _make_joins(self) -> JoinedWeights | None:
        """The joins of this mixer's weights (None where they cannot be made: parameters on the meta device or
        sharded, as offloading and FSDP leave them)."""
        parts = self._joinable()
        if any(t.is_meta or type(t.data) is not torch.Tensor for t in parts):
            return None
        with torch.no_grad():
            return JoinedWeights(_identity(parts), *self._join_input(), *self._join_convs())

    def _join_input(self) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, ...], tuple[int, ...]]:
        """Every linear that reads ``x`` as one: weight ``[Dq + Dk + Dv + S, D]`` (q/k/v, then the
        :meth:`input_projections`, S their output widths summed), its bias (zeros where a linear has none; None when
        none has one), the output widths ``(Dq + Dk + Dv, S_1, ...)`` and the projections' ``id``."""
        qkv_weight, qkv_bias = self._join_qkv()
        extra = self.input_projections()
        weight = torch.cat([qkv_weight, *(p.weight for p in extra)])
        bias = None
        if qkv_bias is not None or any(p.bias is not None for p in extra):
            biases = [(qkv_bias, qkv_weight.shape[0]), *((p.bias, p.out_features) for p in extra)]
            bias = torch.cat([b if b is not None else weight.new_zeros(n) for b, n in biases])
        widths = (qkv_weight.shape[0], *(p.out_features for p in extra))
        return weight, bias, widths, tuple(id(p) for p in extra)

    def _joins(self) -> JoinedWeights | None:
        """The joined weights where they apply: inside :func:`joined_weights`, without gradients (a training step
        there reads the live weights), and only for the parameters they were made of (a copy of the module, a
        ``.to()`` or a swapped ``.data`` reads the live weights)."""
        j = self._joined
        if j is None or torch.is_grad_enabled() or j.source != _identity(self._joinable()):
            return None
        return j

    def project_qkv(self, x: torch.Tensor) -> torch.Tensor:
        """q, k and v projections side by side: ``x [B, T, D]`` -> ``[B, T, Dq + Dk + Dv]``, on the live weights
        (:meth:`project_input` takes the joined ones). Whichever is smaller is concatenated: the three teacher-shaped
        weights (one GEMM instead of three: prompts and training batches) or the three outputs (decode steps, where
        copying the weights every token would cost more than the GEMMs)."""
        if x.shape[:-1].numel() < self.hidden_size:
            return torch.cat([p(x) for p in (self.q_proj, self.k_proj, self.v_proj)], dim=-1)
        return F.linear(x, *self._join_qkv())

    def project_input(self, x: torch.Tensor, joins: JoinedWeights | None = None) -> tuple[torch.Tensor, MixerInput]:
        """The q/k/v projections side by side, ``[B, T, Dq + Dk + Dv]`` (:meth:`project_qkv`), and ``x`` as the mixer
        reads it (:class:`MixerInput`). With ``joins`` one GEMM computes q/k/v, and for calls of up to
        ``RECURRENT_MAX_TOKENS`` tokens a row (decode steps) every :meth:`input_projections` output too: both are then
        column slices of its ``[B, T, Dq + Dk + Dv + S]`` output. Longer calls (prefill) run those projections
        separately: on an H100 the joined GEMM saved nothing at 1K-4K and its strided slices cost 3 % of a KDA layer
        at 32K, while decode steps gained 4-8 % (docs/results.md section 2)."""
        if joins is None:
            return self.project_qkv(x), MixerInput(x)
        if x.shape[1] > RECURRENT_MAX_TOKENS:
            width = joins.in_widths[0]  # the q/k/v rows of the joined weight (a view: no copy)
            bias = None if joins.in_bias is None else joins.in_bias[:width]
            return F.linear(x, joins.in_weight[:width], bias), MixerInput(x)
        qkv, *extra = F.linear(x, joins.in_weight, joins.in_bias).split(joins.in_widths, dim=-1)
        return qkv, MixerInput(x, dict(zip(joins.in_ids, extra)))

    def conv_weights(self, joins: JoinedWeights | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The three depthwise convs as one: weight ``[Dq + Dk + Dv, W]`` and bias ``[Dq + Dk + Dv]`` or None, from
        ``joins`` when given, else joined now."""
        return (joins.conv_weight, joins.conv_bias) if joins is not None else self._join_convs()

    def mix(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        x: MixerInput,
        *,
        recurrent: bool,
        initial_state: torch.Tensor | None,
        output_final_state: bool,
        cu_seqlens: torch.LongTensor | None,
        pad_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The recurrence. q, k, v: ``[B, T, H, K]`` after the convs (k/v already repeated to H heads); x the layer
        input ``[B, T, D]`` (for data-dependent gates: ``x(self.f_proj)`` is ``f_proj`` of it, :class:`MixerInput`);
        pad_mask ``[B, T]`` 1 for tokens, 0 for padding, which must leave the state unchanged. Returns
        ``(o [B, T, H, K], final state [N, H, K, K] or None)``."""
        raise NotImplementedError

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache=None,
        cu_seqlens: torch.LongTensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Args:
            hidden_states: ``[B, T, D]`` (the normalised layer input).
            attention_mask: ``[B, T]`` 1 for tokens, 0 for padding (left padding in batched generation), or None.
                Padded positions neither update the recurrent state nor enter the convolution.
            cache: a transformers ``Cache`` whose layer ``layer_idx`` is a linear-attention layer, or None.
            cu_seqlens: ``[N + 1]`` boundaries of packed documents (B = 1): state and conv restart at each start.

        Returns:
            ``[B, T, D]``.
        """
        B, T, _ = hidden_states.shape
        H, Hkv, K = self.num_heads, self.num_kv_heads, self.head_dim
        if cache is not None and cu_seqlens is not None:
            raise ValueError("packed documents (cu_seqlens) cannot be combined with a generation cache")
        recurrent_state = cache.get_recurrent_state(self.layer_idx) if cache is not None else None
        pad_mask = None if attention_mask is None else attention_mask[:, -T:]

        x = hidden_states
        joins = self._joins()  # the weights joined once (inside joined_weights), or None: joined at this call
        qkv, inp = self.project_input(x, joins)  # [B, T, Dq + Dk + Dv]; x with its joined projections
        if pad_mask is not None:
            qkv = qkv * pad_mask[..., None].to(qkv.dtype)
        recurrent = self._steps_through(recurrent_state, T)
        weight, bias = self.conv_weights(joins)
        if cache is not None and (recurrent or cache.is_recording_past(self.layer_idx)):
            # decode: the cache's rolling window of the last W inputs, channels-first [B, Dq + Dk + Dv, W + T]
            window = cache.update_conv_state(qkv.transpose(1, 2), self.layer_idx, conv_kernel_size=self.conv_size)
            qkv = causal_conv1d(window, weight, bias, self.conv_activation, out_len=T).transpose(1, 2)
        else:
            # token-major, one pass (fla's Triton kernel on CUDA); with a cache, continue from its conv state
            # [B, Dq + Dk + Dv, W] and store the last W inputs back (no channels-first copy of the prompt)
            prev = cache.get_conv_state(self.layer_idx) if cache is not None else None
            qkv, conv_state = causal_conv1d_btd(qkv, weight, bias, self.conv_activation, cu_seqlens=cu_seqlens,
                                                initial_state=prev, output_final_state=cache is not None)
            if cache is not None:
                cache.update_conv_state(conv_state, self.layer_idx, conv_kernel_size=self.conv_size)
                _count_prefill_tokens(cache, self.layer_idx, T - conv_state.shape[-1])
        q, k, v = qkv.split([self.q_dim, self.k_dim, self.v_dim], dim=-1)

        q = q.reshape(B, T, H, K)
        if Hkv != H:  # GQA: each query head reads the k/v head of its group, as in the teacher's attention;
            # k and v repeated in one copy, [2, B, T, H, K] (head h reads k/v head h // (H // Hkv))
            kv = qkv[..., self.q_dim:].reshape(B, T, 2, Hkv, 1, K).expand(B, T, 2, Hkv, H // Hkv, K)
            k, v = kv.permute(2, 0, 1, 3, 4, 5).reshape(2, B, T, H, K).unbind(0)
        else:
            k = k.reshape(B, T, Hkv, K)
            v = v.reshape(B, T, Hkv, K)
        n = _states_to_record(cache, self.layer_idx, T)
        if n == 1:
            o, final_state = self.mix(q, k, v, inp, recurrent=recurrent, initial_state=recurrent_state,
                                      output_final_state=cache is not None, cu_seqlens=cu_seqlens, pad_mask=pad_mask)
            if cache is not None:
                cache.update_recurrent_state(final_state.float(), self.layer_idx)
        else:  # the state after each of the last n tokens, for transformers to crop rejected tokens back to
            o, states = self._mix_recording(q, k, v, inp, recurrent_state, pad_mask, T - n + 1)
            cache.update_recurrent_state([st.float() for st in states], self.layer_idx)

        gate = inp(self.g_proj).view(B, T, H, K)
        o = self.o_norm(o.to(x.dtype), gate).reshape(B, T, H * K)
        return self.o_proj(o)

    def _steps_through(self, state: torch.Tensor | None, tokens: int) -> bool:
        """Whether a call of ``tokens`` tokens on ``state`` takes the step-by-step kernel: decode steps (a few tokens
        after a cached state) do; everything else (training, scoring, prefill, chunked prefill) takes the chunked
        one."""
        return state is not None and tokens <= RECURRENT_MAX_TOKENS and not self.training

    def _mix_recording(self, q, k, v, inp: MixerInput, state, pad_mask, first: int):
        """:meth:`mix` over ``q, k, v`` ``[B, T, H, K]`` with the states a cache recording its past needs: the first
        ``first`` tokens in one call, then each later token alone (the step-by-step kernel). Returns ``o`` ``[B, T,
        H, K]`` and the ``T - first + 1`` states after tokens ``first, ..., T``."""
        T = q.shape[1]
        outs, states = [], []
        for a, b in ((0, first), *((t, t + 1) for t in range(first, T))):
            o, state = self.mix(q[:, a:b], k[:, a:b], v[:, a:b], inp.window(a, b),
                                recurrent=self._steps_through(state, b - a),
                                initial_state=state, output_final_state=True, cu_seqlens=None,
                                pad_mask=None if pad_mask is None else pad_mask[:, a:b])
            outs.append(o)
            states.append(state)
        return torch.cat(outs, dim=1), states

    # ---------------------------------------------------------------------------------------------- introspection
    def state_bytes(self, batch: int = 1, conv_dtype: torch.dtype = torch.bfloat16) -> dict[str, int]:
        """Bytes this layer keeps per sequence batch during generation (independent of context length):
        the fp32 recurrent state ``[B, H, K, V]`` and the conv window ``[B, Dq + Dk + Dv, W]``."""
        itemsize = torch.empty((), dtype=conv_dtype).element_size()
        recurrent = batch * self.num_heads * self.head_dim * self.head_dim * 4
        conv = batch * (self.q_dim + self.k_dim + self.v_dim) * self.conv_size * itemsize
        return {"recurrent": recurrent, "conv": conv}


@contextlib.contextmanager
def joined_weights(model: nn.Module, kept: dict | None = None) -> Iterator[None]:
    """Inside the block every linear mixer of ``model`` runs on its q/k/v projection and conv weights joined once on
    entry instead of at every call (no weight copy per call; a decode step's q, k, v and other input projections as
    one GEMM, :meth:`TeacherShapedMixer.project_input`), released on exit:
    for inference whose weights stay as they are for the whole block (gendistill's fast generation engine and its
    benchmark enter it). The joins are a second copy of those weights while the block lasts.

    A forward with gradients, a copy of a mixer, a ``.to()``, a swapped ``.data`` or an in-place edit of a weight (its
    version counter; not kept by inference tensors) inside the block reads the live weights. Mixers whose
    parameters are on the meta device or sharded are left as they are. Nested blocks keep the outer block's joins.

    ``kept`` (mixer -> its joins): joins made once and taken again by every later block given the same dict, while
    they were made of the mixer's parameters as they are (else made anew and stored there); for callers whose captured
    CUDA graphs read the joins' memory (:class:`gendistill.models.decode_slots.DecodeSlots`)."""
    mine: list[TeacherShapedMixer] = []
    try:
        for m in model.modules():
            if isinstance(m, TeacherShapedMixer) and m._joined is None:
                j = kept.get(m) if kept is not None else None
                if j is None or j.source != _identity(m._joinable()):
                    j = m._make_joins()
                    if kept is not None:
                        kept[m] = j
                m._joined = j
                mine.append(m)
        yield
    finally:
        for m in mine:
            m._joined = None


class JoinedWeights(NamedTuple):
    """A mixer's weights joined by :func:`joined_weights`: ``[Dq + Dk + Dv + S, D]`` (+ bias) for the one GEMM of
    every linear that reads the layer input (q/k/v, then :meth:`TeacherShapedMixer.input_projections`, output widths
    ``in_widths``, the projections' ``id`` ``in_ids``) and ``[Dq + Dk + Dv, W]`` (+ bias) for the one conv pass;
    ``source`` identifies the parameters they were made of."""

    source: tuple
    in_weight: torch.Tensor
    in_bias: torch.Tensor | None
    in_widths: tuple[int, ...]
    in_ids: tuple[int, ...]
    conv_weight: torch.Tensor
    conv_bias: torch.Tensor | None


class MixerInput(NamedTuple):
    """The layer input ``x [B, T, D]`` as a mixer reads it: ``inp(proj)`` is ``proj(x)``, taken from the joined GEMM's
    output (``joined``: a projection's ``id`` -> its ``[B, T, out]`` output) where :func:`joined_weights` computed it
    there. ``proj``: a linear, or a ``nn.Sequential`` whose first module is the linear that reads ``x``."""

    x: torch.Tensor
    joined: Mapping[int, torch.Tensor] = MappingProxyType({})  # (read only: a shared default)

    def window(self, start: int, stop: int) -> MixerInput:
        """The input of tokens ``[start, stop)`` only (``x`` and every joined output sliced along T)."""
        return MixerInput(self.x[:, start:stop], {k: y[:, start:stop] for k, y in self.joined.items()})

    def __call__(self, proj: nn.Module) -> torch.Tensor:
        first, rest = (proj[0], proj[1:]) if isinstance(proj, nn.Sequential) else (proj, None)
        y = self.joined.get(id(first))
        if y is None:
            return proj(self.x)
        return y if rest is None else rest(y)


def tensor_version(t: torch.Tensor) -> int:
    """``t``'s version counter (an in-place edit bumps it); -1 for an inference tensor, which keeps none."""
    return -1 if t.is_inference() else t._version


def _identity(parts: list[torch.Tensor]) -> tuple:
    """Which tensors, with which storage, dtype, device and version: what a join was made of."""
    return tuple((id(t), t.data_ptr(), t.dtype, t.device, tensor_version(t)) for t in parts)
