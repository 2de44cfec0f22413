"""The teacher fingerprint recorded in progress.json (checked on --resume) on tensors of any size."""

from __future__ import annotations


def test_the_teacher_fingerprint_takes_tensors_past_two_to_the_24_elements():
    """float32 sample positions round the last one up to numel for some sizes past 2**24 (SmolLM2's 28,311,552-element
    embedding: `gendistill distill tiny-cpu` stopped with an IndexError). The positions stay the float32 ones every
    recorded fingerprint used, so runs in progress still resume."""
    import torch
    from torch import nn

    from gendistill.distill.fingerprints import weights_fingerprint

    big = nn.Module()
    big.w = nn.Parameter(torch.zeros(16_777_220), requires_grad=False)  # 2**24 + 4: the last position rounds up
    assert torch.linspace(0, 16_777_219, 256).long()[-1] == 16_777_220  # the rounding this guards against
    fp = weights_fingerprint(big)
    big.w.data[-1] = 1.0  # the last element is sampled, so it is part of the identity
    assert weights_fingerprint(big) != fp
