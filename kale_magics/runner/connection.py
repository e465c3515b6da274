"""Where the KFP server is and how to authenticate: resolving, probing and connecting.

Settings come from, in order (the first that sets a value wins):

1. explicit arguments (``--host``, ``--namespace``, ``--token``, ``--cookies``);
2. the notebook's ``%kale pipeline --host`` setting (host only);
3. environment variables: ``KF_PIPELINES_ENDPOINT`` (KFP's own), ``KF_PIPELINES_NAMESPACE``,
   ``KF_PIPELINES_TOKEN``, ``KF_PIPELINES_COOKIES``, ``KF_PIPELINES_UI_ENDPOINT`` (KFP's own);
4. the user config file, :func:`config_path` (JSON: ``host``, ``namespace``, ``ui_host``,
   ``token_file``, ``connect_timeout_s``);
5. for the token only: the in-cluster service-account token file KFP mounts into
   notebook pods (``KF_PIPELINES_SA_TOKEN_PATH``, default
   ``/var/run/secrets/kubeflow/pipelines/token``), when present;
6. for the namespace only, on a multi-user server (healthz ``multi_user``): the namespace
   of the pod kale-magics runs in (:data:`NAMESPACE_FILE`), when present.

A token or cookie value is kept out of ``repr``, logs and every message; the
messages say where credentials came from (``$KF_PIPELINES_TOKEN``), never what
they are.

Before ``kfp.Client`` is built, :func:`probe` asks ``/apis/v2beta1/healthz``
with a short timeout: ``kfp.Client``'s constructor retries a failing health
check for about 25 s and lets urllib3 errors escape, so a wrong host would
otherwise hang, then print a traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import socket
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from kale_magics.errors import KaleError, KfpAuthError, KfpConnectionError

HOST_ENV = "KF_PIPELINES_ENDPOINT"
UI_ENV = "KF_PIPELINES_UI_ENDPOINT"
NAMESPACE_ENV = "KF_PIPELINES_NAMESPACE"
TOKEN_ENV = "KF_PIPELINES_TOKEN"
COOKIES_ENV = "KF_PIPELINES_COOKIES"
CONFIG_ENV = "KALE_MAGICS_CONFIG"
SA_TOKEN_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
SA_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"
#: The namespace of the pod kale-magics runs in (in a Kubeflow notebook: the user's profile).
NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
HEALTHZ = "/apis/v2beta1/healthz"


def config_path(environ: Mapping[str, str] | None = None) -> str:
    """The user config file: ``$KALE_MAGICS_CONFIG``, else ``$XDG_CONFIG_HOME/kale-magics/config.json``
    (``~/.config/kale-magics/config.json`` when ``XDG_CONFIG_HOME`` is unset)."""
    env = os.environ if environ is None else environ
    if env.get(CONFIG_ENV):
        return env[CONFIG_ENV]
    base = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "kale-magics", "config.json")


@dataclass(frozen=True)
class Connection:
    """How to reach one KFP API server.

    Attributes
    ----------
    host:
        The API endpoint, ``http(s)://HOST[:PORT][/PATH]`` without a trailing ``/``.
    namespace:
        Kubernetes namespace for multi-user KFP ("" for single-user).
    ui_host:
        Base of links to the KFP UI (default: ``host``).
    token, cookies:
        Bearer token and ``Cookie`` header value; never shown.
    auth:
        Where the credentials came from, for messages: ``"none"``, ``"--token"``,
        ``"$KF_PIPELINES_TOKEN"``, ``"cookies from --cookies"``, ...
    connect_timeout_s:
        Seconds to wait for a TCP connection and the health check.
    request_timeout_s:
        Seconds to wait for the answer to one API call.
    """

    host: str
    namespace: str = ""
    ui_host: str = ""
    token: str = field(default="", repr=False)
    cookies: str = field(default="", repr=False)
    auth: str = "none"
    connect_timeout_s: float = 5.0
    request_timeout_s: float = 30.0

    def headers(self) -> dict[str, str]:
        """The authentication headers of every request."""
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.cookies:
            headers["Cookie"] = self.cookies
        return headers

    def redact(self, text: str) -> str:
        """``text`` with the token and cookie values replaced by ``***``."""
        cookie_values = [part.partition("=")[2] for part in self.cookies.split(";")]
        for secret in sorted({self.token, self.cookies, *cookie_values}, key=len, reverse=True):
            secret = secret.strip()
            if len(secret) >= 4:
                text = text.replace(secret, "***")
        return text

    def run_url(self, run_id: str) -> str:
        """The run's page in the KFP UI."""
        return f"{self.ui_host or self.host}/#/runs/details/{run_id}"

    def schedule_url(self, recurring_run_id: str) -> str:
        """The recurring run's page in the KFP UI."""
        return f"{self.ui_host or self.host}/#/recurringrun/details/{recurring_run_id}"


def _config(environ: Mapping[str, str]) -> dict[str, Any]:
    path = config_path(environ)
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as error:
        raise KaleError(f"cannot read the kale-magics config file {path}: {error}; fix its JSON "
                        'or remove it (example: {"host": "http://localhost:8080"})') from None
    if not isinstance(data, dict):
        raise KaleError(f"the kale-magics config file {path} must hold a JSON object, "
                        'e.g. {"host": "http://localhost:8080", "namespace": "kubeflow-user"}')
    return data


def _check_host(host: str, source: str) -> str:
    host = host.strip().rstrip("/")
    if not host.startswith(("http://", "https://")):
        raise KaleError(f"KFP host {host!r} (from {source}) needs a scheme: "
                        f"http://{host} or https://{host}")
    return host


def _token(token: Optional[str], env: Mapping[str, str], config: Mapping[str, Any]) -> tuple[str, str]:
    """The bearer token and where it came from."""
    if token:
        return token, "--token"
    if env.get(TOKEN_ENV):
        return env[TOKEN_ENV], f"${TOKEN_ENV}"
    for path, source in ((config.get("token_file"), "the config file's token_file"),
                         (env.get(SA_TOKEN_ENV) or SA_TOKEN_PATH, "the service-account token file")):
        if path and os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    return f.read().strip(), f"{source} {path}"
            except OSError as error:
                raise KaleError(f"cannot read the token file {path}: {error.strerror}; "
                                f"fix its permissions or set ${TOKEN_ENV}") from None
    return "", "none"


def resolve_connection(host: Optional[str] = None, namespace: Optional[str] = None,
                       token: Optional[str] = None, cookies: Optional[str] = None, *,
                       settings: Any = None, connect_timeout_s: Optional[float] = None,
                       request_timeout_s: Optional[float] = None,
                       environ: Mapping[str, str] | None = None) -> Connection:
    """Work out the KFP connection from arguments, notebook settings, environment and config file.

    Parameters
    ----------
    host, namespace, token, cookies:
        Explicit values (command-line options); None or "" means "not given".
    settings:
        The notebook's :class:`~kale_magics.model.PipelineSettings` (its ``host``), or None.
    connect_timeout_s, request_timeout_s:
        Seconds; defaults 5 and 30 (the config file may set ``connect_timeout_s``).
    environ:
        Environment to read (default ``os.environ``).

    Raises
    ------
    KaleError
        No host anywhere, a host without ``http(s)://``, or an unreadable config or token file.
    """
    env = os.environ if environ is None else environ
    config = _config(env)
    candidates = [(host, "--host"), (getattr(settings, "host", None), "%kale pipeline --host"),
                  (env.get(HOST_ENV), f"${HOST_ENV}"), (config.get("host"), config_path(env))]
    chosen = next(((h, s) for h, s in candidates if h), None)
    if chosen is None:
        raise KaleError(f"no KFP host given: pass --host URL, add --host URL to `%kale pipeline`, "
                        f"set ${HOST_ENV}, or put {{\"host\": URL}} in {config_path(env)}")
    bearer, auth = _token(token, env, config)
    cookie = cookies or env.get(COOKIES_ENV) or ""
    if cookie and not bearer:
        auth = "cookies from --cookies" if cookies else f"cookies from ${COOKIES_ENV}"
    return Connection(
        host=_check_host(chosen[0], chosen[1]),
        namespace=namespace or env.get(NAMESPACE_ENV) or config.get("namespace") or "",
        ui_host=(env.get(UI_ENV) or config.get("ui_host") or "").rstrip("/"),
        token=bearer, cookies=cookie, auth=auth,
        connect_timeout_s=float(connect_timeout_s or config.get("connect_timeout_s") or 5.0),
        request_timeout_s=float(request_timeout_s or 30.0))


def auth_message(connection: Connection, status: int) -> str:
    """What to tell the user when KFP answers 401 or 403 (never the credentials themselves)."""
    if connection.auth == "none":
        return (f"KFP at {connection.host} refused the request (HTTP {status}): it needs "
                f"credentials; set ${TOKEN_ENV} to a bearer token (or pass --token), or pass "
                f"session cookies with --cookies / ${COOKIES_ENV}")
    scope = f" for namespace {connection.namespace!r}" if connection.namespace else ""
    return (f"KFP at {connection.host} refused the credentials from {connection.auth} "
            f"(HTTP {status}{scope}): the token or cookies are wrong, expired or lack access; "
            f"get fresh ones and set ${TOKEN_ENV} (or --token / --cookies)")


def unreachable(connection: Connection, reason: str) -> KfpConnectionError:
    """The error for a server that cannot be reached."""
    return KfpConnectionError(connection.redact(
        f"cannot reach KFP at {connection.host}: {reason}; check --host (or ${HOST_ENV}) and that "
        "the server or its port-forward is up"))


def probe(connection: Connection) -> dict[str, Any]:
    """Ask the server's health endpoint, waiting at most ``connect_timeout_s`` seconds.

    Returns
    -------
    dict
        The healthz answer, e.g. ``{"multi_user": true, "pipeline_store": "database"}``;
        KFP leaves ``multi_user`` out when it is false (zero values are not sent).

    Raises
    ------
    KfpConnectionError
        Refused, timed out, not HTTP, an HTTP error other than 401/403, or not the KFP API.
    KfpAuthError
        HTTP 401 or 403, or a login page instead of the API.
    """
    request = urllib.request.Request(connection.host + HEALTHZ, headers=connection.headers())
    try:
        with urllib.request.urlopen(request, timeout=connection.connect_timeout_s) as response:
            body = response.read(65536)
            content_type = response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            raise KfpAuthError(auth_message(connection, error.code)) from None
        raise unreachable(connection, f"{HEALTHZ} answered HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        raise unreachable(connection, _reason(error.reason)) from None
    except (TimeoutError, socket.timeout):
        raise unreachable(connection, f"no answer within {connection.connect_timeout_s:g} s") from None
    except (OSError, ValueError) as error:
        raise unreachable(connection, _reason(error)) from None
    try:
        return dict(json.loads(body))
    except ValueError:
        if "html" in content_type:
            raise KfpAuthError(
                f"KFP at {connection.host} answered {HEALTHZ} with a web page, not the KFP API "
                f"(a login page?): pass a token (${TOKEN_ENV} or --token) or session cookies "
                "(--cookies), or point --host at the API (e.g. https://HOST/pipeline)") from None
        raise unreachable(connection, f"{HEALTHZ} did not answer with JSON; is this the KFP "
                          "API endpoint?") from None


def _reason(error: object) -> str:
    if isinstance(error, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, socket.gaierror):
        return "unknown host name"
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


@dataclass
class KfpSession:
    """A probed connection and the ``kfp.Client`` built on it.

    Attributes
    ----------
    connection:
        Where and how to connect.
    client:
        The ``kfp.Client``; its generated APIs (``client.runs``, ...) make the calls.
    healthz:
        What the health check answered.
    terminated:
        Ids of the runs this session asked KFP to terminate: KFP ends them FAILED, and they
        are reported CANCELED.
    """

    connection: Connection
    client: Any = field(repr=False)
    healthz: dict[str, Any] = field(default_factory=dict)
    terminated: set[str] = field(default_factory=set)

    @property
    def multi_user(self) -> bool:
        """Whether the server runs in multi-user mode (every resource in a namespace)."""
        return bool(self.healthz.get("multi_user"))


def pod_namespace(path: Optional[str] = None) -> str:
    """The namespace of the pod this runs in (its service-account namespace file), or ""."""
    try:
        with open(path or NAMESPACE_FILE, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return ""


def open_session(connection: Connection) -> KfpSession:
    """Probe the server, then build ``kfp.Client`` (quietly: no FutureWarning, no prints).

    On a multi-user server without a namespace from the arguments, environment or config
    file, the namespace of the pod this runs in (:data:`NAMESPACE_FILE`, in a Kubeflow
    notebook the user's profile namespace) is used when there is one.

    Raises
    ------
    KfpConnectionError, KfpAuthError
        From :func:`probe`, or when ``kfp.Client`` cannot be built.
    """
    healthz = probe(connection)
    if healthz.get("multi_user") and not connection.namespace:
        connection = dataclasses.replace(connection, namespace=pod_namespace())
    import kfp

    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            client = kfp.Client(host=connection.host, namespace=connection.namespace or "kubeflow",
                                existing_token=connection.token or None,
                                cookies=connection.cookies or None,
                                ui_host=connection.ui_host or None)
    except Exception as error:  # kfp.Client raises anything from urllib3 to TimeoutError
        raise unreachable(connection, f"kfp.Client failed: {type(error).__name__}: "
                          f"{connection.redact(str(error))[:300]}") from None
    return KfpSession(connection=connection, client=client, healthz=healthz)
