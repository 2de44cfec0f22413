"""Inference joins a linear mixer's weights once (:meth:`TeacherShapedMixer.joined`): q/k/v as one GEMM, the output
gate's and the mixer's own projections of the layer input as one more, the three convs as one, kept until a weight
changes. Checked here: the joined path computes what the separate GEMMs of training compute (every mixer; prefill,
cached decode and a left-padded batch), a kept join is never stale (optimiser step, ``load_state_dict``, ``.to()``),
it is reused while the weights stand still, and it is a plain tensor that code outside inference mode may read.

Tolerance: float32 on CPU; one GEMM over joined weights sums each output's dot product as the separate GEMM does,
but BLAS may block the two differently: ~1e-7 relative on O(1) logits, so 1e-5 absolute leaves room for rounding and
none for a wrong slice (a misplaced projection moves logits by more than 1e-2)."""

from __future__ import annotations

import pytest
import torch

import gendistill  # noqa: F401  (registers the Auto classes)
from tests.model.test_mixers_model import student_of as perturbed

MIXERS = ["kda", "gated_deltanet", "gla", "mamba2"]
TOL = 1e-5


def student_of(mixer: str):
    """A tiny float32 student in eval mode whose convs, output gate and decay are moved off their identity
    initialisation, so that every joined projection matters."""
    return perturbed(mixer)[1].eval()


def mixers_of(student):
    return [layer.linear_attn for layer in student.model.layers if layer.layer_type == "linear_attention"]


def run(student, ids, mask=None):
    """Prefill (left-padded when ``mask`` is given), then two cached decode steps: every logit of the three calls."""
    out = student(ids[:, :-2], attention_mask=None if mask is None else mask[:, :-2], use_cache=True)
    logits = [out.logits]
    for t in (-2, -1):
        out = student(ids[:, t:][:, :1], attention_mask=None if mask is None else mask[:, : mask.shape[1] + t + 1],
                      cache=out.cache, use_cache=True)
        logits.append(out.logits)
    return torch.cat(logits, dim=1)


@pytest.mark.parametrize("mixer", MIXERS)
@pytest.mark.parametrize("padded", [False, True])
def test_joined_weights_compute_what_the_separate_projections_compute(mixer, padded):
    student = student_of(mixer)
    ids = torch.randint(0, student.config.vocab_size, (2, 23))
    mask = None
    if padded:
        mask = torch.ones(2, 23, dtype=torch.long)
        mask[0, :5] = 0
    with torch.no_grad():  # separate GEMMs, joined afresh: training's path
        separate = run(student, ids, mask)
    assert not any(m._joined for m in mixers_of(student))
    with torch.inference_mode():
        joined = run(student, ids, mask)
    kept = mixers_of(student)[0]._joined
    assert {"qkv_weight", "input_weight", "conv_weight"} <= set(kept)
    assert (joined - separate).abs().max().item() < TOL


def test_a_kept_join_follows_every_change_of_the_weights():
    """An optimiser step, load_state_dict, a dtype round trip and a swapped ``.data``: after each, the inference path
    equals the separate projections of the weights as they now are."""
    student = student_of("kda")
    ids = torch.randint(0, student.config.vocab_size, (1, 17))

    def agree() -> float:
        with torch.no_grad():
            separate = run(student, ids)
        with torch.inference_mode():
            joined = run(student, ids)
        return (joined - separate).abs().max().item()

    assert agree() < TOL
    mixer = mixers_of(student)[0]
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    student.train()
    student(ids, labels=ids).loss.backward()
    opt.step()
    student.eval()
    assert agree() < TOL  # every projection moved in place
    other = student_of("kda")
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.1 * torch.randn_like(p))
    student.load_state_dict(other.state_dict())
    assert agree() < TOL
    student.to(torch.float64).to(torch.float32)
    assert agree() < TOL
    with torch.no_grad():
        mixer.b_proj.weight.data = torch.randn_like(mixer.b_proj.weight)
        mixer.k_proj.weight.data = torch.randn_like(mixer.k_proj.weight)
    assert agree() < TOL


def test_a_join_is_made_once_and_is_a_plain_tensor():
    student = student_of("kda")
    mixer = mixers_of(student)[0]
    parts = [mixer.q_proj.weight, mixer.k_proj.weight, mixer.v_proj.weight]
    with torch.inference_mode():
        first = mixer.joined("qkv_weight", parts)
        assert mixer.joined("qkv_weight", parts) is first  # kept, no second copy
    assert not first.is_inference() and not first.requires_grad
    assert torch.equal(first, torch.cat(parts).detach())
    with torch.no_grad():
        mixer.q_proj.weight.mul_(2.0)
    with torch.inference_mode():
        again = mixer.joined("qkv_weight", parts)
    assert again is not first and torch.equal(again[: parts[0].shape[0]], 2.0 * first[: parts[0].shape[0]])
    outside = mixer.joined("qkv_weight", parts)  # outside inference mode: afresh, in the autograd graph
    assert outside is not again and outside.requires_grad
