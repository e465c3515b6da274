"""Credentials go only to the server they were configured for; URL passwords never show."""

from __future__ import annotations

import http.server
import json
import logging
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest

from kale_magics.errors import KaleError, KfpAuthError, KfpConnectionError
from kale_magics.model import PipelineSettings
from kale_magics.redaction import redact_urls
from kale_magics.runner import connection, transport
from kale_magics.runner.connection import resolve_connection, same_server

TOKEN, COOKIE = "hostile-token-5e1f", "authservice_session=hostile-cookie-77aa"
NOTEBOOK_HOST = PipelineSettings(host="http://127.0.0.1:9")


def env(**values: str) -> dict[str, str]:
    return {"KALE_MAGICS_CONFIG": "/nonexistent/config.json",
            "KF_PIPELINES_SA_TOKEN_PATH": "/nonexistent/token", **values}


def test_environment_credentials_are_not_sent_to_a_host_the_notebook_names() -> None:
    found = resolve_connection(settings=NOTEBOOK_HOST, environ=env(
        KF_PIPELINES_ENDPOINT="http://kfp.example:8888", KF_PIPELINES_TOKEN=TOKEN,
        KF_PIPELINES_COOKIES=COOKIE))
    assert (found.host, found.token, found.cookies, found.auth) == ("http://127.0.0.1:9", "", "", "none")
    assert "$KF_PIPELINES_TOKEN" in found.withheld and "$KF_PIPELINES_COOKIES" in found.withheld
    message = connection.auth_message(found, 401)
    assert "not sent" in message and "--host" in message and TOKEN not in message


def test_environment_token_without_endpoint_is_not_sent_to_the_notebooks_host() -> None:
    found = resolve_connection(settings=NOTEBOOK_HOST, environ=env(KF_PIPELINES_TOKEN=TOKEN))
    assert found.token == "" and "notebook" in found.withheld


def test_credentials_go_where_they_were_configured() -> None:
    same = resolve_connection(settings=PipelineSettings(host="http://KFP.example:80/"), environ=env(
        KF_PIPELINES_ENDPOINT="http://kfp.example", KF_PIPELINES_TOKEN=TOKEN))
    assert same.token == TOKEN and same.withheld == ""
    chosen = resolve_connection("http://127.0.0.1:9", settings=NOTEBOOK_HOST, environ=env(
        KF_PIPELINES_ENDPOINT="http://kfp.example", KF_PIPELINES_TOKEN=TOKEN))
    assert chosen.token == TOKEN  # --host on the command line: the user chose the server
    given = resolve_connection(settings=NOTEBOOK_HOST, token=TOKEN, cookies=COOKIE, environ=env())
    assert (given.token, given.cookies) == (TOKEN, COOKIE)


def test_config_token_file_goes_only_to_the_config_host(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"host": "http://kfp.example", "token_file": str(token_file)}))
    base = {"KALE_MAGICS_CONFIG": str(config), "KF_PIPELINES_SA_TOKEN_PATH": "/nonexistent"}
    assert resolve_connection(environ=base).token == TOKEN
    assert resolve_connection(settings=NOTEBOOK_HOST, environ=base).token == ""
    other = resolve_connection(environ={**base, "KF_PIPELINES_ENDPOINT": "http://other:1"})
    assert other.token == "" and "token_file" in other.withheld


def test_service_account_token_is_not_sent_to_the_notebooks_host(tmp_path: Path) -> None:
    token_file = tmp_path / "sa"
    token_file.write_text(TOKEN)
    found = resolve_connection(settings=NOTEBOOK_HOST,
                               environ=env(KF_PIPELINES_SA_TOKEN_PATH=str(token_file)))
    assert found.token == "" and "service-account" in found.withheld


def test_notebook_host_that_would_fetch_google_credentials_is_refused() -> None:
    with pytest.raises(KaleError, match="Google Cloud access token"):
        resolve_connection(settings=PipelineSettings(host="https://evilXgoogleusercontent.com"),
                           environ=env())


def test_same_server_compares_scheme_host_and_port() -> None:
    assert same_server("http://KFP:80/a", "http://kfp")
    assert same_server("https://kfp", "https://kfp:443/pipeline")
    assert not same_server("http://kfp", "https://kfp")
    assert not same_server("http://kfp:8888", "http://kfp:8889")
    assert not same_server("http://kfp.example", "http://kfp.example.evil.com")


@pytest.mark.parametrize("text, expected", [
    ("http://alice:Sup3r@127.0.0.1:9/x", "http://***@127.0.0.1:9/x"),
    ("see https://a:p@ss@host/y?z@w.", "see https://***@host/y?z@w."),
    ("git+https://tok@github.com/a", "git+https://***@github.com/a"),
    ("'http://u:p@h'", "'http://***@h'"),
    ("mail a@b, http://h/p@x", "mail a@b, http://h/p@x"),
])
def test_redact_urls(text: str, expected: str) -> None:
    assert redact_urls(text) == expected


@pytest.mark.parametrize("variable", ["KF_PIPELINES_ENDPOINT", "--host"])
def test_a_password_in_the_host_never_shows(variable: str) -> None:
    url = "http://alice:Sup3rS3cretPw@127.0.0.1:9"
    with pytest.raises(KaleError) as info:
        if variable == "--host":
            resolve_connection(url, environ=env())
        else:
            resolve_connection(environ=env(KF_PIPELINES_ENDPOINT=url))
    assert "Sup3rS3cretPw" not in str(info.value) and "alice" not in str(info.value)
    assert "http://***@127.0.0.1:9" in str(info.value)


def test_every_error_message_and_link_is_redacted(caplog) -> None:
    assert "pw" not in str(KfpConnectionError("cannot reach http://u:pw@h:1"))
    conn = connection.Connection(host="http://kfp", ui_host="https://u:pw@ui.example")
    assert conn.run_url("r1") == "https://***@ui.example/#/runs/details/r1"

    def refused(**_: object) -> None:
        raise OSError("Connection refused by http://u:pw@kfp")
    with caplog.at_level(logging.INFO), pytest.raises(KfpConnectionError):
        transport.call(conn, "reading http://u:pw@kfp", refused, sleep=lambda s: None,
                       policy=transport.RetryPolicy(max_outage_s=2, backoff_start_s=1))
    assert caplog.records and all("pw" not in r.getMessage() for r in caplog.records)


def test_unresolvable_and_malformed_hosts_are_named() -> None:
    with pytest.raises(KfpConnectionError, match="host name 'no-such-host.invalid' could not be"):
        connection.probe(resolve_connection("http://no-such-host.invalid:9", environ=env()))
    with pytest.raises(KaleError, match="port that is not a number"):
        resolve_connection("http://kfp:port", environ=env())


@pytest.fixture
def listener() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """An HTTP server on 127.0.0.1 that answers 401 and records the headers it was sent."""
    seen: list[dict[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            seen.append(dict(self.headers))
            self.send_response(401)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    thread.join()


def test_shared_notebook_cannot_collect_the_token(notebook, listener, tmp_path: Path) -> None:
    url, seen = listener
    path = notebook(f"%kale pipeline --host {url}", "%%kale step a\nx = 1")
    environment = {**env(KF_PIPELINES_ENDPOINT="http://127.0.0.1:1", KF_PIPELINES_TOKEN=TOKEN,
                         KF_PIPELINES_COOKIES=COOKIE), "PATH": "/usr/bin:/bin",
                   "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "kale_magics", "run", str(path), "--remote"],
                            capture_output=True, text=True, env=environment, timeout=300)
    assert result.returncode == 2 and "were not sent" in result.stderr
    assert seen, "the listener was asked"
    assert all(TOKEN not in json.dumps(h) and "hostile-cookie" not in json.dumps(h) for h in seen)


def test_status_errors_and_log_tails_are_redacted(tmp_path: Path) -> None:
    from kale_magics.runner.local import log_tail
    from kale_magics.runner.status import RunStatus, StepStatus

    status = RunStatus(pipeline="p", steps={"a": StepStatus(name="a")})
    status.update_step("a", state="FAILED", error="pip: https://u:pw@mirror/simple refused")
    status.finish("FAILED", "see http://u:pw@kfp/#/runs")
    assert "pw" not in status.steps["a"].error and "pw" not in status.error
    log = tmp_path / "a.log"
    log.write_text("Looking in indexes: https://user:secret@mirror/simple\n")
    assert log_tail(str(log)) == ["Looking in indexes: https://***@mirror/simple"]


def test_a_password_in_the_host_never_shows_in_cli_output(notebook, capsys) -> None:
    from kale_magics import cli

    path = notebook("%%kale step a\nx = 1")
    code = cli.main(["run", str(path), "--host", "http://alice:Sup3rS3cretPw@127.0.0.1:9"])
    out, err = capsys.readouterr()
    assert code == 2
    assert "Sup3rS3cretPw" not in out + err and "alice" not in out + err
    assert "http://***@127.0.0.1:9" in err


# -- redirects: the token never follows one to another server -----------------------------------

class _Listener:
    """An HTTP server on 127.0.0.1 recording each request's path and headers; ``answer(path)``
    gives ``(status, headers, body)`` for it."""

    def __init__(self, answer) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                owner.seen.append((self.path, dict(self.headers)))
                status, headers, body = answer(self.path)
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


HEALTHY = (200, {"Content-Type": "application/json"}, b'{"multi_user": false}')


@pytest.fixture
def elsewhere() -> Iterator[_Listener]:
    """The second server, where redirects point: a login page that records who came."""
    server = _Listener(lambda path: (200, {"Content-Type": "text/html"}, b"<html>sign in</html>"))
    yield server
    server.close()


def _leaked(seen: list[tuple[str, dict[str, str]]]) -> list[str]:
    text = json.dumps(seen)
    return [secret for secret in (TOKEN, "hostile-cookie-77aa") if secret in text]


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_the_health_probe_does_not_follow_a_redirect_to_another_server(elsewhere, status) -> None:
    kfp = _Listener(lambda path: (status, {"Location": f"{elsewhere.url}/login?rd={path}"}, b""))
    try:
        conn = resolve_connection(kfp.url, token=TOKEN, cookies=COOKIE, environ=env())
        with pytest.raises(KfpAuthError) as raised:
            connection.probe(conn)
    finally:
        kfp.close()
    assert [path for path, _ in kfp.seen] == ["/apis/v2beta1/healthz"]
    assert TOKEN in kfp.seen[0][1]["Authorization"]  # the server it was meant for got it
    assert elsewhere.seen == [] and not _leaked(elsewhere.seen)
    message = str(raised.value)
    assert f"redirected /apis/v2beta1/healthz (HTTP {status}) to {elsewhere.url}, which is not " \
           "followed, so that the credentials from --token go nowhere else" in message
    assert "--cookies" in message and TOKEN not in message and "login?rd" not in message


def test_the_health_probe_follows_a_redirect_on_its_own_server() -> None:
    def answer(path: str) -> tuple[int, dict[str, str], bytes]:
        return HEALTHY if path.startswith("/pipeline/") else (302, {"Location": f"/pipeline{path}"}, b"")
    kfp = _Listener(answer)
    try:
        healthz = connection.probe(resolve_connection(kfp.url, token=TOKEN, environ=env()))
    finally:
        kfp.close()
    assert healthz == {"multi_user": False}
    assert [path for path, _ in kfp.seen] == ["/apis/v2beta1/healthz", "/pipeline/apis/v2beta1/healthz"]
    assert all(TOKEN in headers["Authorization"] for _, headers in kfp.seen)


def test_a_chain_of_redirects_cannot_leave_the_server(elsewhere) -> None:
    """Same origin first, then elsewhere: the second hop is refused."""
    def answer(path: str) -> tuple[int, dict[str, str], bytes]:
        target = f"{elsewhere.url}/login" if path.startswith("/hop") else f"/hop{path}"
        return 302, {"Location": target}, b""
    kfp = _Listener(answer)
    try:
        with pytest.raises(KfpAuthError, match=f"to {elsewhere.url}, which is not followed"):
            connection.probe(resolve_connection(kfp.url, token=TOKEN, cookies=COOKIE, environ=env()))
    finally:
        kfp.close()
    assert len(kfp.seen) == 2 and elsewhere.seen == []


def test_kfp_client_calls_drop_the_credentials_on_a_redirect_elsewhere(elsewhere) -> None:
    """kfp.Client's calls go through urllib3, which strips Authorization and Cookie when a
    redirect leaves the host: the second server is asked, but sees neither; its page, read as
    a run with every field empty, is refused in one line."""
    from kale_magics.runner.connection import open_session
    from kale_magics.runner.watch import get_run

    def answer(path: str) -> tuple[int, dict[str, str], bytes]:
        if path.startswith("/apis/v2beta1/healthz"):
            return HEALTHY
        return 302, {"Location": f"{elsewhere.url}/login"}, b""
    kfp = _Listener(answer)
    try:
        session = open_session(resolve_connection(kfp.url, token=TOKEN, cookies=COOKIE, environ=env()))
        with pytest.raises(KfpConnectionError, match="with no run"):  # a login page's answer
            get_run(session, "run-1", transport.RetryPolicy(max_outage_s=0))
    finally:
        kfp.close()
    assert any(path.startswith("/apis/v2beta1/runs/run-1") for path, _ in kfp.seen)
    assert elsewhere.seen, "the redirect was followed to the second server"
    assert _leaked(elsewhere.seen) == []
    assert not any("Authorization" in h or "Cookie" in h for _, h in elsewhere.seen)


def test_the_model_registry_client_does_not_follow_a_redirect_elsewhere(elsewhere) -> None:
    from kale_magics.runner.registry import list_versions

    registry = _Listener(lambda path: (302, {"Location": f"{elsewhere.url}/login"}, b""))
    try:
        with pytest.raises(KaleError, match=f"redirected GET .* to {elsewhere.url}, which is not "
                                            "followed so that the token goes nowhere else"):
            list_versions(registry.url, ["wine"], token=TOKEN, timeout_s=3)
    finally:
        registry.close()
    assert registry.seen and elsewhere.seen == []
