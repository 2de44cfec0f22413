"""``HybridConfig``: a teacher's configuration plus the per-layer mixer choice and the KDA hyper-parameters."""

from __future__ import annotations

from typing import Any

from transformers import CONFIG_MAPPING, PreTrainedConfig

from gendistill.layers.registry import LINEAR_MIXERS
from gendistill.models.hybrid.families import get_family
from gendistill.ops.kda.gate import GATE_LOWER_BOUND_MAX, GATE_LOWER_BOUND_MIN

ATTENTION_TYPES = ("full_attention", "sliding_attention")
LINEAR_TYPE = "linear_attention"
_HYBRID_FIELDS = {
    "base_model_type", "layer_types", "linear_attention_type", "kda_num_heads", "kda_num_kv_heads", "kda_head_dim",
    "kda_kv_mode", "kda_conv_size", "kda_conv_bias", "kda_conv_activation", "kda_gate_activation", "kda_decay_rank",
    "kda_gate_rank", "kda_qkv_bias", "kda_o_bias", "kda_norm_eps", "kda_gate_lower_bound", "gla_gate_logit_normalizer",
    "teacher",
}

# The values each categorical KDA option accepts (``None`` is written ``none`` on the command line).
KDA_OPTION_CHOICES: dict[str, tuple[str | None, ...]] = {
    "kda_kv_mode": ("repeat", "expand"),
    "kda_gate_activation": ("silu", "sigmoid"),
    "kda_conv_activation": (None, "silu"),
}
_KDA_POSITIVE_INTS = ("kda_num_heads", "kda_num_kv_heads", "kda_head_dim", "kda_conv_size", "kda_decay_rank",
                      "kda_gate_rank")
_KDA_BOOLS = ("kda_conv_bias", "kda_qkv_bias", "kda_o_bias")


def check_kda_options(options: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first unknown KDA option or bad value (so that a bad value is refused when it
    is given, never saved into a student that then fails on every forward)."""
    known = {"linear_attention_type", *KDA_OPTION_CHOICES, *_KDA_POSITIVE_INTS, *_KDA_BOOLS, "kda_norm_eps",
             "kda_gate_lower_bound", "gla_gate_logit_normalizer"}
    for key, value in options.items():
        if key not in known:
            raise ValueError(f"unknown KDA option {key!r}; known: {', '.join(sorted(known))}")
        if key in KDA_OPTION_CHOICES and value not in KDA_OPTION_CHOICES[key]:
            choices = ", ".join("none" if c is None else repr(c) for c in KDA_OPTION_CHOICES[key])
            raise ValueError(f"{key} must be one of {choices}, got {value!r}")
        if key in _KDA_POSITIVE_INTS and value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
        if key in _KDA_BOOLS and value is not None and not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false, got {value!r}")
        if key == "kda_norm_eps" and value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1):
            raise ValueError(f"kda_norm_eps must be a number in (0, 1), got {value!r}")
        if key == "kda_gate_lower_bound" and value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float))
                or not GATE_LOWER_BOUND_MIN <= value < GATE_LOWER_BOUND_MAX):
            raise ValueError(f"kda_gate_lower_bound must be a number in fla's safe range [{GATE_LOWER_BOUND_MIN:g}, "
                             f"{GATE_LOWER_BOUND_MAX:g}), or none for the paper's gate; got {value!r}")
        if key == "gla_gate_logit_normalizer" and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
            raise ValueError(f"gla_gate_logit_normalizer must be a positive number, got {value!r}")
        if key == "linear_attention_type":
            if value not in LINEAR_MIXERS:
                raise ValueError(f"linear_attention_type must be one of {', '.join(sorted(LINEAR_MIXERS))}, "
                                 f"got {value!r}")
    mixer = options.get("linear_attention_type", "kda")
    if options.get("kda_gate_lower_bound") is not None and mixer != "kda":
        raise ValueError(f"kda_gate_lower_bound bounds the KDA decay gate; the {mixer!r} mixer has no such gate")


class HybridConfig(PreTrainedConfig):
    """Configuration of a hybrid softmax-attention / linear-attention (KDA) model.

    It carries every field of the teacher's configuration (``base_model_type`` names the teacher family, e.g.
    ``"qwen3"``), so attention, MLP, norms and rotary embeddings are the teacher family's own transformers modules, and
    the model can be rebuilt offline from ``config.json`` alone. On top of that:

    Args:
        base_model_type: teacher ``model_type``: ``"qwen3"``, ``"llama"`` or ``"qwen2"``.
        layer_types: one entry per layer: ``"full_attention"`` (or ``"sliding_attention"``) for a kept teacher
            attention layer, ``"linear_attention"`` for a layer whose mixer is replaced.
        linear_attention_type: which registered mixer replaces attention: ``"kda"`` (default), ``"gated_deltanet"``,
            ``"gla"`` or ``"mamba2"`` (see docs/mixers.md). The ``kda_*`` fields below shape every one of them (heads,
            head size, convs, output gate, biases); the names stay ``kda_*`` so saved students keep loading.
        kda_num_heads / kda_head_dim: KDA heads and head size (default: the teacher's query heads and head_dim).
        kda_num_kv_heads: k/v heads of the KDA projections. ``kda_kv_mode="repeat"`` keeps the teacher's GQA k/v heads
            and repeats them to the query heads at run time (the paper); ``"expand"`` gives every query head its own
            k/v weights (initialised from the repeated teacher weights), i.e. fla's MHA layout.
        kda_conv_size / kda_conv_bias / kda_conv_activation: short depthwise convs on q, k, v (4, True, None).
        kda_gate_activation: output-gate activation, ``"silu"`` (identity at init) or ``"sigmoid"`` (fla's default).
        kda_decay_rank / kda_gate_rank: inner rank of the low-rank decay (``f_proj``; GLA's ``gk_proj``) and
            output-gate (``g_proj``) projections (default: the head dim).
        kda_qkv_bias / kda_o_bias: biases of the KDA projections (default: as in the teacher's attention).
        kda_norm_eps: epsilon of the gated output RMSNorm (default: the teacher's ``rms_norm_eps``).
        kda_gate_lower_bound: KDA only. ``None`` (default): the paper's decay gate ``-exp(A_log) * softplus(f +
            dt_bias)``. A number ``lb`` in fla's safe range ``[-5, 0)``: fla's bounded gate ``lb * sigmoid(exp(A_log) *
            (f + dt_bias))``, which fla's ``chunk_kda(..., safe_gate=True, lower_bound=lb)`` computes exactly on its
            faster path; a different function from the paper's gate (a student needs its own distillation with it).
        gla_gate_logit_normalizer: GLA only: the decay is ``logsigmoid(gk_proj(x)) / gla_gate_logit_normalizer``
            (fla's default 16).
        teacher: the teacher the student was converted from, as the user named it (a short name or hub id; a local
            file or folder by its name only, so that a shared ``config.json`` holds no machine path).
    """

    model_type = "hybrid_kda"

    base_model_type: str = "qwen3"
    layer_types: list[str] | None = None
    linear_attention_type: str = "kda"
    kda_num_heads: int | None = None
    kda_num_kv_heads: int | None = None
    kda_head_dim: int | None = None
    kda_kv_mode: str = "repeat"
    kda_conv_size: int = 4
    kda_conv_bias: bool = True
    kda_conv_activation: str | None = None
    kda_gate_activation: str = "silu"
    kda_decay_rank: int | None = None
    kda_gate_rank: int | None = None
    kda_qkv_bias: bool | None = None
    kda_o_bias: bool | None = None
    kda_norm_eps: float | None = None
    kda_gate_lower_bound: float | None = None
    gla_gate_logit_normalizer: float = 16.0
    teacher: str | None = None
    use_cache: bool = True

    def __post_init__(self, **kwargs: Any) -> None:
        family = get_family(self.base_model_type)
        # Fill every teacher field the caller did not give with the family's defaults, so the family's modules find
        # all the attributes they read.
        base_cls = CONFIG_MAPPING[family.model_type]
        base_kwargs = {k: v for k, v in kwargs.items() if k not in ("model_type", "transformers_version")}
        base = base_cls(**{k: v for k, v in base_kwargs.items() if k != "layer_types"})
        defaults = {k: v for k, v in base.to_dict().items() if k not in _HYBRID_FIELDS
                    and k not in ("model_type", "transformers_version", "architectures")}
        for key, value in defaults.items():
            kwargs.setdefault(key, value)
        super().__post_init__(**kwargs)

        n = self.num_hidden_layers
        if self.layer_types is None:
            self.layer_types = ["full_attention"] * n
        if len(self.layer_types) != n:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries for {n} layers")
        unknown = sorted(set(self.layer_types) - {*ATTENTION_TYPES, LINEAR_TYPE})
        if unknown:
            raise ValueError(f"unknown layer types {unknown}; use {ATTENTION_TYPES + (LINEAR_TYPE,)}")
        head_dim = getattr(self, "head_dim", None) or self.hidden_size // self.num_attention_heads
        self.kda_num_heads = self.kda_num_heads or self.num_attention_heads
        self.kda_head_dim = self.kda_head_dim or head_dim
        check_kda_options({k: getattr(self, k) for k in (*KDA_OPTION_CHOICES, "linear_attention_type",
                                                         "kda_gate_lower_bound")})
        if self.kda_gate_lower_bound is not None:
            self.kda_gate_lower_bound = float(self.kda_gate_lower_bound)
        if self.kda_num_kv_heads is None:
            kv = getattr(self, "num_key_value_heads", None) or self.num_attention_heads
            self.kda_num_kv_heads = kv if self.kda_kv_mode == "repeat" else self.kda_num_heads
        self.kda_decay_rank = self.kda_decay_rank or self.kda_head_dim
        self.kda_gate_rank = self.kda_gate_rank or self.kda_head_dim
        qkv_bias, o_bias = family.attention_biases(self)
        self.kda_qkv_bias = qkv_bias if self.kda_qkv_bias is None else self.kda_qkv_bias
        self.kda_o_bias = o_bias if self.kda_o_bias is None else self.kda_o_bias
        self.kda_norm_eps = self.kda_norm_eps or self.rms_norm_eps

    # --------------------------------------------------------------------------------------------------- helpers
    @property
    def attention_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t != LINEAR_TYPE]

    @property
    def linear_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == LINEAR_TYPE]

    def layer_spec(self) -> str:
        """Compact description, e.g. ``attention:0,2,6;kda:1,3,4,5``; :func:`gendistill.convert.layer_spec.
        parse_attention_layers` reads it back (the attention layers)."""
        return (f"attention:{','.join(map(str, self.attention_layers))};"
                f"{self.linear_attention_type}:{','.join(map(str, self.linear_layers))}")

    def to_diff_dict(self) -> dict[str, Any]:
        # Save every field: the defaults of a HybridConfig depend on base_model_type, so a diff against one default
        # instance would silently drop teacher fields on reload. ``_name_or_path`` (where the model was last loaded
        # from: a machine path) is not saved: a shared config.json carries no local paths.
        d = self.to_dict()
        d.pop("_name_or_path", None)
        return d
