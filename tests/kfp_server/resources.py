"""The KFP objects the test server keeps, in the JSON shapes of KFP's v2beta1 REST API.

Shapes follow ``kfp_server_api``'s models (``V2beta1Run``, ``V2beta1PipelineTaskDetail``,
...) and what KFP's API server really sends: empty lists and unset fields are
left out, an unfinished run's ``finished_at`` and an unfinished task's
``end_time`` are the zero time ``1970-01-01T00:00:00Z``, and the recurring-run
list is under ``recurringRuns`` (its proto field is camelCase).
"""

from __future__ import annotations

import datetime
import itertools
import json
import threading
import time
import uuid
from typing import Any, Optional

EPOCH = "1970-01-01T00:00:00Z"
TERMINAL = frozenset({"SUCCEEDED", "SKIPPED", "FAILED", "CANCELED"})


def rfc3339(seconds: Optional[float] = None) -> str:
    """``seconds`` since the epoch (default now) as an RFC 3339 UTC time string."""
    moment = datetime.datetime.fromtimestamp(time.time() if seconds is None else seconds,
                                             datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
    """One run: its fields, state history and per-task details."""

    _task_numbers = itertools.count(1)

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields
        self.state = "PENDING"
        self.error = ""
        self.finished_at: Optional[float] = None
        self.history: list[dict[str, Any]] = [{"update_time": rfc3339(), "state": "PENDING"}]
        self.tasks: list[dict[str, Any]] = []
        self.root = self._task("root", "RUNNING", parent="")

    def set_state(self, state: str, error: str = "") -> None:
        """Change the run state (and record it); a terminal state also stamps ``finished_at``."""
        if state == self.state:
            return
        self.state = state
        self.error = error or self.error
        self.history.append({"update_time": rfc3339(), "state": state})
        if state in TERMINAL:
            self.finished_at = time.time()
            self.root.update(state=state, end_time=rfc3339(self.finished_at))

    def _task(self, name: str, state: str, parent: Optional[str] = None) -> dict[str, Any]:
        number = next(self._task_numbers)
        now = rfc3339()
        task = {"run_id": self.fields["run_id"], "task_id": new_id(), "display_name": name,
                "create_time": now, "start_time": now, "end_time": EPOCH, "state": state,
                "execution_id": str(number), "pod_name": f"{name}-{number}",
                "state_history": [{"update_time": now, "state": state}],
                "executor_detail": {"main_job": f"{name}-{number}"}}
        if parent is None:
            task["parent_task_id"] = self.root["task_id"]
            self.root.setdefault("child_tasks", []).append({"pod_name": task["pod_name"]})
        self.tasks.append(task)
        return task

    def task_started(self, name: str) -> None:
        """A task's driver ran and its executor pod started."""
        if self.state == "PENDING":
            self.set_state("RUNNING")
        self.finish_task(self._task(f"{name}-driver", "RUNNING"), "SUCCEEDED")
        self._task(name, "RUNNING")

    def task_ended(self, name: str, state: str, error: str = "") -> None:
        """The executor of task ``name`` ended in ``state``."""
        for task in reversed(self.tasks):
            if task["display_name"] == name and task["state"] == "RUNNING":
                self.finish_task(task, state, error)
                return

    def finish_task(self, task: dict[str, Any], state: str, error: str = "") -> None:
        """End ``task`` in ``state``."""
        task.update(state=state, end_time=rfc3339())
        task["state_history"].append({"update_time": task["end_time"], "state": state})
        if error:
            task["error"] = {"code": 2, "message": error}

    def to_json(self) -> dict[str, Any]:
        """The run as ``GET /apis/v2beta1/runs/{id}`` returns it."""
        body = dict(self.fields)
        body.update(state=self.state, state_history=self.history,
                    finished_at=rfc3339(self.finished_at) if self.finished_at else EPOCH,
                    run_details={"pipeline_context_id": "1", "pipeline_run_context_id": "2",
                                 "task_details": [dict(t) for t in self.tasks]})
        if self.error:
            body["error"] = {"code": 2, "message": self.error}
        return body
