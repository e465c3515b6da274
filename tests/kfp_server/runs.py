"""Runs of the KFP test server: create, list, get (v2beta1 and v1beta1), terminate.

A created run is executed for real (:meth:`KfpTestServer.execute`); its state and task
entries follow its Argo workflow (:mod:`.argo`). ``GET /apis/v1beta1/runs/{id}`` answers
the v1beta1 run detail, whose ``pipeline_runtime.workflow_manifest`` is the run's Argo
workflow with the node messages (``server/api_converter.go`` ``toApiRunDetailV1``).
"""

from __future__ import annotations

import datetime
import random
import time
from typing import TYPE_CHECKING, Any

import yaml

from tests.kfp_server.argo import Workflow
from tests.kfp_server.protocol import Request, Response, HttpError, get_or_404, listing
from tests.kfp_server.resources import RunRecord, new_id, rfc3339, task_specs, without_zero

if TYPE_CHECKING:
    from tests.kfp_server.server import KfpTestServer


def spec_of(server: "KfpTestServer", body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The YAML to run and the version reference, from a run or recurring-run body."""
    reference = body.get("pipeline_version_reference") or {}
    if reference:
        version = get_or_404(server.store.versions, reference.get("pipeline_version_id", ""),
                             "pipeline version")
        return server.store.specs[version["pipeline_version_id"]], reference
    if body.get("pipeline_spec"):
        return yaml.safe_dump(body["pipeline_spec"]), {}
    raise HttpError(400, "Failed to create a run: Invalid input error: a run needs "
                         "pipeline_version_reference or pipeline_spec")


def experiment_of(server: "KfpTestServer", body: dict[str, Any], what: str) -> dict[str, Any]:
    """The experiment a run or recurring run goes into, checked for the caller's access."""
    experiment = get_or_404(server.store.experiments, body.get("experiment_id", ""), "experiment")
    server.access.experiment(experiment.get("namespace", ""), "create", what)
    return experiment


def _new_run(server: "KfpTestServer", body: dict[str, Any], text: str, reference: dict) -> RunRecord:
    experiment = experiment_of(server, body, "create a run")
    now = time.time()
    fields = {"run_id": new_id(), "experiment_id": experiment["experiment_id"],
              "display_name": body.get("display_name", ""), "storage_state": "AVAILABLE",
              "runtime_config": body.get("runtime_config") or {}, "created_at": rfc3339(now),
              "scheduled_at": rfc3339(now), "service_account": body.get("service_account") or ""}
    if reference:
        fields["pipeline_version_reference"] = reference
    else:
        fields["pipeline_spec"] = body["pipeline_spec"]
    ir = next(d for d in yaml.safe_load_all(text) if d)
    workflow = Workflow(ir["pipelineInfo"]["name"], task_specs(ir), now, random.Random())
    return RunRecord(fields, workflow, server.strict, experiment.get("namespace", ""))


def create_run(server: "KfpTestServer", request: Request) -> Response:
    body = request.json()
    with server.store.lock:
        text, reference = spec_of(server, body)
        run = _new_run(server, body, text, reference)
        server.store.runs[run.run_id] = run
        server.store.run_creations += 1
        server.execute(run, text, run.fields["runtime_config"].get("parameters") or {})
        return 200, run.to_json()


def list_runs(server: "KfpTestServer", request: Request) -> Response:
    with server.store.lock:
        wanted = request.query.get("experiment_id")
        runs = [r.to_json() for r in server.store.runs.values()
                if wanted in (None, r.fields["experiment_id"])]
        return 200, listing(runs, "runs", request)


def get_run(server: "KfpTestServer", request: Request) -> Response:
    with server.store.lock:
        return 200, get_or_404(server.store.runs, request.params["id"], "run").to_json()


def get_run_v1(server: "KfpTestServer", request: Request) -> Response:
    if not server.serve_v1:
        raise HttpError(404, "Not Found")
    with server.store.lock:
        return 200, get_or_404(server.store.runs, request.params["id"], "run").to_v1_json()


def terminate_run(server: "KfpTestServer", request: Request) -> Response:
    run_id = request.params["id"]
    with server.store.lock:
        get_or_404(server.store.runs, run_id, "run")
    server.executions[run_id].cancel()
    return 200, {}


def recurring_run(server: "KfpTestServer", body: dict[str, Any]) -> dict[str, Any]:
    """A recurring run created from ``body``, as the server answers it."""
    _, reference = spec_of(server, body)
    experiment = experiment_of(server, body, "create a recurring run")
    trigger = body.get("trigger") or {}
    if not (trigger.get("cron_schedule") or trigger.get("periodic_schedule")):
        raise HttpError(400, "Failed to create a recurring run: Invalid input error: a recurring "
                             "run needs a trigger")
    cron = (trigger.get("cron_schedule") or {}).get("cron", "")
    if cron and len(cron.split()) != 6:
        raise HttpError(400, "Failed to create a recurring run: Invalid input error: Schedule cron "
                             f"is not a supported format: expected 6 fields, got {cron!r}")
    for schedule in trigger.values():  # the server answers times as it stores them: UTC seconds
        for key in ("start_time", "end_time"):
            if schedule.get(key):
                schedule[key] = rfc3339(datetime.datetime.fromisoformat(
                    schedule[key].replace("Z", "+00:00")).timestamp())
    now = rfc3339()
    recurring = {**body, "recurring_run_id": new_id(), "created_at": now, "updated_at": now,
                 "status": "ENABLED" if body.get("mode", "ENABLE") == "ENABLE" else "DISABLED",
                 "max_concurrency": str(body.get("max_concurrency") or "1"),
                 "namespace": experiment.get("namespace", "")}
    if reference:
        recurring["pipeline_version_reference"] = reference
    return without_zero(recurring)
