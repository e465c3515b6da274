"""A KFP API test server: KFP's v2beta1 REST API on 127.0.0.1, executing runs for real.

No KFP server can run on a machine without Kubernetes, so the tests talk to
this one through the real ``kfp.Client``. It keeps pipelines, versions,
experiments, runs and recurring runs in memory (:mod:`.resources`), executes
each run with ``kfp.local`` in a worker process (:mod:`.execution`) and reports
it as the Argo workflow KFP would run (:mod:`.argo`), records each task in ML Metadata and
serves it over gRPC-Web as the KFP UI's host does (:mod:`.mlmd`), and injects faults on
request (:mod:`.faults`): error statuses, slowness, dropped connections, a run
lost mid-way, the whole server going away.

Strict mode (the default of the ``kfp_server`` fixture) behaves as KFP 2.17's API server
(``backend/src/apiserver``): task entries are Argo nodes in random order with no error
texts; terminate gives CANCELING then FAILED, and HTTP 400 for a finished run; request
bodies with unknown fields are refused; multi-user namespace rules (:mod:`.access`); the
v1beta1 run detail with the workflow manifest; and every answer is checked against the
API's OpenAPI spec (:mod:`.wire`), violations collected in :attr:`KfpTestServer.violations`.
The lenient mode keeps the original stand-in's liberties (ordered tasks with error texts,
CANCELED, terminate of a finished run accepted) for the fault-injection tests.

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
from typing import Any, Iterable, Optional

from tests.kfp_server import routes
from tests.kfp_server.access import Access
from tests.kfp_server.execution import Execution
from tests.kfp_server.faults import Faults
from tests.kfp_server.mlmd import PREFIX as MLMD_PREFIX
from tests.kfp_server.mlmd import MlmdStore
from tests.kfp_server.protocol import HttpError, Request, Response, error_body, error_response
from tests.kfp_server.resources import RunRecord, Store
from tests.kfp_server.wire import Spec, upload_error_violations


class _Handler(http.server.BaseHTTPRequestHandler):
    """Routes one request, applying faults, the bearer-token check and the wire checks."""

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
                return self._send(fault.status, fault.answer(app.strict))
        request = Request(self.command, url.path, dict(urllib.parse.parse_qsl(url.query)),
                          {k.lower(): v for k, v in self.headers.items()}, body, {})
        if url.path.startswith(MLMD_PREFIX) and self.command == "POST":
            return self._send_grpc_web(*app.grpc_web(request))
        answer = app.handle(request)
        if fault is not None and fault.reset_after:
            return self._reset()
        self._send(answer[0], answer[1:] if len(answer) == 3 else answer[1])

    def _send(self, status: int, body: Any) -> None:
        content_type, data = (body if isinstance(body, tuple)
                              else ("application/json", json.dumps(body).encode()))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_grpc_web(self, status: int, headers: dict[str, str], data: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
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
    strict:
        Behave as KFP 2.17's API server (see the module docstring); False: the lenient stand-in.
    multi_user, namespaces, shared_write:
        Multi-user mode, the namespaces the token may use, whether it may write shared
        pipelines (:class:`.access.Access`).
    cache:
        Emulate KFP's task cache across this server's runs (kfp.local's cache); off by
        default so every test's run executes.
    serve_v1:
        Answer ``GET /apis/v1beta1/runs/{id}`` (the run detail with its workflow manifest).
    pending_s:
        Seconds a new run stays PENDING before its first task starts.
    port:
        Port to listen on; 0 (default) picks a free one.
    """

    def __init__(self, token: Optional[str] = None, *, strict: bool = False,
                 multi_user: bool = False, namespaces: Iterable[str] = ("kubeflow-user-example-com",),
                 shared_write: bool = False, cache: bool = False, serve_v1: bool = True,
                 pending_s: float = 0.3, port: int = 0) -> None:
        self.token, self.strict, self.serve_v1 = token, strict, serve_v1
        self.access = Access(multi_user, frozenset(namespaces), shared_write)
        self.pending_s = pending_s
        self.port = port
        self.store = Store()
        self.faults = Faults()
        self.executions: dict[str, Execution] = {}
        self.mlmd = MlmdStore()
        self.requests: list[str] = []
        self.violations: list[str] = []
        self.spec = Spec.load() if strict else None
        self.folder = Path(tempfile.mkdtemp(prefix="kfp-test-server-"))
        self.cache_root = self.folder / "cache" if cache else None
        self._http: Optional[_HttpServer] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    # -- serving ------------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        """Answer one request (after faults): authentication, the wire checks, the handler."""
        try:
            if self.token and request.headers.get("authorization") != f"Bearer {self.token}":
                raise HttpError(401, "Unauthenticated: missing or invalid bearer token")
            self._refuse_unknown_fields(request)
            handler, request.params = routes.route(request.method, request.path)
            answer = handler(self, request)
        except HttpError as error:
            answer = error_response(error, self.strict)
        except Exception as error:  # a bug in the test server: answer like KFP's internal error
            answer = 500, error_body(500, f"{type(error).__name__}: {error}", self.strict)
        self._check_answer(request, answer)
        return answer

    def grpc_web(self, request: Request) -> tuple[int, dict[str, str], bytes]:
        """Answer a gRPC-Web call to ML Metadata (:mod:`.mlmd`), as the KFP UI's host does;
        without the bearer token, HTTP 401 as the API."""
        if self.token and request.headers.get("authorization") != f"Bearer {self.token}":
            return 401, {"content-type": "text/plain"}, b"Unauthenticated\n"
        return (200, *self.mlmd.answer(request.path, request.body))

    def _refuse_unknown_fields(self, request: Request) -> None:
        """Strict mode: a JSON body with a field the API does not define is HTTP 400.

        (``DiscardUnknown: false``, ``common/utils.go``.)
        """
        operation = self.spec.operation(request.method, request.path) if self.spec else None
        schema = self.spec.request_schema(operation) if operation else None
        if schema is not None:
            unknown = self.spec.unknown_fields(schema, request.json())
            if unknown:
                raise HttpError(400, f'proto: (line 1:2): unknown field "{unknown[0]}"')

    def _check_answer(self, request: Request, answer: Response) -> None:
        """Strict mode: record what in the answer the real server would not send."""
        operation = self.spec.operation(request.method, request.path) if self.spec else None
        if operation is None:
            return
        status = answer[0]
        if request.path.endswith(("/upload", "/upload_version")) and status != 200:
            found = upload_error_violations(*(answer[1:] if len(answer) == 3 else
                                              ("application/json", json.dumps(answer[1]).encode())))
        elif len(answer) == 3:
            found = [f"a {answer[1]} answer from a JSON endpoint"]
        else:
            found = self.spec.violations(self.spec.answer_schema(operation, status), answer[1])
        self.violations.extend(f"{request.method} {request.path} -> {status}: {v}" for v in found)

    # -- lifecycle ----------------------------------------------------------------------------

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

    # -- runs ---------------------------------------------------------------------------------

    def execute(self, run: RunRecord, spec_text: str, arguments: dict[str, Any]) -> None:
        """Start executing ``run`` in the background (called by the create-run handler)."""
        execution = Execution(self.store, run, spec_text, arguments, self.folder / run.run_id,
                              self.pending_s, self.cache_root, mlmd=self.mlmd)
        self.executions[run.run_id] = execution
        execution.start()

    def drop_run(self, run_id: str) -> None:
        """Lose a run mid-way: its worker is killed and the run disappears (404)."""
        self.executions[run_id].drop()

    def break_run(self, run_id: str, message: str) -> None:
        """From now on the server cannot convert the run: it answers only its ids and ``message``."""
        with self.store.lock:
            self.store.runs[run_id].broken = message

    def run_json(self, run_id: str) -> dict[str, Any]:
        """The run as the API returns it."""
        with self.store.lock:
            return self.store.runs[run_id].to_json()

    def wait_for_task(self, run_id: str, state: str = "RUNNING", timeout_s: float = 60,
                      task: str | None = None) -> None:
        """Block until some step's executor (the executor of task ``task``, when given) is in
        ``state`` (bounded by ``timeout_s``)."""
        phase = {"RUNNING": "Running", "SUCCEEDED": "Succeeded", "FAILED": "Failed"}[state]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.store.lock:
                run = self.store.runs.get(run_id)
                if run and any(n["phase"] == phase and n["templateName"] == "system-container-impl"
                               and (task is None or n["name"].endswith(f".{task}.executor"))
                               for n in run.workflow.nodes.values()):
                    return
            time.sleep(0.05)
        raise TimeoutError(f"no task of run {run_id} reached {state} in {timeout_s} s")

    def wait_for_state(self, run_id: str, states: Iterable[str], timeout_s: float = 60) -> str:
        """Block until the run is in one of ``states``; return it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.store.lock:
                state = self.store.runs[run_id].state
            if state in states:
                return state
            time.sleep(0.05)
        raise TimeoutError(f"run {run_id} did not reach {list(states)} in {timeout_s} s")
