"""The Kubeflow Model Registry seen from the caller: where it is, and what it holds of a notebook.

Where the registry is, the first that sets it wins (as for the KFP host, see
``runner.connection``):

1. an explicit address (``--model-registry`` on the command line of ``kale-magics models``);
2. the notebook's ``%kale pipeline --model-registry URL``;
3. ``$MODEL_REGISTRY_URL``;
4. the user config file's ``"model_registry"`` (:func:`~kale_magics.runner.connection.config_path`).

The address reaches the registering steps as the pipeline parameter ``kale_model_registry``
(:func:`registry_arguments`); a token never does: in a step it is ``$MODEL_REGISTRY_TOKEN``
(on a cluster a Kubernetes secret, ``--secret SECRET:KEY:MODEL_REGISTRY_TOKEN``) or the pod's
service-account token (``runtime.registration``); here it is ``$MODEL_REGISTRY_TOKEN``.

Listing (:func:`list_versions`) talks to the registry's REST API (``GET registered_model``,
``registered_models/{id}/versions``, ``model_versions/{id}/artifacts``; kubeflow/model-registry
``api/openapi/model-registry.yaml``) with urllib rather than the ``model-registry`` client: the
client applies ``nest_asyncio`` to the event loop and configures the root logger when imported,
which a kernel must not get from a listing. Registering happens in the step, with the client.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Mapping

from kale_magics.codegen.components import REGISTRY_PARAMETER
from kale_magics.errors import KaleError
from kale_magics.model import Plan
from kale_magics.runner import redirects
from kale_magics.runner.connection import config_path, user_config

REGISTRY_ENV = "MODEL_REGISTRY_URL"
TOKEN_ENV = "MODEL_REGISTRY_TOKEN"
#: What an address must look like (as ``%kale pipeline --model-registry`` checks it).
ADDRESS = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?")
#: The API's path: ``v1`` on current servers (client 0.3), ``v1alpha3`` on older ones.
API_PATHS = ("/api/model_registry/v1", "/api/model_registry/v1alpha3")


@dataclass(frozen=True)
class RegisteredVersion:
    """One version of a registered model, as :func:`list_versions` found it.

    Attributes
    ----------
    model, version:
        The registered model's and the version's names.
    format, format_version:
        The model artifact's format (``"sklearn"``, ``"1.5.2"``); "" when not recorded.
    uri:
        Where the model artifact is (the KFP ``Model`` artifact's URI).
    run_id, run_name, namespace:
        The run that registered it (model source id, name and group); "" when not recorded.
    created_ms:
        Creation time of the version, milliseconds since the epoch.
    state:
        ``"LIVE"`` or ``"ARCHIVED"``.
    """

    model: str
    version: str
    format: str = ""
    format_version: str = ""
    uri: str = ""
    run_id: str = ""
    run_name: str = ""
    namespace: str = ""
    created_ms: int = 0
    state: str = ""


def registered_models(plan: Plan) -> list[str]:
    """The names of the models the plan's steps register, in step order, each once."""
    return list(dict.fromkeys(r.model for step in plan.steps for r in step.registrations))


def resolve_registry(settings: Any = None, explicit: str | None = None,
                     environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """``(address, where it came from)`` of the Model Registry, or None when nothing sets one.

    Parameters
    ----------
    settings:
        The notebook's :class:`~kale_magics.model.PipelineSettings` (``model_registry``), or None.
    explicit:
        An address given on the command line.
    environ:
        The environment to read (default ``os.environ``).

    Raises
    ------
    KaleError
        An address that is not ``http(s)://HOST[:PORT]``, or an unreadable config file.
    """
    env = os.environ if environ is None else environ
    config = user_config(env)
    candidates = [(explicit, "--model-registry"),
                  (getattr(settings, "model_registry", None), "%kale pipeline --model-registry"),
                  (env.get(REGISTRY_ENV), f"${REGISTRY_ENV}"),
                  (config.get("model_registry"), config_path(env))]
    for value, source in candidates:
        if value:
            address = value.strip().rstrip("/")
            if not ADDRESS.fullmatch(address):
                raise KaleError(f"the Model Registry address {value!r} from {source} is not "
                                "http(s)://HOST[:PORT] (with no user name or password); for "
                                "example https://model-registry.kubeflow:8443")
            return address, source
    return None


def registry_arguments(plan: Plan, target: str,
                       environ: Mapping[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """The ``kale_model_registry`` run argument of a plan whose steps register models, and what to
    tell the user: ``({}, [])`` for a plan that registers nothing.

    Parameters
    ----------
    target:
        The run target's name (``"local"``, ``"docker"``, ``"kfp"``).

    Raises
    ------
    KaleError
        A KFP server run with no registry address anywhere (a local run skips registration
        and says so instead).
    """
    models = registered_models(plan)
    if not models:
        return {}, []
    found = resolve_registry(plan.settings, environ=environ)
    names = ", ".join(models)
    if found is None and target == "kfp":
        raise KaleError(f"the pipeline registers model {names}, but no Model Registry address is "
                        f"given; add --model-registry URL to %kale pipeline, set ${REGISTRY_ENV}, "
                        f"or put {{\"model_registry\": URL}} in {config_path(environ or os.environ)}")
    if found is None:
        return {REGISTRY_PARAMETER: ""}, [
            f"model registration skipped: no Model Registry address (model {names}); give one "
            f"with %kale pipeline --model-registry URL or ${REGISTRY_ENV}"]
    return {REGISTRY_PARAMETER: found[0]}, [f"registering model {names} at {found[0]} "
                                            f"(from {found[1]})"]


def list_versions(address: str, models: list[str], token: str | None = None,
                  timeout_s: float = 10.0) -> list[RegisteredVersion]:
    """Every version of each model in ``models`` at the registry ``address``, oldest first per model.

    A model the registry does not hold has no versions (no error).

    Raises
    ------
    KaleError
        The registry cannot be reached, refuses the token, or answers what is not its API.
    """
    client = _Rest(address, token if token is not None else os.environ.get(TOKEN_ENV), timeout_s)
    found: list[RegisteredVersion] = []
    for model in models:
        registered = client.get("/registered_model", {"name": model}, missing_ok=True)
        if registered is None:
            continue
        for version in client.pages(f"/registered_models/{registered['id']}/versions"):
            artifacts = client.pages(f"/model_versions/{version['id']}/artifacts")
            found.append(_version(model, version, artifacts[0] if artifacts else {}))
    return found


def _version(model: str, version: Mapping[str, Any], artifact: Mapping[str, Any]) -> RegisteredVersion:
    return RegisteredVersion(
        model=model, version=version.get("name", ""),
        format=artifact.get("modelFormatName", ""),
        format_version=artifact.get("modelFormatVersion", ""), uri=artifact.get("uri", ""),
        run_id=artifact.get("modelSourceId", ""), run_name=artifact.get("modelSourceName", ""),
        namespace=artifact.get("modelSourceGroup", ""),
        created_ms=int(version.get("createTimeSinceEpoch") or 0), state=version.get("state", ""))


class _Rest:
    """GETs against the registry's REST API, on whichever of :data:`API_PATHS` it serves."""

    def __init__(self, address: str, token: str | None, timeout_s: float) -> None:
        self.address, self.token, self.timeout_s = address.rstrip("/"), token, timeout_s
        self.base = ""
        for path in API_PATHS:
            if self._request(path + "/registered_models", {"pageSize": "1"}, missing_ok=True):
                self.base = path
                break
        else:
            raise KaleError(f"{address} does not answer as a Kubeflow Model Registry (no "
                            f"{' or '.join(API_PATHS)}/registered_models); check the address")

    def get(self, path: str, query: Mapping[str, str], missing_ok: bool = False) -> Any:
        return self._request(self.base + path, query, missing_ok)

    def pages(self, path: str) -> list[dict[str, Any]]:
        items, token = [], ""
        while True:
            query = {"orderBy": "CREATE_TIME", "sortOrder": "ASC", "pageSize": "100",
                     **({"nextPageToken": token} if token else {})}
            page = self.get(path, query) or {}
            items += page.get("items") or []
            token = page.get("nextPageToken") or ""
            if not token:
                return items

    def _request(self, path: str, query: Mapping[str, str], missing_ok: bool) -> Any:
        url = f"{self.address}{path}?{urllib.parse.urlencode(query)}"
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            with redirects.OPENER_SAME_ORIGIN.open(urllib.request.Request(url, headers=headers),
                                                   timeout=self.timeout_s) as answer:
                return json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as error:
            if error.code == 404 and missing_ok:
                return None
            if error.code in (401, 403):
                raise KaleError(f"the Model Registry at {self.address} refused the request (HTTP "
                                f"{error.code}); set ${TOKEN_ENV} to a token it accepts") from None
            if 300 <= error.code < 400:
                raise KaleError(f"the Model Registry at {self.address} redirected GET {path} to "
                                f"{redirects.location(error) or 'another server'}, which is not "
                                "followed so that the token goes nowhere else; check the address "
                                "(--model-registry, $MODEL_REGISTRY_URL)") from None
            raise KaleError(f"the Model Registry at {self.address} answered HTTP {error.code} to "
                            f"GET {path}") from None
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            raise KaleError(f"cannot reach the Model Registry at {self.address}: {reason}; "
                            "check the address (--model-registry, $MODEL_REGISTRY_URL)") from None
