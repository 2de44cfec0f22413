"""The per-process memory limit on a real card, with the device as the CLI passes it (a bare ``cuda``, no index):
``gendistill eval --gpu-memory-fraction`` raised ``ValueError`` there on its first lease (2026-12-06)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

_CHILD = """
import torch
from gendistill.devices import available_cuda_bytes, limit_cuda_memory
dev = torch.device("cuda")
limit_cuda_memory(0.25, dev)
total = torch.cuda.get_device_properties(0).total_memory
assert torch.cuda.get_per_process_memory_fraction(0) == 0.25
before = available_cuda_bytes(dev)
assert 0 < before <= 0.25 * total, (before, total)
x = torch.empty(int(0.1 * total), dtype=torch.uint8, device=dev)
after = available_cuda_bytes(dev)
assert after <= before - x.numel() + (1 << 21), (before, after)
try:
    torch.empty(int(0.2 * total), dtype=torch.uint8, device=dev)
except torch.OutOfMemoryError:
    print("refused")
"""


def test_a_bare_cuda_device_takes_the_memory_fraction_and_plans_within_it():
    # a child process: the limit stays with the process that set it
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("refused"), "an allocation past the fraction was not refused"
