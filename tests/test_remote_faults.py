"""Remote runs when things go wrong: host down, slow, 401, 503 while polling, server gone, lost answers.

Each test starts its own KFP test server (they stop, break or slow it down),
and talks to it with the real ``kfp.Client``.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Iterator

import pytest

from kale_magics import api, cli
from kale_magics.errors import KfpAuthError, KfpConnectionError, RunError
from kale_magics.runner.transport import RetryPolicy
from kale_magics.runner.watch import WatchOptions
from kale_magics.targets import kfp as kfp_target
from tests.kfp_server import KfpTestServer

pytestmark = pytest.mark.integration

TOKEN = "fault-secret-token-91b7e2-NEVER-PRINT"
QUICK = ("%kale pipeline --name quick",
         "%%kale step make\nitems = [1, 2, 3]",
         "%%kale step total\nresult = sum(items)")
SLOW = ("%kale pipeline --name slow",
        "%%kale imports\nimport time",
        "%%kale step wait\ntime.sleep(60)\ndone = True")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("KF_PIPELINES_ENDPOINT", "KF_PIPELINES_TOKEN", "KF_PIPELINES_COOKIES",
                 "KF_PIPELINES_NAMESPACE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KALE_MAGICS_CONFIG", str(tmp_path / "no-config.json"))


@pytest.fixture
def server() -> Iterator[KfpTestServer]:
    with KfpTestServer(pending_s=0.1) as running:
        yield running


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_host_down_fails_fast_with_one_clear_line(capsys) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    code = cli.main(["status", "some-run", "--host", url])
    elapsed = time.monotonic() - started
    out, err = capsys.readouterr()
    assert code == 2 and elapsed < 3 and out == ""
    assert err == (f"kale-magics: error: cannot reach KFP at {url}: connection refused; check "
                   "--host (or $KF_PIPELINES_ENDPOINT) and that the server or its port-forward is up\n")


def test_slow_server_times_out_after_the_connect_timeout(server) -> None:
    server.faults.add(path="/healthz", delay_s=5, times=1)
    started = time.monotonic()
    with pytest.raises(KfpConnectionError, match=r"no answer within 0.5 s|timed out"):
        api.connect(server.url, connect_timeout_s=0.5)
    assert time.monotonic() - started < 3


def test_401_says_what_to_set_and_never_echoes_the_token(capsys, monkeypatch) -> None:
    with KfpTestServer(token="the-right-one") as guarded:
        with pytest.raises(KfpAuthError, match=r"HTTP 401.*set \$KF_PIPELINES_TOKEN"):
            api.connect(guarded.url)
        monkeypatch.setenv("KF_PIPELINES_TOKEN", TOKEN)
        code = cli.main(["schedules", "--host", guarded.url])
        out, err = capsys.readouterr()
        assert code == 2 and TOKEN not in out + err
        assert "refused the credentials from $KF_PIPELINES_TOKEN (HTTP 401" in err
        code = cli.main(["status", "x", "--host", guarded.url, "--token", TOKEN])
        out, err = capsys.readouterr()
        assert code == 2 and TOKEN not in out + err and "from --token" in err


def test_401_while_polling_ends_the_watch_with_an_auth_error(server, notebook) -> None:
    session = api.connect(server.url)
    submission = api.submit(notebook(*QUICK), session)
    server.faults.add(method="GET", path="/runs/", status=401)
    started = time.monotonic()
    with pytest.raises(KfpAuthError, match="needs credentials"):
        api.watch_remote(session, submission.run_id, interval_s=0.2)
    assert time.monotonic() - started < 3


def test_watch_survives_503_500_and_dropped_connections(server, notebook) -> None:
    session = api.connect(server.url)
    submission = api.submit(notebook(*QUICK), session)
    faults = [server.faults.add(method="GET", path="/runs/", status=503, for_s=2.0),
              server.faults.add(method="GET", path="/runs/", status=500, times=2),
              server.faults.add(method="GET", path="/runs/", reset=True, times=2),
              server.faults.add(method="GET", path="/runs/", delay_s=0.5, times=2)]  # slow, answers
    events = []
    # as api.watch_remote(..., interval_s=0.2, max_outage_s=30), but the tries of one read are
    # 0.1 s apart at first (not 1 s), doubling up to 0.5 s (not 7.5 s): the same faults, ridden
    # out in a few seconds instead of 15
    options = WatchOptions(interval_s=0.2, retry=RetryPolicy(
        max_outage_s=30, backoff_start_s=0.1, backoff_max_s=0.5))
    status = kfp_target.follow(session, submission.run_id, api.RunHooks(
        on_step=lambda s: events.append((s.name, s.state))), options=options)
    assert status.state == "SUCCEEDED"
    assert events == [("make", "RUNNING"), ("make", "SUCCEEDED"), ("total", "RUNNING"),
                      ("total", "SUCCEEDED")]
    assert server.store.run_creations == 1
    assert faults[0].hits >= 2 and [f.hits for f in faults[1:]] == [2, 2, 2]  # each one was met


def test_server_dies_mid_run_clear_error_no_hang(server, notebook) -> None:
    session = api.connect(server.url)
    submission = api.submit(notebook(*SLOW), session)
    server.wait_for_task(submission.run_id, task="wait")
    server.stop_listening()
    started = time.monotonic()
    with pytest.raises(KfpConnectionError) as info:
        api.watch_remote(session, submission.run_id, interval_s=0.2, max_outage_s=2)
    assert time.monotonic() - started < 10
    assert f"reading run {submission.run_id}: KFP at {server.url} did not answer" in str(info.value)
    assert "connection refused" in str(info.value)


def test_lost_answer_to_create_run_is_not_retried(server, notebook) -> None:
    session = api.connect(server.url)
    server.faults.add(method="POST", path="/apis/v2beta1/runs", reset_after=True, times=1)
    with pytest.raises(KfpConnectionError) as info:
        api.submit(notebook(*QUICK), session)
    assert "was not retried" in str(info.value) and "before submitting again" in str(info.value)
    assert server.store.run_creations == 1 and len(server.store.runs) == 1


def test_run_dropped_mid_way_ends_the_watch(server, notebook) -> None:
    session = api.connect(server.url)
    submission = api.submit(notebook(*SLOW), session)
    server.wait_for_task(submission.run_id, task="wait")
    server.drop_run(submission.run_id)
    with pytest.raises(RunError, match="not found on KFP"):
        api.watch_remote(session, submission.run_id, interval_s=0.2, max_outage_s=5)


def test_watch_timeout_leaves_the_run_going(server, notebook) -> None:
    session = api.connect(server.url)
    submission = api.submit(notebook(*SLOW), session)
    with pytest.raises(RunError, match=r"still (PENDING|RUNNING) after 1 s.*kale-magics status"):
        api.watch_remote(session, submission.run_id, interval_s=0.2, timeout_s=1)
    assert server.run_json(submission.run_id)["state"] in ("PENDING", "RUNNING")


def test_a_page_that_is_no_run_ends_the_watch_in_one_line(server, notebook) -> None:
    """A login page (200, HTML) where the run should be: the generated client reads it as a run
    with every field empty, which would stay PENDING for ever."""
    session = api.connect(server.url)
    submission = api.submit(notebook(*QUICK), session)
    server.faults.add(method="GET", path="/runs/", status=200, content_type="text/html",
                      body=b"<html><body>Sign in</body></html>")
    started = time.monotonic()
    with pytest.raises(KfpConnectionError, match="answered reading run .* with no run"):
        api.watch_remote(session, submission.run_id, interval_s=0.2)
    assert time.monotonic() - started < 10
