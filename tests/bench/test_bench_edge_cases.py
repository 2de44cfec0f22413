"""Edge cases of a benchmark run that a review reproduced: no context length at all, a ``--compare`` file that is not a
bench JSON, runs that differ in more than the card, decode cells of a prefill that never ran."""

from __future__ import annotations

import pytest

from gendistill.bench.api import bench
from gendistill.bench.runner import JOINS_CHECK_FALLBACK_CONTEXT


@pytest.mark.parametrize("options, checked_at", [
    (dict(skip="cache,ttft,decode", throughput_contexts="32"), 32),  # --contexts empty: allowed, the sweep's length
    (dict(skip="ttft,decode,cache,throughput"), 32),  # nothing measured: the throughput contexts are still lengths
    (dict(skip="ttft,decode,cache,throughput", throughput_contexts=""), JOINS_CHECK_FALLBACK_CONTEXT),
])
def test_empty_contexts_the_settings_allow_run_the_joins_check(tmp_path, options, checked_at):
    """``--contexts ""`` passes ``check_numbers`` when cache, ttft and decode are skipped; the joined-weights check then
    ran ``min()`` of the empty list (ValueError before any measurement). It takes the lengths that exist."""
    res = bench(tiny=True, out=str(tmp_path / "b"), plots=False, table=False, contexts="", **options)
    check = res.data["joined_weights_check"]
    assert check["context"] == checked_at and check["accepted"], check
    assert res.data["finished"]
