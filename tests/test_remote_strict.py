"""KFP 2.17's real behaviours, through the strict KFP test server: wire format, terminate,
multi-user namespaces, upload errors, unconvertible runs, cache hits, names KFP cannot run.

Each test names the API server source it follows (kubeflow/pipelines ``backend/src/apiserver``).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from kale_magics import api, cli
from kale_magics.errors import KaleError, KfpAuthError, RunError
from kale_magics.runner import connection
from tests.kfp_server import KfpTestServer
from tests.kfp_server.fixtures import SECRET_TOKEN, kfp_server, token_env  # noqa: F401  (fixtures)
from tests.kfp_server.wire import SPEC_PATH, Spec

pytestmark = pytest.mark.integration

#: The project's shared copy of the spec, ``../shared/specs`` of a checkout (or of the folder above a worktree).
SHARED_SPEC = next((folder / "shared" / "specs" / "kfp-v2beta1.swagger.json"
                    for folder in Path(__file__).resolve().parents[1:4]
                    if (folder / "shared" / "specs").is_dir()), Path("../shared/specs/kfp-v2beta1.swagger.json"))
QUICK = ("%kale pipeline --name strict-quick",
         "%%kale step make\nitems = [1, 2, 3]",
         "%%kale step total\nresult = sum(items)")
SLOW = ("%kale pipeline --name strict-slow",
        "%%kale imports\nimport time",
        "%%kale step wait\ntime.sleep(60)\ndone = True",
        "%%kale step after_wait\nprint(done)")


def http(server: KfpTestServer, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One raw request with the session token; ``(status, parsed JSON or text)``."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(server.url + path, data=data, method=method, headers={
        "Authorization": f"Bearer {SECRET_TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("KF_PIPELINES_ENDPOINT", "KF_PIPELINES_NAMESPACE", "KF_PIPELINES_COOKIES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KF_PIPELINES_TOKEN", SECRET_TOKEN)
    monkeypatch.setenv("KALE_MAGICS_CONFIG", str(tmp_path / "no-config.json"))
    monkeypatch.setattr(connection, "NAMESPACE_FILE", str(tmp_path / "no-namespace-file"))


@pytest.fixture
def multi_user(clean_env) -> Iterator[KfpTestServer]:
    with KfpTestServer(token=SECRET_TOKEN, strict=True, multi_user=True, namespaces=["team-a"],
                       pending_s=0.1) as server:
        yield server
    assert server.violations == []


# -- the spec and the wire format (common/utils.go: DiscardUnknown, EmitUnpopulated false) ----

def test_spec_copy_is_the_shared_spec() -> None:
    if not SHARED_SPEC.exists():
        pytest.skip(f"{SHARED_SPEC} is absent (the project's shared folder is not next to this "
                    "checkout); the copy in tests/kfp_server is checked against it where it is")
    assert SPEC_PATH.read_bytes() == SHARED_SPEC.read_bytes()


def test_the_spec_check_catches_extra_keys_zero_values_and_wrong_types() -> None:
    spec = Spec.load()
    run = spec.operation("GET", "/apis/v2beta1/runs/abc")
    schema = spec.answer_schema(run, 200)
    assert spec.violations(schema, {"run_id": "r", "state": "RUNNING"}) == []
    found = spec.violations(schema, {"run_id": "", "state": "RUNTIME_STATE_UNSPECIFIED", "bogus": 1,
                                     "run_details": {"task_details": [{"error": {"code": "x"}}]}})
    assert found == ["$.run_id: zero value '' (the server leaves zero values out)",
                     "$.state: zero value 'RUNTIME_STATE_UNSPECIFIED' (the server leaves zero values out)",
                     "$.bogus: not in the API",
                     "$.run_details.task_details[0].error.code: expected a number, got 'x'"]


def test_unknown_request_fields_are_refused(kfp_server) -> None:  # noqa: F811
    status, body = http(kfp_server, "POST", "/apis/v2beta1/experiments",
                        {"display_name": "strict-unknown", "owner": "me"})
    assert (status, body) == (400, {"code": 3, "message": 'proto: (line 1:2): unknown field "owner"'})


def test_zero_values_are_left_out_and_unset_times_are_kfps_zero_times(kfp_server, token_env,  # noqa: F811
                                                                      notebook) -> None:
    assert http(kfp_server, "GET", "/apis/v2beta1/healthz") == (200, {"pipeline_store": "database"})
    session = api.connect(kfp_server.url)
    submission = api.submit(notebook(*SLOW, name="zero"), session)
    kfp_server.wait_for_task(submission.run_id, "RUNNING")
    _, run = http(kfp_server, "GET", f"/apis/v2beta1/runs/{submission.run_id}")
    assert run["finished_at"] == "1970-01-01T00:00:00Z" and "error" not in run
    running = [t for t in run["run_details"]["task_details"] if t.get("state") == "RUNNING"]
    assert running and all(t["end_time"] == "0001-01-01T00:00:00Z" for t in running)
    assert all(key not in t for t in run["run_details"]["task_details"]
               for key in ("error", "pod_name", "executor_detail", "execution_id", "parent_task_id"))
    _, experiment = http(kfp_server, "GET", f"/apis/v2beta1/experiments/{submission.experiment_id}")
    assert "description" not in experiment and "namespace" not in experiment
    api.cancel_remote(session, submission.run_id, wait_s=0)


# -- terminate (resource_manager.go TerminateRun, run_store.go TerminateRun) --------------------

def test_terminate_gives_canceling_then_failed_and_400_for_a_finished_run(kfp_server, token_env,  # noqa: F811
                                                                          notebook) -> None:
    session = api.connect(kfp_server.url)
    submission = api.submit(notebook(*SLOW, name="terminate"), session)
    kfp_server.wait_for_task(submission.run_id, "RUNNING")
    assert http(kfp_server, "POST", f"/apis/v2beta1/runs/{submission.run_id}:terminate") == (200, {})
    assert kfp_server.run_json(submission.run_id)["state"] == "CANCELING"
    assert kfp_server.wait_for_state(submission.run_id, ["FAILED", "CANCELED"]) == "FAILED"
    history = [h["state"] for h in kfp_server.run_json(submission.run_id)["state_history"]]
    assert history == ["PENDING", "RUNNING", "FAILED"]
    status, body = http(kfp_server, "POST", f"/apis/v2beta1/runs/{submission.run_id}:terminate")
    assert status == 400 and body["code"] == 3 and body["message"].endswith("Row not found")
    # kale-magics, told nothing but what the server reports, still knows it was canceled
    assert api.remote_status(api.connect(kfp_server.url), submission.run_id).state == "CANCELED"


# -- an unconvertible run (api_converter.go toApiRun: ids and an error only) ----------------------

def test_a_run_the_server_cannot_convert_stops_with_what_it_said(kfp_server, token_env, notebook,  # noqa: F811
                                                                 capsys) -> None:
    session = api.connect(kfp_server.url)
    submission = api.submit(notebook(*QUICK, name="broken"), session)
    kfp_server.break_run(submission.run_id, "Failed to convert run: invalid pipeline spec")
    assert set(kfp_server.run_json(submission.run_id)) == {"run_id", "experiment_id", "error"}
    with pytest.raises(RunError, match="cannot report run .*: Failed to convert run: invalid pipeline spec"):
        api.watch_remote(session, submission.run_id, interval_s=0.2)
    assert cli.main(["status", submission.run_id, "--host", kfp_server.url, "--watch"]) == 2
    err = capsys.readouterr().err
    assert "Failed to convert run: invalid pipeline spec; its state is unknown here" in err


# -- multi-user mode (experiment_server.go, pipeline_server.go) ----------------------------------

def test_multi_user_needs_a_namespace_before_anything_is_created(multi_user, notebook) -> None:
    assert http_anonymous(multi_user, "/apis/v2beta1/healthz")["multi_user"] is True
    session = api.connect(multi_user.url)
    with pytest.raises(KaleError, match="is multi-user, so submitting a run needs your namespace"):
        api.submit(notebook(*QUICK, name="mu"), session)
    store = multi_user.store
    assert (store.pipelines, store.versions, store.experiments, store.runs) == ({}, {}, {}, {})


def http_anonymous(server: KfpTestServer, path: str) -> Any:
    return http(server, "GET", path)[1]


def test_multi_user_takes_the_pods_namespace_and_uploads_into_it(multi_user, notebook, tmp_path,
                                                                 monkeypatch) -> None:
    namespace_file = tmp_path / "namespace"
    namespace_file.write_text("team-a\n")
    monkeypatch.setattr(connection, "NAMESPACE_FILE", str(namespace_file))
    session = api.connect(multi_user.url)
    assert session.connection.namespace == "team-a"
    submission = api.submit(notebook(*QUICK, name="mu"), session)
    assert multi_user.store.pipelines[submission.pipeline_id]["namespace"] == "team-a"
    assert multi_user.store.experiments[submission.experiment_id]["namespace"] == "team-a"
    assert api.watch_remote(session, submission.run_id, interval_s=0.3).state == "SUCCEEDED"


def test_multi_user_refusals_say_what_the_server_said(multi_user, notebook) -> None:
    with pytest.raises(KfpAuthError) as info:
        api.submit(notebook(*QUICK, name="mu"), api.connect(multi_user.url, namespace="team-b"))
    message = str(info.value)
    assert "HTTP 403" in message and "PermissionDenied" in message and "Namespace:team-b" in message
    assert "were accepted but lack this permission" in message and SECRET_TOKEN not in message
    assert multi_user.store.pipelines == {}
    status, body = http(multi_user, "POST", "/apis/v2beta1/pipelines", {"display_name": "shared"})
    assert status == 403 and body["code"] == 7 and "Namespace:kubeflow" in body["message"]
    status, body = http(multi_user, "GET", "/apis/v2beta1/experiments")
    assert status == 400 and "cannot have an empty namespace in multi-user mode" in body["message"]


# -- upload errors (pipeline_upload_server.go: {"error_message", "error_details"} or text) -------

@pytest.mark.parametrize("content_type, body", [
    ("text/plain; charset=utf-8", b"Pipeline version name too long: the limit is 127 characters\n"),
    ("application/json", json.dumps({"error_message": "Pipeline version name too long: the limit is "
                                                      "127 characters", "error_details": "..."}).encode()),
])
def test_upload_errors_print_the_servers_reason(kfp_server, token_env, notebook, capsys,  # noqa: F811
                                                content_type, body) -> None:
    kfp_server.faults.add(path="/upload_version", status=400, body=body, content_type=content_type,
                          times=1)
    code = cli.main(["run", str(notebook(*QUICK, name="upload")), "--host", kfp_server.url])
    err = capsys.readouterr().err
    assert code == 2
    assert "HTTP 400 Bad Request: Pipeline version name too long: the limit is 127 characters" in err


# -- KFP's cache (kfp.local's cache in the server) and names KFP cannot run ----------------------

def test_a_cache_hit_is_reported_cached(clean_env, notebook, capsys) -> None:
    with KfpTestServer(token=SECRET_TOKEN, strict=True, cache=True, pending_s=0.1) as server:
        path = notebook(*QUICK, name="cached")
        assert cli.main(["run", str(path), "--host", server.url, "--interval", "0.3"]) == 0
        capsys.readouterr()
        assert cli.main(["run", str(path), "--host", server.url, "--interval", "0.3", "--json"]) == 0
        steps = json.loads(capsys.readouterr().out)["steps"]
        assert {name: (s["state"], s["cached"]) for name, s in steps.items()} == {
            "make": ("SUCCEEDED", True), "total": ("SUCCEEDED", True)}
        assert server.violations == []


def test_a_step_named_like_another_steps_driver_is_refused(kfp_server, token_env, notebook) -> None:  # noqa: F811
    path = notebook("%kale pipeline --name clash", "%%kale step x\na = 1", "%%kale step x_driver\nb = a",
                    name="clash")
    with pytest.raises(KaleError, match="step 'x_driver'.*rename step 'x_driver'"):  # at compile time
        api.submit(path, api.connect(kfp_server.url))
    assert not any(p["display_name"] == "clash" for p in kfp_server.store.pipelines.values())


def test_a_retried_step_shows_its_attempts_and_ends_succeeded(kfp_server, token_env, notebook) -> None:  # noqa: F811
    """Argo runs a retried executor as a Retry node with ``executor(N)`` attempts (argocompiler)."""
    path = notebook("%kale pipeline --name strict-retry", "%%kale imports\nimport os",
                    "%%kale step flaky --retries 1\nif not os.path.exists('tried'):\n"
                    "    open('tried', 'w').close()\n    raise RuntimeError('first try')\nvalue = 1",
                    name="retry")
    session = api.connect(kfp_server.url)
    events: list = []
    submission = api.submit(path, session)
    status = api.watch_remote(session, submission.run_id, api.RunHooks(
        on_step=lambda s: events.append((s.name, s.state))), interval_s=0.3)
    assert status.state == "SUCCEEDED" and events == [("flaky", "RUNNING"), ("flaky", "SUCCEEDED")]
    entries = kfp_server.run_json(submission.run_id)["run_details"]["task_details"]
    attempts = {e["display_name"]: e["state"] for e in entries if e["display_name"].startswith("executor(")}
    assert attempts == {"executor(0)": "FAILED", "executor(1)": "SUCCEEDED"}
