"""Follow a run on a KFP server and report it through the one status model.

A :class:`Follower` polls ``GET /apis/v2beta1/runs/{id}`` and applies each answer to a
:class:`~kale_magics.runner.status.RunStatus`, whose hooks (``on_step``, ``on_status``,
``on_done``) the CLI, the magics and the widget subscribe to, as for a local run.
What it relies on is what KFP 2.17's API server really sends:

- Steps are mapped to task entries by the structure KFP reports, whatever their order
  (:mod:`.task_map`): a step is RUNNING once its task's node runs, then SUCCEEDED, FAILED
  or SKIPPED (a false condition: straight to SKIPPED); a cache hit is SUCCEEDED and
  ``cached``. A step that started and ended between two polls is reported RUNNING, then
  its final state, and the changes of one poll are reported in the order they happened.
  The ``kale-runtime`` task, which writes the step runtime every step imports, is no step.
- KFP never says why a step failed. When a step fails, and when the run ends, the run's
  Argo workflow is read (:mod:`.workflow`): a failed step's error is the exception, the
  notebook cell and line its runtime left as the pod's termination message, and the error
  text always says where the step's log is (the run's page in the KFP UI, the step's node,
  the pod). Without the workflow the text says KFP reported no error and where to look.
- Terminating a run makes it CANCELING, then FAILED: KFP never reports CANCELED for it.
  A run this session asked to terminate, a run seen CANCELING, or a run whose workflow
  was terminated is CANCELED to the user when it ends FAILED; its steps stopped by the
  cancel are CANCELED, a step whose own code failed stays FAILED.
- A run the server cannot convert comes back as ids and an error only: the watch stops
  with that error (:class:`~kale_magics.errors.RunError`) instead of waiting forever.

The run is over at SUCCEEDED, SKIPPED, FAILED or CANCELED (kfp's own
``wait_for_run_completion`` misses CANCELED, kubeflow/pipelines#14473). Transient polling
errors are retried (:mod:`.transport`); the watch ends with an error after
``RetryPolicy.max_outage_s`` seconds without an answer, or when ``timeout_s`` is exceeded,
never silently. Metric values are not part of KFP's REST API (they live in ML Metadata):
:func:`kale_magics.targets.kfp.follow` and ``status_of`` read them when the run ends
(:mod:`.mlmd`); until then a remote status's ``metrics_note`` says so and where to see them.
"""

from __future__ import annotations

import graphlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from kale_magics.codegen.embedding import RUNTIME_COMPONENT
from kale_magics.errors import KaleError, KfpConnectionError, RunError
from kale_magics.model import Plan, task_name
from kale_magics.redaction import redact_urls
from kale_magics.runner import remote, task_map
from kale_magics.runner.connection import KfpSession
from kale_magics.runner.status import (
    CANCELED,
    CANCELING,
    FAILED,
    PENDING,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
    TERMINAL_STATES,
    RunHooks,
    RunStatus,
    StepStatus,
)
from kale_magics.runner.task_map import seconds
from kale_magics.runner.transport import RetryPolicy, call
from kale_magics.runner.workflow import StepFacts, WorkflowFacts, read_facts

METRICS_NOTE = ("metric values are read from ML Metadata when the run ends; see them in the KFP "
                "UI: {url}")


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


def get_run(session: KfpSession, run_id: str, retry: RetryPolicy = RetryPolicy(),
            sleep: Callable[[float], None] = time.sleep) -> Any:
    """``GET`` the run (a ``V2beta1Run``), riding out transient failures.

    Raises
    ------
    KfpConnectionError
        The answer is no run (an HTML page, e.g. a login page the request was redirected to:
        the generated client reads any body as a run with every field empty), as a run that
        stayed PENDING would never end.
    """
    run = call(session.connection, f"reading run {run_id}", session.client.runs.run_service_get_run,
               run_id=run_id, policy=retry, sleep=sleep)
    if not getattr(run, "run_id", None):
        raise KfpConnectionError(
            f"KFP at {redact_urls(session.connection.host)} answered reading run {run_id} with no "
            "run (a login page or another service?): check that --host is KFP's API address and "
            "pass the credentials it needs (--token or --cookies)")
    return run


def run_spec(session: KfpSession, run: Any) -> dict[str, Any]:
    """The run's pipeline spec (inline, or its pipeline version's; {} when unknown)."""
    spec = run.pipeline_spec
    reference = run.pipeline_version_reference
    if not spec and reference is not None and reference.pipeline_version_id:
        version = call(session.connection, f"reading the pipeline version of run {run.run_id}",
                       session.client.pipelines.pipeline_service_get_pipeline_version,
                       pipeline_id=reference.pipeline_id,
                       pipeline_version_id=reference.pipeline_version_id)
        spec = version.pipeline_spec
    return (spec or {}).get("pipeline_spec", spec or {})  # {pipeline_spec, platform_spec} wrapper


def spec_groups(spec: dict[str, Any]) -> dict[str, list[str]]:
    """Each step of a spec (by step name) and the groups around its task, outermost first
    (``{"deploy": ["exit-handler-1", "condition-4"]}``). Groups (a component with a ``dag``:
    ``dsl.If``, ``dsl.ParallelFor``, ``dsl.ExitHandler``) and kale-magics' helper tasks
    (components ``comp-kale-...``: the runtime, a loop's items, a condition's check; no step
    may be called ``kale...``) are no steps."""
    components = spec.get("components", {})
    found: dict[str, list[str]] = {}

    def walk(dag: dict[str, Any], groups: list[str]) -> None:
        tasks = dag.get("tasks", {})
        order = _topological({n: set(t.get("dependentTasks", [])) & set(tasks) for n, t in tasks.items()})
        for name in order:
            component = tasks[name].get("componentRef", {}).get("name", "")
            if "dag" in components.get(component, {}):
                walk(components[component]["dag"], [*groups, name])
            elif not component.startswith("comp-kale-"):
                found[_step_of(name, tasks[name])] = groups

    walk(spec.get("root", {}).get("dag", {}), [])
    return found


def run_steps(session: KfpSession, run: Any) -> list[str]:
    """The step names of a run, from its pipeline spec, upstream first (:func:`spec_groups`).

    A step's name is its component's (``comp-train-forest`` runs ``train_forest``), so
    ``train_forest`` and ``train-forest`` map back exactly.
    """
    steps = list(spec_groups(run_spec(session, run)))
    return [step for step in steps if step != RUNTIME_COMPONENT]  # it writes the runtime, no step


def _step_of(task: str, spec: dict[str, Any]) -> str:
    """A task's step name: its component's name without ``comp-``, ``-`` read as ``_``."""
    component = spec.get("componentRef", {}).get("name", "")
    name = component[len("comp-"):] if component.startswith("comp-") else task
    return name.replace("-", "_")


def _topological(upstream: dict[str, set[str]]) -> list[str]:
    """Task names so that each comes after the tasks it depends on, ties by name
    (``graphlib``'s order, each ready set sorted)."""
    sorter = graphlib.TopologicalSorter(upstream)
    sorter.prepare()  # a cycle cannot come from KFP: CycleError if it did
    order: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready())
        order.extend(ready)
        sorter.done(*ready)
    return order


def new_status(session: KfpSession, run: Any, plan: Optional[Plan] = None,
               hooks: Optional[RunHooks] = None) -> RunStatus:
    """An empty status for ``run``: steps from ``plan`` when given, else from the run's spec."""
    if plan is not None:
        steps = {s.name: StepStatus(name=s.name, inputs=[i.name for i in s.inputs],
                                    outputs=list(s.outputs)) for s in plan.steps}
    else:
        steps = {name: StepStatus(name=name) for name in (run_steps(session, run) if run.state else [])}
    url = session.connection.run_url(run.run_id)
    root = run.runtime_config.pipeline_root if run.runtime_config else None
    return RunStatus(pipeline=plan.name if plan else (run.display_name or run.run_id), steps=steps,
                     start=seconds(run.created_at) or time.time(), run_id=run.run_id, url=url,
                     pipeline_root=root or "the KFP server's default pipeline root",
                     hooks=hooks or RunHooks(), metrics_note=METRICS_NOTE.format(url=url))


class Follower:
    """Applies a KFP server's answers about one run to its :class:`RunStatus`.

    Parameters
    ----------
    session:
        The connection; :attr:`KfpSession.terminated` says which runs this session canceled.
    status:
        The run's status, changed in place (its hooks are called).
    """

    def __init__(self, session: KfpSession, status: RunStatus) -> None:
        self.session, self.status = session, status
        self.cancel_seen = False
        self.facts: Optional[WorkflowFacts] = None
        self._facts_readable = True
        self._driver_failed: set[str] = set()
        #: Each step's enclosing groups (:func:`spec_groups`), to see a false condition's steps.
        self.groups: dict[str, list[str]] = {}

    @property
    def canceled(self) -> bool:
        """This session terminated the run, it was seen CANCELING, or its workflow was terminated."""
        return (self.cancel_seen or self.status.run_id in self.session.terminated
                or bool(self.facts and self.facts.terminated))

    def poll(self, retry: RetryPolicy = RetryPolicy(), sleep: Callable[[float], None] = time.sleep) -> None:
        """Read the run once and apply it."""
        self.apply(get_run(self.session, self.status.run_id, retry, sleep))

    def apply(self, run: Any) -> None:
        """Update the status (and notify its hooks) from a ``V2beta1Run`` answer.

        Raises
        ------
        RunError
            The server cannot convert the run: it answered only its ids and an error.
        """
        state = str(run.state or "")
        if self.status.state in TERMINAL_STATES:  # reported once; later answers change nothing
            return
        if run.error is not None and state in ("", "RUNTIME_STATE_UNSPECIFIED"):
            raise RunError(f"KFP at {self.session.connection.host} cannot report run {run.run_id}: "
                           f"{run.error.message or 'no reason given'}; its state is unknown here, "
                           f"look at it in the KFP UI: {self.status.url}")
        self.cancel_seen = self.cancel_seen or state == CANCELING
        tasks = run.run_details.task_details if run.run_details else None
        views = task_map.step_views(list(self.status.steps), task_map.entries(tasks), self.groups)
        if state in TERMINAL_STATES or any(v.state == FAILED and self.status.steps[n].state not in
                                           TERMINAL_STATES for n, v in views.items()):
            self._read_facts()
        order = {name: index for index, name in enumerate(self.status.steps)}
        for _, _, _, name, change in sorted((when, order[name], change["state"] != RUNNING, name, change)
                                            for when, name, change in self._changes(views)):
            self.status.update_step(name, **change)
        if state in TERMINAL_STATES:
            self._finish(state, run)
        elif state not in ("", "RUNTIME_STATE_UNSPECIFIED"):
            self.status.set_state(state)

    def _read_facts(self) -> None:
        """Read the run's workflow (on a new failure and at the end; never again once unreadable)."""
        if self._facts_readable:
            self.facts = read_facts(self.session, self.status.run_id, list(self.status.steps))
            self._facts_readable = self.facts is not None

    def _changes(self, views: dict[str, task_map.StepView]) -> list[tuple[float, str, dict[str, Any]]]:
        """``(time, step, changes)`` of each step that moved on. KFP's times are whole seconds:
        changes at one time are applied in step order (upstream steps first), a step's RUNNING
        before its end."""
        changes = []
        for name, view in views.items():
            step = self.status.steps[name]
            cache_hit = view.state == step.state == SUCCEEDED and view.cached and not step.cached
            items = dict(view.items)
            if items and items != step.items and step.state not in TERMINAL_STATES and view.state in (
                    PENDING, step.state):  # only the items moved on
                changes.append((time.time(), name, {"state": step.state, "items": items}))
            if not cache_hit and (view.state in (PENDING, step.state) or step.state in TERMINAL_STATES):
                continue
            now = time.time()
            direct = view.state == SKIPPED or view.cached or view.driver_failed
            if step.state == PENDING and not direct:
                running = {"state": RUNNING, "start": view.start}
                if view.state == RUNNING and items:
                    running["items"] = items
                changes.append((view.start or now, name, running))
            if view.state != RUNNING:
                changes.append((view.end or now, name, self._final(name, view)))
        return changes

    def _final(self, name: str, view: task_map.StepView) -> dict[str, Any]:
        """The changes of a step that ended in ``view.state``."""
        duration = view.end - view.start if view.end and view.start else None
        change: dict[str, Any] = {"state": view.state, "end": view.end, "cached": view.cached,
                                  "duration_s": 0.0 if view.cached else duration}
        if view.state == SKIPPED or view.cached:
            change["start"] = view.start
        if view.items:
            change["items"] = dict(view.items)
            self.status.steps[name].items = dict(view.items)  # the failure below names them
        if view.state == FAILED:
            if view.driver_failed:
                self._driver_failed.add(name)
            change.update(self._failure(name))
        return change

    def _failure(self, name: str) -> dict[str, Any]:
        """State, error text, cell and line of a failed step."""
        facts = (self.facts.steps.get(name) if self.facts else None) or StepFacts()
        driver_failed = name in self._driver_failed
        task = task_name(name)
        node = f"'{task}-driver'" if driver_failed else f"'{facts.node or task + ' > executor'}'"
        where = (f"its log is in the KFP UI: {self.status.url} (node {node}"
                 + (f", pod {facts.pod})" if facts.pod else ")"))
        if self.canceled and not facts.error:
            return {"state": CANCELED, "error": ""}
        if driver_failed:
            what = "KFP's driver failed before the step ran"
        else:
            what = facts.error or facts.message or "KFP reports no error text for it"
        failed_items = [key for key, state in self.status.steps[name].items.items() if state == FAILED]
        if failed_items:  # a --for step: which items (by position, as KFP names iterations)
            what = f"item {', '.join(failed_items)} failed: {what}"
        return {"state": FAILED, "error": f"{what}; {where}", "cell": facts.cell, "line": facts.line}

    def _finish(self, state: str, run: Any) -> None:
        canceled = state == FAILED and self.canceled
        for name, step in self.status.steps.items():
            facts = self.facts.steps.get(name) if self.facts else None
            if facts is not None and facts.cached and step.state == SUCCEEDED:
                step.cached, step.duration_s = True, 0.0
            target = self._failure(name) if step.state == FAILED else None
            if target and (target["state"], target["error"]) != (step.state, step.error):
                self.status.update_step(name, **target)
        final = CANCELED if canceled else state
        error = ""
        if state == FAILED and not canceled and not self.status.failed_steps:
            error = (str(run.error.message) if run.error is not None and run.error.message else
                     f"the run failed outside its steps; KFP reports no reason: see the run's page "
                     f"in the KFP UI: {self.status.url}")
        self.status.finish(final, error, end=seconds(run.finished_at),
                           running_state=CANCELED if canceled else FAILED)


def start(session: KfpSession, run_id: str, plan: Optional[Plan] = None,
          hooks: Optional[RunHooks] = None, retry: RetryPolicy = RetryPolicy(),
          sleep: Callable[[float], None] = time.sleep) -> Follower:
    """Read the run once and return its follower, the status up to date."""
    run = get_run(session, run_id, retry, sleep)
    follower = Follower(session, new_status(session, run, plan, hooks))
    try:
        follower.groups = spec_groups(run_spec(session, run))
    except (KaleError, AttributeError, TypeError):  # without it a false condition's step is
        follower.groups = {}                        # SKIPPED when the run ends
    follower.apply(run)
    return follower


def watch_run(follower: Follower, options: WatchOptions = WatchOptions(),
              sleep: Callable[[float], None] = time.sleep) -> RunStatus:
    """Poll until the run ends, updating its status and calling its hooks.

    Returns
    -------
    RunStatus
        The follower's status, in a terminal state.

    Raises
    ------
    KfpConnectionError
        The server stopped answering for longer than ``options.retry.max_outage_s``.
    KfpAuthError
        The server started refusing the credentials.
    RunError
        The run disappeared (404), the server cannot report it, or ``options.timeout_s``
        passed; the message says the run may still be going on and how to look at it.
    """
    status = follower.status
    deadline = None if options.timeout_s is None else time.monotonic() + options.timeout_s
    while status.state not in TERMINAL_STATES:
        if deadline is not None and time.monotonic() > deadline:
            raise RunError(f"run {status.run_id} is still {status.state} after "
                           f"{options.timeout_s:g} s; it goes on on the server: follow it with "
                           f"`kale-magics status {status.run_id} --watch` or at {status.url}")
        sleep(options.interval_s)
        follower.poll(options.retry, sleep)
    return status


def cancel(session: KfpSession, run_id: str, wait_s: float = 60.0, plan: Optional[Plan] = None,
           hooks: Optional[RunHooks] = None, interval_s: float = 1.0,
           sleep: Callable[[float], None] = time.sleep) -> RunStatus:
    """Terminate a run and wait up to ``wait_s`` seconds for it to end.

    A run that had already ended is not touched: its status is returned as it is. KFP
    answers HTTP 400 "Row not found" when asked to terminate a run that has finished (or
    is already terminating, ``storage/run_store.go``); the run is then read again.

    Returns
    -------
    RunStatus
        CANCELED; CANCELING when the run has not ended within ``wait_s``; or the state the
        run ended in otherwise (it ended before the cancel took effect).

    Raises
    ------
    RunError, KfpConnectionError, KfpAuthError
    """
    follower = start(session, run_id, plan, hooks, sleep=sleep)
    if follower.status.state in TERMINAL_STATES:
        return follower.status
    try:
        remote.terminate(session, run_id)
    except RunError as error:
        if "Row not found" not in str(error):
            raise
        follower.poll(sleep=sleep)  # it ended meanwhile, or someone else is terminating it
    else:
        session.terminated.add(run_id)
        follower.cancel_seen = True
        follower.status.set_state(CANCELING)
    deadline = time.monotonic() + wait_s
    while follower.status.state not in TERMINAL_STATES and time.monotonic() < deadline:
        sleep(interval_s)
        follower.poll(sleep=sleep)
    return follower.status
