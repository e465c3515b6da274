"""ML Metadata of the KFP test server: what KFP's launcher records, served over gRPC-Web.

KFP's launcher records each task of a run in MLMD (kubeflow/pipelines
``backend/src/v2/metadata/client.go``): a ``system.PipelineRun`` context named by the run id, one
``system.ContainerExecution`` per task (custom properties ``task_name`` and ``display_name``;
state COMPLETE or FAILED), and for a task that succeeded its output artifacts, typed by their
schema title (``system.Metrics``), their metadata as custom properties (a number as a double, a
string as a string, a bool as an int: ``converter.go`` ``StructValueToMLMDValue``) plus
``display_name`` (the output's name) and ``store_session_info``, each tied to the execution by an
OUTPUT event whose path is the output's name. :class:`MlmdStore` records the same from the
``executor_output.json`` each task of the worker's kfp.local run wrote (its logged metric
values), and answers the read methods the KFP UI calls, over gRPC-Web as metadata-envoy does
(``/ml_metadata.MetadataStoreService/<Method>``): a response is a data frame and a trailer frame;
an error is trailers-only (``grpc-status`` / ``grpc-message`` HTTP headers, empty body), an
unknown method UNIMPLEMENTED, a request that is no framed message of the method INTERNAL
(grpc's "error unmarshalling request"). Lists and structs in metadata (MLMD ``struct_value``) are
left out.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import threading
from typing import Any, Callable, Optional

from kale_magics.runner import grpc_web, mlmd_proto
from kale_magics.runner.mlmd import SERVICE

PREFIX = f"/{SERVICE}/"
#: Answer of a call: HTTP headers and body.
Answer = tuple[dict[str, str], bytes]


class MlmdStore:
    """The server's ML Metadata: contexts, executions, artifacts, events, in memory."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._ids = itertools.count(1)
        self.types: dict[str, int] = {}
        self.contexts: dict[int, Any] = {}
        self.executions: dict[int, Any] = {}
        self.artifacts: dict[int, Any] = {}
        self.events: list[Any] = []
        self.members: dict[int, tuple[list[int], list[int]]] = {}  # context: executions, artifacts
        self.calls: list[str] = []

    # -- recording, as KFP's launcher does --------------------------------------------------

    def record_task(self, run_id: str, task: str, succeeded: bool,
                    outputs: dict[str, tuple[str, str, dict[str, Any]]]) -> None:
        """Record task ``task`` of run ``run_id``; ``outputs``: name -> (schema title, uri, metadata)."""
        with self.lock:
            context = self._run_context(run_id)
            execution = mlmd_proto.message(
                "Execution", id=next(self._ids), type="system.ContainerExecution",
                type_id=self._type("system.ContainerExecution"),
                last_known_state=mlmd_proto.enum_value("Execution.State",
                                                       "COMPLETE" if succeeded else "FAILED"))
            for key in ("task_name", "display_name"):
                execution.custom_properties[key].string_value = task
            self.executions[execution.id] = execution
            self.members[context][0].append(execution.id)
            for name, (title, uri, metadata) in (outputs.items() if succeeded else ()):
                artifact = self._artifact(name, title, uri, metadata)
                self.members[context][1].append(artifact.id)
                event = mlmd_proto.message("Event", artifact_id=artifact.id, execution_id=execution.id,
                                           type=mlmd_proto.enum_value("Event.Type", "OUTPUT"))
                event.path.steps.add(key=name)
                self.events.append(event)

    def _type(self, name: str) -> int:
        return self.types.setdefault(name, next(self._ids))

    def _run_context(self, run_id: str) -> int:
        for context in self.contexts.values():
            if context.name == run_id:
                return context.id
        context = mlmd_proto.message("Context", id=next(self._ids), name=run_id,
                                     type="system.PipelineRun", type_id=self._type("system.PipelineRun"))
        self.contexts[context.id], self.members[context.id] = context, ([], [])
        return context.id

    def _artifact(self, name: str, title: str, uri: str, metadata: dict[str, Any]) -> Any:
        artifact = mlmd_proto.message("Artifact", id=next(self._ids), uri=uri, type=title,
                                      type_id=self._type(title),
                                      state=mlmd_proto.enum_value("Artifact.State", "LIVE"))
        for key, value in {**metadata, "display_name": name, "store_session_info": "{}"}.items():
            slot = artifact.custom_properties[key]
            if isinstance(value, bool):
                slot.int_value = int(value)
            elif isinstance(value, (int, float)):
                slot.double_value = float(value)
            elif isinstance(value, str):
                slot.string_value = value
            else:  # a list or struct: MLMD's struct_value, outside the subset
                del artifact.custom_properties[key]
        self.artifacts[artifact.id] = artifact
        return artifact

    # -- serving ------------------------------------------------------------------------------

    def answer(self, path: str, body: bytes) -> Answer:
        """The gRPC-Web answer to ``POST path`` with ``body``."""
        method = path[len(PREFIX):]
        self.calls.append(method)
        handler = _READS.get(method)
        if handler is None:
            return _error(12, f"unknown method {method} for service {SERVICE}")
        try:
            frames = grpc_web.split_frames(body)
            if len(frames) != 1 or frames[0][0] != 0:
                raise ValueError("not one message frame")
            request = mlmd_proto.message_class(f"{method}Request").FromString(frames[0][1])
        except Exception as error:  # noqa: BLE001 (any malformed request)
            return _error(13, f"grpc: error unmarshalling request: {error}")
        with self.lock:
            response = handler(self, request)
        return ({"content-type": grpc_web.CONTENT_TYPE},
                grpc_web.frame(response.SerializeToString()) + grpc_web.trailer(0))

    def _context(self, request: Any) -> Any:
        found = mlmd_proto.message("GetContextByTypeAndNameResponse")
        for context in self.contexts.values():
            if (context.type, context.name) == (request.type_name, request.context_name):
                found.context.CopyFrom(context)
        return found  # none found: an empty response, as MLMD answers

    def _executions(self, request: Any) -> Any:
        ids = self.members.get(request.context_id, ([], []))[0]
        return mlmd_proto.message("GetExecutionsByContextResponse",
                                  executions=[self.executions[i] for i in ids])

    def _artifacts(self, request: Any) -> Any:
        ids = self.members.get(request.context_id, ([], []))[1]
        return mlmd_proto.message("GetArtifactsByContextResponse",
                                  artifacts=[self.artifacts[i] for i in ids])

    def _artifacts_by_id(self, request: Any) -> Any:
        return mlmd_proto.message("GetArtifactsByIDResponse", artifacts=[
            self.artifacts[i] for i in request.artifact_ids if i in self.artifacts])

    def _events(self, request: Any) -> Any:
        wanted = set(request.execution_ids)
        return mlmd_proto.message("GetEventsByExecutionIDsResponse",
                                  events=[e for e in self.events if e.execution_id in wanted])

    def _artifact_types(self, request: Any) -> Any:
        kinds = {a.type for a in self.artifacts.values()}
        return mlmd_proto.message("GetArtifactTypesResponse", artifact_types=[
            mlmd_proto.message("ArtifactType", id=i, name=n) for n, i in self.types.items()
            if n in kinds])


_READS: dict[str, Callable[[MlmdStore, Any], Any]] = {
    "GetContextByTypeAndName": MlmdStore._context,
    "GetExecutionsByContext": MlmdStore._executions,
    "GetArtifactsByContext": MlmdStore._artifacts,
    "GetArtifactsByID": MlmdStore._artifacts_by_id,
    "GetEventsByExecutionIDs": MlmdStore._events,
    "GetArtifactTypes": MlmdStore._artifact_types,
}


def _error(status: int, message: str) -> Answer:
    """A trailers-only error answer."""
    return ({"content-type": grpc_web.CONTENT_TYPE, "grpc-status": str(status),
             "grpc-message": message.replace("\r", " ").replace("\n", " ")}, b"")


def task_outputs(spec: dict[str, Any], root: str, task: str) -> dict[str, tuple[str, str, dict]]:
    """The output artifacts task ``task`` of a kfp.local run under ``root`` wrote: name ->
    (schema title from the IR, uri, metadata), from its newest ``executor_output.json``."""
    titles = _output_titles(spec).get(task, {})
    found = glob.glob(os.path.join(glob.escape(root), "*", glob.escape(task), "executor_output.json"))
    if not found or not titles:
        return {}
    with open(max(found, key=os.path.getmtime), encoding="utf-8") as f:
        written = json.load(f).get("artifacts", {})
    outputs = {}
    for name, title in titles.items():
        for artifact in written.get(name, {}).get("artifacts", [])[:1]:
            outputs[name] = (title, artifact.get("uri", ""), artifact.get("metadata") or {})
    return outputs


def _output_titles(spec: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Task name -> output name -> schema title, for every task of the IR (groups too)."""
    components, found = spec.get("components", {}), {}

    def walk(dag: Optional[dict[str, Any]]) -> None:
        for name, task in (dag or {}).get("tasks", {}).items():
            component = components.get(task.get("componentRef", {}).get("name", ""), {})
            artifacts = component.get("outputDefinitions", {}).get("artifacts", {})
            found[name] = {k: v.get("artifactType", {}).get("schemaTitle", "system.Artifact")
                           for k, v in artifacts.items()}
            walk(component.get("dag"))

    walk(spec.get("root", {}).get("dag"))
    return found
