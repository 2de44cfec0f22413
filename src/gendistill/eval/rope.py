"""Context extension at evaluation time: RoPE scaling of a loaded model's attention layers through transformers' own
rope-parameter mechanism.

transformers 5.x keeps the rotary settings in ``config.rope_parameters`` (``rope_type``, ``rope_theta``, ``factor``,
``original_max_position_embeddings``, …; the old ``rope_scaling`` dict is folded into it by
``standardize_rope_params``), and every family's ``*RotaryEmbedding(config)`` computes its inverse frequencies from it
with ``ROPE_INIT_FUNCTIONS[rope_type]`` (``dynamic`` recomputes them in the forward pass). :func:`apply_rope_scaling`
therefore

1. writes the new parameters into the model's config (``original_max_position_embeddings`` = the trained length,
   ``max_position_embeddings`` = trained length × factor) and runs the config's own ``validate_rope``;
2. rebuilds each rotary module of the model from that config (same class, same device), so the change is exactly what
   ``from_pretrained`` with the same ``rope_parameters`` would build.

In a hybrid student only the softmax-attention layers consume the rotary embeddings; KDA layers have no positions and
are untouched. Spec strings: ``yarn:4``, ``linear:2``, ``dynamic:4`` (``--rope-scaling``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from gendistill.errors import ConfigError

ROPE_TYPES = ("yarn", "linear", "dynamic")


@dataclass(frozen=True)
class RopeScaling:
    rope_type: str
    factor: float

    def as_dict(self) -> dict:
        return {"rope_type": self.rope_type, "factor": self.factor}


def parse_rope_scaling(spec: str | None) -> RopeScaling | None:
    """``"yarn:4"`` → ``RopeScaling("yarn", 4.0)``; ``None``/``""``/``"none"`` → ``None``."""
    if spec is None or spec.strip().lower() in ("", "none"):
        return None
    kind, _, factor = spec.strip().partition(":")
    kind = kind.lower()
    if kind not in ROPE_TYPES:
        raise ConfigError(f"--rope-scaling '{spec}': type must be one of {', '.join(ROPE_TYPES)} (e.g. yarn:4)")
    try:
        f = float(factor)
    except ValueError:
        raise ConfigError(f"--rope-scaling '{spec}': give the factor after a colon, e.g. {kind}:4") from None
    if not f > 1.0:
        raise ConfigError(f"--rope-scaling '{spec}': the factor must be > 1 (it multiplies the trained context length)")
    return RopeScaling(kind, f)


def _rotary_modules(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute name, module) of every rotary-embedding module (transformers names them ``*RotaryEmbedding``
    and gives them ``inv_freq`` and ``rope_type``)."""
    found = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if hasattr(child, "inv_freq") and hasattr(child, "rope_type") and hasattr(child, "config"):
                found.append((parent, name, child))
    return found


def apply_rope_scaling(model: nn.Module, scaling: RopeScaling) -> dict:
    """Scale the RoPE of ``model``'s attention layers in place; returns what was applied (for the results' meta).

    Refuses a model that has no rotary embedding or whose RoPE is already scaled (stacking factors silently would
    change what "trained length" means)."""
    config = model.config
    mods = _rotary_modules(model)
    if not mods:
        raise ConfigError(f"--rope-scaling: {type(model).__name__} has no rotary embedding to scale")
    config.standardize_rope_params()
    old = dict(config.rope_parameters or {})
    if old.get("rope_type", "default") != "default":
        raise ConfigError(f"--rope-scaling: the model's RoPE is already scaled ({old}); refusing to stack another")
    trained = int(config.max_position_embeddings)
    new = {**old, "rope_type": scaling.rope_type, "factor": scaling.factor}
    if scaling.rope_type == "yarn":
        new["original_max_position_embeddings"] = trained
    config.rope_parameters = new
    if scaling.rope_type != "dynamic":
        # dynamic NTK grows the base from max_position_embeddings on the fly; the others extend the nominal length.
        config.max_position_embeddings = int(trained * scaling.factor)
    try:
        config.validate_rope()
    except Exception as exc:  # noqa: BLE001 - transformers raises ValueError/KeyError with its own wording
        config.rope_parameters, config.max_position_embeddings = old, trained
        raise ConfigError(f"--rope-scaling: transformers rejects {new}: {exc}") from None
    for parent, name, old_mod in mods:
        device = old_mod.inv_freq.device
        new_mod = type(old_mod)(config=config)
        setattr(parent, name, new_mod.to(device))
    return {**scaling.as_dict(), "trained_length": trained, "max_position_embeddings": config.max_position_embeddings,
            "rotary_modules": len(mods)}
