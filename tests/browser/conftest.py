"""Name the browser test's screenshots and timings in the test summary, so a CI log shows them
even under ``pytest -q`` (which hides a passing test's output)."""

from __future__ import annotations

from typing import Iterator

import pytest

REPORT = pytest.StashKey[list]()


@pytest.fixture
def browser_report(request: pytest.FixtureRequest) -> Iterator[list]:
    """Lines for the summary: ``browser_report.append("screenshot: PATH")``."""
    yield request.config.stash.setdefault(REPORT, [])


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001
    lines = config.stash.get(REPORT, [])
    if lines:
        terminalreporter.write_sep("-", "deploy panel in the browser")
        for line in lines:
            terminalreporter.write_line(line)
