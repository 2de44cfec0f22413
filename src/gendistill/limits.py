"""Upper bounds of the sizes a user can type (recipe keys and command options).

Past these a value is a slip (``1e9`` for ``1e3``, ``-5`` for ``5``), and honouring it would fill the host's memory
or run for days before anything useful happened: a ``seq_len`` of 1e9 grew to 13.6 GB without answering Ctrl-C. Each
bound is far above what any supported model or recipe uses; the checks that depend on the model (a ``seq_len`` within
the teacher's ``max_position_embeddings``) are made where its config is known.
"""

from __future__ import annotations

from gendistill.errors import ConfigError

MAX_SEQ_LEN = 1 << 20  # 1,048,576 tokens: longer than any supported teacher's context
MAX_STEP_TOKENS = 1 << 25  # 33,554,432 tokens held at once: one optimizer step (batch_size x seq_len), a held-out set
MAX_SHUFFLE_BUFFER = 10_000_000  # documents held in memory by a streaming source's shuffle buffer
MAX_CONTEXT = 1 << 22  # 4,194,304 tokens: bench contexts (the cache of one sequence is allocated at this length)
MAX_NEW_TOKENS = 1 << 17  # 131,072 tokens generated for one prompt (chat, eval)
MAX_BATCH = 1 << 16  # 65,536 sequences in one batch (bench sweep, eval generation)
MAX_REPEATS = 10_000  # timed repeats / warm-up runs of one measurement


def check_range(value: int | float, low: int | float, high: int | float, what: str) -> None:
    """``low <= value <= high``, else one :class:`ConfigError` line naming ``what`` and the range."""
    if not low <= value <= high:
        raise ConfigError(f"{what}: {value:,} is out of range; use {low:,} to {high:,}")


__all__ = ["MAX_SEQ_LEN", "MAX_STEP_TOKENS", "MAX_SHUFFLE_BUFFER", "MAX_CONTEXT", "MAX_NEW_TOKENS", "MAX_BATCH",
           "MAX_REPEATS", "check_range"]
