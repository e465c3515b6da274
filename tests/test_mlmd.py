"""Metric values of remote runs from ML Metadata over gRPC-Web (issue 21: a remote sweep's metrics).

The message subset is checked against wire bytes written here by hand from the field numbers of
google/ml-metadata ``metadata_store.proto`` / ``metadata_store_service.proto`` (not with the
descriptor under test), the framing against the gRPC-Web protocol, and a remote sweep on the KFP
test server against the same trials run locally.
"""

from __future__ import annotations

import socket
import struct
import urllib.request

import pytest

from kale_magics import api, cli
from kale_magics.runner import grpc_web, mlmd_proto
from kale_magics.runner.connection import Connection
from kale_magics.runner.mlmd import MlmdClient, MlmdUnavailable, metric_values
from kale_magics.runner.watch import WatchOptions
from tests.conftest import write_notebook
from tests.kfp_server.fixtures import SECRET_TOKEN, kfp_server, token_env  # noqa: F401  (fixtures)

#: Two steps with metrics (one named with an underscore, so its KFP task is ``prepare-data``);
#: values that are no round numbers, so they must come through bit for bit.
NOTEBOOK = ("%kale pipeline --name mlmd-metrics",
            "%%kale parameters\nX = 1",
            "%%kale step prepare_data\nvalues = [X / 7, X ** 0.5]\nfirst = values[0]",
            "%%kale metrics\nfirst",
            "%%kale step fit\nratio = sum(values) / 3\nloss = 1 / (1 + ratio)",
            "%%kale metrics\nratio\nloss")


# -- wire bytes written by hand ------------------------------------------------------------------

def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def tag(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def length(number: int, payload: bytes) -> bytes:
    return tag(number, 2) + varint(len(payload)) + payload


def entry(key: str, value: bytes) -> bytes:
    """A map<string, Value> entry: key = 1, value = 2."""
    return length(1, key.encode()) + length(2, value)


def test_artifact_fields_are_those_of_metadata_store_proto() -> None:
    """Artifact: id = 1, type_id = 2, uri = 3, custom_properties = 5, type = 8; Value:
    int_value = 1, double_value = 2, string_value = 3; a struct_value (4, not in the subset) is
    skipped as an unknown field."""
    double = tag(2, 1) + struct.pack("<d", 0.1 + 0.2)
    wire = (tag(1, 0) + varint(41) + tag(2, 0) + varint(7) + length(3, b"s3://b/m")
            + length(5, entry("acc", double)) + length(5, entry("n", tag(1, 0) + varint(3)))
            + length(5, entry("display_name", length(3, b"kale_metrics")))
            + length(5, entry("table", length(4, b"\x0a\x00")))
            + length(8, b"system.Metrics"))
    artifact = mlmd_proto.message_class("Artifact").FromString(wire)
    assert (artifact.id, artifact.type_id, artifact.uri, artifact.type) == (41, 7, "s3://b/m",
                                                                           "system.Metrics")
    assert metric_values(artifact) == {"acc": 0.1 + 0.2, "n": 3.0}


def test_execution_event_and_requests_match_the_real_field_numbers() -> None:
    execution = mlmd_proto.message_class("Execution").FromString(
        tag(1, 0) + varint(9) + tag(3, 0) + varint(3)
        + length(5, entry("task_name", length(3, b"fit"))))
    assert execution.id == 9 and execution.last_known_state == 3  # COMPLETE
    assert execution.custom_properties["task_name"].string_value == "fit"
    event = mlmd_proto.message_class("Event").FromString(
        tag(1, 0) + varint(41) + tag(2, 0) + varint(9) + length(3, length(1, length(2, b"m")))
        + tag(4, 0) + varint(4))
    assert (event.artifact_id, event.execution_id, event.path.steps[0].key, event.type) == \
        (41, 9, "m", mlmd_proto.enum_value("Event.Type", "OUTPUT"))
    request = mlmd_proto.message("GetContextByTypeAndNameRequest", type_name="system.PipelineRun",
                                 context_name="run-1")
    assert request.SerializeToString() == length(1, b"system.PipelineRun") + length(2, b"run-1")
    ids = mlmd_proto.message("GetEventsByExecutionIDsRequest", execution_ids=[1, 300])
    assert ids.SerializeToString() == tag(1, 0) + varint(1) + tag(1, 0) + varint(300)  # proto2: unpacked
    answer = mlmd_proto.message_class("GetContextByTypeAndNameResponse").FromString(
        length(1, tag(1, 0) + varint(5) + length(3, b"run-1") + length(6, b"system.PipelineRun")))
    assert (answer.context.id, answer.context.name, answer.context.type) == \
        (5, "run-1", "system.PipelineRun")


# -- gRPC-Web framing -----------------------------------------------------------------------------

def test_a_reply_is_data_frames_then_a_trailer_frame() -> None:
    body = (grpc_web.frame(b"\x08\x01") + grpc_web.frame(b"\x10\x02")
            + grpc_web.trailer(5, "no such run: 100% gone"))
    assert body[:5] == b"\x00\x00\x00\x00\x02"  # flag 0, big-endian length
    reply = grpc_web.read_reply(body, {})
    assert reply.messages == [b"\x08\x01", b"\x10\x02"]
    assert (reply.status, reply.status_name, reply.message) == (5, "NOT_FOUND", "no such run: 100% gone")


def test_a_trailers_only_error_comes_in_the_http_headers() -> None:
    reply = grpc_web.read_reply(b"", {"grpc-status": "12", "grpc-message": "unknown%20method"})
    assert (reply.messages, reply.status_name, reply.message) == ([], "UNIMPLEMENTED", "unknown method")


@pytest.mark.parametrize("body, problem", [
    (b"\x00\x00\x00", "frame header is cut short"),
    (b"\x00\x00\x00\x00\x09abc", "a frame of 9 bytes is cut short"),
    (b"\x01\x00\x00\x00\x01a", "compressed frame"),
])
def test_broken_framing_is_refused(body, problem) -> None:
    with pytest.raises(grpc_web.FramingError, match=problem):
        grpc_web.split_frames(body)


# -- the client against the KFP test server's MLMD ----------------------------------------------

def client_for(server, ui_host: str = "", token: str = SECRET_TOKEN) -> MlmdClient:
    return MlmdClient(Connection(host=server.url + "/pipeline", ui_host=ui_host, token=token,
                                 auth="--token"), timeout_s=3)


def post(url: str, body: bytes, token: str = SECRET_TOKEN) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method="POST", headers={
        **grpc_web.HEADERS, "Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        return answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.read()


def test_the_server_answers_like_metadata_envoy(kfp_server) -> None:  # noqa: F811
    """An unknown run: an empty response (as MLMD); an unknown method: UNIMPLEMENTED; a body that
    is no framed request: INTERNAL; both trailers-only."""
    assert client_for(kfp_server).run_metrics("no-such-run") == {}
    base = f"{kfp_server.url}/ml_metadata.MetadataStoreService"
    status, headers, body = post(f"{base}/DeleteEverything", grpc_web.frame(b""))
    assert (status, headers["grpc-status"], body) == (200, "12", b"")
    assert "unknown method DeleteEverything" in headers["grpc-message"]
    for broken in (b"\x00\x00\x00\x00\x05\x08", grpc_web.frame(b"\xff\xff\xff")):
        status, headers, body = post(f"{base}/GetContextByTypeAndName", broken)
        assert (status, headers["grpc-status"], body) == (200, "13", b"")


def test_a_missing_endpoint_is_one_reason_naming_the_ui_host(kfp_server) -> None:  # noqa: F811
    kfp_server.faults.add(path="/ml_metadata.", status=404, times=1)  # the API server: no MLMD
    with pytest.raises(MlmdUnavailable) as raised:
        client_for(kfp_server).run_metrics("run-1")
    assert raised.value.lasting and "answered HTTP 404" in str(raised.value)
    assert "set $KF_PIPELINES_UI_ENDPOINT" in str(raised.value)
    kfp_server.faults.add(path="/ml_metadata.", status=200, content_type="text/html", times=1,
                          body=b"<html>sign in</html>")
    with pytest.raises(MlmdUnavailable, match="answered with a web page, not gRPC-Web"):
        client_for(kfp_server).run_metrics("run-1")


def test_unreachable_or_refused(kfp_server) -> None:  # noqa: F811
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(MlmdUnavailable, match="connection refused") as raised:
        client_for(kfp_server, ui_host=closed).run_metrics("run-1")
    assert raised.value.lasting and closed in str(raised.value)
    with pytest.raises(MlmdUnavailable, match=r"refused the request \(HTTP 401\) with the "
                                              r"credentials from --token") as raised:
        client_for(kfp_server, token="wrong-token").run_metrics("run-1")
    assert "wrong-token" not in str(raised.value)


def test_a_redirect_is_not_followed_with_the_credentials() -> None:
    """A login redirect to another server: refused, and that server never sees the token."""
    import http.server
    import threading

    seen: list[str] = []

    class Capture(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization", ""))
            self.send_response(200)
            self.end_headers()

        do_POST = do_GET

        def log_message(self, *args) -> None:
            pass

    class Redirect(Capture):
        def do_POST(self) -> None:
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{capture.server_address[1]}/login")
            self.end_headers()

    capture = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Capture)
    redirect = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    for server in (capture, redirect):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = MlmdClient(Connection(host=f"http://127.0.0.1:{redirect.server_address[1]}",
                                       token=SECRET_TOKEN, auth="--token"), timeout_s=3)
        with pytest.raises(MlmdUnavailable, match="HTTP 302, a redirect"):
            client.run_metrics("run-1")
    finally:
        for server in (capture, redirect):
            server.shutdown()
            server.server_close()
    assert seen == []


def test_credentials_go_only_to_the_api_hosts_server(kfp_server) -> None:  # noqa: F811
    assert client_for(kfp_server).headers()["Authorization"] == f"Bearer {SECRET_TOKEN}"
    elsewhere = client_for(kfp_server, ui_host="http://ui.example.com:8080/pipeline")
    assert "Authorization" not in elsewhere.headers()
    assert elsewhere.endpoint == "http://ui.example.com:8080/ml_metadata.MetadataStoreService"


# -- remote sweeps --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def notebook(tmp_path_factory):
    return write_notebook(tmp_path_factory.mktemp("mlmd") / "metrics.ipynb", NOTEBOOK)


@pytest.fixture(scope="module")
def local_trials(notebook):
    return api.sweep(notebook, ["X=1,3"], metric="loss", goal="minimize", parallel=2)


@pytest.mark.integration
def test_remote_metric_values_are_the_local_ones(kfp_server, token_env, notebook,  # noqa: F811
                                                local_trials) -> None:
    remote = api.sweep(notebook, ["X=1,3"], metric="loss", goal="minimize", parallel=2,
                       host=kfp_server.url, watch=WatchOptions(interval_s=0.3))
    local = [list(t.metrics.items()) for t in local_trials.trials]
    assert [list(t.metrics.items()) for t in remote.trials] == local  # same values, same order
    assert [k for k, _ in local[0]] == ["first", "ratio", "loss"]  # notebook order
    assert remote.best is remote.trials[1] and local_trials.best is local_trials.trials[1]
    assert [t.metrics_note for t in remote.trials] == ["", ""]
    frame, _ = remote.table()
    assert list(frame["best"]) == [False, True] and list(frame["first"]) == [1 / 7, 3 / 7]


@pytest.mark.integration
def test_unreachable_mlmd_is_said_once_and_the_sweep_still_runs(kfp_server, token_env, notebook,  # noqa: F811
                                                               capsys) -> None:
    fault = kfp_server.faults.add(path="/ml_metadata.", status=404)
    try:
        code = cli.main(["sweep", str(notebook), "X=1,3", "--metric", "loss", "--minimize",
                         "--host", kfp_server.url, "--interval", "0.3"])
    finally:
        kfp_server.faults.clear()
    out, err = capsys.readouterr()
    assert code == 0, err
    assert fault.hits == 1  # asked once: the second trial did not try again
    assert (out + err).count("cannot read metric values from ML Metadata") == 1
    assert "no best trial: cannot read metric values from ML Metadata at " \
           f"{kfp_server.url}/ml_metadata.MetadataStoreService: it answered HTTP 404" in out
    assert "$KF_PIPELINES_UI_ENDPOINT" in out and out.count("succeeded") >= 2
    assert SECRET_TOKEN not in out + err


# -- single remote runs ---------------------------------------------------------------------------

@pytest.mark.integration
def test_a_single_run_says_once_why_mlmd_is_unreadable(kfp_server, token_env, notebook,  # noqa: F811
                                                       capsys) -> None:
    kfp_server.faults.add(path="/ml_metadata.", status=404)
    try:
        code = cli.main(["run", str(notebook), "--host", kfp_server.url, "--interval", "0.3"])
    finally:
        kfp_server.faults.clear()
    out, err = capsys.readouterr()
    assert code == 0, out + err
    run_id = next(line.split()[1].rstrip(":") for line in out.splitlines() if line.startswith("run "))
    assert out.count("cannot read metric values") == 1 and "REST API" not in out
    note = next(line for line in out.splitlines() if line.startswith("metrics: "))
    assert note.startswith(f"metrics: cannot read metric values from ML Metadata at {kfp_server.url}"
                           "/ml_metadata.MetadataStoreService: it answered HTTP 404 (")
    assert "set $KF_PIPELINES_UI_ENDPOINT" in note
    assert note.endswith(f"; see the metric values in the KFP UI: {kfp_server.url}/#/runs/details/{run_id}")
    assert SECRET_TOKEN not in out + err


@pytest.mark.integration
def test_one_reader_per_connection(kfp_server, token_env, notebook) -> None:  # noqa: F811
    """The runs, watches and status reads of one connection share its reader: a lasting
    failure is asked once; a new connection asks again and reads the values."""
    from kale_magics.runner.mlmd import reader_of

    session = api.connect(kfp_server.url)
    assert reader_of(session) is reader_of(session)
    compiled = api.compile_notebook(notebook, str(notebook.parent / "out-reader"))
    fault = kfp_server.faults.add(path="/ml_metadata.", status=404)
    try:
        first = api.run(compiled, api.KfpTarget(session=session, watch_options=WatchOptions(0.3)))
        again = api.remote_status(session, first.run_id, compiled.plan)
    finally:
        kfp_server.faults.clear()
    assert fault.hits == 1 and first.metrics == again.metrics == {}
    assert again.metrics_note == first.metrics_note and "HTTP 404" in first.metrics_note
    fresh = api.remote_status(api.connect(kfp_server.url), first.run_id, compiled.plan)
    assert list(fresh.metrics) == ["first", "ratio", "loss"] and fresh.metrics["first"] == 1 / 7
    assert fresh.metrics_note == ""
