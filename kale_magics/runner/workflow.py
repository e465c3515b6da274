"""What a KFP run's Argo workflow says that the v2beta1 run does not: step errors, cache hits, termination.

KFP's v2beta1 API never reports why a task failed (a task has no ``error``; a run's is set
only when the server cannot convert it, ``server/api_converter.go``). The run's Argo
workflow does: KFP stores it on every report of the persistence agent
(``resource/resource_manager.go`` ``ReportWorkflowResource``) and returns it as the v1beta1
run detail's ``pipeline_runtime.workflow_manifest`` (``GET /apis/v1beta1/runs/{id}``,
``toApiRunDetailV1``). In it:

- a failed pod's node message is Argo's ``Error (exit code 1)`` followed by the container's
  Kubernetes termination message (``inferFailedReason``), where the step runtime leaves its
  error summary (:func:`kale_magics.runtime.step.write_termination_message`): the exception,
  the notebook cell and line;
- a cache hit is a task whose ``executor`` node was Skipped;
- a terminated run has ``spec.activeDeadlineSeconds: 0`` (KFP's ``TerminateWorkflow`` patch;
  newer KFP may use ``spec.shutdown``), which is how a run that ended FAILED is known to
  have been canceled (KFP itself never reports CANCELED for it).

Reading it is best effort: a server without the v1beta1 API, an offloaded node status or a
refused request give no facts, and the caller falls back to pointing at the KFP UI.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from kale_magics.errors import KaleError
from kale_magics.runner.connection import KfpSession
from kale_magics.model import task_name
from kale_magics.runner.transport import RetryPolicy, call
from kale_magics.runtime.step import ERROR_MARKER

#: Reading the manifest is best effort: a short outage gives up rather than holding the watch.
QUICK = RetryPolicy(max_outage_s=5, backoff_start_s=0.5, backoff_max_s=2)


@dataclass(frozen=True)
class StepFacts:
    """One step as its Argo nodes show it.

    Attributes
    ----------
    cached:
        Its executor was skipped on a cache hit.
    failed:
        Its last executor attempt failed.
    error, cell, line:
        The step runtime's error summary (exception, notebook cell, 1-based line), "" and 0
        when the pod left none (it failed before the step ran, or was killed).
    message:
        Argo's node message of the failed attempt (e.g. ``Error (exit code 1)``, or the
        kubelet's message for a killed pod).
    pod:
        The failed attempt's pod name (``kubectl logs POD -c main``).
    node:
        Where the step's log is in the KFP UI's run graph, e.g. ``train > executor(1)``.
    """

    cached: bool = False
    failed: bool = False
    error: str = ""
    cell: str = ""
    line: int = 0
    message: str = ""
    pod: str = ""
    node: str = ""


@dataclass(frozen=True)
class WorkflowFacts:
    """The run's workflow: whether it was terminated, and each step's facts by step name."""

    terminated: bool = False
    steps: dict[str, StepFacts] = field(default_factory=dict)


def read_facts(session: KfpSession, run_id: str, steps: Sequence[str]) -> Optional[WorkflowFacts]:
    """The facts of run ``run_id`` from its v1beta1 run detail; None when they cannot be read."""
    api = session.client.runs.api_client
    try:
        detail = call(session.connection, f"reading the workflow of run {run_id}", api.call_api,
                      "/apis/v1beta1/runs/{run_id}", "GET", path_params={"run_id": run_id},
                      header_params={"Accept": "application/json"}, response_type="object",
                      auth_settings=["Bearer"], _return_http_data_only=True, policy=QUICK)
        manifest = json.loads((detail or {}).get("pipeline_runtime", {}).get("workflow_manifest") or "{}")
    except (KaleError, ValueError, AttributeError):
        return None
    return facts(manifest, steps) if manifest.get("status", {}).get("nodes") else None


def facts(manifest: dict[str, Any], steps: Sequence[str]) -> WorkflowFacts:
    """The facts of an Argo Workflow object (a parsed ``workflow_manifest``)."""
    spec = manifest.get("spec", {})
    terminated = spec.get("activeDeadlineSeconds") == 0 or spec.get("shutdown") in ("Terminate", "Stop")
    nodes = manifest["status"]["nodes"]
    by_name = {node.get("name", ""): node for node in nodes.values()}
    workflow = manifest.get("metadata", {}).get("name", "")
    found = {}
    for step in steps:
        task = task_name(step)
        dags = [n for name, n in by_name.items() if name.endswith(f".{task}")
                and n.get("templateName") != "system-container-driver"
                and by_name.get(f"{name}.executor") is not None]
        # a --for step has one node per loop iteration: a failed one tells why the step failed
        dag = min(dags, key=lambda n: (n.get("phase") not in ("Failed", "Error"), n.get("name", "")),
                  default=None)
        if dag is not None:
            found[step] = _step_facts(dag, by_name[f"{dag['name']}.executor"], nodes, workflow)
    return WorkflowFacts(terminated, found)


def _step_facts(dag: dict[str, Any], executor: dict[str, Any], nodes: dict[str, Any],
                workflow: str) -> StepFacts:
    if executor.get("phase") == "Skipped":
        return StepFacts(cached=dag.get("phase") == "Succeeded")
    attempt = executor
    if executor.get("type") == "Retry" and executor.get("children"):
        attempt = nodes.get(executor["children"][-1], executor)
    if attempt.get("phase") not in ("Failed", "Error"):
        return StepFacts()
    message = attempt.get("message", "")
    summary = _summary(message)
    pod = (f"{workflow}-{attempt.get('templateName', '')}-{attempt['id'].rsplit('-', 1)[-1]}"
           if workflow and attempt.get("id") else "")
    return StepFacts(failed=True, error=str(summary.get("error", "")), cell=str(summary.get("cell", "")),
                     line=int(summary.get("line") or 0), message=message, pod=pod,
                     node=f"{_iteration(dag)}{dag.get('displayName', '')} > "
                          f"{attempt.get('displayName', 'executor')}")


def _iteration(dag: dict[str, Any]) -> str:
    """``"for-loop-2(1) > "`` for a task node inside a loop iteration, else ""."""
    outer = dag.get("name", "").rsplit(".", 2)
    return f"{outer[-2]} > " if len(outer) == 3 and outer[-2].endswith(")") else ""


def _summary(message: str) -> dict[str, Any]:
    """The step runtime's error summary inside an Argo node message, or {}."""
    start = message.find(ERROR_MARKER)
    if start < 0:
        return {}
    try:
        found = json.JSONDecoder().raw_decode(message[start + len(ERROR_MARKER):].lstrip())[0]
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}
