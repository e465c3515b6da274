"""Which of a KFP run's task entries are which steps, read from the structure KFP reports.

KFP 2.17 on Argo lists one task entry per node of the run's Argo workflow
(``server/api_converter.go`` ``toModelTask``/``toApiPipelineTaskDetail``,
``common/util/workflow.go`` ``NodeStatuses``, ``v2/compiler/argocompiler/dag.go``,
``container.go``), in no defined order (``storage/run_store.go``):

- the workflow node (display name: the workflow's name), ``root-driver``, ``root``;
- per pipeline task ``X``: ``X-driver``, then ``X`` (the task's DAG node: RUNNING while
  the task runs, then SUCCEEDED or FAILED; SKIPPED when its condition was false), then
  ``executor`` (the pod; SKIPPED on a cache hit; a Retry node with ``executor(N)``
  attempts under a retry policy);
- condition and loop groups (``condition-1``, ``for-loop-2``, ...).

An entry has no parent id, pod name or error; its ``child_tasks`` are the Argo node ids of
its children, ``<workflow>-<fnv32a(node name)>`` with node names ``<workflow>.root.X``,
``<workflow>.root.X.executor`` (Argo's ``Workflow.NodeID``). The workflow's name is read
off the workflow node (the entry whose children hold the id of ``<its name>.root-driver``);
with it a step's entries are told apart from same-named ones (a step named ``executor`` or
``root``, steps ``x`` and ``x_driver``): its driver is the ``X-driver`` entry whose children
hold the id of ``<workflow>.root.X``, and its node the ``X`` entry whose children are at most
its own executor. Without it (answers that do not look like KFP's), a step's entry is the
first-started one of its name not taken by another step.

An executor entry does not say whose it is, so a cache hit (a SUCCEEDED step whose
executor is SKIPPED) is inferred: every succeeded step is one when there are as many
SKIPPED executors as succeeded steps; otherwise a step is one when a SKIPPED executor, and
no executor that ran, started while the step's entry ran. Times are whole seconds, so a
cache hit next to a concurrently started step is missed here and found in the run's Argo
workflow when the run ends (:mod:`.workflow`).
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

from kale_magics.model import task_name
from kale_magics.runner.status import PENDING, SKIPPED, SUCCEEDED

#: KFP's "not set" times (the epoch for runs, a zero Go time for tasks).
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
FAILED_STATES = frozenset({"FAILED"})


def fnv32a(text: str) -> int:
    """Argo's node-id hash (FNV-1a, 32 bits)."""
    value = 0x811C9DC5
    for byte in text.encode():
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


def node_id(workflow: str, name: str) -> str:
    """Argo's ``Workflow.NodeID`` of the node called ``name``."""
    return workflow if name == workflow else f"{workflow}-{fnv32a(name)}"


def seconds(moment: Any) -> Optional[float]:
    """A time from the API as seconds since the epoch; None for unset or KFP's zero times."""
    if not isinstance(moment, datetime.datetime):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp() if moment > EPOCH else None


@dataclass(frozen=True)
class Entry:
    """One task entry: display name, state ("" when left out), start, end, children's node ids."""

    name: str
    state: str
    start: Optional[float]
    end: Optional[float]
    children: frozenset[str]


def entries(task_details: Optional[Iterable[Any]]) -> list[Entry]:
    """The ``V2beta1PipelineTaskDetail`` models of a run as :class:`Entry` values."""
    found = []
    for task in task_details or []:
        state = str(task.state or "")
        found.append(Entry(task.display_name or "", "" if state == "RUNTIME_STATE_UNSPECIFIED" else state,
                           seconds(task.start_time), seconds(task.end_time),
                           frozenset(c.pod_name or c.task_id or "" for c in task.child_tasks or [])))
    return found


@dataclass(frozen=True)
class StepView:
    """What the entries say about one step.

    Attributes
    ----------
    state:
        PENDING until its DAG node shows a state, else that state (RUNNING, SUCCEEDED,
        FAILED, SKIPPED, ...); FAILED too when its driver failed before the step ran.
    start, end:
        Seconds since the epoch, None when unknown.
    cached:
        The step's outputs came from KFP's cache.
    driver_failed:
        KFP's driver failed before the step's code ran.
    items:
        For a step in a ParallelFor group: ``(("#0", state), ("#1", state), ...)``, one per
        iteration KFP has made a node for, by iteration index (KFP's Argo nodes name
        iterations ``for-loop-2(0)``, ..., not by item value); empty for other steps.
    """

    state: str = PENDING
    start: Optional[float] = None
    end: Optional[float] = None
    cached: bool = False
    driver_failed: bool = False
    items: tuple[tuple[str, str], ...] = ()


def workflow_name(found: Sequence[Entry]) -> str:
    """The workflow's name: the entry whose children hold the id of ``<its name>.root-driver``."""
    for entry in found:
        if node_id(entry.name, f"{entry.name}.root-driver") in entry.children:
            return entry.name
    return ""


def _pick(candidates: list[Entry], taken: set[int]) -> Optional[Entry]:
    """Without the workflow's name: the first-started candidate not taken by another step."""
    free = [c for c in candidates if id(c) not in taken]
    return min(free, key=lambda c: c.start or float("inf")) if free else None


def _by_structure(task: str, by_name: dict[str, list[Entry]], workflow: str,
                  prefixes: list[str]) -> tuple[Optional[Entry], Optional[Entry]]:
    """A task's node and driver entries, told apart from same-named entries by their children.

    The driver is the ``<task>-driver`` entry whose children hold the id of the task's node
    (or, while it runs, one without children); the node exists only once that driver made
    it, and is the ``<task>`` entry whose children are at most the task's own executor.
    """
    node_ids = {node_id(workflow, f"{p}.{task}") for p in prefixes}
    executor_ids = {node_id(workflow, f"{p}.{task}.executor") for p in prefixes}
    drivers = [e for e in by_name.get(f"{task}-driver", []) if e.children & node_ids or not e.children]
    driver = next((d for d in drivers if d.children & node_ids), drivers[0] if drivers else None)
    if driver is None or not driver.children & node_ids:
        return None, driver
    nodes = [e for e in by_name.get(task, []) if e.children <= executor_ids]
    return next((n for n in nodes if n.children), nodes[0] if nodes else None), driver


def node_names(found: Sequence[Entry], workflow: str) -> set[str]:
    """The full names of the workflow's nodes under ``<workflow>.root``, rebuilt from display
    names and child ids: ``P.D`` is a node when some entry is called ``D`` and some entry's
    children hold ``node_id(P.D)``, for a node ``P`` already found (nested groups and loop
    iterations such as ``<wf>.root.exit-handler-1.for-loop-2(0).train``)."""
    ids = set().union(*(e.children for e in found)) if found else set()
    names, known = {e.name for e in found}, {f"{workflow}.root"}
    frontier = set(known)
    while frontier:
        new = {f"{p}.{d}" for p in frontier for d in names if node_id(workflow, f"{p}.{d}") in ids}
        frontier = new - known
        known |= frontier
    return known


ITERATION = re.compile(r"\((\d+)\)$")


def _loop_view(task: str, by_name: dict[str, list[Entry]], workflow: str,
               names: set[str]) -> Optional[StepView]:
    """The view of a step inside a ParallelFor group: one node per iteration ``...(N).task``,
    rolled up (FAILED when an iteration failed, RUNNING while one runs or the loop's group
    has not ended, else SUCCEEDED); None for a step not in a loop."""
    nodes = sorted((n for n in names if n.endswith(f".{task}") and ITERATION.search(n[:-len(task) - 1])),
                   key=lambda n: int(ITERATION.search(n[:-len(task) - 1]).group(1)))
    if not nodes:
        return None
    items, starts, ends = [], [], []
    for name in nodes:
        index = ITERATION.search(name[:-len(task) - 1]).group(1)
        executors = {node_id(workflow, f"{name}.executor")}
        entry = next((e for e in by_name.get(task, []) if e.children & executors), None)
        state = entry.state if entry is not None and entry.state else PENDING
        items.append((f"#{index}", state))
        starts += [entry.start] if entry is not None and entry.start else []
        ends += [entry.end] if entry is not None and entry.end else []
    group = nodes[0][:-len(task) - 1]
    group = group[:group.rindex("(")]  # the loop's TaskGroup node
    group_entries = [e for e in by_name.get(group.rsplit(".", 1)[-1], [])
                     if any(node_id(workflow, n) in e.children for n in
                            (m[:-len(task) - 1] for m in nodes))]
    group_done = any(e.state and e.state != "RUNNING" for e in group_entries)
    states = {state for _, state in items}
    state = ("FAILED" if "FAILED" in states else
             SUCCEEDED if states == {SUCCEEDED} and group_done else "RUNNING")
    return StepView(state, min(starts, default=None), max(ends, default=None) if state != "RUNNING"
                    else None, items=tuple(items))


def step_views(steps: Sequence[str], found: Sequence[Entry],
               groups: Optional[dict[str, list[str]]] = None) -> dict[str, StepView]:
    """The view of each step (by step name) from a run's entries, whatever their order.

    ``groups``: each step's enclosing groups (``{"deploy": ["condition-4"]}``, from the
    pipeline spec); a step not started whose group's node is SKIPPED (a false ``dsl.If``: KFP
    makes no node for the tasks inside) is SKIPPED.
    """
    by_name: dict[str, list[Entry]] = {}
    for entry in found:
        by_name.setdefault(entry.name, []).append(entry)
    workflow = workflow_name(found)
    names = node_names(found, workflow) if workflow else set()
    prefixes = sorted(names)
    pairs, taken, loops = {}, set(), {}
    for step in steps:  # without the workflow's name: the steps' nodes first, then their drivers
        task = task_name(step)
        if workflow and (loop := _loop_view(task, by_name, workflow, names)) is not None:
            loops[step] = loop
            pairs[step] = (None, None)
        elif workflow:
            pairs[step] = _by_structure(task, by_name, workflow, prefixes)
        else:
            pairs[step] = (_pick(by_name.get(task, []), taken), None)
        taken |= {id(pairs[step][0])} if pairs[step][0] else set()
    if not workflow:
        pairs = {s: (node, _pick(by_name.get(f"{task_name(s)}-driver", []), taken))
                 for s, (node, _) in pairs.items()}
    executors = [e for e in found if re.fullmatch(r"executor(\(\d+\))?", e.name) and id(e) not in taken]
    succeeded = [node for node, _ in pairs.values() if node is not None and node.state == SUCCEEDED]
    all_cached = bool(succeeded) and sum(e.state == SKIPPED and e.name == "executor"
                                         for e in executors) == len(succeeded)
    skipped = {e.name for e in found if e.state == SKIPPED}
    views = {step: loops.get(step) or _view(node, driver, executors, all_cached)
             for step, (node, driver) in pairs.items()}
    for step, view in views.items():
        group = next((g for g in (groups or {}).get(step, []) if g in skipped), None)
        if view.state == PENDING and group is not None:
            entry = next(e for e in found if e.name == group and e.state == SKIPPED)
            views[step] = StepView(SKIPPED, entry.start, entry.end)
    return views


def _view(node: Optional[Entry], driver: Optional[Entry], executors: list[Entry],
          all_cached: bool) -> StepView:
    """``all_cached``: there are as many SKIPPED executors as succeeded steps, so each is a cache hit."""
    if node is None or not node.state:
        if driver is not None and driver.state in FAILED_STATES:
            return StepView("FAILED", driver.start, driver.end, driver_failed=True)
        return StepView()
    return StepView(node.state, node.start, node.end, cached=node.state == SUCCEEDED and (
        all_cached or _cache_hit(node, executors)))


def _cache_hit(node: Entry, executors: list[Entry]) -> bool:
    """A SKIPPED executor started within the step's time, and no executor that ran did."""
    if node.start is None or node.end is None:
        return False
    during = [e for e in executors if e.start is not None and node.start <= e.start <= node.end]
    return bool(during) and all(e.state == SKIPPED for e in during)
