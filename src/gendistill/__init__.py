"""gendistill: convert a pretrained Transformer into a hybrid softmax-attention / Kimi Delta Attention (KDA) model,
distill it with GenDistill, and judge it by generation as well as by log-likelihood.

Importing the package registers the hybrid model with transformers' Auto classes, so
``AutoModelForCausalLM.from_pretrained(student_dir)`` works without ``trust_remote_code``.
"""

from gendistill.models.hybrid import HybridConfig, HybridForCausalLM, HybridModel  # noqa: F401  (registers Auto classes)

__version__ = "0.1.0"
__all__ = ["HybridConfig", "HybridForCausalLM", "HybridModel", "__version__"]
