"""Hybrid softmax-attention / linear-attention (KDA, Gated DeltaNet, GLA, Mamba2) causal language model.

Each block keeps the teacher layout: pre-RMSNorm -> mixer -> residual -> pre-RMSNorm -> SwiGLU MLP -> residual.
Attention layers, MLPs, norms and rotary embeddings are the teacher family's own transformers modules (so parameter
names match the teacher's); replaced layers hold a registered linear mixer under ``linear_attn``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask, create_recurrent_attention_mask, create_sliding_window_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils.deprecation import deprecate_kwarg

from gendistill.layers.base import TeacherShapedMixer
from gendistill.layers.registry import fp32_parameter_names, get_linear_mixer
from gendistill.models.hybrid.configuration_hybrid import LINEAR_TYPE, HybridConfig
from gendistill.models.hybrid.families import get_family


def document_cu_seqlens(position_ids: torch.LongTensor) -> torch.Tensor:
    """Document boundaries of rows whose ``position_ids`` ``[B, T]`` restart at each document: ``cu_seqlens``
    ``[N + 1]`` int32 over the flattened ``B * T`` tokens, every row start included (so ``N >= B``)."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    idx = starts.reshape(-1).nonzero().flatten()
    return torch.cat([idx, idx.new_tensor([position_ids.numel()])]).to(torch.int32)


def packed_cu_seqlens(position_ids: torch.LongTensor) -> torch.LongTensor | None:
    """Document boundaries of packed sequences, read from ``position_ids`` ``[B, T]`` that restart at each document.

    Returns ``cu_seqlens`` ``[N + 1]`` over the flattened ``B * T`` tokens (every batch row also starts a document), or
    None when no row restarts inside itself.
    """
    cu = document_cu_seqlens(position_ids)
    if cu.numel() - 1 == position_ids.shape[0]:  # one document a row: nothing is packed
        return None
    return cu if position_ids.is_cuda else cu.long()


def document_boundaries(position_ids: torch.LongTensor, given: torch.Tensor | None = None) -> torch.Tensor | None:
    """The ``cu_seqlens`` the KDA layers run with for ``position_ids`` ``[B, T]``: ``given`` (boundaries the caller
    computed, e.g. transformers' ``cu_seq_lens_q``, which always include every row start) when it marks more
    documents than rows, else :func:`packed_cu_seqlens`. None means no row restarts: the layers run row by row."""
    if given is not None:
        return given if given.numel() - 1 > position_ids.shape[0] else None
    return packed_cu_seqlens(position_ids)


class HybridDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: HybridConfig, layer_idx: int):
        super().__init__()
        Attention, MLP, RMSNorm, _ = get_family(config.base_model_type).classes()
        self.layer_idx = layer_idx
        self.layer_type = config.layer_types[layer_idx]
        if self.layer_type == LINEAR_TYPE:
            self.linear_attn = get_linear_mixer(config.linear_attention_type)(config, layer_idx)
        else:
            self.self_attn = Attention(config, layer_idx)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    @property
    def mixer(self) -> nn.Module:
        return self.linear_attn if self.layer_type == LINEAR_TYPE else self.self_attn

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask=None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        cu_seqlens: torch.LongTensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        if self.layer_type == LINEAR_TYPE:
            if cu_seqlens is not None:  # packed documents: run the mixer over the flattened batch
                B, T, D = hidden_states.shape
                out = self.linear_attn(hidden_states.reshape(1, B * T, D), cu_seqlens=cu_seqlens).reshape(B, T, D)
            else:
                out = self.linear_attn(hidden_states, attention_mask=attention_mask, cache=cache)
        else:
            out, _ = self.self_attn(hidden_states=hidden_states, position_embeddings=position_embeddings,
                                    attention_mask=attention_mask, cache=cache, **kwargs)
        return self.feed_forward(residual, out)

    def feed_forward(self, residual: torch.Tensor, mixer_out: torch.Tensor) -> torch.Tensor:
        """The block after its mixer: ``h = residual + mixer_out``, then ``h + mlp(post_attention_layernorm(h))``; all
        ``[B, T, D]``. One method, so that the trainer's compiled blocks (:mod:`gendistill.distill.compile`) fuse
        both residual adds into the norm's and the MLP's kernels."""
        h = residual + mixer_out
        return h + self.mlp(self.post_attention_layernorm(h))


class HybridPreTrainedModel(PreTrainedModel):
    config: HybridConfig
    config_class = HybridConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["HybridDecoderLayer"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = False
    _supports_attention_backend = True
    _is_stateful = True
    # from_pretrained loads every mixer's fp32_parameters in float32 whatever the requested dtype. transformers 5
    # searches these patterns (regular expressions) in the parameter names, hence the "linear_attn." prefix (a bare "D"
    # would match any name with a capital D); the "_strict" list applies to bfloat16 and float16 loads, the plain
    # _keep_in_fp32_modules to float16 only.
    _keep_in_fp32_modules_strict = [f"linear_attn.{name}" for name in fp32_parameter_names()]

    def recurrence_parameters(self) -> dict[str, nn.Parameter]:
        """Each mixer's ``fp32_parameters`` (``A_log``, ``dt_bias``, ...) by full parameter name."""
        return {f"{prefix}.{name}" if prefix else name: getattr(module, name)
                for prefix, module in self.named_modules() for name in getattr(module, "fp32_parameters", ())}

    def upcast_recurrence_parameters(self) -> None:
        """Keep each mixer's ``fp32_parameters`` (``A_log``, ``dt_bias``, ...) in float32 whatever dtype the rest of the
        model is cast to (the decay gate is computed in float32; bf16 would round the decay rates). This restores the
        dtype, not bits a cast to a lower precision lost: use :meth:`cast_keeping_recurrence_parameters` to cast."""
        for p in self.recurrence_parameters().values():
            p.data = p.data.float()

    @torch.no_grad()
    def cast_keeping_recurrence_parameters(self, dtype: torch.dtype,
                                           device: torch.device | str | None = None) -> HybridPreTrainedModel:
        """``self.to(device, dtype)``, except that each mixer's ``fp32_parameters`` keep their float32 values (a cast
        to bf16 and back would round them). Returns ``self``."""
        kept = {name: p.detach().to(device=device, dtype=torch.float32, copy=True)
                for name, p in self.recurrence_parameters().items()}
        self.to(device=device, dtype=dtype)
        for name, value in kept.items():
            self.get_parameter(name).data = value
        return self

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, TeacherShapedMixer):
            module.reset_mixer_parameters(self.config.initializer_range)


class HybridModel(HybridPreTrainedModel):
    def __init__(self, config: HybridConfig):
        super().__init__(config)
        _, _, RMSNorm, Rotary = get_family(config.base_model_type).classes()
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([HybridDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = Rotary(config=config)
        self.gradient_checkpointing = False
        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")  # transformers' own rename, as its models
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """Args as in transformers' decoder models (``past_key_values``, the older name of ``cache``, still works, with
        transformers' deprecation warning). ``position_ids`` that restart inside a row mark packed documents:
        attention does not cross them (transformers' packed-sequence masks) and KDA state and convs restart."""
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        # Packed documents (position_ids restarting inside a row, no padding mask) are a training/scoring layout:
        # they never get an implicit generation cache, and cannot continue one.
        # The boundaries come with the call when the caller has them (transformers' flash-attention keyword
        # ``cu_seq_lens_q``, [N + 1] over the flattened B * T tokens: the trainer computes them on the host), else
        # they are read off position_ids here.
        cu_seqlens = None
        if position_ids is not None and attention_mask is None and position_ids.shape[-1] > 1:
            cu_seqlens = document_boundaries(position_ids.expand(inputs_embeds.shape[0], -1),
                                             kwargs.get("cu_seq_lens_q"))
        if cu_seqlens is not None and cache is not None:
            raise ValueError("packed documents (restarting position_ids) cannot be combined with a cache")
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training and cu_seqlens is None
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if not use_cache:
            cache = None
        has_attention = bool(self.config.attention_layers)
        if position_ids is None:
            # a cache of linear layers only (an all-KDA student) has no sequence length; KDA uses no positions
            past_seen = cache.get_seq_length() if cache is not None and has_attention else 0
            position_ids = (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen).unsqueeze(0)

        if not isinstance(mask_mapping := attention_mask, dict):
            mask_kwargs = dict(config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                               cache=cache, position_ids=position_ids)
            builders = {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask,
                        LINEAR_TYPE: create_recurrent_attention_mask}
            mask_mapping = {kind: builders[kind](**mask_kwargs) for kind in set(self.config.layer_types)}

        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        all_hidden = [hidden_states] if output_hidden_states else None
        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                attention_mask=mask_mapping[layer.layer_type],
                position_embeddings=position_embeddings,
                cache=cache,
                cu_seqlens=cu_seqlens,
                position_ids=position_ids,
                **kwargs,
            )
            if all_hidden is not None:
                all_hidden.append(hidden_states)
        hidden_states = self.norm(hidden_states)
        if all_hidden is not None:
            all_hidden[-1] = hidden_states
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, cache=cache if use_cache else None,
                                       hidden_states=tuple(all_hidden) if all_hidden is not None else None)


class HybridForCausalLM(HybridPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: HybridConfig):
        super().__init__(config)
        self.model = HybridModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")  # transformers' own rename, as its models
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             cache=cache, inputs_embeds=inputs_embeds,
                             use_cache=use_cache, output_hidden_states=output_hidden_states, **kwargs)
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=outputs.cache,
                                      hidden_states=outputs.hidden_states)

    # ------------------------------------------------------------------------------------------------- inspection
    def cache_bytes(self, seq_len: int, batch: int = 1, dtype: torch.dtype | None = None) -> dict[str, int]:
        """Generation-cache bytes at ``seq_len`` tokens for ``batch`` sequences, by layer type.

        Attention layers: K and V ``[batch, kv_heads, seq_len, head_dim]`` in ``dtype`` (default: the model's);
        linear layers: the fp32 recurrent state plus the conv window, independent of ``seq_len``.
        Returns ``{"full_attention": ..., "linear_attention": ..., "total": ...}``.
        """
        dtype = dtype or self.dtype
        itemsize = torch.empty((), dtype=dtype).element_size()
        cfg = self.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        per_attn = 2 * batch * cfg.num_key_value_heads * seq_len * head_dim * itemsize
        attn = per_attn * len(cfg.attention_layers)
        linear = 0
        for i in cfg.linear_layers:
            linear += sum(self.model.layers[i].linear_attn.state_bytes(batch, dtype).values())
        return {"full_attention": attn, "linear_attention": linear, "total": attn + linear}
