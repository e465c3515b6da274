"""A KFP run's metric values, read from ML Metadata (MLMD) the way the KFP UI reads them.

KFP's REST API has no metric values: the launcher of each task records its output artifacts in
MLMD, a ``system.Metrics`` artifact with one custom property per logged metric (a double;
``display_name`` and ``store_session_info`` are added by KFP; kubeflow/pipelines
``backend/src/v2/metadata/client.go`` ``RecordArtifact``, ``FormatScalarMetricArtifacts``,
``converter.go`` ``StructValueToMLMDValue``). The KFP UI reads MLMD over gRPC-Web from its own
host (``/ml_metadata.MetadataStoreService/<Method>`` at the root of its origin: the UI's node
server proxies ``/ml_metadata.*`` to metadata-envoy, ``frontend/server/app.ts``; in Kubeflow an
Istio VirtualService routes the ``/ml_metadata`` prefix), and so does :class:`MlmdClient`, with
the calls of ``frontend/src/mlmd/MlmdUtils.ts``:

1. ``GetContextByTypeAndName(type_name="system.PipelineRun", context_name=<run id>)``;
2. ``GetExecutionsByContext`` (each task's execution, its task name in the custom property
   ``task_name``) and ``GetArtifactsByContext``;
3. ``GetArtifactTypes`` (which type id is ``system.Metrics``) and ``GetEventsByExecutionIDs``
   (an OUTPUT event ties an artifact to the execution that wrote it).

The host is the KFP UI's (``$KF_PIPELINES_UI_ENDPOINT`` or the config file's ``ui_host``), else
the API host; the connection's token and cookies are sent only when that is the API host's
server (:func:`~kale_magics.runner.connection.same_server`), never elsewhere.
"""

from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from kale_magics.errors import KaleError
from kale_magics.model import Plan, task_name
from kale_magics.runner import grpc_web, mlmd_proto, redirects
from kale_magics.runner.connection import UI_ENV, Connection, KfpSession, same_server
from kale_magics.runner.status import SUCCEEDED, RunStatus

SERVICE = "ml_metadata.MetadataStoreService"
RUN_CONTEXT_TYPE = "system.PipelineRun"
METRICS_TYPE = "system.Metrics"
#: Custom properties KFP adds to every artifact, which are no metric values.
NOT_METRICS = frozenset({"display_name", "store_session_info"})
#: Seconds to wait for one MLMD call.
TIMEOUT_S = 5.0
#: Event types that tie an artifact to the execution that wrote it.
_OUTPUT_EVENTS = {mlmd_proto.enum_value("Event.Type", name) for name in ("OUTPUT", "DECLARED_OUTPUT")}


#: HTTP statuses of a failure that may pass.
_PASSING_STATUSES = frozenset({429, 500, 502, 503, 504})


class MlmdUnavailable(KaleError):
    """MLMD cannot be read: the message is one line saying why and what to check.

    Attributes
    ----------
    lasting:
        True when asking again will not help (no endpoint, refused credentials, not gRPC-Web),
        False for a failure that may pass (a timeout, a gRPC error of the service).
    """

    def __init__(self, message: str, lasting: bool = True) -> None:
        super().__init__(message)
        self.lasting = lasting


@dataclass(frozen=True)
class MlmdClient:
    """Calls ML Metadata's ``MetadataStoreService`` over gRPC-Web at the KFP UI's origin.

    Attributes
    ----------
    connection:
        The KFP connection: its UI host (else its host) and, for the same server, its credentials.
    timeout_s:
        Seconds to wait for one call.
    """

    connection: Connection
    timeout_s: float = TIMEOUT_S

    @property
    def origin(self) -> str:
        """``scheme://host[:port]`` of the KFP UI (gRPC-Web paths start at the origin's root)."""
        parts = urllib.parse.urlsplit(self.connection.ui_host or self.connection.host)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def endpoint(self) -> str:
        """The service's URL, for messages."""
        return f"{self.origin}/{SERVICE}"

    def headers(self) -> dict[str, str]:
        """gRPC-Web headers, with the connection's credentials when the origin is its server."""
        own = same_server(self.origin, self.connection.host)
        credentials = {k: v for k, v in self.connection.headers().items()
                       if own and k in ("Authorization", "Cookie")}
        return {**grpc_web.HEADERS, **credentials}

    def call(self, method: str, request: Any) -> Any:
        """Call ``method`` with ``request`` (an ``ml_metadata`` message); return its response.

        Raises
        ------
        MlmdUnavailable
            The endpoint is missing or refuses, the answer is no gRPC-Web, or the call failed.
        """
        http = urllib.request.Request(f"{self.endpoint}/{method}", method="POST",
                                      data=grpc_web.frame(request.SerializeToString()),
                                      headers=self.headers())
        body, headers = self._post(http)
        try:
            reply = grpc_web.read_reply(body, headers)
        except grpc_web.FramingError as error:
            raise self._unavailable(f"its answer to {method} is no gRPC-Web ({error})") from None
        if reply.status not in (None, 0):
            raise self._unavailable(f"{method} failed: {reply.status_name}: {reply.message}",
                                    lasting=reply.status in (7, 12, 16))
        response = mlmd_proto.message(f"{method}Response")
        try:
            for payload in reply.messages:
                response.MergeFromString(payload)
        except Exception as error:  # protobuf's DecodeError, or any parse failure
            raise self._unavailable(f"its answer to {method} is not an {method}Response "
                                    f"({type(error).__name__})") from None
        return response

    def _post(self, request: urllib.request.Request) -> tuple[bytes, dict[str, str]]:
        """The body and lower-cased headers of a 200 gRPC-Web answer."""
        try:
            with redirects.OPENER_NO_REDIRECTS.open(request, timeout=self.timeout_s) as answer:
                body = answer.read()
                headers = {k.lower(): v for k, v in answer.headers.items()}
        except urllib.error.HTTPError as error:
            raise self._unavailable(*self._http_reason(error.code)) from None
        except urllib.error.URLError as error:
            raise self._unavailable(f"{_reason(error.reason)} ({self._where()})") from None
        except (TimeoutError, socket.timeout):
            raise self._unavailable(f"no answer within {self.timeout_s:g} s", lasting=False) from None
        except (OSError, ValueError) as error:
            raise self._unavailable(f"{_reason(error)} ({self._where()})") from None
        if not headers.get("content-type", "").startswith("application/grpc-web"):
            kind = "a web page" if "html" in headers.get("content-type", "") else \
                f"{headers.get('content-type') or 'no content type'}"
            raise self._unavailable(f"it answered with {kind}, not gRPC-Web ({self._where()})")
        return body, headers

    def _http_reason(self, code: int) -> tuple[str, bool]:
        """Why an HTTP error status, and whether it is lasting (5xx and 429 may pass)."""
        if code in (401, 403):
            if {"Authorization", "Cookie"} & set(self.headers()):
                return (f"it refused the request (HTTP {code}) with the credentials from "
                        f"{self.connection.auth}; the KFP UI may want other ones (session "
                        "cookies: --cookies)"), True
            return (f"it refused the request (HTTP {code}); no credentials were sent, as they go "
                    "only to the KFP API host's server"), True
        if 300 <= code < 400:
            return (f"it answered HTTP {code}, a redirect (to a login page?), which is not "
                    "followed so that no credentials go elsewhere"), True
        return f"it answered HTTP {code} ({self._where()})", code not in _PASSING_STATUSES

    def _where(self) -> str:
        return (f"the KFP UI serves ML Metadata, the KFP API server does not: set ${UI_ENV} "
                "(or the config file's ui_host) to the KFP UI's address")

    def _unavailable(self, reason: str, lasting: bool = True) -> MlmdUnavailable:
        return MlmdUnavailable(self.connection.redact(
            f"cannot read metric values from ML Metadata at {self.endpoint}: {reason}"), lasting)

    def run_metrics(self, run_id: str) -> dict[str, dict[str, float]]:
        """Each task's metric values in run ``run_id``: ``{"train": {"accuracy": 0.93}}``
        (tasks without metrics left out; ``{}`` while MLMD has no record of the run).

        Raises
        ------
        MlmdUnavailable
            See :meth:`call`.
        """
        found = self.call("GetContextByTypeAndName", mlmd_proto.message(
            "GetContextByTypeAndNameRequest", type_name=RUN_CONTEXT_TYPE, context_name=run_id))
        if not found.HasField("context"):
            return {}
        context_id = found.context.id
        executions = self.call("GetExecutionsByContext", mlmd_proto.message(
            "GetExecutionsByContextRequest", context_id=context_id)).executions
        artifacts = self.call("GetArtifactsByContext", mlmd_proto.message(
            "GetArtifactsByContextRequest", context_id=context_id)).artifacts
        types = self.call("GetArtifactTypes", mlmd_proto.message("GetArtifactTypesRequest"))
        metrics_types = {t.id for t in types.artifact_types if t.name == METRICS_TYPE}
        metrics = {a.id: a for a in artifacts if a.type_id in metrics_types or a.type == METRICS_TYPE}
        if not executions or not metrics:
            return {}
        events = self.call("GetEventsByExecutionIDs", mlmd_proto.message(
            "GetEventsByExecutionIDsRequest", execution_ids=[e.id for e in executions])).events
        tasks = {e.id: e.custom_properties["task_name"].string_value for e in executions
                 if "task_name" in e.custom_properties}
        values: dict[str, dict[str, float]] = {}
        for event in events:
            task, artifact = tasks.get(event.execution_id), metrics.get(event.artifact_id)
            if task and artifact is not None and event.type in _OUTPUT_EVENTS:
                values.setdefault(task, {}).update(metric_values(artifact))
        return values


def step_metrics(per_task: dict[str, dict[str, float]], plan: Plan) -> dict[str, dict[str, float]]:
    """:meth:`MlmdClient.run_metrics`'s values by step name (a step's KFP task is
    :func:`~kale_magics.model.task_name` of it), each step's in its ``%%kale metrics`` order;
    tasks that are no step of ``plan`` left out."""
    found = {}
    for step in plan.steps:
        values = per_task.get(task_name(step.name), {})
        order = [m.key for m in step.metrics]
        found[step.name] = {**{k: values[k] for k in order if k in values}, **values}
    return {step: values for step, values in found.items() if values}


def metric_values(artifact: Any) -> dict[str, float]:
    """The metric values of a ``system.Metrics`` artifact: its custom properties holding a
    number (double or int), without KFP's own (:data:`NOT_METRICS`); the order KFP stored them
    in is lost (a map), so they come sorted by name."""
    values = {}
    for key in sorted(artifact.custom_properties):
        value = artifact.custom_properties[key]
        kind = value.WhichOneof("value")
        if key not in NOT_METRICS and kind in ("double_value", "int_value"):
            values[key] = float(getattr(value, kind))
    return values


def _reason(error: object) -> str:
    if isinstance(error, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, socket.gaierror):
        return f"the host name could not be resolved ({error.strerror or error})"
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


class MetricsReader:
    """Puts the metric values MLMD holds for a remote run into its status.

    One reader serves all the runs of a KFP connection (:func:`reader_of`): a sweep's trials,
    and the single runs, watches and status reads of a kernel or command. After a lasting
    failure (no endpoint, refused, not gRPC-Web) it asks no more, and every later run carries
    the same note, so a sweep says once why metrics are missing.

    Parameters
    ----------
    client:
        How to reach MLMD.
    """

    def __init__(self, client: MlmdClient) -> None:
        self.client = client
        self.failure = ""
        self._lock = threading.Lock()

    def read(self, run_id: str) -> dict[str, dict[str, float]]:
        """:meth:`MlmdClient.run_metrics` of ``run_id``, unless a lasting failure was seen:
        then that failure again, without asking.

        Raises
        ------
        MlmdUnavailable
            MLMD cannot be read (see :meth:`MlmdClient.call`).
        """
        if self.failure:
            raise MlmdUnavailable(self.failure)
        try:
            return self.client.run_metrics(run_id)
        except MlmdUnavailable as error:
            with self._lock:
                self.failure = self.failure or (str(error) if error.lasting else "")
            raise

    def fill(self, status: RunStatus, plan: Plan | None = None) -> None:
        """Set each step's ``metrics`` from MLMD and ``metrics_note`` to "" or why values are
        missing (the reason, what to check and the run's page in the KFP UI). Never raises.

        With ``plan`` a step is found by its KFP task name (:func:`task_name`) and the
        status's ``metric_order`` is the notebook's (``%%kale metrics`` lines); without it (a
        run followed by its id: the steps come from the run's pipeline spec) each status
        step's task name is looked up and the values come sorted by name.
        """
        try:
            per_task = self.read(status.run_id)
        except MlmdUnavailable as error:
            status.metrics_note = f"{error}; see the metric values in the KFP UI: {status.url}"
            return
        if plan is not None:
            found = step_metrics(per_task, plan)
            status.metric_order = [m.key for step in plan.steps for m in step.metrics]
        else:
            found = {step: per_task[task_name(step)] for step in status.steps
                     if per_task.get(task_name(step))}
        for step, values in found.items():
            if step in status.steps:
                status.steps[step].metrics = values
        expected = status.state == SUCCEEDED and plan is not None and \
            any(step.metrics for step in plan.steps)
        status.metrics_note = "" if status.metrics or not expected else (
            f"ML Metadata at {self.client.endpoint} holds no metric values of run "
            f"{status.run_id}; see the run's page in the KFP UI: {status.url}")


_READERS_LOCK = threading.Lock()


def reader_of(session: KfpSession) -> MetricsReader:
    """The metric reader of ``session`` (made on first use, then kept on the session), so
    every run read through one KFP connection shares one reader and its remembered failure.

    The client reaches MLMD at the connection's UI host (else its host) and sends the
    connection's token and cookies only to the API host's own server; redirects are not
    followed (:class:`MlmdClient`).
    """
    with _READERS_LOCK:
        if session.metrics_reader is None:
            session.metrics_reader = MetricsReader(MlmdClient(session.connection))
        return session.metrics_reader
