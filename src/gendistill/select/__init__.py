"""Attention-layer selection: which teacher layers keep softmax attention in the hybrid student
(``gendistill select-layers``; docs/select.md)."""

from gendistill.select.config import METHOD_NAMES, RecallConfig, SelectConfig
from gendistill.select.methods import METHODS, Selection
from gendistill.select.runner import select_layers

__all__ = ["METHOD_NAMES", "METHODS", "RecallConfig", "SelectConfig", "Selection", "select_layers"]
