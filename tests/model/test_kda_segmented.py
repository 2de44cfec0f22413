"""Segment-parallel KDA prefill (gendistill.ops.kda.segmented): one sequence cut into segments whose work runs side by
side must give the serial recurrence's outputs and final state, in float64 to rounding (~1e-15; asserted at 1e-10),
through the operator, the mixer's entry point (GENDISTILL_KDA_PREFILL_SEGMENT) and a whole hybrid model."""

from __future__ import annotations

import pytest
import torch
from tests.model.test_kda_ops import TOL_F64, random_inputs, rel

from gendistill.ops.backend import prefill_segment_tokens
from gendistill.ops.kda import kda_chunk, kda_from_projections
from gendistill.ops.kda.recurrent import recurrent_kda
from gendistill.ops.kda.segmented import segment_bounds, segmented_prefill


@pytest.mark.parametrize("segment", [1, 7, 64, 100, 299, 300])
@pytest.mark.parametrize("with_state", [False, True])
def test_segments_side_by_side_equal_the_serial_recurrence(segment, with_state):
    q, k, v, g, beta, h0 = random_inputs(1, 300, 2, 8, 12, seed=segment, decay_scale=2.0)
    h0 = h0 if with_state else None
    o_ref, s_ref = recurrent_kda(q, k, v, g, beta, initial_state=h0, output_final_state=True)

    def run(vv, start, cu, want_state):
        return kda_chunk(q, k, vv, g, beta, initial_state=start, output_final_state=want_state, cu_seqlens=cu)

    cu = segment_bounds(300, segment)
    assert cu[0] == 0 and cu[-1] == 300 and cu.numel() - 1 == -(-300 // segment)
    o, s = segmented_prefill(run, v, 8, cu, h0)
    assert o.shape == o_ref.shape and s.shape == s_ref.shape
    assert rel(o, o_ref) < TOL_F64 and rel(s, s_ref) < TOL_F64


@pytest.mark.parametrize("lower_bound", [None, -5.0])
def test_mixer_entry_point_segments_only_an_inference_prefill(monkeypatch, lower_bound):
    """With GENDISTILL_KDA_PREFILL_SEGMENT set, a batch-1 prefill without autograd is segmented and equals the serial
    call; with autograd on (training) or several rows the serial kernel runs (the function is the same either way;
    the segmented call is recognised by its calls of the chunk kernel over packed segments)."""
    import gendistill.ops.kda as ops

    g = torch.Generator().manual_seed(11)
    B, T, H, K = 1, 200, 2, 8
    q, k, v, f = (torch.randn(B, T, H, K, generator=g, dtype=torch.float64) for _ in range(4))
    b = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    A_log, dt_bias = torch.randn(H, generator=g, dtype=torch.float64), torch.randn(H * K, generator=g,
                                                                                     dtype=torch.float64)
    h0 = torch.randn(1, H, K, K, generator=g, dtype=torch.float64)
    args = (q, k, v, f, b, A_log, dt_bias)
    kw = dict(recurrent=False, initial_state=h0, output_final_state=True, gate_lower_bound=lower_bound)
    o_ref, s_ref = kda_from_projections(*args, **kw)
    calls = []
    real = ops.kda_chunk
    monkeypatch.setattr(ops, "kda_chunk", lambda *a, **k_: calls.append(k_.get("cu_seqlens")) or real(*a, **k_))
    monkeypatch.setenv("GENDISTILL_KDA_PREFILL_SEGMENT", "64")
    with torch.no_grad():
        o, s = kda_from_projections(*args, **kw)
    assert len(calls) == 2 and calls[0].tolist() == [0, 64, 128, 192, 200]
    assert rel(o, o_ref) < TOL_F64 and rel(s, s_ref) < TOL_F64
    calls.clear()
    kda_from_projections(*args, **kw)  # autograd on: serial
    with torch.no_grad():
        kda_from_projections(*(x.expand(2, *x.shape[1:]) if x.dim() > 2 else x for x in args),
                             **{**kw, "initial_state": h0.expand(2, -1, -1, -1)})  # two rows: serial
    assert calls == [None, None]


def test_hybrid_prefill_and_decode_are_unchanged_by_segments(monkeypatch):
    """A hybrid's prefill logits and its cached continuation with segmented KDA prefill equal the serial ones (float64,
    trained-like KDA parameters)."""
    from tests.model.test_modeling_hybrid import student_of

    _, student = student_of("llama")
    student = student.double().eval()
    x = torch.randint(0, 256, (1, 150), generator=torch.Generator().manual_seed(3))

    def run():
        with torch.no_grad():
            out = student(x[:, :140], use_cache=True)
            nxt = student(x[:, 140:], cache=out.cache, use_cache=True)
        return out.logits, nxt.logits

    ref = run()
    monkeypatch.setenv("GENDISTILL_KDA_PREFILL_SEGMENT", "64")
    got = run()
    for a, r in zip(got, ref):
        assert rel(a, r) < TOL_F64


@pytest.mark.parametrize("raw, want", [("", None), ("0", None), ("8192", 8192)])
def test_segment_setting(monkeypatch, raw, want):
    monkeypatch.setenv("GENDISTILL_KDA_PREFILL_SEGMENT", raw)
    assert prefill_segment_tokens() == want


@pytest.mark.parametrize("raw", ["-5", "8k", "1.5", "100"])
def test_bad_segment_setting_names_the_variable(monkeypatch, raw):
    monkeypatch.setenv("GENDISTILL_KDA_PREFILL_SEGMENT", raw)
    with pytest.raises(ValueError, match=r"^GENDISTILL_KDA_PREFILL_SEGMENT=.*positive number of tokens, a multiple"):
        prefill_segment_tokens()
