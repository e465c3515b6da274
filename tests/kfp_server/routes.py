"""The REST endpoints of the KFP test server: the subset of KFP's v2beta1 API kale-magics uses.

Paths, query parameters and JSON shapes are those ``kfp.Client`` and the
generated ``kfp_server_api`` send and expect (``kfp_server_api/api/*.py``).
Each handler takes the server and a :class:`Request` and returns
``(status, body)``; errors are KFP's ``{"error", "code", "message"}`` shape.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import yaml

from tests.kfp_server.resources import RunRecord, matches_filter, new_id, rfc3339

if TYPE_CHECKING:
    from tests.kfp_server.server import KfpTestServer

API = "/apis/v2beta1"
Response = tuple[int, dict[str, Any]]


@dataclass
class Request:
    """An HTTP request as the handlers see it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    params: dict[str, str]

    def json(self) -> dict[str, Any]:
        """The body parsed as JSON (an empty object when there is none)."""
        return json.loads(self.body or b"{}")


class HttpError(Exception):
    """Answer with ``status`` and KFP's error body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def error_body(status: int, message: str) -> dict[str, Any]:
    """KFP's error JSON (grpc-gateway: ``error``, ``code`` as a gRPC code, ``message``)."""
    grpc = {400: 3, 401: 16, 403: 7, 404: 5, 409: 6, 500: 13, 503: 14}.get(status, 2)
    return {"error": message, "code": grpc, "message": message, "details": []}


def _listing(items: list[dict[str, Any]], key: str, request: Request) -> dict[str, Any]:
    selected = [i for i in items if matches_filter(i, request.query.get("filter", ""))]
    if request.query.get("sort_by", "").endswith(" desc"):
        selected.reverse()
    size = int(request.query.get("page_size") or 0) or len(selected)
    body: dict[str, Any] = {"total_size": len(selected)}
    if selected:
        body[key] = selected[:size]
    return body


def _get(table: dict[str, Any], key: str, what: str) -> Any:
    if key not in table:
        raise HttpError(404, f"{what} {key} not found")
    return table[key]


# --- healthz -------------------------------------------------------------------------------

def healthz(server: "KfpTestServer", request: Request) -> Response:
    return 200, {"multi_user": server.multi_user, "pipeline_store": "database"}


# --- pipelines and versions ------------------------------------------------------------------

def _parse_upload(request: Request) -> str:
    """The text of the ``uploadfile`` part of a multipart upload."""
    head = f"Content-Type: {request.headers.get('content-type', '')}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + request.body)
    for part in message.iter_parts() if message.is_multipart() else []:
        if part.get_param("name", header="content-disposition") == "uploadfile":
            return part.get_payload(decode=True).decode("utf-8")
    raise HttpError(400, "missing uploadfile in the multipart body")


def _checked_spec(text: str) -> dict[str, Any]:
    try:
        docs = [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as error:
        raise HttpError(400, f"invalid pipeline spec: {error}") from None
    if not docs or "pipelineInfo" not in docs[0] or "root" not in docs[0]:
        raise HttpError(400, "invalid pipeline spec: missing pipelineInfo or root")
    return docs[0]


def _new_pipeline(server: "KfpTestServer", name: str, description: str, namespace: str) -> dict:
    store = server.store
    if any(p["display_name"] == name for p in store.pipelines.values()):
        raise HttpError(409, f"Failed to create a new pipeline. The name {name} already exists. "
                             "Please specify a new name")
    pipeline = {"pipeline_id": new_id(), "display_name": name, "name": name,
                "description": description, "created_at": rfc3339()}
    if namespace:
        pipeline["namespace"] = namespace
    store.pipelines[pipeline["pipeline_id"]] = pipeline
    return pipeline


def _new_version(server: "KfpTestServer", pipeline_id: str, name: str, description: str,
                 text: str) -> dict:
    store = server.store
    _get(store.pipelines, pipeline_id, "pipeline")
    if any(v["display_name"] == name for v in store.versions_of(pipeline_id)):
        raise HttpError(409, f"Failed to create a new pipeline version. The name {name} already "
                             "exists. Please specify a new name")
    version = {"pipeline_id": pipeline_id, "pipeline_version_id": new_id(), "display_name": name,
               "name": name, "description": description, "created_at": rfc3339(),
               "pipeline_spec": _checked_spec(text)}
    store.versions[version["pipeline_version_id"]] = version
    store.specs[version["pipeline_version_id"]] = text
    return version


def create_pipeline(server: "KfpTestServer", request: Request) -> Response:
    body = request.json()
    with server.store.lock:
        return 200, _new_pipeline(server, body.get("display_name", ""), body.get("description", ""),
                                  body.get("namespace", ""))


def upload_pipeline(server: "KfpTestServer", request: Request) -> Response:
    text = _parse_upload(request)
    _checked_spec(text)
    q = request.query
    name = q.get("display_name") or q.get("name") or ""
    with server.store.lock:
        pipeline = _new_pipeline(server, name, q.get("description", ""), q.get("namespace", ""))
        _new_version(server, pipeline["pipeline_id"], name, q.get("description", ""), text)
    return 200, pipeline


def upload_version(server: "KfpTestServer", request: Request) -> Response:
    text = _parse_upload(request)
    q = request.query
    with server.store.lock:
        version = _new_version(server, q.get("pipelineid", ""), q.get("display_name") or q.get("name", ""),
                               q.get("description", ""), text)
    return 200, version


def list_pipelines(server: "KfpTestServer", request: Request) -> Response:
    with server.store.lock:
        return 200, _listing(list(server.store.pipelines.values()), "pipelines", request)


def get_pipeline(server: "KfpTestServer", request: Request) -> Response:
    with server.store.lock:
        return 200, _get(server.store.pipelines, request.params["id"], "pipeline")


def list_versions(server: "KfpTestServer", request: Request) -> Response:
    with server.store.lock:
        _get(server.store.pipelines, request.params["id"], "pipeline")
        versions = server.store.versions_of(request.params["id"])
        return 200, _listing(versions, "pipeline_versions", request)


def get_version(server: "KfpTestServer", request: Request) -> Response:
    with server.store.lock:
        return 200, _get(server.store.versions, request.params["vid"], "pipeline version")


# --- experiments -----------------------------------------------------------------------------

def create_experiment(server: "KfpTestServer", request: Request) -> Response:
    body = request.json()
    with server.store.lock:
        name = body.get("display_name", "")
        if any(e["display_name"] == name for e in server.store.experiments.values()):
            raise HttpError(409, f"Failed to create a new experiment. The name {name} already exists")
        experiment = {"experiment_id": new_id(), "display_name": name, "created_at": rfc3339(),
                      "description": body.get("description") or "", "storage_state": "AVAILABLE"}
        if body.get("namespace"):
            experiment["namespace"] = body["namespace"]
        server.store.experiments[experiment["experiment_id"]] = experiment
    return 200, experiment


def list_experiments(server: "KfpTestServer", request: Request) -> Response:
    with server.store.lock:
        return 200, _listing(list(server.store.experiments.values()), "experiments", request)


def get_experiment(server: "KfpTestServer", request: Request) -> Response:
    with server.store.lock:
        return 200, _get(server.store.experiments, request.params["id"], "experiment")


# --- runs ------------------------------------------------------------------------------------

def _spec_of(server: "KfpTestServer", body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The YAML to run and the version reference, from a run or recurring-run body."""
    reference = body.get("pipeline_version_reference") or {}
    if reference:
        version = _get(server.store.versions, reference.get("pipeline_version_id", ""),
                       "pipeline version")
        return server.store.specs[version["pipeline_version_id"]], reference
    if body.get("pipeline_spec"):
        return yaml.safe_dump(body["pipeline_spec"]), {}
    raise HttpError(400, "a run needs pipeline_version_reference or pipeline_spec")


def _run_fields(server: "KfpTestServer", body: dict[str, Any], reference: dict) -> dict[str, Any]:
    _get(server.store.experiments, body.get("experiment_id", ""), "experiment")
    fields = {"run_id": new_id(), "experiment_id": body["experiment_id"],
              "display_name": body.get("display_name", ""), "storage_state": "AVAILABLE",
              "runtime_config": body.get("runtime_config") or {}, "created_at": rfc3339(),
              "scheduled_at": rfc3339(), "service_account": body.get("service_account") or ""}
    if reference:
        fields["pipeline_version_reference"] = reference
    else:
        fields["pipeline_spec"] = body["pipeline_spec"]
    return fields


def create_run(server: "KfpTestServer", request: Request) -> Response:
    body = request.json()
    with server.store.lock:
        text, reference = _spec_of(server, body)
        run = RunRecord(_run_fields(server, body, reference))
        server.store.runs[run.fields["run_id"]] = run
        server.store.run_creations += 1
        server.execute(run, text, run.fields["runtime_config"].get("parameters") or {})
        return 200, run.to_json()


def list_runs(server: "KfpTestServer", request: Request) -> Response:
    with server.store.lock:
        runs = [r.to_json() for r in server.store.runs.values()
                if request.query.get("experiment_id", r.fields["experiment_id"]) == r.fields["experiment_id"]]
        return 200, _listing(runs, "runs", request)


def get_run(server: "KfpTestServer", request: Request) -> Response:
    with server.store.lock:
        return 200, _get(server.store.runs, request.params["id"], "run").to_json()


def terminate_run(server: "KfpTestServer", request: Request) -> Response:
    with server.store.lock:
        _get(server.store.runs, request.params["id"], "run")
    server.executions[request.params["id"]].cancel()
    return 200, {}


# --- recurring runs --------------------------------------------------------------------------

def create_recurring_run(server: "KfpTestServer", request: Request) -> Response:
    body = request.json()
    with server.store.lock:
        _, reference = _spec_of(server, body)
        _get(server.store.experiments, body.get("experiment_id", ""), "experiment")
        trigger = body.get("trigger") or {}
        if not (trigger.get("cron_schedule") or trigger.get("periodic_schedule")):
            raise HttpError(400, "a recurring run needs a trigger")
        cron = (trigger.get("cron_schedule") or {}).get("cron", "")
        if cron and len(cron.split()) != 6:
            raise HttpError(400, f"invalid cron expression {cron!r}: expected 6 fields")
        now = rfc3339()
        recurring = {**body, "recurring_run_id": new_id(), "created_at": now, "updated_at": now,
                     "status": "ENABLED" if body.get("mode", "ENABLE") == "ENABLE" else "DISABLED",
                     "max_concurrency": str(body.get("max_concurrency") or "1")}
        if reference:
            recurring["pipeline_version_reference"] = reference
        server.store.recurring_runs[recurring["recurring_run_id"]] = recurring
    return 200, recurring


def list_recurring_runs(server: "KfpTestServer", request: Request) -> Response:
    with server.store.lock:
        items = [r for r in server.store.recurring_runs.values()
                 if request.query.get("experiment_id", r["experiment_id"]) == r["experiment_id"]]
        return 200, _listing(items, "recurringRuns", request)


def get_recurring_run(server: "KfpTestServer", request: Request) -> Response:
    with server.store.lock:
        return 200, _get(server.store.recurring_runs, request.params["id"], "recurring run")


def delete_recurring_run(server: "KfpTestServer", request: Request) -> Response:
    with server.store.lock:
        _get(server.store.recurring_runs, request.params["id"], "recurring run")
        del server.store.recurring_runs[request.params["id"]]
    return 200, {}


Handler = Callable[["KfpTestServer", Request], Response]
ID = r"(?P<id>[^/:]+)"
ROUTES: list[tuple[str, re.Pattern[str], Handler]] = [
    (method, re.compile(f"{API}{pattern}$"), handler) for method, pattern, handler in [
        ("GET", "/healthz", healthz),
        ("POST", "/pipelines/upload", upload_pipeline),
        ("POST", "/pipelines/upload_version", upload_version),
        ("POST", "/pipelines", create_pipeline),
        ("GET", "/pipelines", list_pipelines),
        ("GET", f"/pipelines/{ID}", get_pipeline),
        ("GET", f"/pipelines/{ID}/versions", list_versions),
        ("GET", f"/pipelines/{ID}/versions/(?P<vid>[^/]+)", get_version),
        ("POST", "/experiments", create_experiment),
        ("GET", "/experiments", list_experiments),
        ("GET", f"/experiments/{ID}", get_experiment),
        ("POST", "/runs", create_run),
        ("GET", "/runs", list_runs),
        ("GET", f"/runs/{ID}", get_run),
        ("POST", f"/runs/{ID}:terminate", terminate_run),
        ("POST", "/recurringruns", create_recurring_run),
        ("GET", "/recurringruns", list_recurring_runs),
        ("GET", f"/recurringruns/{ID}", get_recurring_run),
        ("DELETE", f"/recurringruns/{ID}", delete_recurring_run),
    ]
]


def route(method: str, path: str) -> tuple[Handler, dict[str, str]]:
    """The handler of ``method path`` and its path parameters; HttpError 404/405 when none."""
    allowed = False
    for route_method, pattern, handler in ROUTES:
        match = pattern.match(path)
        if match:
            if route_method == method:
                return handler, match.groupdict()
            allowed = True
    raise HttpError(405 if allowed else 404, f"no route for {method} {path}")
