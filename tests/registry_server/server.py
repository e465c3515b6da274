"""A Kubeflow Model Registry test server: the part of its REST API the ``model-registry`` client
uses, on 127.0.0.1, in memory.

No Model Registry can run here (it needs a database and Kubernetes), so the tests drive this
one with the real client from PyPI (``model_registry.ModelRegistry``). Its shapes come from the
registry's OpenAPI file, ``model-registry.openapi.yaml`` beside this module (kubeflow/model-registry
``api/openapi/model-registry.yaml``): a request body with a field its schema does not have, or
without a required one, is refused with 400 as the real server (Go, ``DisallowUnknownFields``)
refuses it; answers leave out empty fields as the real server does, and every answer's fields
are checked against the schema, violations kept in :attr:`RegistryTestServer.violations`.

Routes (under ``/api/model_registry/v1alpha3``, and ``/v1`` as the current client calls them): list and create registered models, find one by
name, get one and list its versions; create model versions, find one by name and parent, get
one; list and upsert a version's artifacts; find a model artifact. Errors are the spec's
``Error`` (``{"code": "...", "message": "..."}``): 404 for what is not there, 409 for a name
taken, 401 without the bearer token when the server has one.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import re
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable

import yaml

#: The API's paths: ``v1alpha3`` in the spec kept here, ``v1`` in the client 0.3 (the same API
#: under the name the server took when it left alpha); both are served.
PREFIXES = ("/api/model_registry/v1alpha3", "/api/model_registry/v1")
SPEC = Path(__file__).with_name("model-registry.openapi.yaml")


@functools.lru_cache(maxsize=1)
def _spec_schemas(path: Path) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the spec is 3,500 lines
    return yaml.load(path.read_text(encoding="utf-8"), Loader=loader)["components"]["schemas"]


class Schemas:
    """Field names and required fields of the spec's schemas, following ``allOf`` and ``$ref``."""

    def __init__(self, path: Path = SPEC) -> None:
        self.schemas = _spec_schemas(path)

    def _resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = self.schemas[schema["$ref"].rsplit("/", 1)[1]]
        return schema

    def fields(self, name: str) -> set[str]:
        """Every property of schema ``name`` (of its ``allOf`` parts too)."""
        found: set[str] = set()
        stack = [self.schemas[name]]
        while stack:
            schema = self._resolve(stack.pop())
            found |= set(schema.get("properties", {}))
            stack += schema.get("allOf", [])
        return found

    def required(self, name: str) -> set[str]:
        found: set[str] = set()
        stack = [self.schemas[name]]
        while stack:
            schema = self._resolve(stack.pop())
            found |= set(schema.get("required", []))
            stack += schema.get("allOf", [])
        return found


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _omit_empty(value: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in value.items() if v not in (None, "", {}, [])}


class RegistryTestServer:
    """The registry, its HTTP server and what it saw.

    Attributes
    ----------
    models, versions, artifacts:
        Stored entities by id (as the API shows them, with ``id`` and times).
    version_artifacts:
        Artifact ids by model version id.
    requests:
        ``"METHOD /path?query"`` of every request, in order.
    violations:
        Answers whose fields are not in their schema (should stay empty).
    """

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.schemas = Schemas()
        self.models: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, dict[str, Any]] = {}
        self.artifacts: dict[str, dict[str, Any]] = {}
        self.version_artifacts: dict[str, list[str]] = {}
        self.requests: list[str] = []
        self.violations: list[str] = []
        self._ids = 0
        self._lock = threading.Lock()
        self._http: http.server.ThreadingHTTPServer | None = None
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., tuple[int, Any]]]] = [
            ("GET", re.compile(r"/registered_models"), self._list_models),
            ("POST", re.compile(r"/registered_models"), self._create_model),
            ("GET", re.compile(r"/registered_model"), self._find_model),
            ("GET", re.compile(r"/registered_models/(\d+)"), self._get_model),
            ("GET", re.compile(r"/registered_models/(\d+)/versions"), self._list_versions),
            ("POST", re.compile(r"/model_versions"), self._create_version),
            ("GET", re.compile(r"/model_version"), self._find_version),
            ("GET", re.compile(r"/model_versions/(\d+)"), self._get_version),
            ("GET", re.compile(r"/model_versions/(\d+)/artifacts"), self._list_artifacts),
            ("POST", re.compile(r"/model_versions/(\d+)/artifacts"), self._upsert_artifact),
            ("GET", re.compile(r"/model_artifact"), self._find_artifact),
        ]

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._http is not None, "start the server first"
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    def start(self) -> "RegistryTestServer":
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                server.requests.append(f"{self.command} {self.path}")

            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def do_PATCH(self) -> None:
                self._answer()

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, answer = server.handle(self.command, self.path,
                                               self.headers.get("Authorization", ""), body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def __enter__(self) -> "RegistryTestServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- dispatch -------------------------------------------------------------------------
    def handle(self, method: str, path: str, authorization: str, body: bytes) -> tuple[int, Any]:
        """``(status, JSON answer)`` for one request."""
        url = urllib.parse.urlsplit(path)
        query = dict(urllib.parse.parse_qsl(url.query))
        if self.token and authorization != f"Bearer {self.token}":
            return 401, {"code": "401", "message": "missing or invalid bearer token"}
        prefix = next((p for p in PREFIXES if url.path.startswith(p + "/")), None)
        if prefix is None:
            return 404, {"code": "404", "message": f"no route {url.path}"}
        rest = url.path[len(prefix):]
        for verb, pattern, route in self._routes:
            match = pattern.fullmatch(rest)
            if verb == method and match:
                try:
                    with self._lock:
                        payload = json.loads(body) if body else None
                        return route(*match.groups(), query=query, body=payload)
                except HttpError as error:
                    return error.status, {"code": str(error.status), "message": error.message}
                except ValueError as error:
                    return 400, {"code": "400", "message": f"invalid JSON: {error}"}
        return 404, {"code": "404", "message": f"no route {method} {url.path}"}

    def _checked(self, body: Any, schema: str) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise HttpError(400, f"the body must be a {schema} object")
        unknown = sorted(set(body) - self.schemas.fields(schema))
        if unknown:
            raise HttpError(400, f"json: unknown field {unknown[0]!r}")
        missing = sorted(self.schemas.required(schema) - set(body))
        if missing:
            raise HttpError(400, f"required field {missing[0]!r} is missing")
        return body

    def _answer(self, entity: dict[str, Any], schema: str) -> dict[str, Any]:
        shown = _omit_empty(entity)
        extra = sorted(set(shown) - self.schemas.fields(schema))
        if extra:
            self.violations.append(f"{schema} answer has fields {extra} outside the spec")
        return shown

    def _new(self, fields: dict[str, Any]) -> dict[str, Any]:
        self._ids += 1
        now = str(int(time.time() * 1000))
        return {**fields, "id": str(self._ids), "createTimeSinceEpoch": now,
                "lastUpdateTimeSinceEpoch": now}

    def _page(self, items: list[dict[str, Any]], query: dict[str, str],
              schema: str) -> tuple[int, dict[str, Any]]:
        size = int(query.get("pageSize") or 100)
        start = int(base64.b64decode(query["nextPageToken"]).decode()) \
            if query.get("nextPageToken") else 0
        key = {"CREATE_TIME": "createTimeSinceEpoch", "LAST_UPDATE_TIME": "lastUpdateTimeSinceEpoch"}\
            .get(query.get("orderBy", "ID"), "id")
        ordered = sorted(items, key=lambda e: (int(e[key]), int(e["id"])),
                         reverse=query.get("sortOrder") == "DESC")
        page = ordered[start:start + size]
        token = base64.b64encode(str(start + size).encode()).decode() \
            if start + size < len(ordered) else ""
        return 200, {"items": [self._answer(e, schema) for e in page], "nextPageToken": token,
                     "pageSize": size, "size": len(page)}

    def _one(self, store: dict[str, dict[str, Any]], id: str, what: str) -> dict[str, Any]:
        if id not in store:
            raise HttpError(404, f"{what} with id {id} not found")
        return store[id]

    # -- registered models ----------------------------------------------------------------
    def _list_models(self, *, query: dict[str, str], body: Any) -> tuple[int, Any]:
        return self._page(list(self.models.values()), query, "RegisteredModel")

    def _create_model(self, *, query: dict[str, str], body: Any) -> tuple[int, Any]:
        fields = self._checked(body, "RegisteredModelCreate")
        if any(m["name"] == fields["name"] for m in self.models.values()):
            raise HttpError(409, f"registered model {fields['name']!r} already exists")
        model = self._new({"state": "LIVE", **fields})
        self.models[model["id"]] = model
        return 201, self._answer(model, "RegisteredModel")

    def _find_model(self, *, query: dict[str, str], body: Any) -> tuple[int, Any]:
        for model in self.models.values():
            if model["name"] == query.get("name") or (
                    query.get("externalId") and model.get("externalId") == query["externalId"]):
                return 200, self._answer(model, "RegisteredModel")
        raise HttpError(404, "no registered model found")

    def _get_model(self, id: str, *, query: dict[str, str], body: Any) -> tuple[int, Any]:
        return 200, self._answer(self._one(self.models, id, "registered model"), "RegisteredModel")

    def _list_versions(self, id: str, *, query: dict[str, str], body: Any) -> tuple[int, Any]:
        self._one(self.models, id, "registered model")
        found = [v for v in self.versions.values() if v["registeredModelId"] == id]
        return self._page(found, query, "ModelVersion")

    # -- model versions -------------------------------------------------------------------
    def _create_version(self, *, query: dict[str, str], body: Any) -> tuple[int, Any]:
        fields = self._checked(body, "ModelVersionCreate")
        self._one(self.models, fields["registeredModelId"], "registered model")
        if any(v["registeredModelId"] == fields["registeredModelId"] and v["name"] == fields["name"]
               for v in self.versions.values()):
            raise HttpError(409, f"model version {fields['name']!r} already exists")
        version = self._new({"state": "LIVE", **fields})
        self.versions[version["id"]] = version
        return 201, self._answer(version, "ModelVersion")

    def _find_version(self, *, query: dict[str, str], body: Any) -> tuple[int, Any]:
        for version in self.versions.values():
            if version["name"] == query.get("name") and \
                    version["registeredModelId"] == query.get("parentResourceId"):
                return 200, self._answer(version, "ModelVersion")
        raise HttpError(404, "no model version found")

    def _get_version(self, id: str, *, query: dict[str, str], body: Any) -> tuple[int, Any]:
        return 200, self._answer(self._one(self.versions, id, "model version"), "ModelVersion")

    # -- artifacts ------------------------------------------------------------------------
    def _list_artifacts(self, id: str, *, query: dict[str, str], body: Any) -> tuple[int, Any]:
        self._one(self.versions, id, "model version")
        found = [self.artifacts[a] for a in self.version_artifacts.get(id, [])]
        return self._page(found, query, "ModelArtifact")

    def _upsert_artifact(self, id: str, *, query: dict[str, str], body: Any) -> tuple[int, Any]:
        self._one(self.versions, id, "model version")
        if not isinstance(body, dict) or body.get("artifactType") != "model-artifact":
            raise HttpError(400, "artifactType must be one of the Artifact mapping; this test "
                                 "server keeps model-artifact only")
        fields = self._checked(body, "ModelArtifact")
        artifact = self._new({"state": "UNKNOWN", **fields})
        self.artifacts[artifact["id"]] = artifact
        self.version_artifacts.setdefault(id, []).append(artifact["id"])
        return 201, self._answer(artifact, "ModelArtifact")

    def _find_artifact(self, *, query: dict[str, str], body: Any) -> tuple[int, Any]:
        for version_id, ids in self.version_artifacts.items():
            for artifact_id in ids:
                artifact = self.artifacts[artifact_id]
                if artifact.get("name") == query.get("name") and \
                        version_id == query.get("parentResourceId", version_id):
                    return 200, self._answer(artifact, "ModelArtifact")
        raise HttpError(404, "no model artifact found")
