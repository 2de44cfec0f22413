"""The typed settings of one layer-selection run (``gendistill select-layers``).

Every field has a CLI option of the same name (``--candidate-steps``, ``--beam-width`` ...). The resolved settings are
written to ``<out>/select.json``; a later ``--resume`` must use the same ones (checked with :func:`fingerprint`), so
cached scores are never mixed across settings.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gendistill.devices import device_name, dtype_choice
from gendistill.distill.config import DataConfig, canonical
from gendistill.distill.stage_facts import micro_batches_per_step
from gendistill.limits import MAX_SEQ_LEN, MAX_STEP_TOKENS

METHOD_NAMES: tuple[str, ...] = ("uniform", "kl-guided", "greedy-learned", "beam-add")
Method = Literal["uniform", "kl-guided", "greedy-learned", "beam-add"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RecallConfig(_Strict):
    """The generated recall task (beam-add's second score; reported by every trained method).

    ``mqar``: multi-query associative recall (Zoology): ``pairs`` random key/value token pairs, then ``queries`` of
    the keys again, each followed by its value; the model must predict the value after each repeated key.
    ``needle``: ``queries`` key/value pairs hidden at random depths of held-out text (``context`` tokens), then the
    keys asked again at the end. Scored as KL(teacher || student) at the answer positions (so it measures how much of
    the teacher's recall the student keeps) and as the student's and teacher's accuracy on the true values."""

    kind: Literal["mqar", "needle"] = "mqar"
    prompts: int = Field(default=32, gt=0, le=1 << 16, description="recall sequences")
    pairs: int = Field(default=32, gt=0, description="mqar: key/value pairs per sequence")
    queries: int = Field(default=8, gt=0, description="keys asked per sequence")
    context: int = Field(default=512, gt=8, le=MAX_SEQ_LEN, description="needle: tokens of held-out text per sequence")
    weight: float = Field(default=1.0, ge=0, description="beam-add score = held-out KL + weight x recall KL")
    batch_size: int = Field(default=8, gt=0)


class SelectConfig(_Strict):
    teacher: str
    method: Method
    budget: int = Field(ge=0, description="layers that keep softmax attention")
    data: DataConfig | None = Field(default=None, description="text to train and score on (every method but uniform)")
    output_dir: str

    seq_len: int = Field(default=512, gt=1, le=MAX_SEQ_LEN)
    batch_size: int = Field(default=8, gt=0, description="sequences per optimizer step (all training phases)")
    micro_batch_size: int = Field(default=4, gt=0)
    eval_sequences: int = Field(default=16, gt=0, description="held-out sequences of the KL score")

    align_steps: int = Field(default=100, ge=0, description="steps of stage 1 and of stage 2 on the all-KDA student")
    align_lr: float = Field(default=1e-3, gt=0, description="stage 1 learning rate (stage 2 uses a third of it)")
    candidate_steps: int = Field(default=20, ge=0, description="brief stage-3a steps per candidate set (0: score as is)")
    candidate_lr: float = Field(default=1e-4, gt=0)
    candidate_groups: list[Literal["kda", "kda_new", "mlp", "norms"]] = Field(
        default_factory=lambda: ["kda", "mlp", "norms"], description="what the brief distillation trains"
    )

    beam_width: int = Field(default=2, gt=0, description="beam-add: partial sets kept per size")

    mix_steps: int = Field(default=200, gt=0, description="greedy-learned: steps training the per-layer mix")
    mix_lr: float = Field(default=1e-4, gt=0, description="greedy-learned: learning rate of the KDA mixers")
    mix_gate_lr: float = Field(default=1e-2, gt=0, description="greedy-learned: effective learning rate of the gates")
    sparsity: float = Field(default=0.05, ge=0, description="greedy-learned: weight of mean_i alpha_i in the loss")

    recall: RecallConfig = Field(default_factory=RecallConfig)
    aligned_from: str | None = Field(
        default=None, description="another select-layers run folder whose aligned all-KDA student this run reuses "
        "(its alignment settings must equal this run's: ALIGNMENT_SETTINGS); not part of the fingerprint")
    seed: int = 0
    device: str = "auto"  # as every --device (gendistill.devices.device_name), kept in its canonical spelling
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    teacher_dtype: str = "auto"  # as every --dtype (gendistill.devices.dtype_choice), kept as the long name

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, v: Any) -> Any:
        return canonical(device_name, v)

    @field_validator("teacher_dtype", mode="before")
    @classmethod
    def _teacher_dtype(cls, v: Any) -> Any:
        return canonical(dtype_choice, v)

    @model_validator(mode="after")
    def _check(self) -> "SelectConfig":
        for key, n in (("batch_size", self.batch_size), ("eval_sequences", self.eval_sequences)):
            if n * self.seq_len > MAX_STEP_TOKENS:
                raise ValueError(f"{key} x seq_len = {n * self.seq_len:,} tokens; at most {MAX_STEP_TOKENS:,}")
        micro_batches_per_step(self.batch_size, self.micro_batch_size)  # ValueError: the batch rule
        if self.data is None and self.method != "uniform":
            raise ValueError(f"method {self.method} trains and scores students: give the data to use (--data FILE)")
        return self


def fingerprint(cfg: SelectConfig) -> str:
    """Hash of every setting that changes a score (not the output folder, nor where the aligned student came from:
    a reused one was made under equal alignment settings, :func:`alignment_fingerprint`)."""
    payload = cfg.model_dump(mode="json")
    payload.pop("output_dir")
    payload.pop("aligned_from")
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


#: what the aligned all-KDA student depends on (``Session.aligned_state``): two runs that agree on these align the
#: same student, whatever their method, so one may reuse the other's (``--aligned-from``)
ALIGNMENT_SETTINGS = ("teacher", "data", "seq_len", "batch_size", "micro_batch_size", "eval_sequences", "align_steps",
                      "align_lr", "seed", "device", "precision", "teacher_dtype")


def alignment_fingerprint(cfg: SelectConfig) -> str:
    """Hash of :data:`ALIGNMENT_SETTINGS`."""
    payload = {k: v for k, v in cfg.model_dump(mode="json").items() if k in ALIGNMENT_SETTINGS}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
