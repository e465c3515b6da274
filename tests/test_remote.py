"""Remote runs end to end: the real ``kfp.Client`` against the KFP API test server in strict mode.

The server (``tests/kfp_server``) speaks KFP's v2beta1 REST API as KFP 2.17's API server
does (Argo node entries in random order, no error texts, CANCELING then FAILED after
terminate, answers checked against the API spec), requires a bearer token and executes
every run for real with kfp.local in a worker process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest

from kale_magics import api, cli
from tests.conftest import EXAMPLES
from tests.equivalence import execute, printed
from tests.kfp_server.fixtures import SECRET_TOKEN, kfp_server, token_env  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration

QUICK = ("%kale pipeline --name quick --experiment quick-exp",
         "%%kale parameters\nN = 3",
         "%%kale step make\nitems = list(range(N))",
         "%%kale step total\nresult = sum(items)\nprint('total', result)",
         "%%kale metrics\nresult")

SLOW = ("%kale pipeline --name slow",
        "%%kale imports\nimport time",
        "%%kale step wait\ntime.sleep(60)\ndone = True",
        "%%kale step after_wait\nprint(done)")

FAILING = ("%kale pipeline --name failing",
           "%%kale step ok_step\nx = 1",
           "%%kale step broken\ny = x / 0",
           "%%kale step never\nz = y")




@pytest.fixture
def session(kfp_server, token_env):  # noqa: F811
    return api.connect(kfp_server.url)


WINE_METRICS = ["logreg_accuracy", "forest_accuracy", "svm_accuracy", "best_accuracy"]


@pytest.fixture(scope="module")
def wine_in_the_kernel(tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    """The wine notebook's metric values run top to bottom with nbclient, N_ESTIMATORS = 20."""
    nb = nbformat.read(EXAMPLES / "wine.ipynb", as_version=4)
    for cell in nb.cells:
        if cell.source.startswith("%%kale parameters"):
            cell.source = cell.source.replace("N_ESTIMATORS = 200", "N_ESTIMATORS = 20")
    path = tmp_path_factory.mktemp("wine-kernel") / "wine.ipynb"
    nbformat.write(nb, path)
    probe = f"import json as _j\nprint(_j.dumps({{k: float(eval(k)) for k in {WINE_METRICS!r}}}))"
    return json.loads(printed(execute(path, [probe]).cells[-1])[-1])


def assert_no_token(*texts: str, folder: Path | None = None) -> None:
    for text in texts:
        assert SECRET_TOKEN not in text
    for path in (folder.rglob("*") if folder else []):
        if path.is_file():
            assert SECRET_TOKEN not in path.read_text(errors="replace"), path


def test_example_notebook_end_to_end_through_the_cli(kfp_server, token_env, tmp_path, capsys,  # noqa: F811
                                                     wine_in_the_kernel) -> None:
    """The "done means" command: run URL, step states streamed to SUCCEEDED, exit 0; the
    summary's metric values (read from ML Metadata) are the notebook's in the kernel."""
    code = cli.main(["run", str(EXAMPLES / "wine.ipynb"), "-o", str(tmp_path / "out"),
                     "--host", kfp_server.url, "--interval", "0.5", "--param", "N_ESTIMATORS=20"])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    run_id = next(line.split()[1].rstrip(":") for line in out.splitlines() if line.startswith("run "))
    assert f"{kfp_server.url}/#/runs/details/{run_id}" in out
    steps = ["load_data", "split_data", "train_logreg", "train_forest", "train_svm", "evaluate"]
    events = [tuple(line.split()[:2]) for line in out.splitlines() if line.split()[:1] in [[s] for s in steps]]
    assert sorted(events) == sorted([(s, st) for s in steps for st in ("RUNNING", "SUCCEEDED")])
    for step in steps:  # each step starts before it ends, after the steps it reads from
        assert events.index((step, "RUNNING")) < events.index((step, "SUCCEEDED"))
    assert events[:2] == [("load_data", "RUNNING"), ("load_data", "SUCCEEDED")]
    assert events[-2:] == [("evaluate", "RUNNING"), ("evaluate", "SUCCEEDED")]
    assert "pipeline wine-classifier SUCCEEDED" in out
    summary = out[out.index("pipeline wine-classifier SUCCEEDED"):].splitlines()[1:5]
    assert summary == [f"  {k} = {wine_in_the_kernel[k]:.6g}" for k in WINE_METRICS]
    assert "metrics:" not in out
    code = cli.main(["status", run_id, "--host", kfp_server.url, "--json"])
    out, err = capsys.readouterr()
    metrics = json.loads(out)["metrics"]  # without the plan: sorted by name, bit for bit
    assert code == 0 and list(metrics.items()) == sorted(wine_in_the_kernel.items()), out + err
    parameters = kfp_server.run_json(run_id)["runtime_config"]["parameters"]
    assert parameters == {"N_ESTIMATORS": 20}
    assert_no_token(out, err, folder=tmp_path / "out")


def test_api_events_in_order_and_resubmission_adds_no_version(kfp_server, session, notebook) -> None:  # noqa: F811
    path = notebook(*QUICK, name="quick")
    events, done = [], []
    first = api.submit(path, session, {"N": "4"})
    hooks = api.RunHooks(on_step=lambda s: events.append((s.name, s.state)), on_done=done.append)
    status = api.watch_remote(session, first.run_id, hooks, plan=api.read_plan(path), interval_s=0.3)
    assert status.state == "SUCCEEDED" and done == [status]
    assert events == [("make", "RUNNING"), ("make", "SUCCEEDED"),
                      ("total", "RUNNING"), ("total", "SUCCEEDED")]
    assert all(s.start and s.end and s.duration_s >= 0 for s in status.steps.values())  # whole seconds
    assert status.metrics == {"result": float(sum(range(4)))} and status.metrics_note == ""
    assert first.experiment == "quick-exp" and first.new_version
    again = api.submit(path, session)
    assert not again.new_version and again.version_id == first.version_id
    assert again.run_id != first.run_id
    versions = kfp_server.store.versions_of(first.pipeline_id)
    assert len(versions) == 1
    no_cache = api.submit(path, session, enable_caching=False)
    assert no_cache.new_version and len(kfp_server.store.versions_of(first.pipeline_id)) == 2
    spec = kfp_server.store.versions[no_cache.version_id]["pipeline_spec"]
    assert {t["cachingOptions"]["enableCache"] for t in spec["root"]["dag"]["tasks"].values()} == {False}


def test_cancel_a_running_run(kfp_server, session, notebook, capsys) -> None:  # noqa: F811
    """KFP ends a terminated run FAILED; the user who canceled it sees CANCELED (exit 0)."""
    path = notebook(*SLOW, name="slow")
    submission = api.submit(path, session)
    kfp_server.wait_for_task(submission.run_id, "RUNNING", task="wait")
    code = cli.main(["cancel", submission.run_id, "--host", kfp_server.url, "--wait", "30"])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert f"run {submission.run_id} slow" in out and ": CANCELED" in out.splitlines()[0]
    assert "metrics" not in out  # none logged, none expected: nothing to say
    assert kfp_server.run_json(submission.run_id)["state"] == "FAILED"  # what KFP says
    fresh = api.connect(kfp_server.url)  # another process: knows only what the server reports
    status = api.remote_status(fresh, submission.run_id)
    assert status.state == "CANCELED"  # the workflow was terminated
    assert (status.steps["wait"].state, status.steps["after_wait"].state) == ("CANCELED", "SKIPPED")
    code = cli.main(["cancel", submission.run_id, "--host", kfp_server.url])  # again: still canceled
    out, err = capsys.readouterr()
    assert code == 0 and err == "" and ": CANCELED" in out.splitlines()[0]


def test_cancel_a_finished_run_says_it_ended(kfp_server, session, notebook, capsys) -> None:  # noqa: F811
    """KFP answers 400 "Row not found" to terminating a finished run: exit 1, its state named."""
    submission = api.submit(notebook(*QUICK, name="quick"), session)
    assert api.watch_remote(session, submission.run_id, interval_s=0.3).state == "SUCCEEDED"
    code = cli.main(["cancel", submission.run_id, "--host", kfp_server.url])
    out, err = capsys.readouterr()
    assert code == 1 and ": SUCCEEDED" in out.splitlines()[0]
    assert err == f"kale-magics: run {submission.run_id} ended SUCCEEDED before it could be canceled\n"
    assert kfp_server.run_json(submission.run_id)["state"] == "SUCCEEDED"


def test_failed_step_reports_its_error_and_exit_code_1(kfp_server, token_env, notebook, capsys) -> None:  # noqa: F811
    """KFP gives no error text: the step's own error comes back through its termination message."""
    path = notebook(*FAILING, name="failing")
    code = cli.main(["run", str(path), "--host", kfp_server.url, "--interval", "0.3"])
    out, err = capsys.readouterr()
    assert code == 1, out + err
    run_id = next(line.split()[1].rstrip(":") for line in out.splitlines() if line.startswith("run "))
    url = f"{kfp_server.url}/#/runs/details/{run_id}"
    assert "broken  FAILED" in out and "pipeline failing FAILED" in out
    assert (f"step broken failed (failing.ipynb, cell 3 (step broken), line 2): ZeroDivisionError: "
            f"division by zero; its log is in the KFP UI: {url} (node 'broken > executor', pod failing-") in out
    code = cli.main(["status", run_id, "--host", kfp_server.url])
    out, _ = capsys.readouterr()
    lines = out.splitlines()
    assert code == 0 and ": FAILED" in lines[0]
    assert [line.split()[:2] for line in lines[2:]] == [
        ["ok_step", "SUCCEEDED"], ["broken", "FAILED"], ["error:", "ZeroDivisionError:"], ["never", "SKIPPED"]]


def test_recurring_run_is_created_listed_and_deleted(kfp_server, token_env, notebook, capsys) -> None:  # noqa: F811
    path = notebook(*QUICK, name="quick")
    code = cli.main(["run", str(path), "--host", kfp_server.url, "--schedule", "0 6 * * *",
                     "--max-concurrency", "2", "--start-time", "2030-01-31T06:00+00:00",
                     "--end-time", "2031-01-31T06:00+00:00", "--param", "N=7"])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    recurring_id = out.split("recurring run ")[1].split()[0]
    stored = kfp_server.store.recurring_runs[recurring_id]
    assert stored["trigger"]["cron_schedule"]["cron"] == "0 0 6 * * *"
    assert stored["trigger"]["cron_schedule"]["start_time"].startswith("2030-01-31T06:00:00")
    assert stored["max_concurrency"] == "2" and stored["runtime_config"]["parameters"] == {"N": 7}
    assert cli.main(["schedules", "--host", kfp_server.url]) == 0
    listed = capsys.readouterr().out
    assert recurring_id in listed and "cron '0 0 6 * * *'" in listed and "ENABLED" in listed
    assert cli.main(["schedules", "--host", kfp_server.url, "--delete", recurring_id]) == 0
    capsys.readouterr()
    assert recurring_id not in kfp_server.store.recurring_runs
    assert [s.recurring_run_id for s in api.list_schedules(api.connect(kfp_server.url))] == [
        r for r in kfp_server.store.recurring_runs]


def test_token_reaches_the_server_only_as_a_header(kfp_server, session) -> None:  # noqa: F811
    assert session.connection.auth == "$KF_PIPELINES_TOKEN"
    assert SECRET_TOKEN not in repr(session)
    assert all(SECRET_TOKEN not in request for request in kfp_server.requests)
    assert os.environ["KF_PIPELINES_TOKEN"] == SECRET_TOKEN
