"""gRPC-Web framing: how a browser (and kale-magics) calls a gRPC service over plain HTTP.

The KFP UI reads ML Metadata this way: ``POST /ml_metadata.MetadataStoreService/<Method>`` with
``content-type: application/grpc-web+proto`` and ``x-grpc-web: 1``; Envoy (metadata-envoy)
turns it into gRPC. A body is a sequence of frames, each a flag byte, a 4-byte big-endian
length and that many bytes: flag 0x00 a message, flag 0x80 the trailers (``grpc-status: 0``,
``grpc-message: ...`` as HTTP header lines). An error without a message ("trailers-only") comes
as ``grpc-status`` / ``grpc-message`` HTTP headers and an empty body. Source: the gRPC-Web
protocol, grpc/grpc ``doc/PROTOCOL-WEB.md``; gRPC status codes, ``doc/statuscodes.md``.
"""

from __future__ import annotations

import struct
import urllib.parse
from dataclasses import dataclass, field
from typing import Mapping

CONTENT_TYPE = "application/grpc-web+proto"
#: The headers of every gRPC-Web call.
HEADERS = {"Content-Type": CONTENT_TYPE, "Accept": CONTENT_TYPE, "X-Grpc-Web": "1"}
TRAILER_FLAG = 0x80
COMPRESSED_FLAG = 0x01
#: gRPC status names by code (grpc/grpc ``doc/statuscodes.md``).
STATUS_NAMES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
                "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
                "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
                "UNAUTHENTICATED")


class FramingError(ValueError):
    """A gRPC-Web body that is not a sequence of whole frames, or a compressed one."""


@dataclass
class Reply:
    """A gRPC-Web answer taken apart.

    Attributes
    ----------
    messages:
        The serialized messages of the data frames, in order.
    status, message:
        The gRPC status code (0 is OK) and its message, from the trailer frame, else from the
        HTTP headers; None when neither says.
    """

    messages: list[bytes] = field(default_factory=list)
    status: int | None = None
    message: str = ""

    @property
    def status_name(self) -> str:
        """``NOT_FOUND`` for 5 (``UNKNOWN_STATUS_99`` for a code gRPC does not define)."""
        code = self.status or 0
        return STATUS_NAMES[code] if 0 <= code < len(STATUS_NAMES) else f"UNKNOWN_STATUS_{code}"


def frame(payload: bytes, flag: int = 0) -> bytes:
    """One frame: ``flag``, the big-endian length of ``payload``, ``payload``."""
    return struct.pack(">BI", flag, len(payload)) + payload


def trailer(status: int, message: str = "") -> bytes:
    """The trailer frame of a call that ended with ``status`` (``grpc-message`` percent-encoded)."""
    text = f"grpc-status: {status}\r\ngrpc-message: {urllib.parse.quote(message, safe=' ')}\r\n"
    return frame(text.encode("ascii"), TRAILER_FLAG)


def split_frames(body: bytes) -> list[tuple[int, bytes]]:
    """The ``(flag, payload)`` frames of ``body``.

    Raises
    ------
    FramingError
        A frame's header or payload is cut short, or a frame is compressed (no compression is
        asked for, so none may come).
    """
    frames, at = [], 0
    while at < len(body):
        if len(body) - at < 5:
            raise FramingError(f"a frame header is cut short at byte {at} of {len(body)}")
        flag, size = struct.unpack_from(">BI", body, at)
        if at + 5 + size > len(body):
            raise FramingError(f"a frame of {size} bytes is cut short at byte {len(body)}")
        if flag & COMPRESSED_FLAG:
            raise FramingError("a compressed frame, though no compression was asked for")
        frames.append((flag, body[at + 5:at + 5 + size]))
        at += 5 + size
    return frames


def read_reply(body: bytes, headers: Mapping[str, str]) -> Reply:
    """The messages and status of an answer (``headers`` with lower-case names).

    Raises
    ------
    FramingError
        See :func:`split_frames`.
    """
    reply = Reply()
    _status_from(reply, headers)  # a trailers-only answer
    for flag, payload in split_frames(body):
        if flag & TRAILER_FLAG:
            lines = payload.decode("utf-8", "replace").split("\r\n")
            _status_from(reply, {k.strip().lower(): v.strip()
                                 for k, _, v in (line.partition(":") for line in lines) if k})
        else:
            reply.messages.append(payload)
    return reply


def _status_from(reply: Reply, headers: Mapping[str, str]) -> None:
    if headers.get("grpc-status", "").strip().isdigit():
        reply.status = int(headers["grpc-status"])
        reply.message = urllib.parse.unquote(headers.get("grpc-message", ""))
