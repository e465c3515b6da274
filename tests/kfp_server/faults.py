"""Faults the KFP test server injects on request: error statuses, slowness, dropped connections.

A test adds a :class:`Fault`; every request whose method and path match it is
answered with the fault instead of (or, for ``reset_after``, after) the normal
handling, for ``times`` requests or until ``for_s`` seconds have passed. A fault
answers KFP's error body, or the exact ``body`` it was given (e.g. the plain-text
error of an upload endpoint).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from tests.kfp_server.protocol import error_body


@dataclass
class Fault:
    """One injected fault.

    Attributes
    ----------
    status:
        Answer with this HTTP status (401, 500, 503, ...) instead of handling the request.
    body, content_type:
        Answer exactly this body (default: KFP's error body saying "injected fault").
    delay_s:
        Sleep this long before answering (a slow server).
    reset:
        Close the connection without answering, before handling the request.
    reset_after:
        Handle the request (e.g. create the run), then close the connection without answering.
    method, path:
        Match requests with this method (any when "") whose path contains ``path``.
    times:
        Match this many requests, then expire; None for no limit.
    for_s:
        Expire this many seconds after the fault was added; None for no limit.
    """

    status: Optional[int] = None
    body: Optional[bytes] = None
    content_type: str = "application/json"
    delay_s: float = 0.0
    reset: bool = False
    reset_after: bool = False
    method: str = ""
    path: str = ""
    times: Optional[int] = None
    for_s: Optional[float] = None
    hits: int = 0
    added: float = field(default_factory=time.monotonic)

    def answer(self, strict: bool) -> Union[dict[str, Any], tuple[str, bytes]]:
        """The body to answer: the given one, else KFP's error body."""
        if self.body is not None:
            return self.content_type, self.body
        return error_body(self.status or 500, "injected fault", strict)

    def matches(self, method: str, path: str) -> bool:
        """True when the fault applies to this request and has not expired."""
        if self.method and self.method != method:
            return False
        if self.path not in path:
            return False
        return not self.expired()

    def expired(self) -> bool:
        """True once the fault has been used ``times`` times or ``for_s`` seconds have passed."""
        if self.times is not None and self.hits >= self.times:
            return True
        return self.for_s is not None and time.monotonic() - self.added > self.for_s


class Faults:
    """The faults currently injected, safe to change from a test while the server runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, **kwargs: object) -> Fault:
        """Inject a fault (keyword arguments of :class:`Fault`) and return it."""
        fault = Fault(**kwargs)  # type: ignore[arg-type]
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        """Remove every fault."""
        with self._lock:
            self._faults.clear()

    def take(self, method: str, path: str) -> Optional[Fault]:
        """The first fault matching the request, counting the hit; None when there is none."""
        with self._lock:
            self._faults = [f for f in self._faults if not f.expired()]
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.hits += 1
                    return fault
        return None
