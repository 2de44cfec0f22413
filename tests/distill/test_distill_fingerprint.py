"""The weights fingerprint (teacher identity checked on --resume) on a tensor whose float32 linspace rounds the last
index up to numel: SmolLM2's 49152 x 576 embedding, which made every run_recipe with the real teacher fail."""

from __future__ import annotations

import torch

from gendistill.distill.fingerprints import weights_fingerprint


def test_fingerprint_of_smollm2_sized_embedding_samples_the_last_value():
    assert torch.linspace(0, 49152 * 576 - 1, 256).long()[-1] == 49152 * 576  # the float32 rounding in question
    m = torch.nn.Embedding(49152, 576)
    a = weights_fingerprint(m)
    with torch.no_grad():
        m.weight[-1, -1] += 1.0  # the last value is one of the samples
    assert weights_fingerprint(m) != a
