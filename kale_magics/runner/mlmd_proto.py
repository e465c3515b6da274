"""The subset of ML Metadata's protobuf messages that reading a run's metric values needs.

KFP keeps metric values in ML Metadata (MLMD), whose service is gRPC only. The ``ml-metadata``
package pins an old protobuf that clashes with kfp's, so the few messages needed are declared
here and built with ``protobuf``'s own descriptor classes (installed by kfp). Names, nesting,
field numbers and types are those of google/ml-metadata ``ml_metadata/proto/metadata_store.proto``
and ``metadata_store_service.proto`` (package ``ml_metadata``, proto2); fields left out
(``struct_value``, ``system_metadata``, list options, ...) are read as unknown fields and
skipped, as protobuf does with any newer field, so the subset reads the real service's
answers. Messages are made in a private descriptor pool, so an installed ``ml-metadata`` does
not clash with them.
"""

from __future__ import annotations

import functools
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "ml_metadata"
_FIELD = descriptor_pb2.FieldDescriptorProto
_SCALARS = {"int64": _FIELD.TYPE_INT64, "double": _FIELD.TYPE_DOUBLE,
            "string": _FIELD.TYPE_STRING, "bool": _FIELD.TYPE_BOOL}
_MAP = "map<string, Value>"

#: Each message: its fields ``(name, number, type)``. A type is a scalar, ``map<string, Value>``,
#: ``repeated X`` or a message or enum name (``Event.Path``); a leading ``oneof:`` puts the field
#: in the message's one oneof (``value``).
MESSAGES: dict[str, tuple[tuple[str, int, str], ...]] = {
    "Value": (("int_value", 1, "oneof:int64"), ("double_value", 2, "oneof:double"),
              ("string_value", 3, "oneof:string"), ("bool_value", 6, "oneof:bool")),
    "Artifact": (("id", 1, "int64"), ("type_id", 2, "int64"), ("uri", 3, "string"),
                 ("properties", 4, _MAP), ("custom_properties", 5, _MAP),
                 ("state", 6, "Artifact.State"), ("name", 7, "string"), ("type", 8, "string"),
                 ("create_time_since_epoch", 9, "int64"),
                 ("last_update_time_since_epoch", 10, "int64"), ("external_id", 11, "string")),
    "ArtifactType": (("id", 1, "int64"), ("name", 2, "string"), ("version", 4, "string"),
                     ("description", 5, "string")),
    "Event": (("artifact_id", 1, "int64"), ("execution_id", 2, "int64"),
              ("path", 3, "Event.Path"), ("type", 4, "Event.Type"),
              ("milliseconds_since_epoch", 5, "int64")),
    "Event.Path": (("steps", 1, "repeated Event.Path.Step"),),
    "Event.Path.Step": (("index", 1, "oneof:int64"), ("key", 2, "oneof:string")),
    "Execution": (("id", 1, "int64"), ("type_id", 2, "int64"),
                  ("last_known_state", 3, "Execution.State"), ("properties", 4, _MAP),
                  ("custom_properties", 5, _MAP), ("name", 6, "string"), ("type", 7, "string"),
                  ("create_time_since_epoch", 8, "int64"),
                  ("last_update_time_since_epoch", 9, "int64"), ("external_id", 10, "string")),
    "Context": (("id", 1, "int64"), ("type_id", 2, "int64"), ("name", 3, "string"),
                ("properties", 4, _MAP), ("custom_properties", 5, _MAP), ("type", 6, "string"),
                ("create_time_since_epoch", 7, "int64"),
                ("last_update_time_since_epoch", 8, "int64"), ("external_id", 9, "string")),
    "GetContextByTypeAndNameRequest": (("type_name", 1, "string"), ("context_name", 2, "string"),
                                       ("type_version", 3, "string")),
    "GetContextByTypeAndNameResponse": (("context", 1, "Context"),),
    "GetExecutionsByContextRequest": (("context_id", 1, "int64"),),
    "GetExecutionsByContextResponse": (("executions", 1, "repeated Execution"),
                                       ("next_page_token", 2, "string")),
    "GetArtifactsByContextRequest": (("context_id", 1, "int64"),),
    "GetArtifactsByContextResponse": (("artifacts", 1, "repeated Artifact"),
                                      ("next_page_token", 2, "string")),
    "GetArtifactsByIDRequest": (("artifact_ids", 1, "repeated int64"),
                                ("populate_artifact_types", 3, "bool")),
    "GetArtifactsByIDResponse": (("artifacts", 1, "repeated Artifact"),
                                 ("artifact_types", 2, "repeated ArtifactType")),
    "GetEventsByExecutionIDsRequest": (("execution_ids", 1, "repeated int64"),),
    "GetEventsByExecutionIDsResponse": (("events", 1, "repeated Event"),),
    "GetArtifactTypesRequest": (),
    "GetArtifactTypesResponse": (("artifact_types", 1, "repeated ArtifactType"),),
}

#: Each enum: its values, numbered from 0 (as in metadata_store.proto).
ENUMS: dict[str, tuple[str, ...]] = {
    "Artifact.State": ("UNKNOWN", "PENDING", "LIVE", "MARKED_FOR_DELETION", "DELETED",
                       "ABANDONED", "REFERENCE"),
    "Event.Type": ("UNKNOWN", "DECLARED_OUTPUT", "DECLARED_INPUT", "INPUT", "OUTPUT",
                   "INTERNAL_INPUT", "INTERNAL_OUTPUT", "PENDING_OUTPUT"),
    "Execution.State": ("UNKNOWN", "NEW", "RUNNING", "COMPLETE", "FAILED", "CACHED", "CANCELED"),
}


def _camel(name: str) -> str:
    return "".join(part.title() for part in name.split("_"))


def _add_field(message: descriptor_pb2.DescriptorProto, full_name: str, name: str, number: int,
               kind: str) -> None:
    """Add field ``name = number`` of ``kind`` (see :data:`MESSAGES`) to ``message`` (``full_name``)."""
    field = message.field.add(name=name, number=number, label=_FIELD.LABEL_OPTIONAL)
    if kind.startswith("oneof:"):
        if not message.oneof_decl:
            message.oneof_decl.add(name="value")
        field.oneof_index, kind = 0, kind[len("oneof:"):]
    if kind.startswith("repeated "):
        field.label, kind = _FIELD.LABEL_REPEATED, kind[len("repeated "):]
    if kind == _MAP:  # a map is a repeated nested XEntry {key = 1; value = 2}
        entry = message.nested_type.add(name=f"{_camel(name)}Entry")
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, label=_FIELD.LABEL_OPTIONAL, type=_FIELD.TYPE_STRING)
        entry.field.add(name="value", number=2, label=_FIELD.LABEL_OPTIONAL,
                        type=_FIELD.TYPE_MESSAGE, type_name=f".{PACKAGE}.Value")
        field.label, field.type = _FIELD.LABEL_REPEATED, _FIELD.TYPE_MESSAGE
        field.type_name = f".{PACKAGE}.{full_name}.{entry.name}"
        return
    if kind in _SCALARS:
        field.type = _SCALARS[kind]
    else:
        field.type = _FIELD.TYPE_ENUM if kind in ENUMS else _FIELD.TYPE_MESSAGE
        field.type_name = f".{PACKAGE}.{kind}"


def file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """The messages and enums above as one proto2 file of package ``ml_metadata``."""
    file = descriptor_pb2.FileDescriptorProto(name="kale_magics/ml_metadata_subset.proto",
                                              package=PACKAGE, syntax="proto2")
    built: dict[str, descriptor_pb2.DescriptorProto] = {}
    for full_name in sorted(MESSAGES, key=lambda n: n.count(".")):  # outer messages first
        outer, _, name = full_name.rpartition(".")
        parent = built[outer].nested_type if outer else file.message_type
        built[full_name] = parent.add(name=name)
    for full_name, fields in MESSAGES.items():
        for field_name, number, kind in fields:
            _add_field(built[full_name], full_name, field_name, number, kind)
    for full_name, values in ENUMS.items():
        outer, _, name = full_name.rpartition(".")
        enum = built[outer].enum_type.add(name=name)
        for number, value in enumerate(values):
            enum.value.add(name=value, number=number)
    return file


@functools.lru_cache(maxsize=1)
def _pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_descriptor())
    return pool


def message(kind: str, /, **fields: Any) -> Any:
    """A new ``ml_metadata.<kind>`` message (``"Event.Path"`` for a nested one), with ``fields`` set.

    Raises
    ------
    KeyError
        ``kind`` is not one of :data:`MESSAGES`.
    """
    return message_class(kind)(**fields)


def message_class(name: str) -> Any:
    """The protobuf class of ``ml_metadata.<name>``."""
    return message_factory.GetMessageClass(_pool().FindMessageTypeByName(f"{PACKAGE}.{name}"))


def enum_value(enum: str, value: str) -> int:
    """The number of ``value`` in enum ``enum`` (``enum_value("Event.Type", "OUTPUT") == 4``)."""
    return ENUMS[enum].index(value)
