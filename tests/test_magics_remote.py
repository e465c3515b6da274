"""%kale run --host, %kale status and %kale cancel against the KFP API test server (strict mode)."""

from __future__ import annotations

import re

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

from tests.conftest import write_notebook
from tests.kfp_server.fixtures import SECRET_TOKEN, kfp_server, token_env  # noqa: F401
from tests.test_magics import kale, shell  # noqa: F401

pytestmark = pytest.mark.integration




def test_run_on_the_server_then_status(shell, kfp_server, token_env, tmp_path) -> None:  # noqa: F811
    path = write_notebook(tmp_path / "remote.ipynb", (
        "%%kale parameters\nN = 2", "%%kale step make\nitems = list(range(N))",
        "%%kale step total\nsize = sum(items)", "%%kale metrics\nsize"))
    with capture_output() as captured:
        shell.run_line_magic("kale", f"run --notebook {path} --host {kfp_server.url} "
                                     "--param N=4 --interval 0.3")
    assert f"{kfp_server.url}/#/runs/details/" in captured.stdout
    run = kale(shell).last_run
    assert run.state == "SUCCEEDED" and run.run_id
    assert [s.state for s in run.steps.values()] == ["SUCCEEDED", "SUCCEEDED"]
    assert run.metrics == {"size": float(sum(range(4)))} and run.metrics_note == ""
    assert "\n  size = 6\n" in captured.stdout  # the summary, from ML Metadata
    html = captured.outputs[-1].data["text/html"]
    assert "<svg" in html and re.search(r">size</td><td [^>]*>6</td>", html)
    with capture_output() as captured:
        shell.run_line_magic("kale", "status")
    lines = captured.stdout.splitlines()
    assert lines[0].startswith(f"run {run.run_id}") and ": SUCCEEDED" in lines[0]
    assert [line.split()[:2] for line in lines[2:]] == [["make", "SUCCEEDED"], ["total", "SUCCEEDED"],
                                                       ["metrics:"], ["size", "="]]
    assert lines[-1] == "  size = 6" and kale(shell).last_run.metrics == run.metrics
    assert SECRET_TOKEN not in captured.stdout


def test_cancel_a_running_remote_run(shell, kfp_server, token_env, tmp_path) -> None:  # noqa: F811
    from kale_magics import api

    path = write_notebook(tmp_path / "slow.ipynb", (
        "%%kale imports\nimport time", "%%kale step wait\ntime.sleep(60)\ndone = True",
        "%%kale step after\nprint(done)"))
    session = api.connect(kfp_server.url)
    submission = api.submit(path, session)
    kfp_server.wait_for_task(submission.run_id, "RUNNING", task="wait")
    with capture_output() as captured:
        shell.run_line_magic("kale", f"cancel {submission.run_id} --host {kfp_server.url}")
    assert f"run {submission.run_id}: CANCELED" in captured.stdout
    assert kfp_server.run_json(submission.run_id)["state"] == "FAILED"  # KFP never says CANCELED
    with capture_output() as captured:
        shell.run_line_magic("kale", f"status {submission.run_id} --host {kfp_server.url}")
    lines = captured.stdout.splitlines()
    assert ": CANCELED" in lines[0]
    assert [line.split()[:2] for line in lines[2:]] == [["wait", "CANCELED"], ["after", "SKIPPED"]]
    with pytest.raises(UsageError, match="no remote run to cancel"):
        shell.run_line_magic("reload_ext", "kale_magics")  # a fresh session: no last run
        shell.run_line_magic("kale", "cancel")
