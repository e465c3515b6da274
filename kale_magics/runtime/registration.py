"""Register a step's models in the Kubeflow Model Registry, inside the pipeline step.

After a step with ``--register VAR[:NAME]`` ran and saved VAR as its KFP ``Model`` output
artifact, :func:`register` records it with the ``model-registry`` client from PyPI
(kubeflow/model-registry ``clients/python``, ``ModelRegistry.register_model``): the
artifact's URI, the model format, a version named after the run (or ``--register-version``)
and the run as the model's source (kind ``kfp``, class ``pipelinerun``, group the namespace,
id and name of the run), as KFP's own registration examples do.

Credentials never travel in the pipeline: the token is ``$MODEL_REGISTRY_TOKEN`` (on a
cluster, a Kubernetes secret given with ``--secret SECRET:KEY:MODEL_REGISTRY_TOKEN``), else
the client reads the pod's service-account token itself.

This module runs inside the pipeline step: it imports only the standard library; the
client is imported when a model is registered.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any, Mapping, Sequence

#: Where a step reads the Model Registry token (set from a Kubernetes secret with ``--secret``).
TOKEN_ENV = "MODEL_REGISTRY_TOKEN"
#: The namespace of the pod the step runs in (Kubernetes mounts it with the service account).
NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
#: Environment variable naming that file elsewhere (the KFP test server gives each run one).
NAMESPACE_FILE_ENV = "KALE_MAGICS_NAMESPACE_FILE"
#: Model formats by the top-level module of the value's type (KServe's format names).
FORMATS = {"sklearn": "sklearn", "xgboost": "xgboost", "lightgbm": "lightgbm",
           "torch": "pytorch", "tensorflow": "tensorflow", "keras": "tensorflow",
           "tf_keras": "tensorflow", "onnx": "onnx", "onnxruntime": "onnx",
           "catboost": "catboost", "transformers": "huggingface", "statsmodels": "statsmodels"}
#: The module whose version is the format's version, where it is not the type's own module.
_VERSION_MODULES = {"keras": "keras", "tf_keras": "tf_keras"}


class RegistrationError(Exception):
    """A model could not be registered; the message names the model and the fix."""


def model_format(value: Any) -> tuple[str, str]:
    """``(format, version)`` of a model from the module of its type, without importing anything:
    a ``sklearn.ensemble.RandomForestClassifier`` gives ``("sklearn", "1.5.2")``.

    Raises
    ------
    RegistrationError
        The type's module is not one of :data:`FORMATS`.
    """
    module = type(value).__module__.partition(".")[0]
    if module not in FORMATS:
        raise RegistrationError(
            f"cannot tell the model format of a {type(value).__module__}.{type(value).__qualname__}"
            f"; name it with --model-format FORMAT[:VERSION]")
    loaded = sys.modules.get(_VERSION_MODULES.get(module, module))
    return FORMATS[module], str(getattr(loaded, "__version__", "") or "")


def register(step: str, registrations: Sequence[Mapping[str, str]], namespace: Mapping[str, Any],
             outputs: Mapping[str, Any], registry: str,
             run: Mapping[str, str]) -> list[dict[str, str]]:
    """Register each model of ``registrations`` at ``registry``; say so on stdout.

    Parameters
    ----------
    step:
        The step's name, for messages.
    registrations:
        ``{"variable", "model"[, "format", "format_version", "version"]}`` per model.
    namespace:
        The step's variables after its code ran.
    outputs:
        The step's KFP output artifacts by variable (``.uri``).
    registry:
        The Model Registry's address; "" skips registration (a local run without one).
    run:
        ``{"id": RUN_ID, "name": RUN_NAME}`` from KFP's placeholders.

    Returns
    -------
    list of dict
        ``{"model", "version", "uri", "format"}`` per registered model.

    Raises
    ------
    RegistrationError
        The client is not installed, the version exists, the format is unknown, or the
        registry refused or could not be reached.
    """
    if not registrations:
        return []
    names = ", ".join(repr(r["model"]) for r in registrations)
    if not registry:
        print(f"step {step!r}: skipped registering model {names}: no Model Registry address "
              "(give one with %kale pipeline --model-registry URL or $MODEL_REGISTRY_URL)")
        return []
    client = _client(registry)
    return [_register_one(client, step, r, namespace, outputs, run) for r in registrations]


def _client(registry: str) -> Any:
    try:
        from model_registry import ModelRegistry
    except ImportError:
        raise RegistrationError("the model-registry client is not installed in the step; "
                                "run `pip install model-registry`") from None
    token = os.environ.get(TOKEN_ENV) or None
    try:
        with warnings.catch_warnings():  # "User access token is missing": fine over plain HTTP
            warnings.simplefilter("ignore")
            return ModelRegistry(registry, author="kale-magics", user_token=token,
                                 log_level=logging.ERROR)
    except Exception as error:  # noqa: BLE001 - the client raises many kinds; say which
        hint = ("" if token else f"; give a token with --secret SECRET:KEY:{TOKEN_ENV}")
        raise RegistrationError(f"cannot reach the Model Registry at {registry}: "
                                f"{type(error).__name__}: {error}{hint}") from None


def _register_one(client: Any, step: str, registration: Mapping[str, str],
                  namespace: Mapping[str, Any], outputs: Mapping[str, Any],
                  run: Mapping[str, str]) -> dict[str, str]:
    variable, model = registration["variable"], registration["model"]
    version = registration.get("version") or run["name"]
    if registration.get("format"):
        fmt, fmt_version = registration["format"], registration.get("format_version") or ""
    else:
        fmt, fmt_version = model_format(namespace[variable])
    if _version_exists(client, model, version):
        raise RegistrationError(f"model {model} version {version} exists; name a new version with "
                                "--register-version VERSION")
    uri = outputs[variable].uri
    try:
        client.register_model(
            model, uri, model_format_name=fmt, model_format_version=fmt_version, version=version,
            model_source_kind="kfp", model_source_class="pipelinerun",
            model_source_group=_namespace(), model_source_id=run["id"],
            model_source_name=run["name"], version_description=f"step {step} of run {run['name']}")
    except Exception as error:  # noqa: BLE001
        raise RegistrationError(f"registering model {model} version {version} failed: "
                                f"{type(error).__name__}: {error}") from None
    print(f"step {step!r}: registered model {model!r} version {version!r} ({fmt} "
          f"{fmt_version}) from {uri}".replace(" )", ")"))
    return {"model": model, "version": version, "uri": uri, "format": fmt}


def _version_exists(client: Any, model: str, version: str) -> bool:
    if client.get_registered_model(model) is None:
        return False
    return client.get_model_version(model, version) is not None


def _namespace() -> str | None:
    try:
        with open(os.environ.get(NAMESPACE_FILE_ENV) or NAMESPACE_FILE, encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None
