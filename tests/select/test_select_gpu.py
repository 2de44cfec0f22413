"""The selection methods on CUDA (skipped without it): fla's KDA kernels, bf16 autocast with fp32 master weights,
the mixed attention/KDA model under autocast. Same synthetic teacher as the CPU tests (head_dim 16 for the kernels):
the methods must still find the important layers."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run through the device tool)")]


@pytest.mark.parametrize("method, important", [("kl-guided", (1, 4)), ("greedy-learned", (0, 3)), ("beam-add", (1, 3))])
def test_methods_find_the_important_layers_on_cuda(make_cfg, tok, method, important):
    from gendistill.select import select_layers
    from tests.select._synthetic import synthetic_teacher

    teacher = synthetic_teacher(tok, recall_layers=important, hidden=64).cuda()
    cfg = make_cfg(method, 2, device="cuda", precision="bf16", seq_len=64)
    res = select_layers(cfg, teacher=teacher, tokenizer=tok, progress="none")
    assert res["attention_layers"] == sorted(important)
    assert res["cost"]["device"] == "cuda" and "gpu_minutes" in res["cost"]
