"""Pipelines, pipeline versions and uploads of the KFP test server.

``POST /pipelines`` is a grpc-gateway endpoint (errors as googleRpcStatus); the two upload
endpoints are KFP's plain HTTP multipart handlers (``server/pipeline_upload_server.go``),
whose errors are ``{"error_message", "error_details"}`` JSON or plain text.
"""

from __future__ import annotations

import email.parser
import email.policy
from typing import TYPE_CHECKING, Any

import yaml

from tests.kfp_server.protocol import HttpError, Request, Response, get_or_404, listing
from tests.kfp_server.resources import new_id, rfc3339, without_zero

if TYPE_CHECKING:
    from tests.kfp_server.server import KfpTestServer


def _parse_upload(request: Request) -> str:
    """The text of the ``uploadfile`` part of a multipart upload."""
    head = f"Content-Type: {request.headers.get('content-type', '')}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + request.body)
    for part in message.iter_parts() if message.is_multipart() else []:
        if part.get_param("name", header="content-disposition") == "uploadfile":
            return part.get_payload(decode=True).decode("utf-8")
    raise HttpError(400, "Failed to read pipeline from file", upload="json")


def _checked_spec(text: str) -> dict[str, Any]:
    try:
        docs = [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as error:
        raise HttpError(400, f"Failed to create a pipeline version: Invalid input error: invalid "
                             f"pipeline spec: {str(error).splitlines()[0]}", upload="json") from None
    if not docs or "pipelineInfo" not in docs[0] or "root" not in docs[0]:
        raise HttpError(400, "Failed to create a pipeline version: Invalid input error: invalid "
                             "pipeline spec: missing pipelineInfo or root", upload="json")
    return docs[0]


def _new_pipeline(server: "KfpTestServer", name: str, description: str, namespace: str) -> dict:
    store = server.store
    if any(p["display_name"] == name and p.get("namespace", "") == namespace
           for p in store.pipelines.values()):
        raise HttpError(409, f"Failed to create a pipeline: Already exist error: Failed to create a new "
                             f"pipeline. The name {name} already exists. Please specify a new name")
    pipeline = without_zero({"pipeline_id": new_id(), "display_name": name, "name": name,
                             "description": description, "created_at": rfc3339(),
                             "namespace": namespace})
    store.pipelines[pipeline["pipeline_id"]] = pipeline
    return pipeline


def _new_version(server: "KfpTestServer", pipeline_id: str, name: str, description: str,
                 text: str) -> dict:
    store = server.store
    if any(v["display_name"] == name for v in store.versions_of(pipeline_id)):
        raise HttpError(409, "Failed to create a pipeline version", upload="json")
    version = without_zero({"pipeline_id": pipeline_id, "pipeline_version_id": new_id(),
                            "display_name": name, "name": name, "description": description,
                            "created_at": rfc3339()})
    version["pipeline_spec"] = _checked_spec(text)
    store.versions[version["pipeline_version_id"]] = version
    store.specs[version["pipeline_version_id"]] = text
    return version


def create_pipeline(server: "KfpTestServer", request: Request) -> Response:
    body = request.json()
    namespace = body.get("namespace", "")
    server.access.pipeline_write(namespace, "create pipeline")
    with server.store.lock:
        return 200, _new_pipeline(server, body.get("display_name") or body.get("name", ""),
                                  body.get("description", ""), namespace)


def upload_pipeline(server: "KfpTestServer", request: Request) -> Response:
    text = _parse_upload(request)
    _checked_spec(text)
    q = request.query
    server.access.pipeline_write(q.get("namespace", ""), "create a pipeline", upload="json")
    name = q.get("display_name") or q.get("name") or ""
    with server.store.lock:
        pipeline = _new_pipeline(server, name, q.get("description", ""), q.get("namespace", ""))
        _new_version(server, pipeline["pipeline_id"], name, q.get("description", ""), text)
    return 200, pipeline


def upload_version(server: "KfpTestServer", request: Request) -> Response:
    text = _parse_upload(request)
    q = request.query
    with server.store.lock:
        pipeline = server.store.pipelines.get(q.get("pipelineid", ""))
        if pipeline is None:
            raise HttpError(400, "Failed to create a pipeline version", upload="json")
        server.access.pipeline_write(pipeline.get("namespace", ""), "create a pipeline version",
                                     upload="json")
        version = _new_version(server, pipeline["pipeline_id"],
                               q.get("display_name") or q.get("name", ""), q.get("description", ""), text)
    return 200, version


def list_pipelines(server: "KfpTestServer", request: Request) -> Response:
    namespace = request.query.get("namespace", "")
    server.access.pipeline_read(namespace, "list pipelines")
    with server.store.lock:
        items = [p for p in server.store.pipelines.values()
                 if not server.access.multi_user or p.get("namespace", "") == namespace]
        return 200, listing(items, "pipelines", request)


def get_pipeline(server: "KfpTestServer", request: Request) -> Response:
    with server.store.lock:
        return 200, get_or_404(server.store.pipelines, request.params["id"], "pipeline")


def list_versions(server: "KfpTestServer", request: Request) -> Response:
    with server.store.lock:
        get_or_404(server.store.pipelines, request.params["id"], "pipeline")
        versions = server.store.versions_of(request.params["id"])
        return 200, listing(versions, "pipeline_versions", request)


def get_version(server: "KfpTestServer", request: Request) -> Response:
    with server.store.lock:
        return 200, get_or_404(server.store.versions, request.params["vid"], "pipeline version")
