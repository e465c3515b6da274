"""Strict mode's wire format: KFP's v2beta1 OpenAPI spec, checked on every request and answer.

KFP's API server unmarshals request bodies with ``DiscardUnknown: false`` (a body with a
field the API does not define is refused with HTTP 400) and marshals answers with
``EmitUnpopulated: false`` (zero values, empty lists and empty maps are left out)
(kubeflow/pipelines ``backend/src/apiserver/common/utils.go``, the grpc-gateway marshaler
options). :class:`Spec` checks both against the API's OpenAPI description:

- :meth:`Spec.unknown_fields` lists the fields of a request body the API does not define;
- :meth:`Spec.violations` lists what in an answer the real server would never send: a key
  the schema does not define, a zero value, a value of the wrong type.

The spec is ``kfp-v2beta1.swagger.json`` beside this module, a copy of kubeflow/pipelines
``backend/api/v2beta1/swagger/kfp_api_single_file.swagger.json`` (KFP 2.17.0; Apache License
2.0, Copyright The Kubeflow Authors). It is kept with the tests so the check runs in any
checkout; ``tests/test_remote_strict.py`` checks that it is the same file as the project's
shared copy (``../shared/specs/``) wherever that folder exists.
"""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path
from typing import Any, Iterator, Optional

SPEC_PATH = Path(__file__).with_name("kfp-v2beta1.swagger.json")
#: Upload answers come from a plain HTTP handler, not grpc-gateway: errors are this JSON or text
#: (``server/pipeline_upload_server.go`` ``writeErrorToResponse`` and ``http.Error``).
UPLOAD_ERROR_KEYS = frozenset({"error_message", "error_details"})


class Spec:
    """The operations and definitions of KFP's v2beta1 OpenAPI document."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.definitions = document["definitions"]
        self.operations: list[tuple[str, re.Pattern[str], dict[str, Any]]] = []
        # literal paths (/pipelines/upload) before templated ones (/pipelines/{pipeline_id})
        for template, item in sorted(document["paths"].items(), key=lambda kv: kv[0].count("{")):
            pattern = re.compile(re.sub(r"\\\{[^}]+\\\}", "[^/:]+", re.escape(template)) + "$")
            for method, operation in item.items():
                self.operations.append((method.upper(), pattern, operation))

    @classmethod
    def load(cls, path: Path = SPEC_PATH) -> "Spec":
        """Read the spec (raises OSError when the file is missing)."""
        return cls(json.loads(path.read_text(encoding="utf-8")))

    def operation(self, method: str, path: str) -> Optional[dict[str, Any]]:
        """The operation serving ``method path``, or None when the spec has none."""
        return next((op for m, pattern, op in self.operations if m == method and pattern.match(path)),
                    None)

    def request_schema(self, operation: dict[str, Any]) -> Optional[dict[str, Any]]:
        """The schema of the operation's JSON body, or None."""
        return next((p["schema"] for p in operation.get("parameters", []) if p["in"] == "body"), None)

    def answer_schema(self, operation: dict[str, Any], status: int) -> dict[str, Any]:
        """The schema of an answer with ``status`` (the ``default`` one for errors)."""
        responses = operation["responses"]
        return (responses.get(str(status)) or responses["default"])["schema"]

    def _resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = self.definitions[schema["$ref"].rsplit("/", 1)[-1]]
        return schema

    def unknown_fields(self, schema: dict[str, Any], value: Any, where: str = "") -> list[str]:
        """Dotted names of the fields in ``value`` that ``schema`` does not define."""
        schema = self._resolve(schema)
        if isinstance(value, list) and "items" in schema:
            return [f for item in value for f in self.unknown_fields(schema["items"], item, where)]
        if not isinstance(value, dict) or "properties" not in schema:
            return []
        found = []
        for key, item in value.items():
            if key not in schema["properties"]:
                found.append(f"{where}{key}")
            else:
                found.extend(self.unknown_fields(schema["properties"][key], item, f"{where}{key}."))
        return found

    def violations(self, schema: dict[str, Any], value: Any, where: str = "$") -> list[str]:
        """What in ``value`` the real server would not send: unknown keys, zero values, wrong types."""
        return list(self._check(self._resolve(schema), value, where))

    def _check(self, schema: dict[str, Any], value: Any, where: str) -> Iterator[str]:
        kind = schema.get("type")
        if "properties" in schema or (kind == "object" and "additionalProperties" in schema):
            yield from self._check_object(schema, value, where)
        elif kind == "array":
            if not isinstance(value, list):
                yield f"{where}: expected an array, got {value!r:.60}"
                return
            for i, item in enumerate(value):
                yield from self._check(self._resolve(schema.get("items", {})), item, f"{where}[{i}]")
        elif kind is not None and kind != "object":
            yield from _check_scalar(schema, value, where)

    def _check_object(self, schema: dict[str, Any], value: Any, where: str) -> Iterator[str]:
        if not isinstance(value, dict):
            yield f"{where}: expected an object, got {value!r:.60}"
            return
        properties = schema.get("properties")
        for key, item in value.items():
            child = f"{where}.{key}"
            if properties is not None and key not in properties:
                yield f"{child}: not in the API"
                continue
            sub = self._resolve(properties[key] if properties is not None else schema["additionalProperties"])
            if _is_zero(sub, item):
                yield f"{child}: zero value {item!r} (the server leaves zero values out)"
            elif sub or properties is not None:
                yield from self._check(sub, item, child)


def _is_zero(schema: dict[str, Any], value: Any) -> bool:
    """True for what protojson leaves out with EmitUnpopulated false."""
    if value in ("", False, None) or value == [] or (value == {} and "properties" not in schema):
        return True
    if schema.get("enum") and value == schema.get("default", schema["enum"][0]):
        return True
    return schema.get("type") in ("integer", "number") and value in (0, "0")


def _check_scalar(schema: dict[str, Any], value: Any, where: str) -> Iterator[str]:
    kind, fmt = schema.get("type"), schema.get("format", "")
    if kind == "boolean" and not isinstance(value, bool):
        yield f"{where}: expected a boolean, got {value!r:.60}"
    elif kind == "integer" and fmt in ("int64", "uint64"):
        if not (isinstance(value, str) and re.fullmatch(r"-?\d+", value)):
            yield f"{where}: an int64 is a string of digits in protojson, got {value!r:.60}"
    elif kind in ("integer", "number") and (isinstance(value, bool) or not isinstance(value, (int, float))):
        yield f"{where}: expected a number, got {value!r:.60}"
    elif kind == "string" and not isinstance(value, str):
        yield f"{where}: expected a string, got {value!r:.60}"
    elif kind == "string" and schema.get("enum") and value not in schema["enum"]:
        yield f"{where}: {value!r} is not one of {schema['enum']}"
    elif kind == "string" and fmt == "date-time" and not _is_time(value):
        yield f"{where}: {value!r} is not an RFC 3339 time"


def _is_time(value: str) -> bool:
    try:
        datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return value.endswith("Z")


def upload_error_violations(content_type: str, body: bytes) -> list[str]:
    """What is wrong with an upload endpoint's error body (``{"error_message", "error_details"}`` or text)."""
    if content_type.startswith("text/plain"):
        return [] if body.strip() else ["an empty plain-text upload error"]
    try:
        keys = set(json.loads(body))
    except ValueError:
        return ["an upload error that is neither JSON nor plain text"]
    return [] if keys <= UPLOAD_ERROR_KEYS and "error_message" in keys else [
        f"upload error keys {sorted(keys)} are not {sorted(UPLOAD_ERROR_KEYS)}"]
