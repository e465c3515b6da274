"""Follow a run on a KFP server and report it through the one status model.

:func:`watch_run` polls ``GET /apis/v2beta1/runs/{id}`` every ``interval_s``
seconds and applies each answer to a :class:`~kale_magics.runner.status.RunStatus`
(:func:`apply_run`), whose hooks (``on_step``, ``on_status``, ``on_done``) the
CLI, the magics and the widget subscribe to, exactly as for a local run.

Mapping KFP to steps: ``run_details.task_details`` holds one entry per
workflow node (the ``root`` DAG, ``<task>-driver`` nodes, executors). The
entries whose ``display_name`` is a task of the pipeline's root DAG are the
steps; KFP names a task after its component with ``_`` turned into ``-``
(step ``train_forest`` is task ``train-forest``), and kale-magics step names
never contain ``-``, so the mapping back is exact. The ``kale-runtime`` task,
which writes the step runtime for the steps, is not a step.

Events come in order: a step first seen already finished (it started and
ended between two polls) is reported RUNNING, then its final state, and the
changes of one poll are reported in the order they happened.

The run is over at SUCCEEDED, SKIPPED, FAILED or CANCELED (kfp's own
``wait_for_run_completion`` misses CANCELED, kubeflow/pipelines#14473).
Transient polling errors are retried (:mod:`.transport`); the watch ends with
an error after ``RetryPolicy.max_outage_s`` seconds without an answer, or when
``timeout_s`` is exceeded, never silently.

Metric values are not part of KFP's v2beta1 REST API (they live in ML Metadata,
which only the UI reads), so a remote status carries a ``metrics_note`` saying
so and where to see them.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

from kale_magics.codegen.embedding import RUNTIME_COMPONENT
from kale_magics.errors import RunError
from kale_magics.model import Plan
from kale_magics.runner.connection import KfpSession
from kale_magics.runner.status import (
    CANCELED,
    FAILED,
    PENDING,
    RUNNING,
    TERMINAL_STATES,
    RunHooks,
    RunStatus,
    StepStatus,
)
from kale_magics.runner.transport import RetryPolicy, call

METRICS_NOTE = ("metric values are not available through the KFP REST API (KFP keeps them in ML "
                "Metadata); see them in the KFP UI: {url}")
#: KFP's "not set" time.
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


@dataclass(frozen=True)
class WatchOptions:
    """How to follow a run.

    Attributes
    ----------
    interval_s:
        Seconds between two polls.
    timeout_s:
        Stop watching (with an error; the run goes on) after this many seconds; None: no limit.
    retry:
        How long to ride out an outage of the server.
    """

    interval_s: float = 5.0
    timeout_s: Optional[float] = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)


def task_name(step: str) -> str:
    """The KFP task name of step ``step`` (``train_forest`` -> ``train-forest``)."""
    return step.replace("_", "-")


def step_name(task: str) -> str:
    """The step name of KFP task ``task`` (``train-forest`` -> ``train_forest``)."""
    return task.replace("-", "_")


def _seconds(moment: Any) -> Optional[float]:
    """A datetime from the API as seconds since the epoch; None for unset or KFP's zero time."""
    if not isinstance(moment, datetime.datetime):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp() if moment > EPOCH else None


def get_run(session: KfpSession, run_id: str, retry: RetryPolicy = RetryPolicy(),
            sleep: Callable[[float], None] = time.sleep) -> Any:
    """``GET`` the run (a ``V2beta1Run``), riding out transient failures."""
    return call(session.connection, f"reading run {run_id}", session.client.runs.run_service_get_run,
                run_id=run_id, policy=retry, sleep=sleep)


def run_steps(session: KfpSession, run: Any) -> list[str]:
    """The step names of a run, from its pipeline spec (inline, or its pipeline version's)."""
    spec = run.pipeline_spec
    reference = run.pipeline_version_reference
    if not spec and reference is not None and reference.pipeline_version_id:
        version = call(session.connection, f"reading the pipeline version of run {run.run_id}",
                       session.client.pipelines.pipeline_service_get_pipeline_version,
                       pipeline_id=reference.pipeline_id,
                       pipeline_version_id=reference.pipeline_version_id)
        spec = version.pipeline_spec
    spec = (spec or {}).get("pipeline_spec", spec or {})  # {pipeline_spec, platform_spec} wrapper
    tasks = spec.get("root", {}).get("dag", {}).get("tasks", {})
    names = _topological({name: set(task.get("dependentTasks", [])) for name, task in tasks.items()})
    return [step_name(name) for name in names if name != task_name(RUNTIME_COMPONENT)]


def _topological(upstream: dict[str, set[str]]) -> list[str]:
    """Task names so that each comes after the tasks it depends on (ties by name)."""
    order: list[str] = []
    remaining = dict(upstream)
    while remaining:
        ready = sorted(n for n, deps in remaining.items() if not deps & remaining.keys())
        ready = ready or sorted(remaining)[:1]  # a cycle cannot come from KFP; do not loop forever
        order.extend(ready)
        for name in ready:
            del remaining[name]
    return order


def new_status(session: KfpSession, run: Any, plan: Optional[Plan] = None,
               hooks: Optional[RunHooks] = None) -> RunStatus:
    """An empty status for ``run``: steps from ``plan`` when given, else from the run's spec."""
    if plan is not None:
        steps = {s.name: StepStatus(name=s.name, inputs=[i.name for i in s.inputs],
                                    outputs=list(s.outputs)) for s in plan.steps}
    else:
        steps = {name: StepStatus(name=name) for name in run_steps(session, run)}
    url = session.connection.run_url(run.run_id)
    root = run.runtime_config.pipeline_root if run.runtime_config else None
    return RunStatus(pipeline=plan.name if plan else (run.display_name or run.run_id), steps=steps,
                     start=_seconds(run.created_at) or time.time(), run_id=run.run_id, url=url,
                     pipeline_root=root or "the KFP server's default pipeline root",
                     hooks=hooks or RunHooks(), metrics_note=METRICS_NOTE.format(url=url))


def _task_changes(status: RunStatus, tasks: Iterable[Any]) -> list[tuple[float, str, dict[str, Any]]]:
    """``(time, step, changes)`` for every step whose task moved on since the last poll."""
    latest: dict[str, Any] = {}
    for task in tasks:  # a retried task appears again; the last entry is the current attempt
        name = step_name(task.display_name or "")
        if name in status.steps:
            latest[name] = task
    changes = []
    for name, task in latest.items():
        step, state = status.steps[name], str(task.state or PENDING)
        start, end = _seconds(task.start_time), _seconds(task.end_time)
        if state == PENDING or state == "RUNTIME_STATE_UNSPECIFIED":
            continue
        if step.state == PENDING:
            changes.append((start or time.time(), name, {"state": RUNNING, "start": start}))
        if state != RUNNING and step.state != state:
            error = (task.error.message or "") if task.error is not None and state == FAILED else ""
            duration = end - start if end and start else None
            changes.append((end or time.time(), name, {"state": state, "end": end, "error": error,
                                                       "duration_s": duration}))
    return sorted(changes, key=lambda change: change[0])


def apply_run(status: RunStatus, run: Any) -> None:
    """Update ``status`` (and notify its hooks) from a ``V2beta1Run`` answer."""
    tasks = run.run_details.task_details if run.run_details else None
    for _, name, change in _task_changes(status, tasks or []):
        status.update_step(name, **change)
    state = str(run.state or PENDING)
    error = (run.error.message or "") if run.error is not None else ""
    if state in TERMINAL_STATES:
        status.finish(state, error if state == FAILED else "", end=_seconds(run.finished_at),
                      running_state=CANCELED if state == CANCELED else FAILED)
    elif state != "RUNTIME_STATE_UNSPECIFIED":
        status.set_state(state, error)


def watch_run(session: KfpSession, status: RunStatus, options: WatchOptions = WatchOptions(),
              sleep: Callable[[float], None] = time.sleep) -> RunStatus:
    """Poll the run of ``status`` until it ends, updating ``status`` and calling its hooks.

    Returns
    -------
    RunStatus
        ``status``, in a terminal state.

    Raises
    ------
    KfpConnectionError
        The server stopped answering for longer than ``options.retry.max_outage_s``.
    KfpAuthError
        The server started refusing the credentials.
    RunError
        The run disappeared (404) or ``options.timeout_s`` passed; the message
        says the run may still be going on and how to look at it.
    """
    deadline = None if options.timeout_s is None else time.monotonic() + options.timeout_s
    while True:
        apply_run(status, get_run(session, status.run_id, options.retry, sleep))
        if status.state in TERMINAL_STATES:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise RunError(f"run {status.run_id} is still {status.state} after "
                           f"{options.timeout_s:g} s; it goes on on the server: follow it with "
                           f"`kale-magics status {status.run_id} --watch` or at {status.url}")
        sleep(options.interval_s)


def wait_for_end(session: KfpSession, status: RunStatus, wait_s: float, interval_s: float = 1.0,
                 sleep: Callable[[float], None] = time.sleep) -> RunStatus:
    """Poll for at most ``wait_s`` seconds until the run ends; return ``status`` either way.

    Unlike :func:`watch_run`, running out of time is not an error (used after
    a terminate request, where CANCELING is an acceptable answer).

    Raises
    ------
    KfpConnectionError, KfpAuthError, RunError
        As :func:`get_run`.
    """
    deadline = time.monotonic() + wait_s
    while status.state not in TERMINAL_STATES and time.monotonic() < deadline:
        sleep(interval_s)
        apply_run(status, get_run(session, status.run_id, sleep=sleep))
    return status
