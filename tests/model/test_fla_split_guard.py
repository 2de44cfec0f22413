"""fla's intra-card split of a long prefill (``FLA_INTRACARD_CP``) and gendistill's guard around it: the switch, and
why a packed call of more than one sequence never reaches the split (gendistill.ops.backend.fla_split_guard). fla's
kernels run on CUDA only; the bounds its split computes are pure Python and are checked here, the kernels in
tests/gpu/test_kda_gpu.py, the call sites in tests/model/test_fla_call_sites.py."""

from __future__ import annotations

import os

import pytest
import torch

from gendistill.ops.backend import FLA_INTRACARD_ENV, fla_intracard, fla_split_guard

intracard = pytest.importorskip("fla.ops.common.intracard_cp", reason="flash-linear-attention is not installed")


def _pre_scan_segments(lens: list[int], heads: int = 4, sms: int = 132) -> tuple[list, list]:
    """``(segments fla's pre-scan reads, pieces fla runs)`` for a packed call of sequences of ``lens`` tokens, as
    fla 0.6.0's ``intracard_fwd_h`` computes them on the host: pre-scan program ``i`` reads the bounds ``i`` and
    ``i + 1`` of the split sequences' flattened bounds (``chunk_cp_fwd_kernel_h`` with ``MULTI_SEQS``)."""
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
    piece = intracard.compute_subseq_len(max(lens), sms, heads)
    bounds, info, _ = intracard.prepare_subseq_cu_seqlens(cu, piece)
    flat, programs = intracard._precompute_intracard_indices(info, bounds, len(lens))[:2]
    read = [(flat[i], flat[i + 1]) for i in range(programs)]
    pieces = [(a, b) for s, n in zip(info.start_subseq_idx, info.num_subseqs)
              for a, b in zip(bounds[s:s + n], bounds[s + 1:s + n + 1])]
    return read, pieces


def test_fla_splits_one_sequence_on_the_right_pieces():
    read, pieces = _pre_scan_segments([1000, 32768])  # one sequence long enough to split (from 24K tokens)
    assert len(pieces) >= 3 and read == pieces


def test_fla_misreads_the_pieces_of_a_second_split_sequence():
    """The defect behind fla_split_guard: with two split sequences the pre-scan summarises an empty segment and
    never the last piece, so the second sequence's pieces start from wrong states (on an H100 its output differed
    from the serial kernel's by 0.48 relative). When a new fla passes this test, the guard can go."""
    read, pieces = _pre_scan_segments([32768, 32768])
    assert len(pieces) == 8
    assert read != pieces, "fla now reads the right pieces: fla_split_guard and this test can be removed"
    assert (32768, 32768) in read and pieces[-1] not in read


def test_switch_is_restored(monkeypatch):
    monkeypatch.setenv(FLA_INTRACARD_ENV, "0")
    with fla_intracard():
        assert os.environ[FLA_INTRACARD_ENV] == "1"
        with fla_intracard(False):
            assert os.environ[FLA_INTRACARD_ENV] == "0"
        assert os.environ[FLA_INTRACARD_ENV] == "1"
    assert os.environ[FLA_INTRACARD_ENV] == "0"
    monkeypatch.delenv(FLA_INTRACARD_ENV)
    with pytest.raises(RuntimeError), fla_intracard():
        raise RuntimeError("a failed prefill")
    assert FLA_INTRACARD_ENV not in os.environ


@pytest.mark.parametrize("user, inference, bounds, inside", [
    ("1", True, [0, 9, 20], "0"),    # two packed sequences, the case fla gets wrong: off for the call
    ("1", True, [0, 20], "1"),       # one sequence: fla splits it right, the user's switch stands
    ("1", True, None, "1"),          # unpacked rows: fla never splits them
    ("1", False, [0, 9, 20], "1"),   # training: fla never splits outside inference mode, nothing to change
    (None, True, [0, 9, 20], None),  # the user never switched it on
])
def test_guard_turns_the_split_off_only_for_several_sequences(monkeypatch, user, inference, bounds, inside):
    if user is None:
        monkeypatch.delenv(FLA_INTRACARD_ENV, raising=False)
    else:
        monkeypatch.setenv(FLA_INTRACARD_ENV, user)
    with torch.inference_mode(inference), fla_split_guard(None if bounds is None else torch.tensor(bounds)):
        assert os.environ.get(FLA_INTRACARD_ENV) == inside
    assert os.environ.get(FLA_INTRACARD_ENV) == user
