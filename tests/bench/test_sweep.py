"""The OOM-tolerant batch search, against a fake allocator (no model, no GPU)."""

from __future__ import annotations

import pytest
import torch

from gendistill.bench.sweep import available_ram_bytes, find_max_batch, is_oom, ram_batch_cap


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


CPU_ALLOCATOR_MESSAGE = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                         "you tried to allocate 1125899906842624 bytes. Error code 12 (Cannot allocate memory)")


def test_the_cpu_allocators_failure_counts_as_oom():
    """On CPU torch raises a plain RuntimeError with none of CUDA's words: the sweep must stop there, not lose the
    whole context's throughput."""
    try:
        torch.empty(1 << 50, dtype=torch.uint8)  # 1 PiB: beyond any address space, refused at once
    except RuntimeError as exc:
        assert is_oom(exc), str(exc)
    else:
        pytest.fail("a 1 PiB allocation succeeded")
    assert is_oom(RuntimeError(CPU_ALLOCATOR_MESSAGE))
    assert is_oom(RuntimeError("[enforce fail at alloc_cpu.cpp:79] data. DefaultCPUAllocator: not enough memory: you "
                               "tried to allocate 8 bytes."))
    assert is_oom(RuntimeError("C10 Out of Memory. Trying to allocate 8 bytes"))
    assert not is_oom(RuntimeError("shape '[2, 3]' is invalid for input of size 7"))

    class CpuAllocator(FakeAllocator):
        def attempt(self, batch: int) -> dict:
            if batch * self.per_row > self.capacity:
                raise RuntimeError(CPU_ALLOCATOR_MESSAGE)
            return {"batch": batch}

    fake = CpuAllocator(capacity=50, per_row=10)
    res = find_max_batch(fake.attempt, max_batch=64, cleanup=fake.cleanup)
    assert res.best_batch == 5 and res.first_failure == 6


def test_ram_batch_cap():
    gib = 1 << 30
    assert ram_batch_cap(16 * gib, 190 * (1 << 20)) == 43  # SmolLM2 fp32 at 4K: ~190 MiB a row, half of 16 GiB
    assert ram_batch_cap(16 * gib, 3 * gib) == 2
    assert ram_batch_cap(16 * gib, 9 * gib) == 0  # not one row fits in half
    assert ram_batch_cap(16 * gib, 3 * gib, fraction=1.0) == 5


def test_available_ram_reads_meminfo_and_the_cgroup_limit(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       32000000 kB\nMemFree:         1000000 kB\nMemAvailable:   20000000 kB\n")
    assert available_ram_bytes(meminfo, tmp_path / "no-cgroup") == 20000000 * 1024
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text("8589934592\n")  # an 8 GiB job limit, 3 GiB of it used
    (v2 / "memory.current").write_text(str(3 << 30))
    assert available_ram_bytes(meminfo, v2) == 5 << 30
    (v2 / "memory.max").write_text("max\n")  # v2's "no limit"
    assert available_ram_bytes(meminfo, v2) == 20000000 * 1024
    v1 = tmp_path / "v1" / "memory"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    (v1 / "memory.usage_in_bytes").write_text("2911150080\n")
    assert available_ram_bytes(meminfo, tmp_path / "v1") == 20000000 * 1024
    (v1 / "memory.limit_in_bytes").write_text(str(4 << 30))
    assert available_ram_bytes(meminfo, tmp_path / "v1") == (4 << 30) - 2911150080
    assert available_ram_bytes() is None or available_ram_bytes() > 0  # this machine, whatever it has
