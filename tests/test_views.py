"""The views (text and HTML of plans, runs and checks) are pure functions: every step state, the
status line, metrics, details, errors, and one duration format everywhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kale_magics import api
from kale_magics.analysis.preflight import CheckReport
from kale_magics.runner.status import RunStatus, StepStatus
from kale_magics.views import rich, text
from tests.conftest import write_notebook

NOW = 1_000_000.0


@pytest.fixture
def plan(tmp_path: Path):
    path = write_notebook(tmp_path / "flow.ipynb", (
        "%%kale parameters\nN = 3", "%%kale step make\nitems = list(range(N))",
        "%%kale step total\nsize = sum(items)", "%%kale step other --after make\nz = 1",
        "%%kale metrics\nsize"))
    return api.read_plan(path)


def status_of(plan, **states: StepStatus) -> RunStatus:
    steps = {s.name: states.get(s.name, StepStatus(name=s.name)) for s in plan.steps}
    return RunStatus(pipeline=plan.name, steps=steps, start=NOW - 12)


def node_states(svg: str) -> dict[str, tuple[str, str]]:
    """``step -> (data-state, second line)`` of each DAG node."""
    nodes = re.findall(r'data-step="([^"]+)" data-state="([^"]*)">.*?</text><text[^>]*>([^<]*)</text>',
                       svg)
    return {name: (state, note) for name, state, note in nodes}


@pytest.mark.parametrize("step, note", [
    (None, "not started"),
    (StepStatus("s"), "pending"),
    (StepStatus("s", state="RUNNING", start=NOW - 3.2), "running 3.2 s"),
    (StepStatus("s", state="RUNNING", start=NOW - 42), "running 42 s"),
    (StepStatus("s", state="SUCCEEDED", duration_s=1.234), "succeeded 1.2 s"),
    (StepStatus("s", state="SUCCEEDED", duration_s=125), "succeeded 2 min 5 s"),
    (StepStatus("s", state="FAILED", duration_s=0.5), "failed 0.5 s"),
    (StepStatus("s", state="FAILED"), "failed"),
    (StepStatus("s", state="SKIPPED"), "skipped"),
    (StepStatus("s", state="CANCELED", start=NOW - 9, end=NOW - 4), "canceled 5.0 s"),
    (StepStatus("s", state="CANCELING"), "canceling"),
])
def test_step_note_for_every_state(step, note) -> None:
    assert text.step_note(step, NOW) == note


def test_cached_step_says_so() -> None:
    step = StepStatus("s", state="SUCCEEDED", duration_s=0.1)
    step.cached = True  # the status model marks steps whose outputs came from the cache
    assert text.step_note(step, NOW) == "succeeded (cached)"


def test_dag_before_a_run_shows_every_step_not_started(plan) -> None:
    nodes = node_states(rich.dag_html(plan, None, NOW))
    assert nodes == {name: ("", "not started") for name in ("make", "total", "other")}


def test_dag_colours_and_labels_each_state(plan) -> None:
    status = status_of(plan, make=StepStatus("make", state="SUCCEEDED", duration_s=2.0),
                       total=StepStatus("total", state="RUNNING", start=NOW - 4),
                       other=StepStatus("other", state="FAILED", duration_s=0.3))
    svg = rich.dag_html(plan, status, NOW)
    assert node_states(svg) == {"make": ("SUCCEEDED", "succeeded 2.0 s"),
                                "total": ("RUNNING", "running 4.0 s"),
                                "other": ("FAILED", "failed 0.3 s")}
    assert 'fill="#e8f5e9"' in svg and 'fill="#e3f2fd"' in svg and 'fill="#ffebee"' in svg


def test_status_line_before_during_and_after(plan) -> None:
    assert "press Run" in rich.status_line_html(None, NOW)
    assert ">compiling<" in rich.status_line_html(None, NOW, "compiling")
    status = status_of(plan)
    status.state = "RUNNING"
    line = rich.status_line_html(status, NOW, started=NOW - 20)
    assert "data-state='RUNNING'" in line and "<span class='kale-elapsed'>20 s</span>" in line
    assert "kale-run-link" not in line
    status.state, status.end = "SUCCEEDED", NOW - 2
    status.run_id, status.url = "r-1", "http://kfp:8888/#/runs/details/r-1"
    line = rich.status_line_html(status, NOW + 100, started=NOW - 20)
    assert "<span class='kale-elapsed'>18 s</span>" in line  # stops at the end
    assert "href='http://kfp:8888/#/runs/details/r-1'" in line and "run r-1 in the KFP UI" in line


def test_the_previous_run_is_labelled_as_such(plan) -> None:
    status = status_of(plan, make=StepStatus("make", state="FAILED", duration_s=1.8))
    status.state, status.start, status.end = "FAILED", NOW - 100, NOW - 98.2
    line = rich.status_line_html(status, NOW, started=NOW - 1, previous=True)
    assert "<span class='kale-previous'>previous run</span>" in line
    assert "<span class='kale-elapsed'>1.8 s</span>" in line  # its own time, not the new press's
    dag = rich.dag_html(plan, status, NOW, previous=True)
    assert "previous run" in dag and node_states(dag)["make"] == ("FAILED", "failed 1.8 s")
    assert "previous run" not in rich.dag_html(plan, status, NOW)
    assert "previous run" not in rich.status_line_html(status, NOW)


def test_step_line_lists_what_travels_in_html_that_never_breaks_a_name() -> None:
    from kale_magics.analysis.live import LiveValue
    from kale_magics.session.notebook_session import StepRun

    frame = LiveValue("DataFrame", 2048, "891x12", "Dataset")
    step = StepRun("split_data", (), inputs={"raw_frame": "load_data"},
                   outputs=("X_train", "scratch"), live={"raw_frame": frame, "X_train": frame},
                   readers={"X_train": ("train", "evaluate")})
    line = rich.step_run_html(step)
    chips = re.findall(r"<span class='kale-(input|output)' data-name='([^']+)' "
                       r"style='white-space:nowrap", line)
    assert chips == [("input", "raw_frame"), ("output", "X_train")]  # not `scratch`: no reader
    assert "DataFrame 891x12" in line and "\u2190 load_data" in line
    assert "\u2192 train, evaluate" in line and "scratch" not in line
    assert text.step_run_text(step) == ("step split_data  <- raw_frame: DataFrame 891x12, 2.0 KiB "
                                        "(load_data)  -> X_train: DataFrame 891x12, 2.0 KiB "
                                        "(to train, evaluate)")
    alone = rich.step_run_html(StepRun("a", (), outputs=("x",)))
    assert "nothing passed" in alone and "<b>" not in alone and "data-name" not in alone


def test_metrics_table_and_remote_note(plan) -> None:
    status = status_of(plan, total=StepStatus("total", state="SUCCEEDED",
                                              metrics={"size": 3.0, "acc": 0.98148148}))
    table = rich.metrics_html(status)
    assert re.findall(r"kale-metric-name'[^>]*>([^<]+)</td><td class='kale-metric-value'[^>]*>"
                      r"([^<]+)<", table) == [("size", "3"), ("acc", "0.981481")]
    cells = re.findall(r"<t[dh] [^>]*style='([^']*)'", table)
    assert cells and all("padding:1px 12px 1px 4px" in c and "line-height:1.35" in c for c in cells)
    # a cached step's metrics come back sorted: the notebook's order is kept
    status.metric_order = ["size", "acc"]
    status.steps["total"].metrics = {"acc": 0.98148148, "size": 3.0}
    assert list(status.metrics) == ["size", "acc"]
    remote = status_of(plan)
    remote.metrics_note = "metric values are not available; see them in the KFP UI: http://h/#/runs/x"
    assert rich.metrics_html(remote) == ""  # not before the run ends
    remote.state = "SUCCEEDED"
    assert "<a href='http://h/#/runs/x'" in rich.metrics_html(remote)
    assert rich.metrics_html(None) == ""


def test_step_detail_of_a_failed_step_has_error_cell_and_log_tail(plan) -> None:
    failed = StepStatus("total", state="FAILED", error="ZeroDivisionError: division by zero",
                        cell="cell 3", line=2, log=[f"line {i}" for i in range(30)] + ["<boom>"])
    detail = rich.step_detail_html(plan.step("total"), failed, NOW)
    assert "items (from make)" in detail and "size" in detail
    assert "ZeroDivisionError: division by zero (cell 3, line 2)" in detail
    assert "kale-log-tail" in detail and "&lt;boom&gt;" in detail
    assert "line 15" not in detail.split("kale-log-tail")[1]  # only the tail
    ok = rich.step_detail_html(plan.step("make"), StepStatus(
        "make", state="SUCCEEDED", duration_s=1, artifacts={"items": {
            "kale_format": "pickle", "python_type": "list", "bytes": 2048}}), NOW)
    assert "items: list, pickle, 2.0 KiB" in ok and "kale-step-error" not in ok
    assert "not started" in rich.step_detail_html(plan.step("other"), None, NOW)


def test_error_message_is_escaped_and_red() -> None:
    html_text = rich.error_html("AnnotationError: cell 2: bad <option>; use --after")
    assert "kale-error" in html_text and "#c62828" in html_text
    assert "&lt;option&gt;" in html_text and "Traceback" not in html_text


def test_compile_and_check_views(plan, tmp_path) -> None:
    compiled = api.compile_notebook(tmp_path / "flow.ipynb", str(tmp_path / "out"))
    view = rich.compile_html(compiled)
    assert compiled.dsl_path in view and compiled.yaml_path in view
    ok = rich.check_html(CheckReport(variables=(), warnings=("save the notebook",)))
    assert "data-ok='true'" in ok and "every passed variable serialises" in ok
    assert "save the notebook" in ok


def test_one_duration_format_in_every_view(plan) -> None:
    """A step that took 125 s reads "2 min 5 s" in the CLI's lines, the summary, the status
    table, the DAG of %kale run and the panel's DAG and details."""
    step = StepStatus("make", state="SUCCEEDED", duration_s=125, start=NOW - 130, end=NOW - 5)
    status = status_of(plan, make=step)
    status.state, status.end = "SUCCEEDED", NOW
    assert text.step_line(step) == "make  SUCCEEDED  2 min 5 s"
    assert text.run_summary(status).startswith("pipeline flow SUCCEEDED in 12 s")
    assert "2 min 5 s" in text.status_text(status).splitlines()[2]
    for view in (rich.run_html(status, plan, NOW), rich.dag_html(plan, status, NOW),
                 rich.step_detail_html(plan.step("make"), step, NOW)):
        assert "succeeded 2 min 5 s" in view
    assert [text.duration_text(s) for s in (0.44, 9.96, 12.4, 59.4, 60, 3599)] == [
        "0.4 s", "10.0 s", "12 s", "59 s", "1 min 0 s", "59 min 59 s"]


def test_counts_have_the_right_number(plan, tmp_path) -> None:
    assert text.plan_text(plan).startswith("pipeline flow (3 steps, 1 parameter)")
    one = api.read_plan(write_notebook(tmp_path / "one.ipynb", ("%%kale step a\nx = 1",)))
    assert text.plan_text(one).startswith("pipeline one (1 step, 0 parameters)")
    assert "1 step, 0 parameters" in rich.plan_html(one, {})


def test_a_click_on_a_dag_node_chooses_the_step_in_the_panel(plan) -> None:
    plain = rich.dag_html(plan, None, NOW)
    assert "onclick" not in plain
    view = rich.dag_html(plan, None, NOW, choose=True)
    handler = re.search(r'onclick="([^"]+)"', view).group(1)
    assert ".kale-step-choice select" in handler and "dispatchEvent(new Event('change'" in handler
    assert "closest('[data-step]')" in handler and 'data-step="make"' in view
    assert "cursor:pointer" in view and "stroke-width:2.5" not in view
    assert "g.kale-step[data-step='total'] rect{stroke:#1565c0" in rich.dag_html(
        plan, None, NOW, choose=True, chosen="total")


def test_the_plan_gives_a_run_its_metric_order(tmp_path) -> None:
    from kale_magics.runner.local import plan_status

    plan = api.read_plan(write_notebook(tmp_path / "m.ipynb", (
        "%%kale step a\nzeta = 1\nalpha = 2", "%%kale metrics\nzeta\nalpha")))
    assert plan_status(plan, "", None, []).metric_order == ["zeta", "alpha"]
