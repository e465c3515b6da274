"""Kale's cell tags and notebook metadata: read them as annotations, and write them back.

Kale (kubeflow/kale, ``kale/processors/constants.py`` of Kale 2.3) annotates a
notebook with ``metadata.tags`` on each cell and pipeline settings in
``metadata.kubeflow_notebook``. This module maps both ways:

- :func:`annotation_from_tags` and :func:`settings_from_metadata` read a
  Kale-tagged notebook as if it carried ``%%kale`` lines, with Kale's
  semantics (``prev:`` edges, ``print(name)`` metrics cells). Every tag Kale
  2.x defines is read, ``limit:``, ``label:`` and ``annotation:`` applied
  (Kale drops some), plus Kale 1.x's ``block:``. An unknown tag or key is a
  warning, not an error.
- the tag and metadata writers used by :mod:`kale_magics.convert`.
"""

from __future__ import annotations

import ast
from typing import Any

from kale_magics.errors import AnnotationError
from kale_magics.model import Annotation, PipelineSettings, StepSettings, cell_place
from kale_magics.notebook import step_options
from kale_magics.notebook.annotations import check_pipeline_name, check_step_name

KIND_TAGS = {"imports": "imports", "functions": "functions", "parameters": "pipeline-parameters",
             "metrics": "pipeline-metrics", "skip": "skip"}
TAG_KINDS = {tag: kind for kind, tag in KIND_TAGS.items()}
#: Kale's GPU limit keys; ``cpu`` and ``memory`` are the other limits it knows.
GPU_KEYS = ("nvidia.com/gpu", "amd.com/gpu")
#: Keys of ``kubeflow_notebook`` Kale defines that have no effect here.
IGNORED_KEYS = frozenset({"katib_run", "katib_metadata", "abs_working_dir", "marshal_path",
                          "storage_class_name", "volume_access_mode", "security_context",
                          "output_path", "timeout"})


def is_kale_tag(tag: str) -> bool:
    """True for a tag of Kale's language (``step:x``, ``prev:x``, ``limit:...``, ``imports``, ...)."""
    return tag in TAG_KINDS or tag.split(":", 1)[0] in (
        "step", "block", "prev", "limit", "image", "annotation", "label", "cache", "secret",
        "report", "notebook")


def _setting(tag: str, where: str) -> tuple[str, Any] | None:
    """One settings tag as a ``(field, value)`` change; None (with no effect) for report tags."""
    name, _, rest = tag.partition(":")
    if name == "limit":
        key, _, value = rest.rpartition(":")
        if key in GPU_KEYS:
            return "gpu", (step_options.count(value, f"{where} limit:{key}"), key)
        if key in ("cpu", "memory"):
            check = step_options.cpu if key == "cpu" else step_options.memory
            return f"{key}_limit", check(value, f"{where} limit:{key}")
        raise AnnotationError(f"{where}: Kale limit {key!r} is not supported; use cpu, memory, "
                              f"{' or '.join(GPU_KEYS)}")
    if name == "image":
        return "image", rest
    if name == "cache":
        return "cache", rest == "enabled"
    if name in ("label", "annotation"):
        key, _, value = rest.partition(":")
        return f"{name}s", (key, value)
    if name == "secret":
        return "secrets", step_options.secret(rest)
    return None


def settings_from_tags(tags: list[str], where: str) -> StepSettings:
    """The execution settings that Kale's ``limit:``/``image:``/... tags give."""
    fields: dict[str, Any] = {}
    for tag in tags:
        change = _setting(tag, where)
        if change is None:
            continue
        field, value = change
        if field == "gpu":
            fields["gpu"], fields["accelerator"] = value
        elif field in ("labels", "annotations", "secrets"):
            fields[field] = (*fields.get(field, ()), value)
        else:
            fields[field] = value
    return StepSettings(**fields)


def annotation_from_tags(tags: list[str], index: int) -> tuple[Annotation | None, list[str]]:
    """Read a cell's Kale tags, as Kale's ``NotebookProcessor.parse_cell_metadata`` does.

    Follows Kale (``backend/kale/processors/nbprocessor.py``): a kind tag
    (``skip``, ``imports``, ...) wins over step tags; ``step:`` or ``block:``
    with nothing after the colon (Kale's UI leaves these) is no step tag, so
    the cell continues the one above; ``prev:`` tags name one step each.

    Parameters
    ----------
    tags:
        The cell's ``metadata.tags``.
    index:
        The cell's position, for messages.

    Returns
    -------
    tuple of (Annotation or None, list of str)
        The annotation (None for a cell with no Kale kind or step tag, which
        continues the cell above) and warnings (unknown or ignored tags).

    Raises
    ------
    AnnotationError
        A step name we cannot use, a malformed ``prev:`` or ``step:`` tag (such
        as ``prev:a:b``), or a malformed limit; the message names the cell.
    """
    where = cell_place(index)
    warnings = [f"{where}: unknown tag {t!r} ignored{_KALE_0_HINTS.get(t, '')}"
                for t in tags if not is_kale_tag(t)]
    warnings += [f"{where}: tag {t!r} has no effect here (Kale-specific)"
                 for t in tags if t.startswith("report:")]
    kinds = [TAG_KINDS[t] for t in tags if t in TAG_KINDS]
    if kinds:
        return Annotation(kind=kinds[0]), warnings
    steps = [_tag_value(t, where) for t in tags if t.startswith(("step:", "block:"))]
    steps = [name for name in steps if name]  # `step:` alone is an untagged cell (Kale)
    if len(set(steps)) > 1:
        raise AnnotationError(f"{where}: a cell can belong to one step only, it has the tags "
                              f"{', '.join(f'step:{s}' for s in dict.fromkeys(steps))}; keep one")
    if not steps:
        if any(t.startswith(("prev:", "limit:", "image:", "cache:", "secret:")) for t in tags):
            warnings.append(f"{where}: tags {tags} need a step:NAME tag; ignored")
        return None, warnings
    name = _step_name(steps[0], where)
    after = tuple(dict.fromkeys(_step_name(_tag_value(t, where), where)
                                for t in tags if t.startswith("prev:")))
    return Annotation(kind="step", name=name, after=after,
                      settings=settings_from_tags(tags, where)), warnings


#: What an unknown tag of an older Kale meant, for the warning.
_KALE_0_HINTS = {"parameters": " (Kale 0.x's name for pipeline-parameters; Kale 2 and kale-magics "
                                "read `pipeline-parameters`)",
                 "metrics": " (write `pipeline-metrics` for Kale's metrics cell)"}


def reference_name(tags: list[str] | tuple[str, ...], index: int) -> str | None:
    """NAME of a ``notebook:NAME`` tag (Kale 2.3's reference to another notebook), or None.

    Raises
    ------
    AnnotationError
        An empty or malformed name, or two references on one cell.
    """
    names = [_tag_value(t, cell_place(index)) for t in tags if t.startswith("notebook:")]
    if not names:
        return None
    if len(names) > 1 or not names[0]:
        raise AnnotationError(f"{cell_place(index)}: a `notebook:` cell references one notebook by a "
                              f"name, as `notebook:prepare`; it has {', '.join(tags)}")
    return _step_name(names[0], cell_place(index))


def _tag_value(tag: str, where: str) -> str:
    """The NAME of a ``step:NAME``, ``block:NAME`` or ``prev:NAME`` tag ("" for ``step:``).

    Raises
    ------
    AnnotationError
        More than one colon (``prev:sum:cumsum``): Kale's tag grammar has one.
    """
    kind, _, value = tag.partition(":")
    if ":" in value:
        fix = (f"write one tag per upstream step ({', '.join(f'prev:{v}' for v in value.split(':'))})"
               if kind == "prev" else f"write one `{kind}:NAME` tag")
        raise AnnotationError(f"{where}: tag {tag!r} is a malformed `{kind}:` tag (one step name "
                              f"after the colon); {fix}")
    return value


def _step_name(name: str, where: str) -> str:
    try:
        return check_step_name(name)
    except AnnotationError as error:
        raise AnnotationError(f"{where}: Kale step {error.message}") from None


def metrics_from_kale(source: str, index: int) -> str:
    """A Kale ``pipeline-metrics`` cell (``print(name)`` lines) as our metrics cell (``name`` lines).

    Raises
    ------
    AnnotationError
        A line that is not ``print(expression)``.
    """
    lines = []
    for number, line in enumerate(source.splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            lines.append("")
            continue
        try:
            call = ast.parse(text, mode="eval").body
        except SyntaxError:
            call = None
        if not (isinstance(call, ast.Call) and getattr(call.func, "id", "") == "print"
                and len(call.args) == 1 and not call.keywords):
            raise AnnotationError(f"{cell_place(index)}, line {number}: a Kale pipeline-metrics cell holds "
                                  f"`print(name)` lines; `{text}` is not one")
        lines.append(ast.unparse(call.args[0]))
    return "\n".join(lines)


#: The type each ``kubeflow_notebook`` key must have.
_METADATA_TYPES: dict[str, type | tuple[type, ...]] = {
    "pipeline_name": str, "experiment_name": str, "experiment": dict, "pipeline_description": str,
    "base_image": str, "docker_image": str, "enable_caching": bool, "volumes": list,
    "steps_defaults": (list, dict), "kfp_host": (str, type(None))}


def _check_types(meta: dict[str, Any]) -> None:
    for key, expected in _METADATA_TYPES.items():
        if key in meta and not isinstance(meta[key], expected):
            names = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple)
                                                     else (expected,)))
            raise AnnotationError(f"kubeflow_notebook: {key} must be {names}, got "
                                  f"{type(meta[key]).__name__} {meta[key]!r}; fix the notebook's "
                                  "metadata (or convert it with kale-magics convert)")
    _check_texts(meta)


def _check_texts(meta: dict[str, Any]) -> None:
    """Refuse text fields holding other JSON values: tags, the experiment's name, volume fields."""
    tags = meta.get("steps_defaults")
    values = [("steps_defaults", t) for t in (tags if isinstance(tags, list) else [])]
    experiment = meta.get("experiment")
    if isinstance(experiment, dict) and experiment.get("name") is not None:
        values.append(("experiment.name", experiment["name"]))
    values += [(f"volumes {k}", v[k]) for v in meta.get("volumes") or [] if isinstance(v, dict)
               for k in ("name", "mount_point", "type") if v.get(k) is not None]
    for key, value in values:
        if not isinstance(value, str):
            raise AnnotationError(f"kubeflow_notebook: {key} must be text, got {value!r}; fix the "
                                  "notebook's metadata (or convert it with kale-magics convert)")


def settings_from_metadata(meta: dict[str, Any]) -> tuple[PipelineSettings, list[str]]:
    """Pipeline settings from ``metadata.kubeflow_notebook``; warnings for what is ignored.

    Reads ``pipeline_name``, ``experiment_name`` (or ``experiment.name``),
    ``pipeline_description``, ``base_image`` (or Kale 1.x's ``docker_image``),
    ``enable_caching``, ``volumes`` (type ``pvc`` is mounted on every step),
    ``steps_defaults`` (a list of tags) and ``kfp_host``.

    Raises
    ------
    AnnotationError
        A key of the wrong type, or a malformed tag in ``steps_defaults``.
    """
    _check_types(meta)
    warnings = [f"kubeflow_notebook: key {k!r} ignored" for k in sorted(meta)
                if k not in _METADATA_READERS or k in IGNORED_KEYS]
    experiment = meta.get("experiment_name") or (meta.get("experiment") or {}).get("name")
    tagged = meta.get("steps_defaults")
    if tagged and not isinstance(tagged, list):
        warnings.append("kubeflow_notebook: steps_defaults is not a list of tags; ignored")
    volumes = []
    for volume in meta.get("volumes") or []:
        if not isinstance(volume, dict):
            raise AnnotationError(f"kubeflow_notebook: each volume must be an object with name, "
                                  f"mount_point and type, got {volume!r}; fix the notebook's metadata")
        if volume.get("type") == "pvc" and volume.get("name") and volume.get("mount_point"):
            volumes.append((volume["name"], volume["mount_point"]))
        else:
            warnings.append(f"kubeflow_notebook: volume {volume.get('name')!r} of type "
                            f"{volume.get('type')!r} is not supported (only existing PVCs, type pvc)")
    image = meta.get("base_image") or meta.get("docker_image") or None
    cache = meta.get("enable_caching")
    defaults = settings_from_tags(tagged if isinstance(tagged, list) else [], "steps_defaults")
    defaults = StepSettings(image=image, volumes=tuple(volumes),
                            cache=cache if isinstance(cache, bool) else None).merged(defaults)
    name = meta.get("pipeline_name") or None  # a file name too: checked like %kale pipeline --name
    settings = PipelineSettings(name=name and check_pipeline_name(name, "kubeflow_notebook: pipeline_name"),
                                experiment=experiment or None,
                                description=meta.get("pipeline_description") or None,
                                host=meta.get("kfp_host") or None, step_defaults=defaults)
    return settings, warnings


_METADATA_READERS = frozenset({"pipeline_name", "experiment_name", "experiment",
                               "pipeline_description", "base_image", "docker_image",
                               "enable_caching", "volumes", "steps_defaults", "kfp_host"})


def tags_for(annotation: Annotation, upstream: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Kale tags for ``annotation``, and the settings Kale's tags cannot express."""
    if annotation.kind == "notebook":  # Kale's notebook: tag cannot set parameters or outputs
        return ["skip"], [f"`{annotation.kind}` (a sub-pipeline: the cell is skipped by Kale; "
                          "reference the notebook with Kale's notebook: tag instead)"]
    if annotation.kind != "step":
        return [KIND_TAGS[annotation.kind]], []
    s = annotation.settings
    tags = [f"step:{annotation.name}", *(f"prev:{u}" for u in upstream)]
    tags += [f"limit:cpu:{s.cpu_limit}"] if s.cpu_limit else []
    tags += [f"limit:memory:{s.memory_limit}"] if s.memory_limit else []
    tags += [f"limit:{s.accelerator or GPU_KEYS[0]}:{s.gpu}"] if s.gpu else []
    tags += [f"image:{s.image}"] if s.image else []
    tags += [f"cache:{'enabled' if s.cache else 'disabled'}"] if s.cache is not None else []
    tags += [f"secret:{n}:{k}:{e}" for n, k, e in s.secrets]
    tags += [f"label:{k}:{v}" for k, v in s.labels]
    tags += [f"annotation:{k}:{v}" for k, v in s.annotations]
    lost = [o for o in step_options.options_text(StepSettings(
        cpu=s.cpu, memory=s.memory, retries=s.retries, backoff_s=s.backoff_s, timeout_s=s.timeout_s,
        env=s.env, volumes=s.volumes, node_selector=s.node_selector, tolerations=s.tolerations,
        packages=s.packages)) if o.startswith("--")]
    control = " ".join(step_options.control_text(annotation.loop, annotation.condition))
    if control:  # Kale has no control flow: its step would run once, unconditionally
        lost.append(f"{control} (Kale runs the step once, unconditionally)")
    lost += [o for o in step_options.registration_words(annotation.registrations)
             if o.startswith("--")]
    return tags, lost


def metadata_for(name: str, settings: PipelineSettings) -> dict[str, Any]:
    """``kubeflow_notebook`` metadata that Kale 2.3 accepts, for a pipeline named ``name``."""
    d = settings.step_defaults
    meta: dict[str, Any] = {"pipeline_name": name, "experiment_name": settings.experiment or name,
                            "pipeline_description": settings.description or ""}
    if d.image:
        meta["base_image"] = d.image
    if d.cache is not None:
        meta["enable_caching"] = d.cache
    if d.volumes:
        meta["volumes"] = [{"name": pvc, "mount_point": path, "type": "pvc", "annotations": []}
                           for pvc, path in d.volumes]
    defaults, _ = tags_for(Annotation(kind="step", name="x", settings=StepSettings(
        cpu_limit=d.cpu_limit, memory_limit=d.memory_limit, gpu=d.gpu, accelerator=d.accelerator,
        secrets=d.secrets, labels=d.labels, annotations=d.annotations)), ())
    if defaults[1:]:
        meta["steps_defaults"] = defaults[1:]
    if settings.host:
        meta["kfp_host"] = settings.host
    return meta

