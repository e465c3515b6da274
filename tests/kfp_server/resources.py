"""The KFP objects the test server keeps, in the JSON shapes of KFP's v2beta1 REST API.

Shapes follow what KFP's API server sends (``server/api_converter.go``), checked against
the API's OpenAPI spec in strict mode (:mod:`.wire`): zero values, empty lists and unset
fields are left out; times are whole seconds; an unfinished run's ``finished_at`` is
``1970-01-01T00:00:00Z`` (``FinishedAtInSec`` 0), an unfinished task's ``end_time``
``0001-01-01T00:00:00Z`` (a zero Go time, see :mod:`.argo`); the recurring-run list is
under ``recurringRuns`` (its proto field is camelCase).

A run's task entries are the nodes of its Argo workflow (:class:`.argo.Workflow`). In
strict mode they come in a new random order on every answer (the run store gathers them
with ``GROUP_CONCAT`` and no ``ORDER BY``, ``storage/run_store.go``) and carry no error;
the lenient mode of the original stand-in lists them in start order and adds ``error``
texts to failed tasks and runs, which the real server never does.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from typing import Any, Optional

from tests.kfp_server.argo import TaskSpec, Workflow, seconds_text

EPOCH = "1970-01-01T00:00:00Z"
TERMINAL = frozenset({"SUCCEEDED", "SKIPPED", "FAILED", "CANCELED"})


def rfc3339(seconds: Optional[float] = None) -> str:
    """``seconds`` since the epoch (default now) as KFP writes it: RFC 3339 UTC, whole seconds."""
    return seconds_text(time.time() if seconds is None else seconds)


def new_id() -> str:
    """A KFP-style UUID."""
    return str(uuid.uuid4())


def matches_filter(obj: dict[str, Any], filter_json: str) -> bool:
    """Apply a KFP filter (JSON ``{"predicates": [...]}``); only EQUALS on string keys."""
    if not filter_json:
        return True
    for predicate in json.loads(filter_json).get("predicates", []):
        value = predicate.get("string_value", predicate.get("stringValue"))
        operation = predicate.get("operation", predicate.get("op", "EQUALS"))
        if operation not in ("EQUALS", 1) or obj.get(predicate.get("key", "")) != value:
            return False
    return True


#: Fields holding free-form JSON (protobuf Struct and Value maps), kept as they are.
FREE_FORM = frozenset({"parameters", "pipeline_spec", "platform_spec"})


def without_zero(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` without its zero values, nested messages too (``EmitUnpopulated: false``)."""
    kept = {k: without_zero(v) if isinstance(v, dict) and k not in FREE_FORM else v
            for k, v in obj.items()}
    return {k: v for k, v in kept.items() if v not in ("", None, [], {}, 0) or v is True}


def task_specs(ir: dict[str, Any]) -> dict[str, TaskSpec]:
    """Every task of a compiled pipeline, nested groups' too (KFP's task names are unique in
    a pipeline): upstream tasks, retry counts, enclosing groups; groups (a component with a
    ``dag``) have kind "group", or "loop" with a ``parameterIterator``/``artifactIterator``."""
    found: dict[str, TaskSpec] = {}

    def walk(dag: dict[str, Any], group: str) -> None:
        for name, task in dag.get("tasks", {}).items():
            component = ir.get("components", {}).get(task.get("componentRef", {}).get("name", ""), {})
            loop = "parameterIterator" in task or "artifactIterator" in task
            found[name] = TaskSpec(after=list(task.get("dependentTasks", [])),
                                   retries=int(task.get("retryPolicy", {}).get("maxRetryCount", 0)),
                                   group=group,
                                   kind="loop" if loop else "group" if "dag" in component else "")
            if "dag" in component:
                walk(component["dag"], f"{group}.{name}" if group else name)

    walk(ir.get("root", {}).get("dag", {}), "")
    return found


class Store:
    """Every pipeline, version, experiment, run and recurring run, guarded by one lock."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.pipelines: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, dict[str, Any]] = {}
        self.specs: dict[str, str] = {}  # version id -> uploaded YAML text
        self.experiments: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, "RunRecord"] = {}
        self.recurring_runs: dict[str, dict[str, Any]] = {}
        self.run_creations = 0  # POSTs that created a run, for duplicate checks

    def versions_of(self, pipeline_id: str) -> list[dict[str, Any]]:
        """The versions of a pipeline, oldest first."""
        with self.lock:
            return [v for v in self.versions.values() if v["pipeline_id"] == pipeline_id]


class RunRecord:
    """One run: its fields, state history and Argo workflow.

    Parameters
    ----------
    fields:
        The run's fields as created (ids, names, runtime config, ...).
    workflow:
        The run's Argo workflow.
    strict:
        Answer as KFP's API server does (see the module docstring).
    namespace:
        The namespace of the run's experiment ("" in single-user mode).
    """

    def __init__(self, fields: dict[str, Any], workflow: Workflow, strict: bool = True,
                 namespace: str = "") -> None:
        self.fields, self.workflow, self.strict, self.namespace = fields, workflow, strict, namespace
        self.state = "PENDING"
        self.error = ""  # lenient mode only: why the run failed
        self.broken = ""  # the API server cannot convert the run: it answers this error only
        self.finished_at: Optional[float] = None
        self.history: list[dict[str, Any]] = [{"update_time": rfc3339(), "state": "PENDING"}]
        self.rng = random.Random()

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self.fields["run_id"]

    def set_state(self, state: str, error: str = "", *, record: bool = True) -> None:
        """Change the run state; ``record`` appends it to the state history (terminate does not:
        ``storage/run_store.go`` TerminateRun sets CANCELING without a history entry)."""
        if state == self.state:
            return
        self.state, self.error = state, error or self.error
        if record:
            self.history.append({"update_time": rfc3339(), "state": state})
        if state in TERMINAL:
            self.finished_at = time.time()

    def tasks_json(self) -> list[dict[str, Any]]:
        """The run's task entries: shuffled and without errors (strict), else ordered with errors."""
        entries = self.workflow.task_details(self.run_id, errors=not self.strict)
        if self.strict:
            self.rng.shuffle(entries)
            return entries
        return sorted(entries, key=lambda e: e["start_time"])

    def to_json(self) -> dict[str, Any]:
        """The run as ``GET /apis/v2beta1/runs/{id}`` returns it."""
        if self.broken:  # api_converter.go toApiRun: a run it cannot convert is its ids and an error
            return {"run_id": self.run_id, "experiment_id": self.fields["experiment_id"],
                    "error": {"code": 13, "message": self.broken}}
        body = without_zero(dict(self.fields))
        body.update(state=self.state, state_history=self.history,
                    finished_at=rfc3339(self.finished_at) if self.finished_at else EPOCH,
                    run_details={"task_details": self.tasks_json()})
        if not body["run_details"]["task_details"]:
            body["run_details"] = {}
        if self.error and not self.strict:
            body["error"] = {"code": 2, "message": self.error}
        return body

    def to_v1_json(self) -> dict[str, Any]:
        """The v1beta1 run detail (``GET /apis/v1beta1/runs/{id}``): the run and its workflow manifest.

        ``toApiRunDetailV1`` (``server/api_converter.go``) returns the stored Argo workflow as
        ``pipeline_runtime.workflow_manifest``, a JSON string.
        """
        status = {"PENDING": "Pending", "RUNNING": "Running", "SUCCEEDED": "Succeeded",
                  "SKIPPED": "Skipped", "FAILED": "Failed", "CANCELING": "Terminating"}
        run = without_zero({"id": self.run_id, "name": self.fields.get("display_name", ""),
                            "created_at": self.fields["created_at"],
                            "scheduled_at": self.fields.get("scheduled_at", ""),
                            "finished_at": rfc3339(self.finished_at) if self.finished_at else EPOCH,
                            "status": status.get(self.state, "Failed"),
                            "storage_state": "STORAGESTATE_AVAILABLE"})
        manifest = self.workflow.manifest(self.run_id, self.namespace)
        return {"run": run, "pipeline_runtime": {"workflow_manifest": json.dumps(manifest)}}

