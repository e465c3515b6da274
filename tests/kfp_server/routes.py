"""The REST endpoints of the KFP test server: the subset of KFP's API kale-magics uses.

Paths, query parameters and JSON shapes are those ``kfp.Client`` and the generated
``kfp_server_api`` send and expect (``kfp_server_api/api/*.py``), checked against KFP's
OpenAPI spec in strict mode (:mod:`.wire`). Each handler takes the server and a
:class:`~.protocol.Request` and returns ``(status, body)``; this module holds the health
check, experiments and recurring runs, and the route table; pipelines and runs have their
own modules.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Callable

from tests.kfp_server import pipelines, runs
from tests.kfp_server.protocol import API, HttpError, Request, Response, get_or_404, listing
from tests.kfp_server.resources import new_id, rfc3339, without_zero

if TYPE_CHECKING:
    from tests.kfp_server.server import KfpTestServer


def healthz(server: "KfpTestServer", request: Request) -> Response:
    return 200, without_zero({"multi_user": server.access.multi_user, "pipeline_store": "database"})


def create_experiment(server: "KfpTestServer", request: Request) -> Response:
    body = request.json()
    namespace = body.get("namespace", "")
    server.access.experiment(namespace, "create", "create a experiment")
    with server.store.lock:
        name = body.get("display_name", "")
        if any(e["display_name"] == name and e.get("namespace", "") == namespace
               for e in server.store.experiments.values()):
            raise HttpError(409, f"Failed to create a experiment: Already exist error: Failed to create "
                                 f"a new experiment. The name {name} already exists")
        experiment = without_zero({"experiment_id": new_id(), "display_name": name,
                                   "created_at": rfc3339(), "description": body.get("description", ""),
                                   "storage_state": "AVAILABLE", "namespace": namespace})
        server.store.experiments[experiment["experiment_id"]] = experiment
    return 200, experiment


def list_experiments(server: "KfpTestServer", request: Request) -> Response:
    namespace = request.query.get("namespace", "")
    server.access.experiment(namespace, "list", "list experiments")
    with server.store.lock:
        items = [e for e in server.store.experiments.values()
                 if not server.access.multi_user or e.get("namespace", "") == namespace]
        return 200, listing(items, "experiments", request)


def get_experiment(server: "KfpTestServer", request: Request) -> Response:
    with server.store.lock:
        return 200, get_or_404(server.store.experiments, request.params["id"], "experiment")


def create_recurring_run(server: "KfpTestServer", request: Request) -> Response:
    body = request.json()
    with server.store.lock:
        recurring = runs.recurring_run(server, body)
        server.store.recurring_runs[recurring["recurring_run_id"]] = recurring
    return 200, recurring


def list_recurring_runs(server: "KfpTestServer", request: Request) -> Response:
    wanted, namespace = request.query.get("experiment_id"), request.query.get("namespace", "")
    if wanted is None:
        server.access.experiment(namespace, "list", "list recurring runs")
    with server.store.lock:
        items = [r for r in server.store.recurring_runs.values()
                 if wanted in (None, r["experiment_id"])
                 and (wanted or not server.access.multi_user or r.get("namespace", "") == namespace)]
        return 200, listing(items, "recurringRuns", request)


def get_recurring_run(server: "KfpTestServer", request: Request) -> Response:
    with server.store.lock:
        return 200, get_or_404(server.store.recurring_runs, request.params["id"], "recurring run")


def delete_recurring_run(server: "KfpTestServer", request: Request) -> Response:
    with server.store.lock:
        get_or_404(server.store.recurring_runs, request.params["id"], "recurring run")
        del server.store.recurring_runs[request.params["id"]]
    return 200, {}


Handler = Callable[["KfpTestServer", Request], Response]
ID = r"(?P<id>[^/:]+)"
ROUTES: list[tuple[str, re.Pattern[str], Handler]] = [
    (method, re.compile(f"{prefix}{pattern}$"), handler) for method, prefix, pattern, handler in [
        ("GET", API, "/healthz", healthz),
        ("POST", API, "/pipelines/upload", pipelines.upload_pipeline),
        ("POST", API, "/pipelines/upload_version", pipelines.upload_version),
        ("POST", API, "/pipelines", pipelines.create_pipeline),
        ("GET", API, "/pipelines", pipelines.list_pipelines),
        ("GET", API, f"/pipelines/{ID}", pipelines.get_pipeline),
        ("GET", API, f"/pipelines/{ID}/versions", pipelines.list_versions),
        ("GET", API, f"/pipelines/{ID}/versions/(?P<vid>[^/]+)", pipelines.get_version),
        ("POST", API, "/experiments", create_experiment),
        ("GET", API, "/experiments", list_experiments),
        ("GET", API, f"/experiments/{ID}", get_experiment),
        ("POST", API, "/runs", runs.create_run),
        ("GET", API, "/runs", runs.list_runs),
        ("GET", API, f"/runs/{ID}", runs.get_run),
        ("POST", API, f"/runs/{ID}:terminate", runs.terminate_run),
        ("GET", "/apis/v1beta1", f"/runs/{ID}", runs.get_run_v1),
        ("POST", API, "/recurringruns", create_recurring_run),
        ("GET", API, "/recurringruns", list_recurring_runs),
        ("GET", API, f"/recurringruns/{ID}", get_recurring_run),
        ("DELETE", API, f"/recurringruns/{ID}", delete_recurring_run),
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
