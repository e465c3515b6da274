"""A KFP API test server: KFP's v2beta1 REST API on 127.0.0.1, executing runs for real.

No KFP server can run on a machine without Kubernetes, so the tests talk to
this one through the real ``kfp.Client``. It keeps pipelines, versions,
experiments, runs and recurring runs in memory (:mod:`.resources`), executes
each run with ``kfp.local`` in a worker process (:mod:`.execution`), and
injects faults on request (:mod:`.faults`): error statuses, slowness, dropped
connections, a run lost mid-way, the whole server going away.

Use it as a context manager or call :meth:`KfpTestServer.start` /
:meth:`KfpTestServer.stop`; an ``atexit`` hook stops it at interpreter exit in
any case (HTTP thread and execution threads are daemons).
"""

from __future__ import annotations

import atexit
import http.server
import json
import shutil
import socket
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Optional

from tests.kfp_server import routes
from tests.kfp_server.execution import Execution
from tests.kfp_server.faults import Faults
from tests.kfp_server.resources import RunRecord, Store


class _Handler(http.server.BaseHTTPRequestHandler):
    """Routes one request, applying faults and the bearer-token check."""

    server: "_HttpServer"
    protocol_version = "HTTP/1.0"  # one request per connection, like a simple proxy

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        self.server.app.requests.append(f"{self.command} {self.path}")

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        app = self.server.app
        url = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        fault = app.faults.take(self.command, url.path)
        if fault is not None:
            time.sleep(fault.delay_s)
            if fault.reset:
                return self._reset()
            if fault.status is not None:
                return self._send(fault.status, routes.error_body(fault.status, "injected fault"))
        request = routes.Request(self.command, url.path, dict(urllib.parse.parse_qsl(url.query)),
                                 {k.lower(): v for k, v in self.headers.items()}, body, {})
        status, answer = self._handle(app, request)
        if fault is not None and fault.reset_after:
            return self._reset()
        self._send(status, answer)

    def _handle(self, app: "KfpTestServer", request: routes.Request) -> tuple[int, dict]:
        try:
            if app.token and request.headers.get("authorization") != f"Bearer {app.token}":
                raise routes.HttpError(401, "Unauthenticated: missing or invalid bearer token")
            handler, request.params = routes.route(request.method, request.path)
            return handler(app, request)
        except routes.HttpError as error:
            return error.status, routes.error_body(error.status, str(error))
        except Exception as error:  # a bug in the test server: answer like KFP's internal error
            return 500, routes.error_body(500, f"{type(error).__name__}: {error}")

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _reset(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _HttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, app: "KfpTestServer", port: int) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.app = app


class KfpTestServer:
    """KFP's v2beta1 REST API on ``127.0.0.1:PORT``, with real execution and fault injection.

    Parameters
    ----------
    token:
        When set, every request needs ``Authorization: Bearer TOKEN`` (else 401).
    multi_user:
        What ``healthz`` reports as ``multi_user``.
    pending_s:
        Seconds a new run stays PENDING before its first task starts.
    port:
        Port to listen on; 0 (default) picks a free one.
    """

    def __init__(self, token: Optional[str] = None, multi_user: bool = False,
                 pending_s: float = 0.3, port: int = 0) -> None:
        self.token = token
        self.multi_user = multi_user
        self.pending_s = pending_s
        self.port = port
        self.store = Store()
        self.faults = Faults()
        self.executions: dict[str, Execution] = {}
        self.requests: list[str] = []
        self.folder = Path(tempfile.mkdtemp(prefix="kfp-test-server-"))
        self._http: Optional[_HttpServer] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "KfpTestServer":
        """Listen (on the same port again after :meth:`stop_listening`) and serve in a daemon thread."""
        self._http = _HttpServer(self, self.port)
        self.port = self._http.server_address[1]
        self._thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True, name=f"kfp-test-server-{self.port}")
        self._thread.start()
        atexit.register(self.stop)
        return self

    def stop_listening(self) -> None:
        """The server goes away: close the socket (connections are refused); runs keep going."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def stop(self) -> None:
        """Stop listening, kill every run's worker and remove the server's files."""
        self.stop_listening()
        for execution in list(self.executions.values()):
            execution.drop()
        for execution in list(self.executions.values()):
            execution.thread.join(timeout=10)
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "KfpTestServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def execute(self, run: RunRecord, spec_text: str, arguments: dict[str, Any]) -> None:
        """Start executing ``run`` in the background (called by the create-run handler)."""
        run_id = run.fields["run_id"]
        execution = Execution(self.store, run, spec_text, arguments, self.folder / run_id,
                              self.pending_s)
        self.executions[run_id] = execution
        execution.start()

    def drop_run(self, run_id: str) -> None:
        """Lose a run mid-way: its worker is killed and the run disappears (404)."""
        self.executions[run_id].drop()

    def run_json(self, run_id: str) -> dict[str, Any]:
        """The run as the API returns it."""
        with self.store.lock:
            return self.store.runs[run_id].to_json()

    def wait_for_task(self, run_id: str, state: str = "RUNNING", timeout_s: float = 60,
                      task: str | None = None) -> None:
        """Block until some task of the run (the task named ``task``, when given) is in ``state``
        (bounded by ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.store.lock:
                run = self.store.runs.get(run_id)
                if run and any(t["state"] == state and t is not run.root
                               and task in (None, t["display_name"]) for t in run.tasks):
                    return
            time.sleep(0.05)
        raise TimeoutError(f"no task of run {run_id} reached {state} in {timeout_s} s")
