"""The GPU suite runs on leased machines under a time limit. A run cut by the limit never reaches pytest's summary,
where failures are explained, so here each failure is written out as soon as its test has failed."""

from __future__ import annotations

import pytest

_config: list[pytest.Config] = []


def pytest_collection_modifyitems(config: pytest.Config) -> None:  # after every conftest has been loaded
    _config[:] = [config]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    terminal = _config[0].pluginmanager.get_plugin("terminalreporter") if _config else None
    if report.failed and terminal is not None:
        terminal.write_line("")
        terminal.write_sep("!", f"{report.nodeid} failed ({report.when}); pytest's summary may never come")
        terminal.write_line(report.longreprtext)
