"""One call to the KFP API: timeouts, retries of transient failures, typed errors.

Every call kale-magics makes goes through :func:`call` with a generated
``kfp_server_api`` method (``client.runs.run_service_get_run``, ...), so each
has a connect and read timeout and its failure becomes a typed error whose
message names the problem and the fix (and never a credential):

- 401/403 -> :class:`~kale_magics.errors.KfpAuthError`, never retried;
- connection refused or reset, timeouts, 429, 500, 502, 503, 504 -> transient:
  a *reading* call (GET, or a repeat-safe POST such as terminate) is retried
  with exponential backoff for up to ``RetryPolicy.max_outage_s`` seconds, then
  :class:`~kale_magics.errors.KfpConnectionError`;
- a call that *creates* something (a run, a version) is never retried: the
  server may have done the work before the answer was lost, and a blind retry
  would make a duplicate. Its error says to check before resubmitting.

urllib3 itself (used by ``kfp_server_api``) retries a refused *connection*
three times for any method, which is safe (nothing was sent), and never
retries a POST whose answer was lost.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from kale_magics.errors import KfpAuthError, KfpConnectionError, RunError
from kale_magics.runner.connection import Connection, auth_message

log = logging.getLogger(__name__)

#: HTTP statuses that mean "try again later".
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep retrying a reading call through an outage.

    Attributes
    ----------
    max_outage_s:
        Give up after this many seconds without a good answer.
    backoff_start_s, backoff_max_s:
        First wait between attempts (seconds), doubled after each failure up to the maximum.
    """

    max_outage_s: float = 120.0
    backoff_start_s: float = 1.0
    backoff_max_s: float = 20.0

    @classmethod
    def for_outage(cls, max_outage_s: float) -> "RetryPolicy":
        """Ride out ``max_outage_s`` seconds, waiting at most a quarter of it (1 to 20 s) between tries."""
        return cls(max_outage_s=max_outage_s, backoff_max_s=max(1.0, min(20.0, max_outage_s / 4)))


class _Transient(Exception):
    """A failure worth retrying; ``str()`` is the reason."""


def _api_message(error: Any) -> str:
    """The server's own message from an ApiException body.

    KFP's grpc-gateway endpoints answer a googleRpcStatus (``{"code", "message"}``); its
    upload endpoints ``{"error_message", "error_details"}`` or plain text
    (``server/pipeline_upload_server.go``).
    """
    text = error.body.decode(errors="replace") if isinstance(error.body, bytes) else str(error.body or "")
    try:
        body = json.loads(text or "{}")
    except ValueError:
        return " ".join(text.split()) if "<html" not in text.lower() else ""
    if not isinstance(body, dict):
        return ""
    return str(body.get("message") or body.get("error_message") or body.get("error") or "")


def _permission_denied(error: Any) -> bool:
    """True when KFP itself refused (gRPC PermissionDenied): the caller is known but lacks access."""
    try:
        body = json.loads(error.body or "{}")
    except (ValueError, TypeError):
        return False
    return isinstance(body, dict) and (body.get("code") == 7 or "error_message" in body)


def _network_reason(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    if "Connection refused" in text or "NewConnectionError" in text:
        return "connection refused"
    if "timed out" in text.lower() or "Timeout" in type(error).__name__:
        return "timed out"
    if "RemoteDisconnected" in text or "ProtocolError" in text or "reset" in text.lower():
        return "the connection was closed without an answer"
    return type(error).__name__


def translate(error: BaseException, connection: Connection, what: str) -> Exception:
    """Turn an exception from a KFP API call into a typed error, or :class:`_Transient`."""
    import kfp_server_api
    import urllib3

    if isinstance(error, kfp_server_api.ApiException):
        status = int(error.status or 0)
        detail = connection.redact(_api_message(error))[:300]
        if status == 403 and _permission_denied(error):
            return KfpAuthError(f"{what}: KFP at {connection.host} refused it (HTTP 403): {detail}; "
                                f"the credentials from {connection.auth} were accepted but lack this "
                                "permission: use a namespace you have access to (--namespace), or ask "
                                "your Kubeflow admin for access")
        if status in (401, 403):
            return KfpAuthError(auth_message(connection, status))
        reason = f"HTTP {status} {error.reason or ''}".strip() + (f": {detail}" if detail else "")
        if status in TRANSIENT_STATUSES or status == 0:
            return _Transient(reason)
        if status == 404:
            return RunError(f"{what}: not found on KFP at {connection.host} ({reason}); "
                            "check the id (it may have been deleted)")
        return RunError(f"{what}: KFP at {connection.host} answered {reason}")
    if isinstance(error, (urllib3.exceptions.HTTPError, OSError)):
        return _Transient(_network_reason(error))
    return RunError(connection.redact(f"{what} failed: {type(error).__name__}: {error}")[:500])


def call(connection: Connection, what: str, method: Callable[..., Any], *args: Any,
         idempotent: bool = True, policy: RetryPolicy = RetryPolicy(),
         sleep: Callable[[float], None] = time.sleep, **kwargs: Any) -> Any:
    """Call a generated KFP API ``method`` with timeouts, retrying transient failures when safe.

    Parameters
    ----------
    connection:
        Gives the timeouts and the URL for messages.
    what:
        What the call does, for messages: ``"reading run 1234"``.
    method, args, kwargs:
        The generated API method and its arguments.
    idempotent:
        True when repeating the call is harmless (reads); False for calls that
        create something, which are then never retried.
    policy, sleep:
        Retry timing; ``sleep`` is replaceable for tests.

    Raises
    ------
    KfpAuthError
        HTTP 401/403.
    KfpConnectionError
        Transient failures that outlasted ``policy.max_outage_s``, or any
        transient failure of a non-idempotent call.
    RunError
        Any other failure (404, 400, ...), with the server's message.
    """
    kwargs.setdefault("_request_timeout", (connection.connect_timeout_s, connection.request_timeout_s))
    give_up = time.monotonic() + policy.max_outage_s
    delay = policy.backoff_start_s
    while True:
        try:
            return method(*args, **kwargs)
        except Exception as error:  # translated below; nothing raw reaches the user
            problem = translate(error, connection, what)
        if not isinstance(problem, _Transient):
            raise problem from None
        if not idempotent:
            raise KfpConnectionError(connection.redact(
                f"{what} at {connection.host} failed: {problem}. It was not retried, because the "
                "server may have done it before the answer was lost: check the KFP UI (or "
                "`kale-magics status`) before submitting again")) from None
        if time.monotonic() + delay > give_up:
            raise KfpConnectionError(connection.redact(
                f"{what}: KFP at {connection.host} did not answer properly for "
                f"{policy.max_outage_s:g} s (last: {problem}); check the server, then try again"))
        log.info("%s", connection.redact(f"{what}: {problem}; retrying in {delay:.1f} s"))
        sleep(delay)
        delay = min(delay * 2, policy.backoff_max_s)
