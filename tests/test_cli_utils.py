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


def test_an_error_line_keeps_the_brackets_the_user_typed(capsys):
    """The error line quotes what was typed; rich must not read ``stages[stage3a]`` as markup and drop it."""
    import typer

    from gendistill.cli_utils import user_errors
    from gendistill.errors import ConfigError

    @user_errors
    def command():
        raise ConfigError("recipe.yaml with --set stages[stage3a].tokens=abc: [bold]not an integer")

    with pytest.raises(typer.Exit) as e:
        command()
    assert e.value.exit_code == 2
    err = capsys.readouterr().err
    assert "error: recipe.yaml with --set stages[stage3a].tokens=abc: [bold]not an integer" in err, err
