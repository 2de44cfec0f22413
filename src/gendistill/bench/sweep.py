"""Out-of-memory tolerant batch-size search: double until the first failure, then bisect the boundary.

Kept free of model code so the logic can be tested with a fake allocator (``tests/bench/test_sweep.py``)."""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

# Lower-case parts of the messages of allocation failures that torch raises as plain RuntimeErrors: CUDA's ("CUDA out
# of memory" before torch.OutOfMemoryError existed), cuBLAS/cuDNN workspaces, and the CPU allocator's (c10's
# alloc_cpu.cpp: "DefaultCPUAllocator: can't allocate memory: you tried to allocate N bytes", "... not enough
# memory: ..." on Windows; "C10 Out of Memory. Trying to allocate ...").
_OOM_MARKERS = ("out of memory", "can't allocate memory", "not enough memory", "cublas_status_alloc_failed",
                "cudnn_status_alloc_failed")


def is_oom(exc: BaseException) -> bool:
    """True for torch's OutOfMemoryError, MemoryError, and the allocation failures that surface as plain RuntimeErrors
    (cuBLAS/cuDNN workspace allocations, the CPU allocator). Triton's OutOfResources (shared memory) is a
    kernel-config failure, not OOM."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    if isinstance(exc, RuntimeError):
        msg = str(exc).lower()
        return any(m in msg for m in _OOM_MARKERS)
    return False


_NO_LIMIT = 1 << 60  # cgroup v1 writes "no limit" as a number near 2**63


def available_ram_bytes(meminfo: str | Path = "/proc/meminfo", cgroup: str | Path = "/sys/fs/cgroup") -> int | None:
    """Bytes of RAM this process can still take without being killed: Linux's ``MemAvailable`` (free memory plus
    what the kernel can reclaim), lowered to the memory cgroup's limit minus its usage when one is set (containers,
    Slurm jobs; cgroup v2 ``memory.max``/``memory.current``, v1 ``memory/memory.limit_in_bytes``/``usage_in_bytes``).
    Elsewhere the free pages ``os.sysconf`` reports; None when nothing is known."""
    found: list[int] = []
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)  # kB
                break
    except (OSError, ValueError, IndexError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):
            pass
    root = Path(cgroup)
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            limit = (root / limit_file).read_text().strip()
            usage = int((root / usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < _NO_LIMIT:
            found.append(max(0, int(limit) - usage))
        break
    return min(found) if found else None


def ram_batch_cap(available_bytes: int, row_bytes: int, fraction: float = 0.5) -> int:
    """Largest batch whose rows (``row_bytes`` each: one sequence's cache and logits) fit ``fraction`` of
    ``available_bytes`` (0: not even one). The rest is headroom for activations and whatever else runs: on CPU a
    batch that does not fit is not an exception but the kernel's OOM killer ending the process (Linux overcommits,
    and the cache is zero-filled page by page)."""
    return int(available_bytes * fraction) // max(1, int(row_bytes))


def peak_allocated(device: torch.device) -> int | None:
    """Peak bytes allocated on ``device`` since the counter was last reset (CUDA); None where torch does not count
    (CPU)."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


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
