"""The panel's settings form: pipeline settings, target and parameter values as ipywidgets.

Filled from the notebook's ``%kale pipeline`` settings and parameters; what the
user edits is turned back into ``%kale pipeline`` options (parsed by the one
grammar, :func:`kale_magics.api.parse_pipeline_settings`) and into parameter
values typed from their defaults (:func:`kale_magics.api.coerce_arguments`).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any

import ipywidgets as w

from kale_magics import api

LOCAL, CONTAINERS, REMOTE = "Local (kfp.local)", "Local (containers)", "KFP server"
#: Auth choices: where the credentials come from (a typed secret is never saved).
AUTH_DEFAULT, AUTH_TOKEN, AUTH_COOKIES = ("environment / config file", "bearer token",
                                          "session cookies")
_WIDE = w.Layout(width="28em")
_STYLE = {"description_width": "9em"}


@dataclass(frozen=True)
class TargetChoice:
    """Where to run: locally, in local containers, or on a KFP server with a namespace and
    credentials.

    ``token`` and ``cookies`` are None unless typed into the panel; then the
    connection falls back to ``$KF_PIPELINES_TOKEN``, the config file, or the
    mounted service-account token, as ``%kale run --host`` does. ``containers`` runs every
    step in a container of its image (``%kale run --docker``) with the Docker network,
    ``PVC=DIR`` volume maps and secrets env file given.
    """

    remote: bool
    host: str | None = None
    namespace: str | None = None
    token: str | None = None
    cookies: str | None = None
    containers: bool = False
    docker_network: str | None = None
    volume_map: tuple[str, ...] = ()
    secret_env_file: str | None = None


def parameter_widget(parameter: api.Parameter) -> w.Widget:
    """A field typed from the parameter's default: int, bool, str; a float as text (``1.0``
    stays ``1.0``; typed by :func:`kale_magics.api.coerce_arguments`); list/dict as JSON."""
    common = {"description": parameter.name, "style": _STYLE, "layout": _WIDE}
    if parameter.type == "bool":
        return w.Checkbox(value=bool(parameter.value), indent=True, **common)
    if parameter.type == "int":
        return w.IntText(value=parameter.value, **common)
    if parameter.type == "float":  # a FloatText shows 1.0 as "1": text keeps the written form
        return w.Text(value=repr(parameter.value), placeholder="a number, e.g. 0.5", **common)
    if parameter.type == "str":
        return w.Text(value=parameter.value, **common)
    return w.Text(value=json.dumps(parameter.value), placeholder="JSON", **common)


class SettingsForm:
    """The editable settings of one notebook's pipeline.

    Parameters
    ----------
    plan:
        The notebook's plan; gives the defaults and the parameter fields.
    """

    def __init__(self, plan: api.Plan | None) -> None:
        settings = plan.settings if plan is not None else api.PipelineSettings()

        def text(name: str, value: str | None, **kw: Any) -> w.Text:
            return w.Text(value=value or "", description=name, style=_STYLE, layout=_WIDE, **kw)

        self.name = text("pipeline", plan.name if plan is not None else "")
        self.experiment = text("experiment", settings.experiment, placeholder="Default")
        self.image = text("base image", settings.image, placeholder="python:3.X of this kernel")
        self.caching = w.Checkbox(value=settings.step_defaults.cache is not False,
                                  description="caching", style=_STYLE, indent=True)
        self.target = w.Dropdown(options=[LOCAL, CONTAINERS, REMOTE], value=LOCAL,
                                 description="target", style=_STYLE, layout=_WIDE)
        self.network = text("Docker network", "", placeholder="Docker's default (or host)")
        self.volume_map = text("volume map", "", placeholder="PVC=DIR, PVC=DIR")
        self.secret_file = text("secrets file", "", placeholder="ENV=VALUE lines for --secret")
        self.container_box = w.VBox([self.network, self.volume_map, self.secret_file])
        self.host = text("KFP host", settings.host, placeholder="http://localhost:8888")
        self.notebook_host = settings.host  # left as is, it is the notebook's, not the user's choice
        self.namespace = text("namespace", "", placeholder="(single-user KFP: leave empty)")
        self.auth = w.Dropdown(options=[AUTH_DEFAULT, AUTH_TOKEN, AUTH_COOKIES],
                               value=AUTH_DEFAULT, description="auth", style=_STYLE, layout=_WIDE)
        self.secret = w.Password(description="secret", style=_STYLE, layout=_WIDE)
        for css, field in (("kale-pipeline-name", self.name), ("kale-experiment", self.experiment),
                           ("kale-image", self.image), ("kale-caching", self.caching),
                           ("kale-target", self.target), ("kale-host", self.host),
                           ("kale-namespace", self.namespace), ("kale-auth", self.auth),
                           ("kale-secret", self.secret), ("kale-docker-network", self.network),
                           ("kale-volume-map", self.volume_map),
                           ("kale-secret-file", self.secret_file)):
            field.add_class(css)
        self.remote_box = w.VBox([self.host, self.namespace, self.auth])
        self.parameters: dict[str, tuple[api.Parameter, w.Widget]] = {}
        self.parameter_box = w.VBox([])
        self.widget = w.VBox([self.name, self.experiment, self.image, self.caching, self.target,
                              self.container_box, self.remote_box, w.HTML("<b>parameters</b>"),
                              self.parameter_box])
        self.target.observe(lambda _: self._show_target(), names="value")
        self.auth.observe(lambda _: self._show_target(), names="value")
        self._show_target()
        if plan is not None:
            self.sync_parameters(plan)

    def _show_target(self) -> None:
        remote = self.target.value == REMOTE
        self.remote_box.layout.display = "" if remote else "none"
        self.container_box.layout.display = "" if self.target.value == CONTAINERS else "none"
        needs_secret = self.auth.value != AUTH_DEFAULT
        self.remote_box.children = ([self.host, self.namespace, self.auth, self.secret]
                                    if needs_secret else [self.host, self.namespace, self.auth])

    def sync_parameters(self, plan: api.Plan) -> None:
        """Show one field per parameter of ``plan``, keeping the values of fields already there."""
        fields = {}
        for parameter in plan.parameters:
            old = self.parameters.get(parameter.name)
            keep = old is not None and old[0].type == parameter.type
            fields[parameter.name] = old if keep else (parameter, parameter_widget(parameter))
        self.parameters = fields
        self.parameter_box.children = [widget for _, widget in fields.values()] or [
            w.HTML("<i>none (no %%kale parameters cell)</i>")]

    def options(self) -> str:
        """The form's pipeline settings as ``%kale pipeline`` options (empty fields: the notebook's)."""
        parts = []
        for flag, field in (("--name", self.name), ("--experiment", self.experiment),
                            ("--image", self.image)):
            if field.value.strip():
                parts += [flag, field.value.strip()]
        if not self.caching.value:
            parts.append("--no-cache")
        return " ".join(shlex.quote(p) for p in parts)

    def arguments(self) -> dict[str, Any]:
        """Parameter values by name: numbers and booleans as typed, text as written
        (lists and dicts as JSON text, typed by :func:`kale_magics.api.coerce_arguments`)."""
        return {name: widget.value for name, (_, widget) in self.parameters.items()}

    def chosen_target(self) -> TargetChoice:
        """Where the user chose to run."""
        if self.target.value == CONTAINERS:
            mapped = tuple(p.strip() for p in self.volume_map.value.split(",") if p.strip())
            return TargetChoice(remote=False, containers=True,
                                docker_network=self.network.value.strip() or None,
                                volume_map=mapped,
                                secret_env_file=self.secret_file.value.strip() or None)
        if self.target.value != REMOTE:
            return TargetChoice(remote=False)
        secret = self.secret.value or None
        host = self.host.value.strip() or None  # the notebook's host gets no ambient credentials
        return TargetChoice(remote=True, host=None if host == self.notebook_host else host,
                            namespace=self.namespace.value.strip() or None,
                            token=secret if self.auth.value == AUTH_TOKEN else None,
                            cookies=secret if self.auth.value == AUTH_COOKIES else None)

    def set_enabled(self, enabled: bool) -> None:
        """Lock the form while a run is active (its settings are the run's)."""
        for field in (self.name, self.experiment, self.image, self.caching, self.target,
                      self.host, self.namespace, self.auth, self.secret,
                      *(widget for _, widget in self.parameters.values())):
            field.disabled = not enabled
