"""The one facade of kale-magics: every front end (magics, CLI, widget) calls these.

Each function reads, analyses, compiles or runs by delegating to the core
(``notebook``, ``analysis``, ``codegen``, ``runner``) and raises only
:class:`~kale_magics.errors.KaleError` subclasses on bad input.
"""

from __future__ import annotations

import ast
import json
import os
from dataclasses import replace
from typing import Any, Iterable, Mapping

from kale_magics.analysis.parameters import MAX_EXACT_INT
from kale_magics.analysis.plan import build_plan
from kale_magics.codegen.compile import CompiledPipeline, compile_plan
from kale_magics.codegen.parameters import kfp_arguments, value_problem
from kale_magics.atomic import write_text_atomic
from kale_magics.errors import KaleError, NotebookError
from kale_magics.model import Plan
from kale_magics.analysis.live import LiveValue, artifact_types, describe
from kale_magics.analysis.preflight import CheckReport, preflight
from kale_magics.notebook.annotations import split_args
from kale_magics.notebook.locate import locate_notebook
from kale_magics.notebook.reader import AnnotatedNotebook, load_notebook, read_notebook, with_warnings
from kale_magics.notebook.registry import ExecutedCell
from kale_magics.runner import local
from kale_magics.runner.local import local_notices
from kale_magics.runner.status import RunHooks, RunStatus

__all__ = ["CheckReport", "CompiledPipeline", "KaleError", "LiveValue", "RunHooks", "RunStatus",
           "artifact_types", "check", "coerce_arguments", "compile_notebook", "convert", "default_output_dir",
           "describe", "live_values", "local_notices", "locate_notebook",
           "parse_param", "read_annotated", "read_plan", "run_local", "split_args"]


def read_plan(notebook: str | os.PathLike[str]) -> Plan:
    """Read and analyse ``notebook`` (an .ipynb path) into a pipeline plan.

    Raises
    ------
    NotebookError, AnnotationError, AnalysisError
        The file cannot be read, an annotation is malformed, or the steps do
        not form a valid pipeline; the message names the cell and the fix.
    """
    return read_annotated(notebook)[1]


def read_annotated(notebook: str | os.PathLike[str]) -> tuple[AnnotatedNotebook, Plan]:
    """Read ``notebook`` and analyse it: its annotated cells and its plan.

    Raises
    ------
    NotebookError, AnnotationError, AnalysisError
    """
    annotated = read_notebook(notebook)
    return annotated, _analyse(annotated, annotated.settings)


def _analyse(annotated: AnnotatedNotebook, settings: PipelineSettings) -> Plan:
    """The plan of ``annotated``; the reader's warnings travel with it, or with its error."""
    try:
        plan = build_plan(annotated.cells, settings, annotated.path)
    except KaleError as error:
        raise with_warnings(error, annotated.warnings) from None
    return replace(plan, warnings=(*annotated.warnings, *plan.warnings))


def check(notebook: str | os.PathLike[str], namespace: Mapping[str, Any],
          executed: Iterable[ExecutedCell] = ()) -> CheckReport:
    """Pre-flight check of ``notebook`` against a live kernel's ``namespace``.

    Serialises every variable passed between steps with the step runtime's
    marshal layer (in a temporary folder, removed afterwards) and compares the
    cells the kernel ran (``executed``) with the saved notebook.

    Raises
    ------
    NotebookError, AnnotationError, AnalysisError
    """
    annotated, plan = read_annotated(notebook)
    return preflight(plan, namespace, annotated.cells, executed)


def live_values(plan: Plan, namespace: Mapping[str, Any]) -> dict[str, LiveValue]:
    """Type, size and artifact class of each passed variable the kernel holds."""
    passed = {name for step in plan.steps for name in (*step.outputs, *(i.name for i in step.inputs))}
    return {name: describe(namespace[name]) for name in sorted(passed) if name in namespace}


def default_output_dir(notebook: str | os.PathLike[str]) -> str:
    """``.kale/`` next to the notebook: where compiled files go by default."""
    return os.path.join(os.path.dirname(os.path.abspath(notebook)), ".kale")


def compile_notebook(notebook: str | os.PathLike[str], output_dir: str | None = None,
                     artifact_types: Mapping[str, str] | None = None) -> CompiledPipeline:
    """Compile ``notebook`` to ``<output_dir>/<pipeline>.py`` (KFP DSL) and ``.yaml`` (KFP IR).

    Parameters
    ----------
    notebook:
        Path of the annotated .ipynb file. It is only read.
    output_dir:
        Folder for the generated files; default ``.kale/`` next to the notebook.
    artifact_types:
        KFP artifact class per passed variable (``"Dataset"``, ``"Model"``,
        ``"Artifact"``); default ``Artifact`` for all.

    Raises
    ------
    NotebookError, AnnotationError, AnalysisError, CompileError
    """
    plan = read_plan(notebook)
    return compile_plan(plan, output_dir or default_output_dir(notebook), artifact_types)


def coerce_arguments(plan: Plan, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Type pipeline arguments given as text (``--param N=5``) from the parameters' defaults.

    Values that are not strings are passed through. A ``str`` parameter takes
    the text as it is; ``bool`` accepts true/false/1/0/yes/no; ``list`` and
    ``dict`` accept JSON or a Python literal.

    Raises
    ------
    KaleError
        An unknown parameter name or a value of the wrong type.
    """
    parameters = {p.name: p for p in plan.parameters}
    result: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in parameters:
            known = ", ".join(parameters) or "none"
            raise KaleError(f"unknown parameter {name!r}; the pipeline's parameters are: {known}")
        kind = parameters[name].type
        result[name] = _coerce(name, kind, value) if isinstance(value, str) else value
        problem = value_problem(parameters[name], result[name])
        if problem:
            raise KaleError(f"parameter {name!r}: {problem}; for example {_EXAMPLES[kind]}")
    return result


def _coerce(name: str, kind: str, text: str) -> Any:
    try:
        if kind == "str":
            return text
        if kind == "bool":
            return {"true": True, "1": True, "yes": True,
                    "false": False, "0": False, "no": False}[text.strip().lower()]
        if kind == "int":
            value = int(text)
            if abs(value) > MAX_EXACT_INT:
                raise ValueError(text)
            return value
        if kind == "float":
            return float(text)
        value = _structured(text)
        if type(value).__name__ != kind:
            raise ValueError(kind)
        return value
    except (KeyError, ValueError, SyntaxError):
        raise KaleError(f"parameter {name!r} is {kind}, but {text!r} is not a valid {kind}; "
                        f"for example {_EXAMPLES[kind]}") from None


_EXAMPLES = {"bool": "--param NAME=true", "int": "--param NAME=5", "float": "--param NAME=0.5",
             "list": "--param 'NAME=[1, 2]'", "dict": "--param 'NAME={\"a\": 1}'",
             "str": "--param NAME=text"}


def _structured(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return ast.literal_eval(text)


def parse_param(text: str) -> tuple[str, str]:
    """Split ``--param NAME=VALUE`` text into ``(NAME, VALUE)``.

    Raises
    ------
    KaleError
        The text has no ``=`` or no name.
    """
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise KaleError(f"--param {text!r} is not NAME=VALUE; for example --param N_ESTIMATORS=50")
    return name.strip(), value


def convert(notebook: str | os.PathLike[str], out: str | os.PathLike[str],
            to: str) -> tuple[str, list[str]]:
    """Write ``notebook`` converted to Kale's tags (``to="kale-tags"``) or to ``%%kale`` lines
    (``to="magics"``) as ``out``, atomically; never over the source.

    Returns
    -------
    tuple of (str, list of str)
        The path written, and warnings (what the target cannot express, tags ignored).

    Raises
    ------
    NotebookError
        ``out`` is the notebook itself, cannot be written, or ``to`` is unknown.
    AnnotationError, AnalysisError
        The notebook's annotations are invalid.
    """
    import nbformat

    from kale_magics.notebook import convert as convert_notebook

    if os.path.abspath(out) == os.path.abspath(notebook):
        raise NotebookError(f"refusing to overwrite the source notebook {notebook}; "
                            "choose another output path")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise NotebookError(f"cannot write {out}: the folder {folder} does not exist; create it "
                            "or choose another output path")
    if to == "kale-tags":
        converted, warnings = convert_notebook.to_kale_tags(load_notebook(notebook),
                                                            read_plan(notebook))
    elif to == "magics":
        plan = read_plan(notebook)  # the tags must describe a valid pipeline
        keep = frozenset(c.index for s in plan.steps if s.name in plan.lenient_steps
                         for c in s.cells if not c.notebook)
        steps = {c.index: s.name for s in plan.steps for c in s.cells if c.explicit and not c.notebook}
        converted, warnings = convert_notebook.to_magics(load_notebook(notebook), plan.name, keep,
                                                         steps)
    else:
        raise NotebookError(f"cannot convert to {to!r}; use --to magics or --to kale-tags")
    try:
        write_text_atomic(out, nbformat.writes(converted))
    except OSError as error:
        raise NotebookError(f"cannot write {out}: {error}; choose a writable path") from None
    return os.fspath(out), warnings


def run_local(notebook_or_compiled: str | os.PathLike[str] | CompiledPipeline,
              arguments: Mapping[str, Any] | None = None, pipeline_root: str | None = None,
              hooks: RunHooks | None = None, output_dir: str | None = None,
              enable_caching: bool = True, from_step: str | None = None) -> RunStatus:
    """Compile (when given a notebook) and run the pipeline locally with kfp.local.

    Parameters
    ----------
    notebook_or_compiled:
        An .ipynb path, or the result of :func:`compile_notebook`.
    arguments:
        Parameter values by name; strings are typed with :func:`coerce_arguments`.
    pipeline_root:
        Folder for the run's artifacts; default ``.kale/local_runs`` next to the notebook.
    hooks:
        Subscribers to step and run state changes.
    output_dir:
        Where to compile a notebook to; default ``.kale/`` next to it.
    enable_caching:
        Reuse outputs of unchanged steps from earlier runs into the same
        pipeline root (steps with ``--no-cache`` always run).
    from_step:
        Run this step and everything downstream even when cached.

    Returns
    -------
    RunStatus
        Final per-step state, durations, outputs and metrics. A failing step
        gives state ``FAILED``; it does not raise.

    Raises
    ------
    KaleError
        The notebook does not compile, or the arguments are wrong.
    """
    compiled = (notebook_or_compiled if isinstance(notebook_or_compiled, CompiledPipeline)
                else compile_notebook(notebook_or_compiled, output_dir))
    typed = coerce_arguments(compiled.plan, arguments or {})
    return local.run_local(compiled, kfp_arguments(compiled.plan, typed),
                           pipeline_root=pipeline_root, hooks=hooks,
                           enable_caching=enable_caching, from_step=from_step)


# =============================================================================================
# Remote runs on a KFP server (issue 4). Front ends: `kale-magics run --host`, `status`,
# `cancel`, `schedules`; the magics and the widget call the same functions.
# =============================================================================================

from kale_magics.runner import remote as _remote  # noqa: E402
from kale_magics.runner import watch as _watch  # noqa: E402
from kale_magics.runner.connection import KfpSession, open_session, resolve_connection  # noqa: E402
from kale_magics.runner.remote import Schedule, ScheduleInfo, Submission  # noqa: E402
from kale_magics.runner.transport import RetryPolicy  # noqa: E402

__all__ += ["KfpSession", "Schedule", "ScheduleInfo", "Submission", "cancel_remote", "connect",
            "delete_schedule", "list_schedules", "remote_status", "submit", "watch_remote"]


def connect(host: str | None = None, namespace: str | None = None, token: str | None = None,
            cookies: str | None = None, *, settings: Any = None,
            connect_timeout_s: float | None = None) -> KfpSession:
    """Find, probe and connect to the KFP server.

    The host comes from ``host``, else the notebook's ``%kale pipeline --host``
    (``settings``), else ``$KF_PIPELINES_ENDPOINT``, else the user config file
    (``~/.config/kale-magics/config.json``); the namespace, token and cookies
    likewise (see :mod:`kale_magics.runner.connection`). The health endpoint is
    probed with a ``connect_timeout_s`` (default 5 s) timeout before
    ``kfp.Client`` is built, so a wrong host fails in seconds.

    Raises
    ------
    KaleError
        No host configured, or a malformed one.
    KfpConnectionError
        ``cannot reach KFP at URL: <reason>; check --host ...``.
    KfpAuthError
        The server wants (other) credentials; the message says what to set.
    """
    return open_session(resolve_connection(host, namespace, token, cookies, settings=settings,
                                           connect_timeout_s=connect_timeout_s))


def submit(notebook_or_compiled: str | os.PathLike[str] | CompiledPipeline, session: KfpSession,
           arguments: Mapping[str, Any] | None = None, *, experiment: str | None = None,
           run_name: str | None = None, enable_caching: bool | None = None,
           schedule: Schedule | None = None, pipeline_root: str | None = None,
           output_dir: str | None = None) -> Submission:
    """Compile (when given a notebook), upload and run the pipeline on a KFP server.

    The pipeline is created once by name; each distinct compiled IR becomes one
    pipeline version named after its content, so resubmitting unchanged code
    adds no version. With ``schedule`` a recurring run is created instead.

    Parameters
    ----------
    arguments:
        Parameter values by name; strings are typed with :func:`coerce_arguments`.
    experiment:
        Experiment name (created when missing); default the notebook's, else ``Default``.
    enable_caching:
        None keeps each step's caching option (on unless the step says
        ``--no-cache``); False turns caching off for every task, True on.

    Returns
    -------
    Submission
        Ids of the pipeline, version, experiment and run (or recurring run) and the UI link.

    Raises
    ------
    KaleError, RunError, KfpConnectionError, KfpAuthError
    """
    compiled = (notebook_or_compiled if isinstance(notebook_or_compiled, CompiledPipeline)
                else compile_notebook(notebook_or_compiled, output_dir))
    typed = coerce_arguments(compiled.plan, arguments or {})
    return _remote.submit(session, compiled, kfp_arguments(compiled.plan, typed),
                          experiment=experiment, run_name=run_name, enable_caching=enable_caching,
                          schedule=schedule, pipeline_root=pipeline_root)


def remote_status(session: KfpSession, run_id: str, plan: Plan | None = None,
                  hooks: RunHooks | None = None) -> RunStatus:
    """The current state of a remote run and of each step (one request, no waiting).

    Steps come from ``plan`` when given, else from the run's pipeline spec.

    Raises
    ------
    RunError
        No such run, or KFP cannot report it (it answers the run's ids and an error only).
    KfpConnectionError, KfpAuthError
    """
    return _watch.start(session, run_id, plan, hooks).status


def watch_remote(session: KfpSession, run_id: str, hooks: RunHooks | None = None, *,
                 plan: Plan | None = None, interval_s: float = 5.0, timeout_s: float | None = None,
                 max_outage_s: float = 120.0) -> RunStatus:
    """Follow a remote run to its end, calling ``hooks`` as steps change state.

    Parameters
    ----------
    interval_s:
        Seconds between polls.
    timeout_s:
        Give up watching after this many seconds (the run goes on); None: no limit.
    max_outage_s:
        How long the server may fail to answer (refused, 502/503/504, timeouts)
        before the watch ends with an error.

    Returns
    -------
    RunStatus
        Final state (SUCCEEDED, FAILED, CANCELED, SKIPPED) of the run and every step.

    Raises
    ------
    KfpConnectionError, KfpAuthError, RunError
    """
    policy = RetryPolicy(max_outage_s=max_outage_s, backoff_max_s=max(1.0, min(20.0, max_outage_s / 4)))
    follower = _watch.start(session, run_id, plan, hooks, policy)
    return _watch.watch_run(follower, _watch.WatchOptions(interval_s, timeout_s, policy))


def cancel_remote(session: KfpSession, run_id: str, *, wait_s: float = 60.0,
                  hooks: RunHooks | None = None, plan: Plan | None = None,
                  interval_s: float = 1.0) -> RunStatus:
    """Terminate a remote run and wait up to ``wait_s`` seconds for it to end.

    KFP ends a terminated run FAILED (``resource/resource_manager.go`` TerminateRun); a run
    this session terminated is reported CANCELED (see :mod:`kale_magics.runner.watch`).

    Returns
    -------
    RunStatus
        CANCELED, or CANCELING when the run has not ended within ``wait_s`` (0: do not
        wait), or the state it ended in before the cancel took effect (a finished run is
        not touched).

    Raises
    ------
    RunError, KfpConnectionError, KfpAuthError
    """
    return _watch.cancel(session, run_id, wait_s, plan, hooks, interval_s)


def list_schedules(session: KfpSession, experiment: str | None = None) -> list[ScheduleInfo]:
    """The recurring runs on the server (in the session's namespace, or one experiment)."""
    if experiment is None:
        return _remote.list_schedules(session)
    experiment_id = _remote.find_experiment(session, experiment)
    return _remote.list_schedules(session, experiment_id) if experiment_id else []


def delete_schedule(session: KfpSession, recurring_run_id: str) -> None:
    """Delete a recurring run; the runs it already started stay."""
    _remote.delete_schedule(session, recurring_run_id)


# =============================================================================================
# Deploy panel (issue 5): the settings the panel edits, applied through the one grammar.
# Front end: kale_widgets.DeployPanel; nothing here is specific to widgets.
# =============================================================================================

from kale_magics.model import PipelineSettings  # noqa: E402
from kale_magics.notebook.annotations import parse_pipeline_line  # noqa: E402

__all__ += ["PipelineSettings", "compile_with_settings", "parse_pipeline_settings",
            "read_plan_with_settings"]


def parse_pipeline_settings(options: str) -> PipelineSettings:
    """Parse ``%kale pipeline`` options (``"--name wine --image python:3.12 --no-cache"``).

    Raises
    ------
    AnnotationError
        An unknown option, bad quoting or an invalid value; the message names the fix.
    """
    return parse_pipeline_line(options)


def read_plan_with_settings(notebook: str | os.PathLike[str],
                            overrides: PipelineSettings | None = None) -> Plan:
    """:func:`read_plan`, with ``overrides`` laid over the notebook's ``%kale pipeline`` settings.

    Raises
    ------
    NotebookError, AnnotationError, AnalysisError
    """
    annotated = read_notebook(notebook)
    return _analyse(annotated, annotated.settings.merged(overrides or PipelineSettings()))


def compile_with_settings(notebook: str | os.PathLike[str],
                          overrides: PipelineSettings | None = None,
                          output_dir: str | None = None,
                          artifact_types: Mapping[str, str] | None = None) -> CompiledPipeline:
    """:func:`compile_notebook`, with ``overrides`` laid over the notebook's pipeline settings.

    Raises
    ------
    NotebookError, AnnotationError, AnalysisError, CompileError
    """
    plan = read_plan_with_settings(notebook, overrides)
    return compile_plan(plan, output_dir or default_output_dir(notebook), artifact_types)
