"""The facts of the four GenDistill stages, in one table: what each stage aligns, which parameter groups train, its
loss and its masking when the recipe does not say; and the one rule that cuts a stage's batch into micro-batches.

==========  ==============================  ===================  ===========  ===============
stage       aligns                          trains (default)     loss         masking
==========  ==============================  ===================  ===========  ===============
stage1      each KDA mixer's output         kda                  mse          all_tokens
stage2      each KDA block's output         kda                  mse          all_tokens
stage3a     the logits (text)               kda, mlp, norms      forward_kl   all_tokens
stage3b     the logits (chat)               kda, mlp, norms      forward_kl   completion_only
==========  ==============================  ===================  ===========  ===============

Stages 1 and 2 compare hidden states (a hidden-state loss: ``mse``, ``l2``, ``cosine``), one KDA layer at a time, so
a stage may leave the trainable parameters of other layers without gradients; stages 3a and 3b compare the two
models' next-token distributions (a logit loss). MLPs and norms train only from stage 3 on (paper, Fig. 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: parameter groups a stage can train, and the parameter names each one selects (``re.search`` over every name a
#: parameter has, so a tied ``lm_head``/``embed_tokens`` weight is reached by either name); see
#: :mod:`gendistill.distill.freezing`
GROUP_PATTERNS: dict[str, str] = {
    "kda": r"(^|\.)linear_attn\.",
    "kda_new": r"(^|\.)linear_attn\.(?!(q_proj|k_proj|v_proj|o_proj)\.)",
    "attention": r"(^|\.)self_attn\.",
    "mlp": r"(^|\.)mlp\.",
    "norms": r"^(?!.*(self_attn|linear_attn)\.).*(^|\.)([a-z_]*layernorm|[a-z_]*_norm|norm)\.(weight|bias)$",
    "embeddings": r"(^|\.)embed_tokens\.",
    "lm_head": r"(^|\.)lm_head\.",
}
PARAM_GROUPS: tuple[str, ...] = tuple(GROUP_PATTERNS)
ParamGroup = Literal[PARAM_GROUPS]  # type: ignore[valid-type]

MASKINGS: tuple[str, ...] = ("completion_only", "all_tokens")
Masking = Literal[MASKINGS]  # type: ignore[valid-type]


@dataclass(frozen=True)
class StageFacts:
    name: str
    aligns: Literal["mixer", "block", "logits"]  # what the student's output is compared with the teacher's at
    trainable: tuple[str, ...]  # parameter groups trained when the recipe gives no ``trainable``
    loss: str  # loss kind when the recipe gives no ``loss``
    masking: str  # masking when the recipe gives none

    @property
    def hidden_state(self) -> bool:
        """Compares hidden states layer by layer (stages 1-2): a hidden-state loss, and trainable parameters of the
        layers not compared get no gradient."""
        return self.aligns != "logits"


STAGES: dict[str, StageFacts] = {
    "stage1": StageFacts("stage1", "mixer", ("kda",), "mse", "all_tokens"),
    "stage2": StageFacts("stage2", "block", ("kda",), "mse", "all_tokens"),
    "stage3a": StageFacts("stage3a", "logits", ("kda", "mlp", "norms"), "forward_kl", "all_tokens"),
    "stage3b": StageFacts("stage3b", "logits", ("kda", "mlp", "norms"), "forward_kl", "completion_only"),
}
#: the order stages run in (a recipe lists a subset in this order)
STAGE_ORDER: tuple[str, ...] = tuple(STAGES)
StageName = Literal[STAGE_ORDER]  # type: ignore[valid-type]


def micro_batches_per_step(batch_size: int, micro_batch_size: int, world_size: int = 1) -> int:
    """The batch rule: an optimizer step's ``batch_size`` sequences are split evenly over ``world_size`` ranks and each
    rank's share into micro-batches of ``micro_batch_size`` (gradients accumulate over them). Returns the micro-batches
    per rank and step; raises ``ValueError`` saying which number does not fit."""
    if micro_batch_size > batch_size:
        raise ValueError("micro_batch_size is larger than batch_size")
    per_step = micro_batch_size * world_size
    if batch_size % per_step:
        ranks = f" x world size {world_size}" if world_size != 1 else ""
        raise ValueError(f"batch_size {batch_size} is not a multiple of micro_batch_size {micro_batch_size}{ranks}")
    return batch_size // per_step


__all__ = ["GROUP_PATTERNS", "MASKINGS", "PARAM_GROUPS", "STAGES", "STAGE_ORDER", "StageFacts", "StageName",
           "micro_batches_per_step"]
