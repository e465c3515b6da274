"""The Argo workflow KFP 2.17 runs for a pipeline, and what KFP's API server makes of it.

KFP's v2 compiler (``backend/src/v2/compiler/argocompiler``: ``argo.go``, ``dag.go``,
``container.go``) turns a pipeline into one Argo workflow whose nodes are, by display name:

- the workflow node itself (display name: the workflow's name), a DAG;
- ``root-driver`` (a pod) and ``root`` (the root DAG);
- per task ``X``: ``X-driver`` (a pod), then ``X`` (a DAG, skipped when the driver's
  condition is false), then ``executor`` (a pod, skipped when the driver found a cache
  hit; with a retry policy a Retry node ``executor`` whose attempts are ``executor(0)``,
  ``executor(1)``, ...);
- condition and loop groups (``condition-1-driver``, ``condition-1``, ...).

Argo names a node ``<parent name>.<task>`` and gives it the id
``<workflow>-<fnv32a(name)>`` (``Workflow.NodeID``); a DAG task becomes a child of the
outbound nodes of the tasks it depends on. The API server turns every node into one
task entry (``common/util/workflow.go`` ``NodeStatuses``, ``server/api_converter.go``
``toModelTask`` / ``toApiPipelineTaskDetail``): display name, state (Argo phase,
``Omitted`` becoming RUNTIME_STATE_UNSPECIFIED), the workflow's creation time, start and
end in whole seconds (``0001-01-01T00:00:00Z`` while unset) and ``child_tasks`` holding
the children's node ids; never a parent, pod name, execution id or error. The node
messages (a failed pod's ``Error (exit code 1): <termination message>``) only reach a
client through the v1beta1 run's ``workflow_manifest``.
"""

from __future__ import annotations

import datetime
import random
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

#: A zero Go time as protojson writes it (a node not started or not finished).
ZERO_TIME = "0001-01-01T00:00:00Z"
#: Argo phase -> KFP RuntimeState (``model/run.go`` ``ToV2``; Omitted maps to UNSPECIFIED).
PHASES = {"Pending": "PENDING", "Running": "RUNNING", "Succeeded": "SUCCEEDED",
          "Skipped": "SKIPPED", "Failed": "FAILED", "Error": "FAILED"}
DONE = frozenset({"Succeeded", "Skipped", "Failed", "Error", "Omitted"})
#: Kubelet's message for a pod killed by the workflow's activeDeadlineSeconds.
DEADLINE = "Pod was active on the node longer than the specified deadline"


def fnv32a(text: str) -> int:
    """Argo's node-id hash (FNV-1a, 32 bits)."""
    value = 0x811C9DC5
    for byte in text.encode():
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


def seconds_text(moment: Optional[float]) -> str:
    """A time as protojson writes ``timestamppb.New(time.Unix(sec, 0))``; zero time when unset."""
    if moment is None:
        return ZERO_TIME
    stamp = datetime.datetime.fromtimestamp(int(moment), datetime.timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class TaskSpec:
    """One pipeline task as the compiler sees it: upstream tasks, retries, enclosing groups
    (``group``: their names from the outermost, joined by ``.``), and ``kind``: "" for a task
    that runs a container, "group" for a condition or exit-handler group, "loop" for a
    ParallelFor group."""

    after: list[str] = field(default_factory=list)
    retries: int = 0
    group: str = ""
    kind: str = ""


class Workflow:
    """The nodes of one run's Argo workflow, changed as the run goes on.

    Parameters
    ----------
    pipeline:
        The pipeline's name; the workflow is named ``<pipeline>-<5 random characters>``.
    tasks:
        The root DAG's tasks by KFP task name.
    created:
        The workflow's creation time (seconds since the epoch).
    rng:
        Source of the workflow's random suffix.
    """

    def __init__(self, pipeline: str, tasks: dict[str, TaskSpec], created: float,
                 rng: random.Random) -> None:
        suffix = "".join(rng.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
        self.name = f"{pipeline[:57]}-{suffix}"
        self.tasks, self.created = tasks, created
        self.nodes: dict[str, dict[str, Any]] = {}
        self.attempts: dict[str, int] = {}
        self.terminated = False
        self.phase, self.message, self.finished = "Running", "", None
        self.task_ids = {}  # node id -> the API server's task UUID

    # -- node bookkeeping -------------------------------------------------------------------

    def node_id(self, name: str) -> str:
        """Argo's ``Workflow.NodeID``."""
        return name if name == self.name else f"{self.name}-{fnv32a(name)}"

    def node(self, name: str) -> dict[str, Any]:
        """The node called ``name`` (its full dotted name)."""
        return self.nodes[self.node_id(name)]

    def _add(self, name: str, kind: str, template: str, parents: list[str], when: float,
             phase: str = "Running") -> dict[str, Any]:
        node_id = self.node_id(name)
        node = {"id": node_id, "name": name, "displayName": name.rsplit(".", 1)[-1],
                "type": kind, "templateName": template, "phase": phase, "startedAt": when,
                "finishedAt": when if phase in DONE else None, "children": [], "message": "",
                "boundaryID": self.node_id(name.rsplit(".", 1)[0]) if "." in name else ""}
        self.nodes[node_id] = node
        self.task_ids[node_id] = str(uuid.uuid4())
        for parent in parents:
            self.nodes[parent]["children"].append(node_id)
        return node

    def _end(self, node: dict[str, Any], phase: str, when: float, message: str = "") -> None:
        node.update(phase=phase, finishedAt=when, message=message or node["message"])

    def _prefix(self, task: str, iteration: Optional[int] = None) -> str:
        """The name of the DAG node a task's nodes are in. A ParallelFor group ``for-loop-2``
        is a TaskGroup node ``D.for-loop-2`` with one DAG node per iteration,
        ``D.for-loop-2(0)``, ... (Argo's names for a task expanded ``withSequence``)."""
        prefix = f"{self.name}.root"
        for group in filter(None, self.tasks[task].group.split(".")):
            kind = self.tasks[group].kind if group in self.tasks else ""
            prefix += f".{group}({iteration or 0})" if kind == "loop" else f".{group}"
        return prefix

    def _ensure_groups(self, task: str, iteration: Optional[int], when: float) -> None:
        """Make the nodes of the groups around ``task`` (their drivers, DAGs, iterations)."""
        groups = [g for g in self.tasks[task].group.split(".") if g]
        for depth, group in enumerate(groups):
            outer = self._prefix(group, iteration) if group in self.tasks else f"{self.name}.root"
            name = f"{outer}.{group}"
            if self.node_id(name) not in self.nodes:
                parents = [n for up in self.tasks[group].after for n in self._outbound(up, iteration)] \
                    if group in self.tasks else []
                driver = self._add(f"{name}-driver", "Pod", "system-dag-driver",
                                   parents or [self.node_id(outer)], when, phase="Succeeded")
                kind = "TaskGroup" if self.tasks.get(group, TaskSpec()).kind == "loop" else "DAG"
                self._add(name, kind, group, [driver["id"]], when)
            if self.tasks.get(group, TaskSpec()).kind == "loop":
                step = f"{outer}.{group}({iteration or 0})"
                if self.node_id(step) not in self.nodes:
                    self._add(step, "DAG", group, [self.node_id(name)], when)

    def skip_group(self, group: str, when: float, iteration: Optional[int] = None) -> None:
        """A condition group whose condition is false: its driver ran, its node is Skipped."""
        if group not in self.tasks:
            return self.add_group(group, when, skipped=True)
        self._ensure_groups(group, iteration, when)
        outer = self._prefix(group, iteration)
        parents = [n for up in self.tasks[group].after for n in self._outbound(up, iteration)]
        driver = self._add(f"{outer}.{group}-driver", "Pod", "system-dag-driver",
                           parents or [self.node_id(outer)], when, phase="Succeeded")
        node = self._add(f"{outer}.{group}", "Skipped", group, [driver["id"]], when, phase="Skipped")
        node["message"] = "when 'false != false' evaluated false"

    def _outbound(self, task: str, iteration: Optional[int] = None) -> list[str]:
        """The node ids a task's dependents hang from (its executor, or its last attempt;
        a group's node)."""
        prefix = f"{self._prefix(task, iteration)}.{task}" if task in self.tasks else \
            f"{self.name}.root.{task}"
        executor = self.nodes.get(self.node_id(f"{prefix}.executor"))
        if executor is None:
            return [self.node_id(prefix)] if self.node_id(prefix) in self.nodes else []
        if executor["type"] == "Retry" and executor["children"]:
            return [executor["children"][-1]]
        return [executor["id"]]

    # -- the run ----------------------------------------------------------------------------

    def start(self, when: float) -> None:
        """The workflow starts: its node, ``root-driver`` (done at once) and ``root``."""
        self._add(self.name, "DAG", "entrypoint", [], when)
        driver = self._add(f"{self.name}.root-driver", "Pod", "system-dag-driver", [self.name], when,
                           phase="Succeeded")
        self._add(f"{self.name}.root", "DAG", "root", [driver["id"]], when)

    def add_group(self, group: str, when: float, skipped: bool = False) -> None:
        """A condition or loop group under root: its driver, then its DAG (or Skipped)."""
        root = self.node_id(f"{self.name}.root")
        driver = self._add(f"{self.name}.root.{group}-driver", "Pod", "system-dag-driver", [root],
                           when, phase="Succeeded")
        node = self._add(f"{self.name}.root.{group}", "Skipped" if skipped else "DAG", group,
                         [driver["id"]], when, phase="Skipped" if skipped else "Running")
        if skipped:
            node["message"] = "when 'false != false' evaluated false"

    def _close_groups(self, task: str, when: float, iteration: Optional[int]) -> None:
        """Groups ``task`` waits for have ended (Argo starts a dependent after its group's
        DAG, a loop's iterations too, finished): Failed when a node inside failed."""
        for up in self.tasks[task].after:
            if not self.tasks.get(up, TaskSpec()).kind:
                continue
            name = f"{self._prefix(up, iteration)}.{up}"
            inside = [n for n in self.nodes.values()
                      if n["name"].startswith((f"{name}.", f"{name}(")) or n["name"] == name]
            if any(n["phase"] not in DONE and n["type"] == "Pod" for n in inside):
                continue  # still running (a terminated run): ended below with the workflow
            phase = "Failed" if any(n["phase"] in ("Failed", "Error") for n in inside) else "Succeeded"
            for node in inside:
                if node["phase"] not in DONE and node["type"] in ("DAG", "TaskGroup"):
                    self._end(node, phase, when)

    def _driver(self, task: str, when: float, iteration: Optional[int] = None) -> dict[str, Any]:
        self._ensure_groups(task, iteration, when)
        self._close_groups(task, when, iteration)
        prefix, spec = self._prefix(task, iteration), self.tasks[task]
        parents = [n for up in spec.after for n in self._outbound(up, iteration)] or [self.node_id(prefix)]
        return self._add(f"{prefix}.{task}-driver", "Pod", "system-container-driver", parents, when,
                         phase="Succeeded")

    def start_task(self, task: str, when: float, iteration: Optional[int] = None) -> None:
        """The task's executor starts (again, for a retry attempt); ``iteration``: which
        iteration of the loop group around it."""
        prefix = f"{self._prefix(task, iteration)}.{task}"
        if self.node_id(prefix) not in self.nodes:
            driver = self._driver(task, when, iteration)
            self._add(prefix, "DAG", "system-container-executor", [driver["id"]], when)
        attempt = self.attempts.get(prefix, -1) + 1
        self.attempts[prefix] = attempt
        if not self.tasks[task].retries:
            self._add(f"{prefix}.executor", "Pod", "system-container-impl", [self.node_id(prefix)], when)
            return
        if attempt == 0:
            self._add(f"{prefix}.executor", "Retry", "system-container-impl", [self.node_id(prefix)], when)
        self._add(f"{prefix}.executor({attempt})", "Pod", "system-container-impl",
                  [self.node_id(f"{prefix}.executor")], when)

    def cache_task(self, task: str, when: float, iteration: Optional[int] = None) -> None:
        """The driver found a cache hit: the task succeeds, its executor is Skipped."""
        prefix = f"{self._prefix(task, iteration)}.{task}"
        driver = self._driver(task, when, iteration)
        node = self._add(prefix, "DAG", "system-container-executor", [driver["id"]], when,
                         phase="Succeeded")
        executor = self._add(f"{prefix}.executor", "Skipped", "system-container-impl", [node["id"]],
                             when, phase="Skipped")
        executor["message"] = "when 'true != true' evaluated false"

    def skip_task(self, task: str, when: float) -> None:
        """The driver's condition is false: the task's node is Skipped, no executor."""
        driver = self._driver(task, when)
        node = self._add(f"{self._prefix(task)}.{task}", "Skipped", "system-container-executor",
                         [driver["id"]], when, phase="Skipped")
        node["message"] = "when 'false != false' evaluated false"

    def fail_driver(self, task: str, when: float, message: str = "Error (exit code 1)") -> None:
        """KFP's driver fails (resolving inputs, the pod spec): the task's node is never made."""
        self._end(self._driver(task, when), "Failed", when, message)

    def end_task(self, task: str, succeeded: bool, when: float, message: str = "",
                 iteration: Optional[int] = None) -> None:
        """The current attempt ended; the task ends unless a retry follows."""
        prefix = f"{self._prefix(task, iteration)}.{task}"
        executor = self.node(f"{prefix}.executor")
        phase = "Succeeded" if succeeded else "Failed"
        attempt = executor
        if executor["type"] == "Retry":
            attempt = self.nodes[executor["children"][-1]]
        self._end(attempt, phase, when, message if not succeeded else "")
        if not succeeded and self.attempts[prefix] < self.tasks[task].retries:
            return
        if attempt is not executor:
            self._end(executor, phase, when, attempt["message"])
        self._end(self.node(prefix), phase, when, "" if succeeded else f"child '{attempt['id']}' failed")

    def finish(self, phase: str, when: float, message: str = "") -> None:
        """The workflow ends: unstarted dependents are Omitted, running nodes fail."""
        in_loop = {t for t, spec in self.tasks.items()
                   if any(self.tasks.get(g, TaskSpec()).kind == "loop" for g in spec.group.split("."))}
        for task in self.tasks.keys() - in_loop:  # the groups a task waits for have ended
            self._close_groups(task, when, None)
        for task, spec in self.tasks.items():
            if spec.kind or any(self.tasks.get(g, TaskSpec()).kind == "loop" for g in spec.group.split(".")):
                continue  # groups, and tasks in loops, are not Omitted one by one here
            started = self.node_id(f"{self._prefix(task)}.{task}-driver") in self.nodes
            ups = [f"{self._prefix(up)}.{up}" if up in self.tasks else f"{self.name}.root.{up}"
                   for up in spec.after]
            blocked = any(self.node(up)["phase"] in ("Failed", "Error")
                          for up in ups if self.node_id(up) in self.nodes)
            if not started and blocked and not self.terminated:
                self._add(f"{self._prefix(task)}.{task}-driver", "Skipped", "system-container-driver",
                          [], when, phase="Omitted")["message"] = "omitted: depends condition not met"
        for node in self.nodes.values():
            if node["phase"] not in DONE and node["type"] == "Pod":
                self._end(node, "Failed", when, DEADLINE if self.terminated else "pod deleted")
            elif node["phase"] not in DONE:
                self._end(node, phase, when)
        self.nodes[self.name]["message"] = message
        self.phase, self.message, self.finished = phase, message, when

    # -- what the API server shows ------------------------------------------------------------

    def task_details(self, run_id: str, errors: bool = False) -> list[dict[str, Any]]:
        """One v2beta1 ``PipelineTaskDetail`` per node, zero values left out, in node-id order.

        ``errors`` adds the node message of failed nodes as ``error`` (the lenient stand-in's
        liberty; KFP never fills it).
        """
        entries = []
        for node_id in sorted(self.nodes):
            node = self.nodes[node_id]
            entry = {"run_id": run_id, "task_id": self.task_ids[node_id],
                     "display_name": node["displayName"], "create_time": seconds_text(self.created),
                     "start_time": seconds_text(node["startedAt"]),
                     "end_time": seconds_text(node["finishedAt"])}
            if node["phase"] in PHASES:
                entry["state"] = PHASES[node["phase"]]
            if node["children"]:
                entry["child_tasks"] = [{"pod_name": child} for child in node["children"]]
            if errors and node["phase"] == "Failed" and node["message"]:
                entry["error"] = {"code": 2, "message": node["message"]}
            entries.append(entry)
        return entries

    def pod_name(self, node: dict[str, Any]) -> str:
        """``common/util/workflow.go`` ``RetrievePodName`` (Argo's v2 pod names)."""
        return f"{self.name}-{node['templateName']}-{node['id'].rsplit('-', 1)[-1]}"

    def manifest(self, run_id: str, namespace: str) -> dict[str, Any]:
        """The Argo Workflow object as the v1beta1 run's ``workflow_manifest`` holds it."""
        def stamp(value: Optional[float]) -> Optional[str]:
            return None if value is None else seconds_text(value)

        nodes = {}
        for node_id, node in self.nodes.items():
            item = {k: v for k, v in node.items() if v not in ("", [], None)}
            item.update(startedAt=stamp(node["startedAt"]), finishedAt=stamp(node["finishedAt"]))
            nodes[node_id] = item
        spec: dict[str, Any] = {"entrypoint": "entrypoint", "serviceAccountName": "pipeline-runner"}
        if self.terminated:
            spec["activeDeadlineSeconds"] = 0
        return {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
                "metadata": {"name": self.name, "namespace": namespace or "kubeflow",
                             "creationTimestamp": seconds_text(self.created),
                             "labels": {"pipeline/runid": run_id,
                                        "workflows.argoproj.io/phase": self.phase}},
                "spec": spec,
                "status": {"phase": self.phase, "startedAt": seconds_text(self.created),
                           "finishedAt": stamp(self.finished), "message": self.message or None,
                           "nodes": nodes}}
