"""The OOM-tolerant batch search, against a fake allocator (no model, no GPU)."""

from __future__ import annotations

import pytest
import torch

from gendistill.bench.sweep import find_max_batch, is_oom


class FakeAllocator:
    """Pretends each row costs `per_row` bytes out of `capacity`; raises torch.OutOfMemoryError beyond it."""

    def __init__(self, capacity: int, per_row: int, error: type[BaseException] = torch.OutOfMemoryError):
        self.capacity, self.per_row, self.error = capacity, per_row, error
        self.calls: list[int] = []
        self.cleanups = 0

    def attempt(self, batch: int) -> dict:
        self.calls.append(batch)
        if batch * self.per_row > self.capacity:
            raise self.error(f"CUDA out of memory. Tried to allocate {batch * self.per_row} bytes")
        return {"batch": batch}

    def cleanup(self) -> None:
        self.cleanups += 1


@pytest.mark.parametrize("boundary", [1, 2, 3, 37, 64, 65, 100, 511])
def test_exact_boundary(boundary):
    fake = FakeAllocator(capacity=boundary * 10, per_row=10)
    res = find_max_batch(fake.attempt, max_batch=1024, rel_tol=0.0, cleanup=fake.cleanup)
    assert res.best_batch == boundary
    assert res.first_failure == boundary + 1
    assert res.bound_note() == f"first OOM at batch {boundary + 1}"
    assert res.best_value == {"batch": boundary}
    assert fake.cleanups == sum(1 for _, ok in res.trials if not ok)  # memory freed after every OOM
    assert len(fake.calls) <= 2 * (boundary.bit_length() + 1) + 1  # doubling + bisection, not a linear scan


def test_relative_tolerance_stops_early():
    fake = FakeAllocator(capacity=300 * 10, per_row=10)
    res = find_max_batch(fake.attempt, max_batch=1024, rel_tol=0.125, cleanup=fake.cleanup)
    assert res.best_batch <= 300 < res.first_failure
    assert res.first_failure - res.best_batch <= max(1, int(res.best_batch * 0.125))


def test_capped_without_oom_reaches_max_batch():
    fake = FakeAllocator(capacity=10**9, per_row=1)
    res = find_max_batch(fake.attempt, max_batch=100, cleanup=fake.cleanup)
    assert res.best_batch == 100 and res.capped and res.first_failure is None
    assert fake.calls == [1, 2, 4, 8, 16, 32, 64, 100]
    assert res.bound_note() == "no OOM up to --max-batch"  # what the bench's log says, never 'first OOM at None'


def test_batch_one_does_not_fit():
    fake = FakeAllocator(capacity=5, per_row=10)
    res = find_max_batch(fake.attempt, max_batch=64, cleanup=fake.cleanup)
    assert res.best_batch == 0 and res.best_value is None and res.first_failure == 1


def test_runtime_error_oom_messages_count_as_oom():
    fake = FakeAllocator(capacity=40, per_row=10, error=RuntimeError)  # e.g. cuBLAS allocation failures
    res = find_max_batch(fake.attempt, max_batch=64, cleanup=fake.cleanup)
    assert res.best_batch == 4
    assert is_oom(RuntimeError("CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"))
    assert not is_oom(ValueError("out of memory"))


def test_other_errors_propagate():
    def attempt(b):
        if b > 2:
            raise ValueError("a real bug")
        return b

    with pytest.raises(ValueError, match="real bug"):
        find_max_batch(attempt, max_batch=64, cleanup=lambda: None)
