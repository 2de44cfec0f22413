"""The one user-error line of every command, under a launcher with several ranks: rank 0 (or a single process)
reports at once; another rank waits for the launcher to stop it and, if it is still alive, prefixes its rank."""

from __future__ import annotations

import pytest

from gendistill import cli_utils


@pytest.mark.parametrize("env,prefix,slept", [
    ({}, "", []),
    ({"RANK": "0", "WORLD_SIZE": "4"}, "", []),
    ({"RANK": "3", "WORLD_SIZE": "4"}, "[rank 3] ", [cli_utils.RANK_ERROR_GRACE_S]),
])
def test_error_prefix_lets_rank_0_report(monkeypatch, env, prefix, slept):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    waits: list[float] = []
    monkeypatch.setattr(cli_utils.time, "sleep", waits.append)
    assert cli_utils.error_prefix() == prefix
    assert waits == slept
