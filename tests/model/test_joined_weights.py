"""``joined_weights(model)``: inside the block every linear mixer runs on its q/k/v and conv weights joined once
(no weight copies per call, one q/k/v GEMM per decode step); the block releases them. Checked: the same logits as
outside the block for every mixer (prefill, cached decode, a left-padded batch), a forward with gradients inside the
block reads the live weights, the joins are released on exit (an exception included) and nested blocks keep the outer
one's.

Tolerance: float32 on CPU; one GEMM over joined weights sums each output's dot product as the separate GEMMs do, but
BLAS may block the two differently: ~1e-7 relative on O(1) logits, so 1e-5 absolute leaves room for rounding and none
for a wrong join (a misplaced weight moves logits by more than 1e-2)."""

from __future__ import annotations

import pytest
import torch

import gendistill  # noqa: F401  (registers the Auto classes)
from gendistill.layers.base import RECURRENT_MAX_TOKENS, TeacherShapedMixer, joined_weights
from tests.model.test_mixers_model import student_of as perturbed

MIXERS = ["kda", "gated_deltanet", "gla", "mamba2"]
TOL = 1e-5


def student_of(mixer: str, family: str = "llama"):
    """A tiny float32 student in eval mode whose convs, output gate and decay are moved off their identity
    initialisation, so that every joined weight matters (``qwen2``: q/k/v projections with biases)."""
    return perturbed(mixer, family=family)[1].eval()


def mixers_of(model) -> list[TeacherShapedMixer]:
    return [m for m in model.modules() if isinstance(m, TeacherShapedMixer)]


def run(student, ids, mask=None):
    """Prefill (left-padded when ``mask`` is given), then two cached decode steps: every logit of the three calls."""
    out = student(ids[:, :-2], attention_mask=None if mask is None else mask[:, :-2], use_cache=True)
    logits = [out.logits]
    for t in (-2, -1):
        out = student(ids[:, t:][:, :1], attention_mask=None if mask is None else mask[:, : mask.shape[1] + t + 1],
                      cache=out.cache, use_cache=True)
        logits.append(out.logits)
    return torch.cat(logits, dim=1)


@pytest.mark.parametrize("mixer, family", [*((m, "llama") for m in MIXERS), ("kda", "qwen2")])
@pytest.mark.parametrize("padded", [False, True])
def test_joined_weights_give_the_logits_of_the_separate_ones(mixer, family, padded):
    student = student_of(mixer, family)
    ids = torch.randint(0, student.config.vocab_size, (2, 23))
    mask = None
    if padded:
        mask = torch.ones(2, 23, dtype=torch.long)
        mask[0, :5] = 0
    with torch.inference_mode():
        separate = run(student, ids, mask)
        with joined_weights(student):
            assert all(m._joined is not None for m in mixers_of(student))
            joined = run(student, ids, mask)
    assert all(m._joined is None for m in mixers_of(student))  # released
    assert (joined - separate).abs().max().item() < TOL


def test_a_forward_with_gradients_inside_the_block_reads_the_live_weights():
    """Training inside the block (not what it is for, but not wrong): after an in-place update the loss and its
    gradients are those of the updated weights, and so is a no-grad forward (the joins no longer match the weights'
    version counters)."""
    student = student_of("kda")
    ids = torch.randint(0, student.config.vocab_size, (1, 17))
    mixer = mixers_of(student)[0]
    with torch.no_grad():
        before = student(ids).logits
    with joined_weights(student):
        with torch.no_grad():
            mixer.k_proj.weight.add_(0.5 * torch.randn_like(mixer.k_proj.weight))
            mixer.q_conv1d.weight.mul_(1.5)
            edited = student(ids).logits  # the edit seen: the joins are not the weights' any more
        live = student(ids).logits
        live.sum().backward()
    assert mixer.k_proj.weight.grad is not None and mixer.q_conv1d.weight.grad is not None
    with torch.no_grad():
        after = student(ids).logits
    assert (edited - after).abs().max().item() < TOL
    assert (live.detach() - after).abs().max().item() < TOL and (after - before).abs().max().item() > 1e-2


def test_the_block_releases_its_joins_on_an_error_and_nested_blocks_keep_the_outer_ones():
    student = student_of("gla")
    with pytest.raises(RuntimeError, match="a failed batch"), joined_weights(student):
        raise RuntimeError("a failed batch")
    assert all(m._joined is None for m in mixers_of(student))
    with joined_weights(student):
        outer = [m._joined for m in mixers_of(student)]
        with joined_weights(student):
            assert all(m._joined is j for m, j in zip(mixers_of(student), outer))  # not joined again
        assert all(m._joined is j for m, j in zip(mixers_of(student), outer))  # the inner block did not release them
    assert all(m._joined is None for m in mixers_of(student))


def test_inside_the_block_no_call_copies_the_weights(monkeypatch):
    """What the block is for: outside it every prefill joins the q/k/v weights and the convs' afresh (torch.cat of
    parameters); inside it no call does, prefill or decode step."""
    student = student_of("kda")
    params = {id(p) for m in mixers_of(student) for p in m.parameters()}
    joins_of_parameters = []
    real_cat = torch.cat

    def cat(tensors, *args, **kwargs):
        if any(id(t) in params or (t._base is not None and id(t._base) in params) for t in tensors):
            joins_of_parameters.append(len(tensors))
        return real_cat(tensors, *args, **kwargs)

    monkeypatch.setattr(torch, "cat", cat)
    ids = torch.randint(0, student.config.vocab_size, (1, 40))
    with torch.inference_mode():
        run(student, ids)
        assert joins_of_parameters  # the separate path joins weights at every call
        joins_of_parameters.clear()
        with joined_weights(student):
            made = len(joins_of_parameters)  # the joins made on entry
            run(student, ids)
            assert len(joins_of_parameters) == made


@pytest.mark.parametrize("mixer", MIXERS)
def test_inside_the_block_one_gemm_reads_the_layer_input(mixer):
    """Every linear that reads a mixer's input (q/k/v, the output gate's and the decay/beta projections) is part of
    the one joined GEMM: inside the block no linear module is called on the layer input for calls of up to
    RECURRENT_MAX_TOKENS tokens (decode steps, short prompts); outside it they are (so the check can fail). A longer
    prefill joins q/k/v only: the other projections then read the input themselves (the measured rule)."""
    student = student_of(mixer)
    inputs, read_input = {}, []

    def keep_input(mod, args, kwargs):
        inputs[id(mod)] = (kwargs.get("hidden_states", args[0] if args else None))

    def check_linear(owner):
        def hook(lin, args):
            if args[0] is inputs.get(id(owner)):
                read_input.append(lin)
        return hook

    for m in mixers_of(student):
        m.register_forward_pre_hook(keep_input, with_kwargs=True)
        for lin in m.modules():
            if isinstance(lin, torch.nn.Linear):
                lin.register_forward_pre_hook(check_linear(m))
    ids = torch.randint(0, student.config.vocab_size, (1, 19))
    with torch.inference_mode():
        run(student, ids)
        assert read_input  # outside the block q/k/v and the gates' projections read it
        read_input.clear()
        with joined_weights(student):
            run(student, ids)
            assert read_input == []
            long = torch.randint(0, student.config.vocab_size, (1, RECURRENT_MAX_TOKENS + 1))
            joined_long = student(long).logits
    separate_projections = {id(p) for m in mixers_of(student) for p in m.input_projections()}
    assert read_input and {id(lin) for lin in read_input} == separate_projections
    with torch.inference_mode():
        assert (joined_long - student(long).logits).abs().max().item() < TOL


def test_a_copy_or_a_new_storage_inside_the_block_reads_the_live_weights():
    """The joins belong to the parameters they were made of: a deep copy of the model made inside the block, or a
    weight given a new storage there, computes with its own live weights."""
    import copy

    student = student_of("kda")
    ids = torch.randint(0, student.config.vocab_size, (1, 17))
    with joined_weights(student), torch.inference_mode():
        clone = copy.deepcopy(student)
        mixer = mixers_of(clone)[0]
        mixer.k_proj.weight.mul_(1.7)  # the copy's own weight, changed after the copy
        got = clone(ids).logits
        mixers_of(student)[0].v_proj.weight.data = 2.0 * mixers_of(student)[0].v_proj.weight.data
        swapped = student(ids).logits
    with torch.inference_mode():
        assert (got - clone(ids).logits).abs().max().item() < TOL
        assert (swapped - student(ids).logits).abs().max().item() < TOL


def test_a_failure_while_joining_leaves_no_join_and_meta_weights_are_left_alone(monkeypatch):
    from gendistill.layers.base import TeacherShapedMixer as Mixer

    student = student_of("gated_deltanet")
    made = []
    real = Mixer._make_joins

    def make(self):
        if made:
            raise torch.OutOfMemoryError("CUDA out of memory (a full card)")
        made.append(self)
        return real(self)

    monkeypatch.setattr(Mixer, "_make_joins", make)
    with pytest.raises(torch.OutOfMemoryError), joined_weights(student):
        pass
    assert made and all(m._joined is None for m in mixers_of(student))
    monkeypatch.setattr(Mixer, "_make_joins", real)
    on_meta = student_of("kda").to("meta")
    with joined_weights(on_meta):
        assert all(m._joined is None for m in mixers_of(on_meta))


def test_the_joins_are_freed_when_the_block_ends():
    import gc
    import weakref

    student = student_of("kda")
    with joined_weights(student):
        ref = weakref.ref(mixers_of(student)[0]._joined.in_weight)
    gc.collect()
    assert ref() is None
