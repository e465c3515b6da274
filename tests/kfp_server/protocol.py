"""Requests, errors and listings of the KFP test server, in the shapes KFP's API server uses.

Errors from grpc-gateway endpoints are a ``googleRpcStatus``: ``{"code", "message"}`` with the
gRPC code (``details`` left out when empty). The upload endpoints are plain HTTP handlers
(``server/pipeline_upload_server.go``): their errors are ``{"error_message", "error_details"}``
(``writeErrorToResponse``) or plain text (``http.Error``). The lenient mode keeps the original
stand-in's ``{"error", "code", "message", "details"}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Union

from tests.kfp_server.resources import matches_filter

API = "/apis/v2beta1"
#: HTTP status -> gRPC code, as grpc-gateway maps them back.
GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 409: 6, 500: 13, 503: 14}
#: A handler's answer: status and a JSON object, or status, content type and raw bytes.
Response = Union[tuple[int, dict[str, Any]], tuple[int, str, bytes]]


@dataclass
class Request:
    """An HTTP request as the handlers see it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    params: dict[str, str]

    def json(self) -> dict[str, Any]:
        """The body parsed as JSON (an empty object when there is none)."""
        try:
            return json.loads(self.body or b"{}")
        except ValueError:
            raise HttpError(400, "proto: syntax error (line 1:1): invalid value") from None


class HttpError(Exception):
    """Answer with ``status`` and the error body of the endpoint.

    Parameters
    ----------
    status, message:
        HTTP status and the server's message.
    upload:
        ``"json"`` or ``"text"``: an upload endpoint's error shape instead of a googleRpcStatus.
    """

    def __init__(self, status: int, message: str, upload: str = "") -> None:
        super().__init__(message)
        self.status, self.upload = status, upload


def error_body(status: int, message: str, strict: bool = True) -> dict[str, Any]:
    """A grpc-gateway error body (googleRpcStatus); the lenient mode adds ``error`` and ``details``."""
    code = GRPC_CODES.get(status, 2)
    if strict:
        return {"code": code, "message": message}
    return {"error": message, "code": code, "message": message, "details": []}


def error_response(error: HttpError, strict: bool = True) -> Response:
    """The answer for ``error`` in its endpoint's shape."""
    if error.upload == "text":  # Go's http.Error: the message and a newline
        return error.status, "text/plain; charset=utf-8", f"{error}\n".encode()
    if error.upload == "json":
        return error.status, {"error_message": str(error), "error_details": f"{error}"}
    return error.status, error_body(error.status, str(error), strict)


def listing(items: list[dict[str, Any]], key: str, request: Request) -> dict[str, Any]:
    """A list answer: the filtered items under ``key`` and ``total_size`` (both left out when empty)."""
    selected = [i for i in items if matches_filter(i, request.query.get("filter", ""))]
    if request.query.get("sort_by", "").endswith(" desc"):
        selected.reverse()
    size = int(request.query.get("page_size") or 0) or len(selected)
    body: dict[str, Any] = {"total_size": len(selected)} if selected else {}
    if selected:
        body[key] = selected[:size]
    return body


def get_or_404(table: dict[str, Any], key: str, what: str) -> Any:
    """``table[key]``, or HTTP 404 naming ``what``."""
    if key not in table:
        raise HttpError(404, f"Failed to get {what} {key}: ResourceNotFoundError: {what} {key} not found")
    return table[key]
