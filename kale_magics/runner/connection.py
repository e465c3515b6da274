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

Credentials go only where they were configured for (:func:`credential_allowed`):
``--token`` and ``--cookies`` go to the chosen host; ``$KF_PIPELINES_TOKEN`` and
``$KF_PIPELINES_COOKIES`` only to ``$KF_PIPELINES_ENDPOINT``'s server when that is set;
the config file's ``token_file`` only to the config file's ``host`` when that is set;
and a host named by the notebook (``%kale pipeline --host``, Kale's ``kfp_host``)
gets none of these "ambient" credentials unless they were configured for that very
server, so a shared notebook cannot collect them. A host given with ``--host``
(chosen by the user, not the notebook) gets them all. What was withheld is said
in :attr:`Connection.withheld` and in the message of a refusal (HTTP 401/403).

A token or cookie value is kept out of ``repr``, logs and every message; the
messages say where credentials came from (``$KF_PIPELINES_TOKEN``), never what
they are. A host with a user name or password in it (``http://user:pw@host``) is
refused, and every message has such URL parts redacted
(:func:`~kale_magics.redaction.redact_urls`).

Before ``kfp.Client`` is built, :func:`probe` asks ``/apis/v2beta1/healthz``
with a short timeout: ``kfp.Client``'s constructor retries a failing health
check for about 25 s and lets urllib3 errors escape, so a wrong host would
otherwise hang, then print a traceback. The probe follows redirects only within
the host's own origin (:mod:`.redirects`: urllib would send the token and cookies
on to any server); a redirect elsewhere, usually a login page, is refused with a
message saying what to pass.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from kale_magics.errors import KaleError, KfpAuthError, KfpConnectionError
from kale_magics.redaction import redact_urls
from kale_magics.runner import redirects

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
#: Where a notebook names the host (``%kale pipeline --host``, or Kale's ``kfp_host``).
NOTEBOOK_SOURCE = "%kale pipeline --host"
#: Hosts for which ``kfp.Client`` without a token fetches the user's Google Cloud access
#: token and sends it (``kfp.Client._is_inverse_proxy_host``, KFP 2.17).
INVERSE_PROXY_HOST = re.compile(r"\S+.googleusercontent.com/{0,1}$")


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
    withheld:
        Credentials that were found but not sent to this host, and why ("" when none).
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
    withheld: str = ""
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
        """``text`` with the token and cookie values and the userinfo of URLs replaced by ``***``."""
        cookie_values = [part.partition("=")[2] for part in self.cookies.split(";")]
        for secret in sorted({self.token, self.cookies, *cookie_values}, key=len, reverse=True):
            secret = secret.strip()
            if len(secret) >= 4:
                text = text.replace(secret, "***")
        return redact_urls(text)

    def run_url(self, run_id: str) -> str:
        """The run's page in the KFP UI."""
        return redact_urls(f"{self.ui_host or self.host}/#/runs/details/{run_id}")

    def schedule_url(self, recurring_run_id: str) -> str:
        """The recurring run's page in the KFP UI."""
        return redact_urls(f"{self.ui_host or self.host}/#/recurringrun/details/{recurring_run_id}")


#: The config file's keys and the types they must have.
_CONFIG_TYPES: dict[str, tuple[type, ...]] = {
    "host": (str,), "namespace": (str,), "ui_host": (str,), "token_file": (str,),
    "connect_timeout_s": (int, float), "model_registry": (str,)}


def user_config(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The user config file's settings (:func:`config_path`), ``{}`` when there is none.

    Raises
    ------
    KaleError
        The file is not a JSON object, or a key has the wrong type.
    """
    return _config(os.environ if environ is None else environ)


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
    for key, types in _CONFIG_TYPES.items():
        if data.get(key) is not None and (not isinstance(data[key], types)
                                          or isinstance(data[key], bool)):
            raise KaleError(f"the kale-magics config file {path}: {key} must be "
                            f"{' or '.join(t.__name__ for t in types)}, not {data[key]!r}")
    return data


def _check_host(host: str, source: str) -> str:
    """``host`` without a trailing ``/``, checked to be ``http(s)://HOST[:PORT][/PATH]``.

    Raises
    ------
    KaleError
        No scheme, no host name, a port that is not a number, or a user name or
        password in the URL (the message shows it redacted).
    """
    host = host.strip().rstrip("/")
    if not host.startswith(("http://", "https://")):
        raise KaleError(f"KFP host {host!r} (from {source}) needs a scheme: "
                        f"http://{host} or https://{host}")
    parts = urllib.parse.urlsplit(host)
    if "@" in parts.netloc:
        raise KaleError(f"KFP host {host} (from {source}) has a user name or password in it, which "
                        "kale-magics never sends (KFP takes a bearer token or session cookies); "
                        f"remove it and set ${TOKEN_ENV} (or pass --token or --cookies)")
    try:
        parts.port
    except ValueError:
        raise KaleError(f"KFP host {host!r} (from {source}) has a port that is not a number from "
                        "0 to 65535; for example http://localhost:8888") from None
    if not parts.hostname:
        raise KaleError(f"KFP host {host!r} (from {source}) names no server; for example "
                        "http://localhost:8888")
    return host


def same_server(a: str, b: str) -> bool:
    """True when URLs ``a`` and ``b`` name the same server: scheme, host name and port
    (``http://KFP:80/x`` and ``http://kfp`` do; :func:`~kale_magics.runner.redirects.same_origin`)."""
    return redirects.same_origin(a, b)


@dataclass(frozen=True)
class _Credential:
    """A token or cookies found somewhere, and the server it was configured for.

    ``home`` is the URL of that server; None means "any server the user chose"
    (``--token``, or an ambient credential with no host configured beside it).
    A token in a file has ``path`` set and is read only when it is used.
    """

    source: str
    value: str = field(default="", repr=False)
    home: Optional[str] = None
    explicit: bool = False
    path: Optional[str] = None

    def secret(self) -> str:
        """The token or cookies (read from ``path`` for a token file)."""
        return _read_token_file(self.path) if self.path else self.value


def credential_allowed(credential: _Credential, host: str, host_source: str) -> bool:
    """The rule of what credentials a host gets (see the module docstring).

    A credential given for this call (``--token``, ``--cookies``) and every credential for a
    host given with ``--host`` are sent; a credential configured for a server goes only to
    that server; one configured without a server goes to hosts the user chose (``--host``,
    ``$KF_PIPELINES_ENDPOINT``, the config file), never to a host the notebook names.
    """
    if credential.explicit or host_source == "--host":
        return True
    if credential.home is not None:
        return same_server(credential.home, host)
    return host_source != NOTEBOOK_SOURCE


def _read_token_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as error:
        raise KaleError(f"cannot read the token file {path}: {error.strerror}; "
                        f"fix its permissions or set ${TOKEN_ENV}") from None


def _tokens(token: Optional[str], env: Mapping[str, str],
            config: Mapping[str, Any]) -> list[_Credential]:
    """Every bearer token found, in order of precedence (files are read only when chosen)."""
    found = [_Credential("--token", token, explicit=True)] if token else []
    if env.get(TOKEN_ENV):
        found.append(_Credential(f"${TOKEN_ENV}", env[TOKEN_ENV], env.get(HOST_ENV) or None))
    for path, source, home in ((config.get("token_file"), "the config file's token_file",
                                config.get("host") or None),
                               (env.get(SA_TOKEN_ENV) or SA_TOKEN_PATH,
                                "the service-account token file", None)):
        if path and os.path.isfile(path):
            found.append(_Credential(f"{source} {path}", home=home, path=path))
    return found


def _cookies(cookies: Optional[str], env: Mapping[str, str]) -> list[_Credential]:
    """Every cookie header found, in order of precedence."""
    found = [_Credential("--cookies", cookies, explicit=True)] if cookies else []
    if env.get(COOKIES_ENV):
        found.append(_Credential(f"${COOKIES_ENV}", env[COOKIES_ENV], env.get(HOST_ENV) or None))
    return found


def _credentials(token: Optional[str], cookies: Optional[str], env: Mapping[str, str],
                 config: Mapping[str, Any], host: str,
                 host_source: str) -> tuple[str, str, str, str]:
    """``(token, cookies, auth, withheld)`` for ``host``: the first allowed token and cookies,
    where they came from, and what was found but withheld (with why)."""
    withheld: list[str] = []
    chosen: list[_Credential | None] = []
    for found in (_tokens(token, env, config), _cookies(cookies, env)):
        allowed = [c for c in found if credential_allowed(c, host, host_source)]
        withheld += [c.source for c in found if c not in allowed]
        chosen.append(allowed[0] if allowed else None)
    bearer, cookie = chosen
    auth = (bearer.source if bearer else f"cookies from {cookie.source}" if cookie else "none")
    return (bearer.secret() if bearer else "", cookie.secret() if cookie else "", auth,
            _withheld_text(withheld, host_source))


def _withheld_text(withheld: list[str], host_source: str) -> str:
    if not withheld:
        return ""
    why = ("the host comes from the notebook (%kale pipeline --host), and they were not configured "
           "for it" if host_source == NOTEBOOK_SOURCE else
           f"they were configured for another server than the host from {host_source}")
    return (f"credentials from {', '.join(withheld)} were not sent: {why}; to send them, pass the "
            "host with --host on the command line, or give credentials for it with --token "
            "or --cookies")


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
        No host anywhere, a malformed host (no ``http(s)://``, a user name or
        password in it, a bad port), a notebook's host for which ``kfp.Client``
        would send Google Cloud credentials, or an unreadable config or token file.
    """
    env = os.environ if environ is None else environ
    config = _config(env)
    candidates = [(host, "--host"), (getattr(settings, "host", None), NOTEBOOK_SOURCE),
                  (env.get(HOST_ENV), f"${HOST_ENV}"), (config.get("host"), config_path(env))]
    chosen = next(((h, s) for h, s in candidates if h), None)
    if chosen is None:
        raise KaleError(f"no KFP host given: pass --host URL, add --host URL to `%kale pipeline`, "
                        f"set ${HOST_ENV}, or put {{\"host\": URL}} in {config_path(env)}")
    url, source = _check_host(chosen[0], chosen[1]), chosen[1]
    bearer, cookie, auth, withheld = _credentials(token, cookies, env, config, url, source)
    if source == NOTEBOOK_SOURCE and not bearer and INVERSE_PROXY_HOST.match(url):
        raise KaleError(f"the notebook's host {url} looks like a Google inverse proxy, for which "
                        "kfp.Client sends your Google Cloud access token; to connect, pass "
                        "--host on the command line (or a token with --token)")
    return Connection(
        host=url,
        namespace=namespace or env.get(NAMESPACE_ENV) or config.get("namespace") or "",
        ui_host=(env.get(UI_ENV) or config.get("ui_host") or "").rstrip("/"),
        token=bearer, cookies=cookie, auth=auth, withheld=withheld,
        connect_timeout_s=float(connect_timeout_s or config.get("connect_timeout_s") or 5.0),
        request_timeout_s=float(request_timeout_s or 30.0))


def auth_message(connection: Connection, status: int) -> str:
    """What to tell the user when KFP answers 401 or 403 (never the credentials themselves)."""
    if connection.auth == "none" and connection.withheld:
        return (f"KFP at {connection.host} refused the request (HTTP {status}): it needs "
                f"credentials, and {connection.withheld}")
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
        with redirects.OPENER_SAME_ORIGIN.open(request, timeout=connection.connect_timeout_s) as response:
            body = response.read(65536)
            content_type = response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            raise KfpAuthError(auth_message(connection, error.code)) from None
        if 300 <= error.code < 400:
            raise KfpAuthError(redirect_message(connection, error.code,
                                                redirects.location(error))) from None
        raise unreachable(connection, f"{HEALTHZ} answered HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        raise unreachable(connection, _reason(error.reason, connection.host)) from None
    except (TimeoutError, socket.timeout):
        raise unreachable(connection, f"no answer within {connection.connect_timeout_s:g} s") from None
    except (OSError, ValueError) as error:
        raise unreachable(connection, _reason(error, connection.host)) from None
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


def redirect_message(connection: Connection, status: int, target: str) -> str:
    """What to tell the user when the health check is redirected to another server
    (``target``: its origin), which is not followed so that the credentials stay with
    ``connection.host``."""
    where = f"to {target}" if target else "elsewhere"
    sent = ("so that the credentials from " + connection.auth + " go nowhere else"
            if connection.auth != "none" else "so that no credentials go elsewhere")
    return (f"KFP at {connection.host} redirected {HEALTHZ} (HTTP {status}) {where}, which is "
            f"not followed, {sent}: if that is a login page, pass a token (${TOKEN_ENV} or "
            "--token) or session cookies (--cookies) the API accepts; if the KFP API is at "
            "that address, pass it with --host")


def _reason(error: object, host: str) -> str:
    if isinstance(error, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, socket.gaierror):
        name = urllib.parse.urlsplit(host).hostname
        return f"the host name {name!r} could not be resolved ({error.strerror or error})"
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
    metrics_reader:
        The :class:`~kale_magics.runner.mlmd.MetricsReader` of the runs read through this
        connection, made on first use by :func:`kale_magics.runner.mlmd.reader_of` (None
        until then).
    """

    connection: Connection
    client: Any = field(repr=False)
    healthz: dict[str, Any] = field(default_factory=dict)
    terminated: set[str] = field(default_factory=set)
    metrics_reader: Any = field(default=None, repr=False, compare=False)

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
