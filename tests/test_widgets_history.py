"""The deploy panel's run history (issue 20 item 9), through its widgets, without a browser:
a run from the command line and one from the panel's Run button are listed and compared."""

from __future__ import annotations

import re

import pytest

from kale_magics import api
from kale_magics.views import history as views
from kale_widgets import DeployPanel
from tests.conftest import write_notebook
from tests.test_magics import shell  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration

FLOW = ("%%kale parameters\nN = 3\nSCALE = 0.5",
        "%%kale step make\nitems = list(range(N))",
        "%%kale step total\nsize = sum(items) * SCALE",
        "%%kale metrics\nsize")


def test_panel_lists_runs_and_compares_the_last_two(shell, tmp_path) -> None:  # noqa: F811
    path = write_notebook(tmp_path / "flow.ipynb", FLOW)
    earlier = api.run_local(path)  # a run made outside the panel
    panel = DeployPanel(str(path), shell=shell, interval_s=0.3, warm_worker=False)
    try:
        rows = re.findall(r'data-run-id="([^"]+)"', panel.history.table.value)
        assert len(rows) == 1 and panel.history.comparison.value == ""
        panel.form.parameters["N"][1].value = 5
        panel.run_button.click()
        assert panel.control.wait(120).state == "SUCCEEDED", panel.message.value
        panel._ticker.join(10)  # the panel reloads the history when its run has ended
        history = api.run_history(path)
        assert len(history.runs) == 2 and history.runs[1].metrics == earlier.metrics
        assert panel.history.table.value == views.runs_html(history, [r.run_id for r in history.runs])
        assert (panel.history.first.value, panel.history.second.value) == (
            history.runs[1].run_id, history.runs[0].run_id)  # the one before, then the newest
        differing = re.findall(r'class="kale-differs" data-name="(\w+)"',
                               panel.history.comparison.value)
        assert differing == ["N", "size"]
        panel.history.second.value = history.runs[1].run_id  # the same run twice: nothing to compare
        assert panel.history.comparison.value == ""
    finally:
        panel.close()


def test_refresh_shows_runs_made_elsewhere_and_no_runs_is_said(shell, tmp_path) -> None:  # noqa: F811
    path = write_notebook(tmp_path / "flow.ipynb", FLOW)
    panel = DeployPanel(str(path), shell=shell, warm_worker=False)
    try:
        assert "no recorded runs of this notebook yet" in panel.history.table.value
        api.run_local(path, {"N": 2})
        panel.history.refresh_button.click()
        assert panel.history.table.value.count('class="kale-run"') == 1
        assert "N=2, SCALE=0.5" in panel.history.table.value
    finally:
        panel.close()
