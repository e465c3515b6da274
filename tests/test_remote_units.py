"""Remote runs without a server: connection settings, retry policy, packaging, name mapping."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import kfp_server_api
import pytest
import urllib3

from kale_magics import api
from kale_magics.errors import KaleError, KfpAuthError, KfpConnectionError, RunError
from kale_magics.model import PipelineSettings, task_name
from kale_magics.runner import connection, remote, transport, watch
from kale_magics.runner.connection import resolve_connection

TOKEN = "unit-secret-token-7d2a"


def env(**values: str) -> dict[str, str]:
    return {"KALE_MAGICS_CONFIG": "/nonexistent/config.json", **values}


def test_host_precedence_explicit_settings_env_config(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"host": "http://from-config:1", "namespace": "cfg-ns"}))
    base = {"KALE_MAGICS_CONFIG": str(config)}
    settings = PipelineSettings(host="http://from-notebook:2")
    with_env = {**base, "KF_PIPELINES_ENDPOINT": "http://from-env:3/"}
    assert resolve_connection("http://explicit:4", settings=settings, environ=with_env).host == "http://explicit:4"
    assert resolve_connection(settings=settings, environ=with_env).host == "http://from-notebook:2"
    assert resolve_connection(environ=with_env).host == "http://from-env:3"
    found = resolve_connection(environ=base)
    assert (found.host, found.namespace) == ("http://from-config:1", "cfg-ns")
    assert resolve_connection(namespace="mine", environ=base).namespace == "mine"


def test_config_file_location_follows_xdg(tmp_path: Path) -> None:
    assert connection.config_path({"XDG_CONFIG_HOME": str(tmp_path)}) == str(
        tmp_path / "kale-magics" / "config.json")


def test_missing_host_says_every_way_to_set_it() -> None:
    with pytest.raises(KaleError) as info:
        resolve_connection(environ=env())
    for hint in ("--host", "%kale pipeline", "KF_PIPELINES_ENDPOINT", "config.json"):
        assert hint in str(info.value)


def test_host_needs_a_scheme() -> None:
    with pytest.raises(KaleError, match="http://kfp:8080"):
        resolve_connection("kfp:8080", environ=env())


def test_token_sources_and_no_token_in_repr(tmp_path: Path) -> None:
    explicit = resolve_connection("http://h", token=TOKEN, environ=env(KF_PIPELINES_TOKEN="other"))
    assert (explicit.token, explicit.auth) == (TOKEN, "--token")
    from_env = resolve_connection("http://h", environ=env(KF_PIPELINES_TOKEN=TOKEN))
    assert from_env.auth == "$KF_PIPELINES_TOKEN"
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    in_cluster = resolve_connection("http://h", environ=env(KF_PIPELINES_SA_TOKEN_PATH=str(token_file)))
    assert in_cluster.token == TOKEN and "service-account token file" in in_cluster.auth
    cookies = resolve_connection("http://h", cookies=f"authservice_session={TOKEN}", environ=env())
    assert cookies.auth == "cookies from --cookies"
    for conn in (explicit, from_env, in_cluster, cookies):
        assert TOKEN not in repr(conn)
        assert TOKEN not in connection.auth_message(conn, 401)
        assert TOKEN not in conn.redact(f"header Bearer {TOKEN} and Cookie authservice_session={TOKEN}")


def test_schedule_cron_fields() -> None:
    assert api.Schedule("0 6 * * *").kfp_cron() == "0 0 6 * * *"
    assert api.Schedule("30 0 6 * * 1-5").kfp_cron() == "30 0 6 * * 1-5"
    with pytest.raises(KaleError, match="5 fields"):
        api.Schedule("every day").kfp_cron()
    with pytest.raises(KaleError, match="1 to 10"):
        api.Schedule("0 6 * * *", max_concurrency=11).kfp_cron()


def test_version_name_is_content_derived(notebook, tmp_path: Path) -> None:
    path = notebook("%%kale step only_step\nx = 1")
    compiled = api.compile_notebook(path, str(tmp_path / "out"))
    text, name = remote.package(compiled, enable_caching=True)
    again = api.compile_notebook(path, str(tmp_path / "out2"))
    assert remote.package(again, enable_caching=True)[1] == name
    no_cache_text, no_cache = remote.package(compiled, enable_caching=False)
    assert no_cache != name and name.startswith(f"{compiled.plan.name}-")
    assert "enableCache: false" in no_cache_text and "enableCache: true" in text


def test_step_and_task_names_map_both_ways() -> None:
    assert task_name("train_forest") == "train-forest"  # kfp.dsl.utils.maybe_rename_for_k8s
    assert task_name("step_2_") == "step-2"
    tasks = {name: {"componentRef": {"name": f"comp-{name}"},
                    "dependentTasks": sorted(upstream)}
             for name, upstream in {"c-c": {"b"}, "b": {"a"}, "a": set(), "d": set()}.items()}
    run = SimpleNamespace(run_id="r", pipeline_spec={"root": {"dag": {"tasks": tasks}}},
                          pipeline_version_reference=None)
    assert watch.run_steps(None, run) == ["a", "d", "b", "c_c"]  # upstream first, ties by name


class Flaky:
    """A fake API method failing with ``errors`` first, then answering ``"ok"``."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self, **kwargs: object) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


CONN = connection.Connection(host="http://kfp.example", token=TOKEN, auth="--token")
FAST = transport.RetryPolicy(max_outage_s=5, backoff_start_s=0.01, backoff_max_s=0.02)


def http_error(status: int) -> kfp_server_api.ApiException:
    return kfp_server_api.ApiException(status=status, reason="Service Unavailable")


def test_reading_call_rides_out_503_and_resets() -> None:
    flaky = Flaky(http_error(503), urllib3.exceptions.ProtocolError("Connection aborted."), http_error(502))
    assert transport.call(CONN, "reading run r", flaky, policy=FAST, sleep=lambda s: None) == "ok"
    assert flaky.calls == 4


def test_creating_call_is_never_retried() -> None:
    flaky = Flaky(urllib3.exceptions.ProtocolError("Connection aborted."))
    with pytest.raises(KfpConnectionError, match="not retried"):
        transport.call(CONN, "creating run r", flaky, idempotent=False, policy=FAST)
    assert flaky.calls == 1


def test_auth_errors_end_at_once_without_the_token() -> None:
    flaky = Flaky(http_error(401), http_error(401))
    with pytest.raises(KfpAuthError) as info:
        transport.call(CONN, "reading run r", flaky, policy=FAST)
    assert flaky.calls == 1 and TOKEN not in str(info.value) and "--token" in str(info.value)


def test_outage_longer_than_policy_ends_with_a_clear_error() -> None:
    always = Flaky(*[http_error(503)] * 1000)
    policy = transport.RetryPolicy(max_outage_s=0.2, backoff_start_s=0.05, backoff_max_s=0.05)
    with pytest.raises(KfpConnectionError, match="did not answer properly for 0.2 s"):
        transport.call(CONN, "reading run r", always, policy=policy)


def test_not_found_is_a_run_error() -> None:
    with pytest.raises(RunError, match="not found"):
        transport.call(CONN, "reading run r", Flaky(http_error(404)), policy=FAST)


def test_step_error_summary_goes_to_the_termination_message_only_in_a_kfp_pod(tmp_path, monkeypatch) -> None:
    from kale_magics.runtime import step
    from kale_magics.runner import workflow

    log = tmp_path / "termination-log"
    log.write_text("")
    monkeypatch.setattr(step, "TERMINATION_LOG", str(log))
    monkeypatch.delenv(step.TERMINATION_LOG_ENV, raising=False)
    monkeypatch.delenv("KFP_POD_NAME", raising=False)
    step.write_termination_message("train", "ValueError: bad", "nb.ipynb, cell 4 (step train)", 3)
    assert log.read_text() == ""  # a local run, even in a notebook pod, leaves the file alone
    monkeypatch.setenv("KFP_POD_NAME", "demo-abc-system-container-impl-1")
    step.write_termination_message("train", "é" * 5000, "nb.ipynb, cell 4 (step train)", 3)
    text = log.read_text()
    assert len(text.encode()) <= 4096  # Kubernetes' limit for a termination message
    summary = workflow._summary(f"Error (exit code 1): {text}")
    assert summary == {"step": "train", "error": "é" * 800, "cell": "nb.ipynb, cell 4 (step train)", "line": 3}
    missing = tmp_path / "absent"
    monkeypatch.setenv(step.TERMINATION_LOG_ENV, str(missing))
    step.write_termination_message("train", "ValueError: bad", "", 0)
    assert not missing.exists()  # never created where Kubernetes did not mount it
