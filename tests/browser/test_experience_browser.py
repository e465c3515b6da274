"""Issue 20 in a real browser, in JupyterLab 4 and in Notebook 7 (item 12).

The same Jupyter server as ``test_panel_browser.py`` (``python -m notebook``, which serves
JupyterLab under ``/lab`` too) and Debian's headless Chromium driven by Playwright. Each check
runs once per front end on a small notebook:

- item 9: the panel lists the notebook's runs (one made before from the command line, one from
  the panel's Run button) and compares the last two, the parameter and metric that differ
  highlighted;
- item 1: a ``%kale panel`` cell right after the ``%%kale metrics`` cell, the notebook saved,
  then Run works;
- item 2: after a compile error the DAG still shows the last run, said to be the last one,
  beside the new error;
- item 6: the line under a step cell is styled HTML naming what travels (inputs with their
  producer), not the names the step keeps to itself.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from kale_magics import api
from tests.browser.test_panel_browser import (  # noqa: F401  (fixtures)
    TOKEN,
    _accept_dialogs,
    _run_all_cells,
    _shot,
    browser,
    jupyter,
)
from tests.conftest import write_notebook

pytestmark = pytest.mark.integration

UIS = ("notebook7", "lab")
TINY = ("%load_ext kale_magics\n%kale pipeline --name tiny",
        "%%kale parameters\nN = 3",
        "%%kale step make\nitems = list(range(N))\nkept = 'k'\nscratch = len(items)",
        "%%kale step total\ntotal = sum(items) + len(kept)",
        "%%kale metrics\ntotal")
#: The panel after a skip cell (a panel cell right after the metrics cell is item 1's trap).
PANEL_AFTER_SKIP = ("%%kale skip\nprint('the panel is below')", "%kale panel")


def _url(base: str, ui: str, name: str) -> str:
    if ui == "lab":  # a workspace of its own: no tabs restored from another test
        return f"{base}/lab/workspaces/{Path(name).stem}/tree/{name}?token={TOKEN}"
    return f"{base}/notebooks/{name}?token={TOKEN}"


def _open(browser: object, base: str, ui: str, name: str, report: list,
          ready: str = ".kale-panel .kale-run-button") -> object:
    """Open notebook ``name`` in ``ui``, run all cells, wait for ``ready`` (a selector)."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})  # type: ignore[attr-defined]
    page.goto(_url(base, ui, name))
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status=idle]", timeout=60_000)
    _run_all_cells(page, report)
    try:
        page.wait_for_selector(ready, timeout=120_000)
    except Exception:
        _shot(page, f"issue20-{ui}-failed-page", report)
        outputs = page.locator(".jp-OutputArea-output").all_inner_texts()
        raise AssertionError(f"{ready} not shown; cell outputs: {outputs[-3:]}") from None
    return page


def _contents(base: str, name: str, body: dict | None = None) -> dict:
    """The Jupyter contents API: read notebook ``name``, or save ``body`` as it."""
    request = urllib.request.Request(
        f"{base}/api/contents/{name}", method="PUT" if body is not None else "GET",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"token {TOKEN}", "Content-Type": "application/json"})
    for attempt in range(5):  # a read racing the front end's save can be refused (400) once
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            if body is not None or error.code != 400 or attempt == 4:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def _press_run(page: object, outcome: str = "SUCCEEDED", timeout_ms: int = 120_000) -> None:
    """Press the panel's Run; wait for the run to end ``outcome`` or for a red message."""
    page.click(".kale-panel .kale-run-button")  # type: ignore[attr-defined]
    page.wait_for_selector(f".kale-panel .kale-status[data-state={outcome}], "  # type: ignore[attr-defined]
                           ".kale-panel .kale-error", timeout=timeout_ms)


def _error_text(page: object) -> str:
    errors = page.locator(".kale-panel .kale-error")  # type: ignore[attr-defined]
    return errors.first.inner_text() if errors.count() else ""


def _cell(page: object, index: int) -> object:
    return page.locator(".jp-Notebook .jp-Cell").nth(index)  # type: ignore[attr-defined]


def _wait_ran(page: object, index: int) -> None:
    """Wait until cell ``index`` has run (its prompt shows an execution count)."""
    _cell(page, index).locator(".jp-InputArea-prompt",  # type: ignore[attr-defined]
                               has_text=re.compile(r"\[\d+\]")).wait_for(timeout=120_000)


# -- item 9: run history ------------------------------------------------------------------------

@pytest.mark.parametrize("ui", UIS)
def test_panel_lists_the_runs_and_compares_two(jupyter, browser, browser_report, ui) -> None:  # noqa: F811
    base, root = jupyter
    name = f"runs_{ui}.ipynb"
    write_notebook(root / name, (*TINY, *PANEL_AFTER_SKIP))
    earlier = api.run_local(root / name, {"N": 2})  # a run made outside the panel
    assert earlier.state == "SUCCEEDED"
    page = _open(browser, base, ui, name, browser_report)
    try:
        panel = page.locator(".kale-panel")
        runs = panel.locator("table.kale-runs tr.kale-run")
        runs.first.wait_for(timeout=30_000)
        assert runs.count() == 1 and "N=2" in runs.first.inner_text()
        _press_run(page)
        assert not _error_text(page), _error_text(page)
        page.wait_for_function(  # the panel lists its run when the run has ended
            "() => document.querySelectorAll('.kale-panel table.kale-runs tr.kale-run').length === 2",
            timeout=30_000)
        first_row = runs.first.inner_text()
        assert "SUCCEEDED" in first_row and "N=3" in first_row and "total=4" in first_row
        differing = panel.locator("table.kale-compare tr.kale-differs")
        differing.first.wait_for(timeout=30_000)
        assert sorted(r.get_attribute("data-name") for r in differing.all()) == ["N", "total"]
        _shot(panel, f"issue20-{ui}-run-history", browser_report)
    finally:
        page.close()


# -- items 1, 2 and 6: built on the branch experience ---------------------------------------------

@pytest.mark.parametrize("ui", UIS)
def test_panel_cell_after_the_metrics_cell_saved_then_run(jupyter, browser, browser_report,  # noqa: F811
                                                          ui) -> None:
    base, root = jupyter
    name = f"after_metrics_{ui}.ipynb"
    write_notebook(root / name, (*TINY, "%kale panel"))
    page = _open(browser, base, ui, name, browser_report)
    try:
        saved = _contents(base, name)["last_modified"]
        _cell(page, 0).click()
        page.keyboard.press("Escape")
        page.keyboard.press("Control+s")
        deadline = time.time() + 30
        while _contents(base, name)["last_modified"] == saved and time.time() < deadline:
            time.sleep(0.3)
        _accept_dialogs(page, browser_report)
        _press_run(page)
        error = _error_text(page)
        _shot(page.locator(".kale-panel"), f"issue20-{ui}-panel-after-metrics", browser_report)
        assert not error, error
        assert page.locator(".kale-panel g.kale-step[data-state=SUCCEEDED]").count() == 2
    finally:
        page.close()


@pytest.mark.parametrize("ui", UIS)
def test_compile_error_shows_the_last_run_as_last(jupyter, browser, browser_report, ui) -> None:  # noqa: F811
    base, root = jupyter
    name = f"compile_error_{ui}.ipynb"
    write_notebook(root / name, (*TINY, *PANEL_AFTER_SKIP))
    page = _open(browser, base, ui, name, browser_report)
    try:
        _press_run(page)
        assert not _error_text(page), _error_text(page)
        model = _contents(base, name)  # the user breaks a step and saves
        cells = model["content"]["cells"]
        cells[3]["source"] = "%%kale step total --after nosuchstep\ntotal = sum(items) + len(kept)"
        _contents(base, name, {"type": "notebook", "format": "json", "content": model["content"]})
        page.click(".kale-panel .kale-run-button")
        page.wait_for_selector(".kale-panel .kale-error", timeout=60_000)
        panel = page.locator(".kale-panel")
        _shot(panel, f"issue20-{ui}-compile-error", browser_report)
        assert "nosuchstep" in _error_text(page)
        # the last run stays on the DAG, said to be the last one, beside the new error
        assert panel.locator("g.kale-step[data-state=SUCCEEDED]").count() == 2
        status = panel.locator(".kale-status").inner_text()
        assert re.search(r"last run|previous", status, re.I), status
    finally:
        page.close()


@pytest.mark.parametrize("ui", UIS)
def test_step_cell_line_is_html_naming_what_travels(jupyter, browser, browser_report, ui) -> None:  # noqa: F811
    base, root = jupyter
    name = f"step_line_{ui}.ipynb"
    write_notebook(root / name, TINY)
    page = _open(browser, base, ui, name, browser_report, ready=".jp-Notebook .jp-Cell")
    try:
        _wait_ran(page, len(TINY) - 1)
        make, total = _cell(page, 2), _cell(page, 3)
        _shot(page, f"issue20-{ui}-step-lines", browser_report)
        for cell in (make, total):
            assert cell.locator(".jp-OutputArea-output.jp-RenderedHTMLCommon").count() == 1
            assert cell.locator(".jp-OutputArea-output.jp-RenderedText").count() == 0
        total_line = total.locator(".jp-RenderedHTMLCommon").inner_text()
        assert "items" in total_line and "make" in total_line  # an input with its producer
        make_line = make.locator(".jp-RenderedHTMLCommon").inner_text()
        assert "items" in make_line and "kept" in make_line  # both travel to total
        assert "scratch" not in make_line  # assigned, read by no later step
    finally:
        page.close()
