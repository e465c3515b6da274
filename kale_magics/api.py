"""The one facade of kale-magics: every front end (the magics, the CLI, the panel) calls these.

Each function is a few lines that delegate to the core (``notebook``,
``analysis``, ``codegen``, ``runner``), to the kernel's session (``session``)
or to a run target (``targets``), as KFP's ``Compiler.compile`` does; only
:class:`~kale_magics.errors.KaleError` subclasses are raised on bad input.

- Read and compile: :func:`read_plan`, :func:`compile_notebook`, :func:`convert`.
  The same saved notebook gives the same plan, DSL and IR whoever calls.
- The kernel: :class:`NotebookSession` (one per shell), :func:`check`, :func:`live_values`.
- Run: :func:`run` with a target (:class:`LocalTarget`, :class:`DockerTarget`, :class:`KfpTarget`);
  :func:`run_local` is ``run`` with a :class:`LocalTarget`.
- A KFP server beyond one run: :func:`connect`, :func:`submit` (schedules),
  :func:`remote_status`, :func:`watch_remote`, :func:`cancel_remote`,
  :func:`list_schedules`, :func:`delete_schedule`.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, Mapping

from kale_magics.analysis.control import passing
from kale_magics.analysis.live import LiveValue, describe
from kale_magics.analysis.plan import build_plan
from kale_magics.analysis.preflight import CheckReport, check_variables
from kale_magics.codegen.compile import CompiledPipeline, compile_plan
from kale_magics.codegen.parameters import coerce_arguments, parse_param, run_arguments
from kale_magics.convert import convert_file
from kale_magics.errors import KaleError
from kale_magics.model import Annotation, Parameter, PipelineSettings, Plan
from kale_magics.notebook.annotations import (
    PIPELINE_PARSER,
    STEP_PARSER,
    GrammarParser,
    parse_cell_line,
    parse_pipeline_line,
    split_args,
)
from kale_magics.notebook.locate import locate_notebook
from kale_magics.notebook.reader import (AnnotatedNotebook, check_notebook_body, read_notebook,
                                         with_warnings)
from kale_magics.notebook.step_record import STEP_MIME
from kale_magics.runner import remote
from kale_magics.runner.connection import KfpSession
from kale_magics.runner.docker import DockerOptions, chosen_docker_options, docker_options
from kale_magics.runner.remote import Schedule, ScheduleInfo, Submission
from kale_magics.runner.status import RunHooks, RunStatus
from kale_magics.runner.transport import RetryPolicy
from kale_magics.runner.watch import WatchOptions, cancel
from kale_magics.session.notebook_session import NotebookSession, StepRun
from kale_magics.targets import kfp as kfp_target
from kale_magics.targets.child import ChildWorker
from kale_magics.targets.docker import DockerTarget
from kale_magics.targets.kfp import KfpTarget, connect
from kale_magics.targets.local import LocalTarget
from kale_magics.targets.target import RunTarget

__all__ = ["CheckReport", "ChildWorker", "CompiledPipeline", "DockerOptions", "DockerTarget",
           "GrammarParser", "KaleError", "KfpSession", "KfpTarget", "LiveValue", "LocalTarget",
           "NotebookSession", "Parameter", "PipelineSettings", "Plan", "RunHooks", "RunStatus",
           "RunTarget", "STEP_MIME", "Schedule", "ScheduleInfo", "StepRun", "Submission",
           "WatchOptions", "cancel_remote", "check", "chosen_docker_options", "coerce_arguments",
           "compile_notebook", "connect", "convert", "default_output_dir", "delete_schedule",
           "describe", "docker_options", "grammar_help", "list_schedules", "live_values",
           "locate_notebook", "parse_annotation", "parse_param", "parse_pipeline_settings",
           "read_plan", "remote_status", "run", "run_docker", "run_local", "split_args", "submit",
           "watch_options", "watch_remote"]


# -- read and compile ---------------------------------------------------------------------------

def _read(notebook: str | os.PathLike[str],
          overrides: PipelineSettings | None = None) -> tuple[AnnotatedNotebook, Plan]:
    annotated = read_notebook(notebook)
    settings = annotated.settings.merged(overrides) if overrides else annotated.settings
    try:
        plan = build_plan(annotated.cells, settings, annotated.path)
    except KaleError as error:  # the reader's warnings travel with the error (they may explain it)
        raise with_warnings(error, annotated.warnings) from None
    return annotated, replace(plan, warnings=(*annotated.warnings, *plan.warnings))


def read_plan(notebook: str | os.PathLike[str], overrides: PipelineSettings | None = None) -> Plan:
    """Read and analyse ``notebook`` (an .ipynb path) into a pipeline plan.

    Parameters
    ----------
    overrides:
        Settings laid over the notebook's ``%kale pipeline`` settings (the panel's form).

    Raises
    ------
    NotebookError, AnnotationError, AnalysisError
        The file cannot be read, an annotation is malformed, or the steps do
        not form a valid pipeline; the message names the cell and the fix.
    """
    return _read(notebook, overrides)[1]


def parse_annotation(line: str) -> Annotation:
    """Parse a ``%%kale KIND ...`` line with the one grammar the notebook reader uses.

    Raises
    ------
    AnnotationError
        Unknown kind, bad option, invalid step name or bad quoting; the message names the fix.
    """
    return parse_cell_line(line)


def grammar_help() -> tuple[str, str]:
    """The options of a ``%%kale step`` line and of a ``%kale pipeline`` line, as argparse
    words them (the one grammar's help, for a front end's own help text)."""
    return STEP_PARSER.format_help(), PIPELINE_PARSER.format_help()


def parse_pipeline_settings(options: str) -> PipelineSettings:
    """Parse ``%kale pipeline`` options (``"--name wine --image python:3.12 --no-cache"``).

    Raises
    ------
    AnnotationError
        An unknown option, bad quoting or an invalid value; the message names the fix.
    """
    return parse_pipeline_line(options)


def default_output_dir(notebook: str | os.PathLike[str]) -> str:
    """``.kale/`` next to the notebook: where compiled files go by default."""
    return os.path.join(os.path.dirname(os.path.abspath(notebook)), ".kale")


def compile_notebook(notebook: str | os.PathLike[str], output_dir: str | None = None,
                     overrides: PipelineSettings | None = None) -> CompiledPipeline:
    """Compile ``notebook`` to ``<output_dir>/<pipeline>.py`` (KFP DSL) and ``.yaml`` (KFP IR).

    Artifact classes (``Dataset``, ``Model``, ``Artifact``) come from the step
    records saved in the notebook's outputs (``notebook.step_record``), so the
    CLI and the kernel write the same IR for the same saved file.

    Parameters
    ----------
    notebook:
        Path of the annotated .ipynb file. It is only read.
    output_dir:
        Folder for the generated files; default ``.kale/`` next to the notebook.
    overrides:
        Settings laid over the notebook's ``%kale pipeline`` settings.

    Raises
    ------
    NotebookError, AnnotationError, AnalysisError, CompileError
    """
    annotated, plan = _read(notebook, overrides)
    return compile_plan(plan, output_dir or default_output_dir(notebook), annotated.artifact_types)


def convert(notebook: str | os.PathLike[str], out: str | os.PathLike[str],
            to: str) -> tuple[str, list[str]]:
    """Write ``notebook`` converted to Kale's tags (``to="kale-tags"``) or to ``%%kale`` lines
    (``to="magics"``) as ``out``; see :func:`kale_magics.convert.convert_file`.

    Raises
    ------
    NotebookError, AnnotationError, AnalysisError
    """
    return convert_file(notebook, out, to, lambda: read_plan(notebook))


# -- the kernel -----------------------------------------------------------------------------

def check(notebook: str | os.PathLike[str], session: NotebookSession) -> CheckReport:
    """Pre-flight check of ``notebook`` against the kernel of ``session``.

    Serialises every variable passed between steps with the step runtime's
    marshal layer (in a temporary folder, removed afterwards), compares the
    cells the kernel ran with the saved notebook, and the artifact classes of
    the kernel's values with the ones the saved notebook records.

    Raises
    ------
    NotebookError, AnnotationError, AnalysisError
    """
    annotated, plan = _read(notebook)
    return CheckReport(check_variables(plan, session.namespace),
                       (*session.registry.unsaved(annotated.cells),
                        *session.unrecorded_types(plan, annotated.artifact_types)))


def live_values(plan: Plan, namespace: Mapping[str, Any]) -> dict[str, LiveValue]:
    """Type, size and artifact class of each passed variable the kernel holds."""
    passed = {name for step in plan.steps for name in (*step.outputs, *(i.name for i in step.inputs))}
    return {name: describe(namespace[name]) for name in sorted(passed) if name in namespace}


# -- run ------------------------------------------------------------------------------------

def run(compiled: CompiledPipeline, target: RunTarget, hooks: RunHooks | None = None, *,
        arguments: Mapping[str, Any] | None = None) -> RunStatus:
    """Run ``compiled`` on ``target`` to its end, reporting through ``hooks``.

    Parameters
    ----------
    compiled:
        The result of :func:`compile_notebook`.
    target:
        Where to run: :class:`LocalTarget` (kfp.local, in a child process),
        :class:`KfpTarget` (a KFP server), ...
    hooks:
        Subscribers to step and run state changes and to the target's messages.
    arguments:
        Parameter values by name; strings are typed from the parameters' defaults.

    Returns
    -------
    RunStatus
        Final per-step state, durations, outputs and metrics. A failing step
        gives state ``FAILED``; it does not raise.

    Raises
    ------
    KaleError
        The arguments are wrong, or the target cannot start the run.
    """
    return target.run(compiled, run_arguments(compiled.plan, arguments or {}), hooks or RunHooks())


def _compiled(notebook_or_compiled: str | os.PathLike[str] | CompiledPipeline,
              output_dir: str | None) -> CompiledPipeline:
    if isinstance(notebook_or_compiled, CompiledPipeline):
        return notebook_or_compiled
    return compile_notebook(notebook_or_compiled, output_dir)


def run_local(notebook_or_compiled: str | os.PathLike[str] | CompiledPipeline,
              arguments: Mapping[str, Any] | None = None, pipeline_root: str | None = None,
              hooks: RunHooks | None = None, output_dir: str | None = None,
              enable_caching: bool = True, from_step: str | None = None) -> RunStatus:
    """:func:`run` on a :class:`LocalTarget`, compiling first when given a notebook path.

    Raises
    ------
    KaleError
        The notebook does not compile, the arguments are wrong, or a step
        needs a package that is not installed here.
    """
    target = LocalTarget(pipeline_root, enable_caching=enable_caching, from_step=from_step)
    return run(_compiled(notebook_or_compiled, output_dir), target, hooks, arguments=arguments)


def run_notebook_cell(session: NotebookSession, annotation: Annotation, body: str = "",
                      pipeline_root: str | None = None) -> str:
    """Run a ``%%kale notebook PATH`` cell in the kernel: the sub-notebook's pipeline locally
    (a child process) with its ``--param`` values from the user namespace, then its
    ``--outputs`` variables bound there. PATH is relative to the kernel's working directory
    (the notebook's folder in Jupyter and nbclient). Returns a line saying what ran.

    Raises
    ------
    KaleError
        The sub-notebook does not compile, an EXPR fails, its run fails, or a variable
        it should pass on is missing.
    """
    assert annotation.notebook is not None
    check_notebook_body(body)
    path = os.path.abspath(annotation.notebook.path)
    plan, producers = passing(read_plan(path), annotation.outputs)
    annotated = read_notebook(path)
    compiled = compile_plan(plan, default_output_dir(path), annotated.artifact_types)
    arguments = session.sub_arguments(annotation)
    status = run(compiled, LocalTarget(pipeline_root), arguments=arguments)
    if status.state != "SUCCEEDED":
        raise KaleError(f"the sub-notebook {annotation.notebook.path} failed: {status.error}")
    session.bind_outputs(status, producers)
    bound = ", ".join(f"`{n}`" for n in producers) or "nothing"
    return (f"ran {annotation.notebook.path} ({len(plan.steps)} steps) as a local pipeline; "
            f"bound {bound}")


def run_docker(notebook_or_compiled: str | os.PathLike[str] | CompiledPipeline,
               arguments: Mapping[str, Any] | None = None, pipeline_root: str | None = None,
               hooks: RunHooks | None = None, output_dir: str | None = None,
               enable_caching: bool = True, from_step: str | None = None,
               options: DockerOptions | None = None) -> RunStatus:
    """:func:`run` on a :class:`DockerTarget` (every step in a container of its image, installing
    only its packages, as a cluster does), compiling first when given a notebook path.

    Raises
    ------
    KaleError
        The notebook does not compile, the arguments are wrong, a PVC has no local folder or a
        secret no value, Docker cannot be reached, or an image is missing.
    """
    target = DockerTarget(pipeline_root, options=options, enable_caching=enable_caching,
                          from_step=from_step)
    return run(_compiled(notebook_or_compiled, output_dir), target, hooks, arguments=arguments)


# -- a KFP server beyond one run ---------------------------------------------------------------

def watch_options(interval_s: float = 5.0, timeout_s: float | None = None,
                  max_outage_s: float = 120.0) -> WatchOptions:
    """How to follow a remote run: poll every ``interval_s`` seconds, give up watching after
    ``timeout_s`` (the run goes on), end with an error after ``max_outage_s`` without an answer."""
    return WatchOptions(interval_s, timeout_s, RetryPolicy.for_outage(max_outage_s))


def submit(notebook_or_compiled: str | os.PathLike[str] | CompiledPipeline, session: KfpSession,
           arguments: Mapping[str, Any] | None = None, *, experiment: str | None = None,
           run_name: str | None = None, enable_caching: bool | None = None,
           schedule: Schedule | None = None, pipeline_root: str | None = None,
           output_dir: str | None = None) -> Submission:
    """Upload and start the pipeline on a KFP server without following it: one run, or with
    ``schedule`` a recurring run (compiling first when given a notebook path).

    See :func:`kale_magics.runner.remote.submit`; to follow a run, use :func:`run`
    with a :class:`KfpTarget`.

    Raises
    ------
    KaleError, RunError, KfpConnectionError, KfpAuthError
    """
    compiled = _compiled(notebook_or_compiled, output_dir)
    return remote.submit(session, compiled, run_arguments(compiled.plan, arguments or {}),
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
    return kfp_target.status_of(session, run_id, plan, hooks)


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

    Raises
    ------
    KfpConnectionError, KfpAuthError, RunError
    """
    return kfp_target.follow(session, run_id, hooks, plan,
                             watch_options(interval_s, timeout_s, max_outage_s))


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
    return cancel(session, run_id, wait_s, plan, hooks, interval_s)


def list_schedules(session: KfpSession, experiment: str | None = None) -> list[ScheduleInfo]:
    """The recurring runs on the server (in the session's namespace, or one experiment)."""
    if experiment is None:
        return remote.list_schedules(session)
    experiment_id = remote.find_experiment(session, experiment)
    return remote.list_schedules(session, experiment_id) if experiment_id else []


def delete_schedule(session: KfpSession, recurring_run_id: str) -> None:
    """Delete a recurring run; the runs it already started stay."""
    remote.delete_schedule(session, recurring_run_id)
