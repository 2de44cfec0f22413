"""The hybrid model: configuration, modeling, and its registration with transformers' Auto classes."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from gendistill.models.hybrid.configuration_hybrid import HybridConfig
from gendistill.models.hybrid.modeling_hybrid import HybridForCausalLM, HybridModel, HybridPreTrainedModel

AutoConfig.register(HybridConfig.model_type, HybridConfig, exist_ok=True)
AutoModel.register(HybridConfig, HybridModel, exist_ok=True)
AutoModelForCausalLM.register(HybridConfig, HybridForCausalLM, exist_ok=True)

__all__ = ["HybridConfig", "HybridForCausalLM", "HybridModel", "HybridPreTrainedModel"]
