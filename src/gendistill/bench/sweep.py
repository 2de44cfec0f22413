"""Out-of-memory tolerant batch-size search: double until the first failure, then bisect the boundary.

Kept free of model code so the logic can be tested with a fake allocator (``tests/bench/test_sweep.py``)."""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

_OOM_MARKERS = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED")


def is_oom(exc: BaseException) -> bool:
    """True for torch's OutOfMemoryError and the allocation failures that surface as plain RuntimeErrors
    (cuBLAS/cuDNN workspace allocations). Triton's OutOfResources (shared memory) is a kernel-config failure, not OOM."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    if isinstance(exc, (RuntimeError, MemoryError)):
        msg = str(exc)
        return isinstance(exc, MemoryError) or any(m in msg for m in _OOM_MARKERS)
    return False


def free_memory() -> None:
    """Release everything a failed attempt left behind so the next attempt starts clean (CUDA only: on CPU the
    allocator returns memory itself and a full ``gc.collect()`` costs ~0.5 s)."""
    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


@dataclass
class SweepResult:
    best_batch: int  # largest batch that ran (0 when batch `start` already failed)
    best_value: Any  # what `attempt(best_batch)` returned
    first_failure: int | None  # smallest batch seen to fail (None: never failed up to max_batch)
    trials: list[tuple[int, bool]] = field(default_factory=list)  # (batch, ok) in order tried

    @property
    def capped(self) -> bool:
        """True when the search stopped at max_batch without ever running out of memory."""
        return self.first_failure is None

    def bound_note(self) -> str:
        """What bounded the search, for a log line: ``first OOM at batch N`` or ``no OOM up to --max-batch``."""
        return "no OOM up to --max-batch" if self.capped else f"first OOM at batch {self.first_failure}"


def find_max_batch(
    attempt: Callable[[int], Any],
    max_batch: int,
    start: int = 1,
    rel_tol: float = 0.0,
    oom: Callable[[BaseException], bool] = is_oom,
    cleanup: Callable[[], None] = free_memory,
    log: Callable[[str], None] | None = None,
) -> SweepResult:
    """Largest batch in [start, max_batch] for which ``attempt(batch)`` does not run out of memory.

    Doubling from ``start`` finds a bracket [ok, fail]; bisection narrows it until ``fail - ok <= max(1, ok*rel_tol)``
    (``rel_tol=0`` gives the exact boundary). Exceptions that are not OOM propagate. Assumes feasibility is monotone
    in the batch size (true for memory)."""
    if start < 1 or max_batch < start:
        raise ValueError(f"need 1 <= start <= max_batch, got start={start} max_batch={max_batch}")
    trials: list[tuple[int, bool]] = []

    def _try(b: int) -> tuple[bool, Any]:
        failed = False
        try:
            value = attempt(b)
        except BaseException as exc:  # noqa: BLE001 - filtered by `oom`
            if not oom(exc):
                raise
            failed = True
        if failed:
            # outside the except block: the traceback (and the frames holding the failed attempt's tensors) is gone
            cleanup()
            trials.append((b, False))
            if log:
                log(f"    batch {b}: out of memory")
            return False, None
        trials.append((b, True))
        if log:
            log(f"    batch {b}: ok")
        return True, value

    lo, lo_value, hi = 0, None, None
    b = start
    while True:
        ok, value = _try(b)
        if not ok:
            hi = b
            break
        lo, lo_value = b, value
        if b >= max_batch:
            break
        b = min(b * 2, max_batch)
    if hi is None:
        return SweepResult(lo, lo_value, None, trials)
    while lo > 0 and hi - lo > max(1, int(lo * rel_tol)):
        mid = (lo + hi) // 2
        ok, value = _try(mid)
        if ok:
            lo, lo_value = mid, value
        else:
            hi = mid
    return SweepResult(lo, lo_value, hi, trials)
