"""The deploy panel in a real browser: Notebook 7 in headless Chromium, driven by Playwright.

A Jupyter server (Notebook 7) runs on 127.0.0.1 with token auth; Chromium is
Debian's (``/usr/bin/chromium``, or ``$KALE_CHROMIUM``), never a Playwright
download. Each test opens a copy of the Wine example with a ``%kale panel``
cell, runs all cells from the Run menu, presses the panel's Run button and waits
until every step of the DAG view is green (``data-state="SUCCEEDED"``): once for
a local run and once against the KFP API test server. It prints the time from
pressing Run to the last step turning green, and saves screenshots (before,
running, done) under ``tests/browser/screenshots/`` (or ``$KALE_SCREENSHOTS``),
printing their paths.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import nbformat
import pytest

from tests.conftest import EXAMPLES
from tests.kfp_server.fixtures import SECRET_TOKEN, kfp_server  # noqa: F401
from tests.test_jupyter_kernel import free_port

pytestmark = pytest.mark.integration
playwright_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("notebook")

TOKEN = "kale-panel-browser-token"
CHROMIUM = os.environ.get("KALE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
SHOTS = Path(os.environ.get("KALE_SCREENSHOTS", Path(__file__).parent / "screenshots"))
WINE_STEPS = 6
WINE_METRICS = ("logreg_accuracy", "forest_accuracy", "svm_accuracy", "best_accuracy")
#: Appended to the example: the metrics the kernel computed, then the panel.
EXTRA_CELLS = (
    "%%kale skip\nimport json\nprint('EXPECTED=' + json.dumps({k: float(globals()[k]) for k in "
    f"{list(WINE_METRICS)!r}}}))",
    "%kale panel",
)


def _get(port: int, path: str) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     headers={"Authorization": f"token {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10):
        pass


def _chromium_or_skip() -> None:
    """Skip where there is no Chromium to drive (checked before a server is started for it)."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM}; apt-get install chromium (or set KALE_CHROMIUM)")


@pytest.fixture(scope="module")
def jupyter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A Notebook 7 server on 127.0.0.1 with token auth; its kernels get the KFP test token."""
    _chromium_or_skip()  # the server is for the browser only
    base = tmp_path_factory.mktemp("jupyter")
    root = base / "root"
    root.mkdir()
    port = free_port()
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
           "JUPYTER_CONFIG_DIR": str(base / "config"), "KF_PIPELINES_TOKEN": SECRET_TOKEN,
           "KALE_MAGICS_CONFIG": str(base / "no-config.json")}
    env.pop("KF_PIPELINES_ENDPOINT", None)
    command = [sys.executable, "-m", "notebook", "--no-browser", f"--port={port}",
               "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={TOKEN}",
               f"--ServerApp.root_dir={root}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    log = open(base / "server.log", "wb")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_server(port, process, base / "server.log")
        yield f"http://127.0.0.1:{port}", root
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _wait_for_server(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        if process.poll() is not None:
            pytest.fail(f"jupyter server exited: {log.read_text()[-2000:]}")
        try:
            _get(port, "/api/status")
            return
        except OSError:
            time.sleep(0.3)
    pytest.fail("jupyter server did not start within 60 s")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's headless Chromium (no Playwright browser download)."""
    _chromium_or_skip()
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _example(root: Path, name: str) -> str:
    """Copy the Wine example into the server's root with the extra cells; return its name."""
    nb = nbformat.read(EXAMPLES / "wine.ipynb", as_version=4)
    nb.cells.extend(nbformat.v4.new_code_cell(source) for source in EXTRA_CELLS)
    nbformat.write(nb, root / f"{name}.ipynb")
    shutil.copytree(EXAMPLES / "data", root / "data", dirs_exist_ok=True)
    return f"{name}.ipynb"


def _say(report: list, line: str) -> None:
    """Print ``line`` and keep it for the test summary (tests/browser/conftest.py)."""
    print(line)
    report.append(line)


def _shot(locator: object, name: str, report: list) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    locator.screenshot(path=str(path))  # type: ignore[attr-defined]
    _say(report, f"screenshot: {path}")
    return path


def _open_and_run_all(browser: object, url: str, report: list) -> object:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})  # type: ignore[attr-defined]
    page.goto(url)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status=idle]", timeout=60_000)
    _run_all_cells(page, report)
    try:
        page.wait_for_selector(".kale-panel .kale-dag", timeout=180_000)
    except Exception:
        _shot(page, "failed-page", report)
        errors = page.locator(".jp-OutputArea-output").all_inner_texts()
        raise AssertionError(f"no panel; cell outputs: {errors[-3:]}") from None
    return page


def _run_all_cells(page: object, report: list, attempts: int = 4) -> None:
    """Run > Run All Cells; again when no cell started (the kernel was not connected yet:
    Notebook 7 then drops the request, and shows the kernel idle before it is connected).
    A dialog in the way (e.g. "Select Kernel" when the kernel was slow to start on a busy
    machine) is named in the report and accepted."""
    started = page.locator(".jp-InputArea-prompt", has_text=re.compile(r"\[(\*|\d+)\]"))  # type: ignore[attr-defined]
    for _ in range(attempts):
        _accept_dialogs(page, report)
        try:
            page.get_by_role("menuitem", name="Run", exact=True).click(timeout=10_000)  # type: ignore[attr-defined]
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click(timeout=10_000)  # type: ignore[attr-defined]
            started.first.wait_for(timeout=15_000)
            return
        except playwright_api.TimeoutError:
            page.keyboard.press("Escape")  # type: ignore[attr-defined]
    _shot(page, "failed-page", report)
    raise AssertionError(f"no cell started after {attempts} times Run All Cells")


def _accept_dialogs(page: object, report: list) -> None:
    dialogs = page.locator(".jp-Dialog")  # type: ignore[attr-defined]
    while dialogs.count():
        text = " ".join(dialogs.first.inner_text().split())
        _say(report, f"dialog in the way, accepted: {text[:200]}")
        dialogs.first.locator(".jp-Dialog-button.jp-mod-accept").first.click(timeout=10_000)
        page.wait_for_timeout(500)  # type: ignore[attr-defined]


def _expected_metrics(page: object) -> dict[str, float]:
    text = page.locator(".jp-OutputArea-output", has_text="EXPECTED=").first.inner_text()  # type: ignore[attr-defined]
    return json.loads(text.split("EXPECTED=", 1)[1].strip().splitlines()[0])


def _assert_kernels_metrics(page: object) -> None:
    """The panel's metrics table holds Wine's metrics with the values the kernel printed."""
    rows = page.locator(".kale-panel table.kale-metrics tbody tr").all()  # type: ignore[attr-defined]
    shown = {row.locator(".kale-metric-name").inner_text():
             float(row.locator(".kale-metric-value").inner_text()) for row in rows}
    expected = _expected_metrics(page)
    assert set(shown) == set(WINE_METRICS)
    for name in WINE_METRICS:
        assert shown[name] == pytest.approx(expected[name], rel=1e-5), name


def _press_run_and_wait(page: object, label: str, report: list) -> float:
    """Press Run; screenshot while a step runs and when done; return seconds to all green."""
    panel = page.locator(".kale-panel")  # type: ignore[attr-defined]
    started = time.time()
    page.click(".kale-panel .kale-run-button")  # type: ignore[attr-defined]
    page.wait_for_selector(".kale-panel g.kale-step[data-state=RUNNING]", timeout=120_000)  # type: ignore[attr-defined]
    _shot(panel, f"{label}-running", report)
    page.wait_for_function(  # type: ignore[attr-defined]
        "n => document.querySelectorAll('.kale-panel g.kale-step[data-state=SUCCEEDED]').length === n",
        arg=WINE_STEPS, timeout=180_000, polling=100)
    seconds = time.time() - started
    _say(report, f"{label}: {seconds:.1f} s from pressing Run to the last step turning green")
    page.wait_for_selector(".kale-panel .kale-status[data-state=SUCCEEDED]", timeout=30_000)  # type: ignore[attr-defined]
    return seconds


def test_local_run_in_notebook7(jupyter, browser, browser_report) -> None:
    base, root = jupyter
    page = _open_and_run_all(browser, f"{base}/notebooks/{_example(root, 'wine_local')}?token={TOKEN}",
                             browser_report)
    try:
        panel = page.locator(".kale-panel")
        assert panel.locator("g.kale-step").count() == WINE_STEPS
        assert panel.locator("g.kale-step[data-state='']").count() == WINE_STEPS  # not started
        _shot(panel, "local-before", browser_report)
        _press_run_and_wait(page, "local", browser_report)
        page.wait_for_selector(".kale-panel table.kale-metrics", timeout=30_000)
        panel.locator(".kale-step-choice select").select_option("evaluate")
        detail = panel.locator(".kale-step-detail[data-step=evaluate]")
        detail.wait_for(timeout=30_000)
        assert "X_test (from split_data)" in detail.inner_text()
        _shot(panel, "local-done", browser_report)
        _assert_kernels_metrics(page)
        assert panel.locator(".kale-error").count() == 0
    finally:
        page.close()


def test_remote_run_on_the_kfp_test_server(jupyter, browser, kfp_server,  # noqa: F811
                                           browser_report) -> None:
    base, root = jupyter
    page = _open_and_run_all(browser, f"{base}/notebooks/{_example(root, 'wine_remote')}?token={TOKEN}",
                             browser_report)
    try:
        panel = page.locator(".kale-panel")
        panel.locator(".kale-target select").select_option(label="KFP server")
        panel.locator(".kale-host input").fill(kfp_server.url)
        _shot(panel, "remote-before", browser_report)
        _press_run_and_wait(page, "remote", browser_report)
        link = panel.locator("a.kale-run-link")
        assert link.get_attribute("href").startswith(f"{kfp_server.url}/#/runs/details/")
        # the metric values come from the server's ML Metadata, equal to the kernel's
        page.wait_for_selector(".kale-panel table.kale-metrics", timeout=30_000)
        _assert_kernels_metrics(page)
        assert panel.locator(".kale-metrics-note").count() == 0
        _shot(panel, "remote-done", browser_report)
        assert SECRET_TOKEN not in page.content()
        assert panel.locator(".kale-error").count() == 0
    finally:
        page.close()


#: A small notebook for what needs no run: two steps, then the panel.
SMALL_CELLS = ("%load_ext kale_magics", "%%kale step load\nrows = [1, 2, 3]",
               "%%kale step total\nsize = len(rows)", "%kale panel")


def test_a_click_on_a_dag_node_chooses_the_step(jupyter, browser, browser_report) -> None:
    """The DAG is SVG in an ipywidgets HTML widget: a click on a node sets the step chooser
    (a Dropdown) through its <select>, and the kernel shows that step's details."""
    base, root = jupyter
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in SMALL_CELLS]
    nbformat.write(nb, root / "click.ipynb")
    page = _open_and_run_all(browser, f"{base}/notebooks/click.ipynb?token={TOKEN}", browser_report)
    try:
        panel = page.locator(".kale-panel")
        panel.locator("g.kale-step[data-step=total]").click()
        panel.locator(".kale-step-detail[data-step=total]").wait_for(timeout=30_000)
        assert panel.locator(".kale-step-choice select").input_value() == "total"
        assert "rows (from load)" in panel.locator(".kale-step-detail").inner_text()
        panel.locator("g.kale-step[data-step=load] text").first.click()  # on the node's label
        panel.locator(".kale-step-detail[data-step=load]").wait_for(timeout=30_000)
        _shot(panel, "dag-click", browser_report)
    finally:
        page.close()
