"""The deploy panel's logic through its buttons (``Button.click()``), without a browser:
real local runs (kfp.local in the panel's child process) and runs on the KFP API test server."""

from __future__ import annotations

import re
import time
from pathlib import Path

import ipywidgets as w
import pytest
from IPython.utils.capture import capture_output

from kale_widgets import DeployPanel
from kale_widgets.form import AUTH_TOKEN, REMOTE
from kale_widgets.run_control import RunRequest
from tests.conftest import write_notebook
from tests.kfp_server.fixtures import SECRET_TOKEN, kfp_server, token_env  # noqa: F401
from tests.test_magics import kale, run, shell  # noqa: F401

pytestmark = pytest.mark.integration

FLOW = ("%%kale parameters\nN = 3\nSCALE = 0.5\nFLAG = True\nNAMES = ['a', 'b']",
        "%%kale imports\nimport time",
        "%%kale step make\nitems = list(range(N))",
        "%%kale step total\nsize = sum(items) * SCALE + len(NAMES) + FLAG",
        "%%kale metrics\nsize")




@pytest.fixture
def panels():
    made: list[DeployPanel] = []
    yield made
    for panel in made:
        panel.close()


def make_panel(panels, path: Path, shell, **kwargs) -> DeployPanel:  # noqa: F811
    panel = DeployPanel(str(path), shell=shell, interval_s=0.3, **kwargs)
    panels.append(panel)
    return panel


def states(panel: DeployPanel) -> dict[str, str]:
    return {name: step.state for name, step in panel.control.status.steps.items()}


def test_form_is_filled_from_the_notebook_and_typed(shell, panels, tmp_path) -> None:  # noqa: F811
    path = write_notebook(tmp_path / "flow.ipynb", (
        "%kale pipeline --name my-flow --experiment exp1 --image python:3.11-slim --no-cache "
        "--host http://kfp.example:8888", *FLOW))
    panel = make_panel(panels, path, shell, warm_worker=False)
    form = panel.form
    assert (form.name.value, form.experiment.value, form.image.value) == ("my-flow", "exp1",
                                                                          "python:3.11-slim")
    assert form.caching.value is False and form.host.value == "http://kfp.example:8888"
    kinds = {name: type(widget) for name, (_, widget) in form.parameters.items()}
    assert kinds == {"N": w.IntText, "SCALE": w.Text, "FLAG": w.Checkbox, "NAMES": w.Text}
    assert form.parameters["NAMES"][1].value == '["a", "b"]'
    assert form.options() == "--name my-flow --experiment exp1 --image python:3.11-slim --no-cache"
    assert form.remote_box.layout.display == "none"
    form.target.value = REMOTE
    assert form.remote_box.layout.display == ""
    assert form.secret not in form.remote_box.children
    form.auth.value = AUTH_TOKEN
    form.secret.value = "typed-token"
    target = form.chosen_target()
    assert (target.remote, target.host, target.token, target.cookies) == (
        True, None, "typed-token", None)  # the notebook's host: no ambient credentials
    form.host.value = "http://typed.example:8888"
    assert form.chosen_target().host == "http://typed.example:8888"


def test_run_locally_shows_every_step_and_metrics(shell, panels, tmp_path) -> None:  # noqa: F811
    path = write_notebook(tmp_path / "flow.ipynb", FLOW)
    panel = make_panel(panels, path, shell)
    assert panel.cancel_button.disabled and not panel.run_button.disabled
    assert panel.cancel_button.button_style == ""  # grey while there is nothing to cancel
    assert panel.form.parameters["SCALE"][1].value == "0.5"
    panel.form.parameters["SCALE"][1].value = "1.0"  # a float field keeps what is written
    panel.form.parameters["N"][1].value = 5
    panel.form.parameters["NAMES"][1].value = '["a", "b", "c"]'
    seen: list[tuple[str, str]] = []
    panel.dag_html.observe(lambda change: seen.extend(
        (s, st) for s, st in _node_states(change["new"])), names="value")
    panel.run_button.click()
    assert panel.control.active and panel.run_button.disabled and panel.form.name.disabled
    status = panel.control.wait(120)
    panel.refresh()
    assert status.state == "SUCCEEDED", panel.message.value
    assert states(panel) == {"make": "SUCCEEDED", "total": "SUCCEEDED"}
    assert status.metrics == {"size": 10 * 1.0 + 3 + 1}
    assert re.search(r"<td class='kale-metric-value' style='[^']*padding[^']*'>14</td>",
                     panel.metrics_html.value)
    assert ("make", "RUNNING") in seen and ("total", "SUCCEEDED") in seen  # updates while running
    assert not panel.run_button.disabled and panel.cancel_button.disabled
    assert "kale-error" not in panel.message.value
    assert panel.control.all_succeeded_at is not None
    assert "previous run" not in panel.status_html.value + panel.dag_html.value

    # a bad field value, then a compile error: the new error is new, the last run stays the last
    done = dict(_node_states(panel.dag_html.value))
    panel.form.parameters["NAMES"][1].value = "[1, 2"
    panel.run_button.click()
    assert "NAMES" in panel.message.value and "kale-error" in panel.message.value
    assert dict(_node_states(panel.dag_html.value)) == done == {"make": "SUCCEEDED",
                                                                "total": "SUCCEEDED"}
    assert "previous run" in panel.status_html.value and "SUCCEEDED" in panel.status_html.value
    assert "kale-dag-caption" in panel.dag_html.value and "not started" not in panel.dag_html.value
    write_notebook(path, (*FLOW[:3], "%%kale step total\nsize = sum(itemz)", FLOW[4]))
    panel.form.parameters["NAMES"][1].value = '["a"]'
    panel.run_button.click()
    assert "itemz" in panel.message.value and "kale-error" in panel.message.value
    assert dict(_node_states(panel.dag_html.value)) == done
    assert "data-previous='true'" in panel.status_html.value


def _node_states(svg: str) -> list[tuple[str, str]]:
    import re

    return re.findall(r'data-step="([^"]+)" data-state="([^"]*)"', svg)


def slow_notebook(tmp_path, seconds: int):
    """A notebook whose first step sleeps ``seconds``, then a step after it."""
    return write_notebook(tmp_path / "slow.ipynb", (
        "%%kale imports\nimport time", f"%%kale step wait\ntime.sleep({seconds})\ndone = 1",
        "%%kale step after\nx = done"))


def test_second_run_is_refused_while_one_is_active(shell, panels, tmp_path) -> None:  # noqa: F811
    path = slow_notebook(tmp_path, seconds=4)
    panel = make_panel(panels, path, shell)
    panel.run_button.click()
    assert panel.run_button.disabled
    request = RunRequest(panel.form.options(), panel.form.arguments(), panel.form.chosen_target())
    assert panel.control.start_run(request) is False  # nothing started
    panel.run()  # the button is disabled; the handler refuses too
    assert "already active" in panel.message.value
    status = panel.control.wait(60)
    panel.refresh()
    assert status.state == "SUCCEEDED" and "already active" not in panel.message.value


def test_cancel_a_local_run(shell, panels, tmp_path) -> None:  # noqa: F811
    path = slow_notebook(tmp_path, seconds=60)
    panel = make_panel(panels, path, shell)
    panel.run_button.click()
    deadline = time.time() + 60
    while time.time() < deadline and states(panel)["wait"] != "RUNNING":
        time.sleep(0.1)
    panel.refresh()
    assert not panel.cancel_button.disabled and panel.cancel_button.button_style == "danger"
    started = time.time()
    panel.cancel_button.click()
    status = panel.control.wait(30)
    assert time.time() - started < 10
    assert status.state == "CANCELED"
    assert states(panel) == {"wait": "CANCELED", "after": "SKIPPED"}
    panel.refresh()
    assert "canceled" in panel.dag_html.value


def test_failed_step_shows_error_and_log_tail(shell, panels, tmp_path) -> None:  # noqa: F811
    path = write_notebook(tmp_path / "bad.ipynb", (
        "%%kale step make\nitems = [1, 2]", "%%kale step divide\nprint('about to divide')\nr = 1 / 0"))
    panel = make_panel(panels, path, shell)
    panel.step_choice.value = "make"  # chosen before the run: the failure takes over once
    panel.run_button.click()
    status = panel.control.wait(120)
    panel.refresh()
    assert status.state == "FAILED"
    assert "kale-error" in panel.message.value and "divide" in panel.message.value
    assert "Traceback" not in panel.message.value
    assert panel.step_choice.value == "divide"  # the failed step is selected
    assert "ZeroDivisionError" in panel.detail_html.value
    assert "about to divide" in panel.detail_html.value
    panel.step_choice.value = "make"  # then the user's choice stays
    panel.refresh()
    assert panel.step_choice.value == "make" and "data-step='make'" in panel.detail_html.value


def test_check_and_compile_buttons(shell, panels, tmp_path) -> None:  # noqa: F811
    path = write_notebook(tmp_path / "flow.ipynb", FLOW)
    for cell in FLOW:
        run(shell, cell)
    panel = make_panel(panels, path, shell, warm_worker=False)
    panel.check_button.click()
    assert "data-ok='true'" in panel.message.value and "items" in panel.message.value
    panel.form.name.value = "renamed-flow"
    panel.compile_button.click()
    compiled = panel.control.compiled
    assert compiled.plan.name == "renamed-flow"
    assert Path(compiled.dsl_path).is_file() and Path(compiled.yaml_path).is_file()
    assert compiled.yaml_path in panel.message.value
    panel.form.name.value = "Not Valid!"
    panel.compile_button.click()
    assert "kale-error" in panel.message.value and "invalid pipeline name" in panel.message.value


def test_bad_annotation_is_one_red_message(shell, panels, tmp_path) -> None:  # noqa: F811
    path = write_notebook(tmp_path / "broken.ipynb", ("%%kale step\nx = 1",))
    panel = make_panel(panels, path, shell, warm_worker=False)
    assert "kale-error" in panel.message.value and "Traceback" not in panel.message.value
    panel.run_button.click()
    assert panel.control.status is None


def test_bad_parameter_value_names_the_parameter(shell, panels, tmp_path) -> None:  # noqa: F811
    path = write_notebook(tmp_path / "flow.ipynb", FLOW)
    panel = make_panel(panels, path, shell, warm_worker=False)
    panel.form.parameters["NAMES"][1].value = "[1, 2"
    panel.run_button.click()
    assert "NAMES" in panel.message.value and "kale-error" in panel.message.value
    assert "for example [1, 2]" in panel.message.value  # what to type in the field
    assert "--param" not in panel.message.value and "Error:" not in panel.message.value
    assert not panel.control.active and not panel.run_button.disabled


def test_magic_shows_the_same_panel_again(shell, tmp_path) -> None:  # noqa: F811
    path = write_notebook(tmp_path / "flow.ipynb", FLOW)
    with capture_output() as first:
        shell.run_line_magic("kale", f"panel --notebook {path}")
    with capture_output() as second:
        shell.run_line_magic("kale", f"panel --notebook {path}")
    panel = shell.magics_manager.registry["KaleMagics"].panels[str(path)]
    model = panel.model_id
    assert all(f"'model_id': '{model}'" in str(c.outputs[0].data) for c in (first, second))
    panel.close()


def test_run_on_the_kfp_test_server(shell, panels, kfp_server, token_env, tmp_path) -> None:  # noqa: F811
    path = write_notebook(tmp_path / "flow.ipynb", FLOW)
    panel = make_panel(panels, path, shell, warm_worker=False)
    panel.form.target.value = REMOTE
    panel.form.host.value = kfp_server.url
    panel.form.parameters["N"][1].value = 4
    panel.run_button.click()
    status = panel.control.wait(120)
    panel.refresh()
    assert status.state == "SUCCEEDED", panel.message.value
    assert states(panel) == {"make": "SUCCEEDED", "total": "SUCCEEDED"}
    assert status.url.startswith(f"{kfp_server.url}/#/runs/details/")
    assert f"href='{status.url}'" in panel.status_html.value
    assert status.metrics == {"size": float(sum(range(4))) * 0.5 + 2 + True}  # from ML Metadata
    assert re.search(r"kale-metric-value'[^>]*>6</td>", panel.metrics_html.value)
    shown = panel.status_html.value + panel.message.value + panel.dag_html.value
    assert SECRET_TOKEN not in shown


def test_remote_errors_are_one_red_line(shell, panels, kfp_server, token_env, tmp_path) -> None:  # noqa: F811
    path = write_notebook(tmp_path / "flow.ipynb", FLOW)
    panel = make_panel(panels, path, shell, warm_worker=False)
    panel.form.target.value = REMOTE
    panel.form.host.value = "http://127.0.0.1:9"  # nothing listens on the discard port
    panel.run_button.click()
    panel.control.wait(30)
    panel.refresh()
    assert "cannot reach KFP at http://127.0.0.1:9" in panel.message.value
    panel.form.host.value = kfp_server.url
    panel.form.auth.value = AUTH_TOKEN
    panel.form.secret.value = "wrong-token-123"
    panel.run_button.click()
    panel.control.wait(30)
    panel.refresh()
    assert "kale-error" in panel.message.value and "KfpAuthError" not in panel.message.value
    assert "credentials" in panel.message.value or "401" in panel.message.value
    assert "wrong-token-123" not in panel.message.value


def test_cancel_a_remote_run(shell, panels, kfp_server, token_env, tmp_path) -> None:  # noqa: F811
    path = slow_notebook(tmp_path, seconds=60)
    panel = make_panel(panels, path, shell, warm_worker=False)
    panel.form.target.value = REMOTE
    panel.form.host.value = kfp_server.url
    panel.run_button.click()
    deadline = time.time() + 60
    while time.time() < deadline and not (panel.control.status and
                                          states(panel)["wait"] == "RUNNING"):
        time.sleep(0.1)
    panel.refresh()
    assert panel.control.can_cancel and not panel.cancel_button.disabled
    panel.cancel_button.click()
    status = panel.control.wait(60)
    assert status.state == "CANCELED"


SIBLINGS = ("%%kale step first\nx = 1", "%%kale step middle\ny = 1 / 0",
            "%%kale step last\nz = 3", "%%kale step after_middle\nw = y + 1")
SIBLING_STATES = {"first": "SUCCEEDED", "middle": "FAILED", "last": "SUCCEEDED",
                  "after_middle": "SKIPPED"}


def test_a_failed_sibling_stops_only_its_dependents_in_every_front_end(shell, panels,  # noqa: F811
                                                                        tmp_path) -> None:
    """Three independent steps, the middle one raising: the other two run (kfp.local alone
    stops at the first failure), the step reading the failed one's output is skipped with the
    reason, and the CLI, ``%kale run`` and the panel show the same states."""
    from IPython.core.error import UsageError

    from tests.test_cli import cli

    path = write_notebook(tmp_path / "siblings.ipynb", SIBLINGS)
    result = cli("run", str(path), "--no-cache")
    assert result.returncode == 1
    lines = [line for line in result.stdout.splitlines() if "  " in line and "|" not in line]
    finals = {line.split()[0]: line.split()[1] for line in lines if "RUNNING" not in line}
    assert finals == SIBLING_STATES
    assert [line.split()[0] for line in lines if "RUNNING" in line] == ["first", "middle", "last"]
    assert "after_middle  SKIPPED  upstream step 'middle' failed" in result.stdout
    assert "step after_middle skipped: upstream step 'middle' failed" in result.stdout

    with capture_output() as captured, pytest.raises(UsageError, match="step 'middle' failed"):
        shell.run_line_magic("kale", f"run --notebook {path} --no-cache")
    shown = [o.data for o in captured.outputs if "text/html" in o.data][-1]
    assert dict(_node_states(shown["text/html"])) == SIBLING_STATES
    assert "after_middle  SKIPPED  upstream step 'middle' failed" in shown["text/plain"]

    panel = make_panel(panels, path, shell)
    panel.form.caching.value = False
    panel.run_button.click()
    status = panel.control.wait(120)
    panel.refresh()
    assert status.state == "FAILED"
    assert states(panel) == SIBLING_STATES
    assert dict(_node_states(panel.dag_html.value)) == SIBLING_STATES


def test_sweep_section_runs_trials_and_marks_the_best(shell, panels, tmp_path) -> None:  # noqa: F811
    from tests.test_sweep import TINY

    path = write_notebook(tmp_path / "tiny.ipynb", TINY)
    panel = make_panel(panels, path, shell, warm_worker=False)
    section = panel.sweep
    assert list(section.metric.options) == ["score"] and section.stop_button.disabled
    section.specs.value = "X=3,1"
    section.goal.value = "minimize"
    section.start_button.click()
    assert section.start_button.disabled and panel.run_button.disabled  # one thing at a time
    result = section.wait(120)
    assert [t.state for t in result.trials] == ["SUCCEEDED", "SUCCEEDED"]
    assert result.best is result.trials[1]  # X=1: score 12, the smaller
    assert "data-trial='2' data-state='SUCCEEDED' data-best='true'" in section.table.value
    frame = shell.user_ns.pop("_kale_sweep")
    assert list(frame["score"]) == [32.0, 12.0]
    panel.refresh()
    assert not section.start_button.disabled and not panel.run_button.disabled


def test_sweep_section_bad_values_are_one_red_line(shell, panels, tmp_path) -> None:  # noqa: F811
    from tests.test_sweep import TINY

    path = write_notebook(tmp_path / "tiny.ipynb", TINY)
    panel = make_panel(panels, path, shell, warm_worker=False)
    panel.sweep.specs.value = "X=1,two"
    panel.sweep.start_button.click()
    assert "parameter &#x27;X&#x27; is int, but &#x27;two&#x27;" in panel.sweep.table.value
    assert "kale-error" in panel.sweep.table.value and panel.sweep.result is None
    assert not panel.sweep.active and not (tmp_path / ".kale" / "sweeps").exists()
