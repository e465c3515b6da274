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
- A notebook's runs: :func:`run_history`, :func:`compare_runs`, :func:`load_step`.
- A Kubeflow notebook image with kale-magics: :func:`notebook_image`.
- The Model Registry: :func:`model_versions` (what a notebook's ``--register`` steps registered).
- Sweep parameters: :func:`plan_sweep` (check and plan the trials), :func:`sweep` (run them).
- A KFP server beyond one run: :func:`connect`, :func:`submit` (schedules),
  :func:`remote_status`, :func:`watch_remote`, :func:`cancel_remote`,
  :func:`list_schedules`, :func:`delete_schedule`.
"""

from __future__ import annotations

import os
import secrets
import threading
from dataclasses import replace
from typing import Any, Callable, Mapping, MutableMapping, Sequence

from kale_magics.analysis.control import passing
from kale_magics.analysis.live import LiveValue, describe
from kale_magics.analysis.plan import build_plan
from kale_magics.analysis.preflight import CheckReport, check_variables
from kale_magics.codegen.compile import CompiledPipeline, compile_plan
from kale_magics.codegen.image import ImageContext, write_image_context
from kale_magics.codegen.parameters import coerce_arguments, parse_param, run_arguments
from kale_magics.convert import convert_file
from kale_magics.errors import KaleError
from kale_magics.model import Annotation, Parameter, PipelineSettings, Plan
from kale_magics.notebook.annotations import (
    PIPELINE_PARSER,
    STEP_PARSER,
    GrammarParser,
    did_you_mean,
    parse_cell_line,
    parse_pipeline_line,
    split_args,
)
from kale_magics.notebook.locate import locate_notebook
from kale_magics.notebook.reader import (AnnotatedNotebook, check_notebook_body, read_notebook,
                                         with_warnings)
from kale_magics.notebook.step_record import STEP_MIME
from kale_magics.runner import history, mlmd, remote
from kale_magics.runner.connection import KfpSession
from kale_magics.runner.history import ComparedValue, LoadedValue, RunHistory, RunRecord
from kale_magics.runner.docker import DockerOptions, chosen_docker_options, docker_options
from kale_magics.runner.registry import (RegisteredVersion, list_versions, registered_models,
                                         registry_arguments, resolve_registry)
from kale_magics.runner.remote import Schedule, ScheduleInfo, Submission
from kale_magics.runner.search_space import SearchSpace, parse_space
from kale_magics.runner.status import RunHooks, RunStatus
from kale_magics.runner.sweep import MAXIMIZE, MINIMIZE, Sweep, Trial, run_sweep
from kale_magics.runner.sweep import plan_sweep as _plan_trials
from kale_magics.runner.transport import RetryPolicy
from kale_magics.runner.watch import WatchOptions
from kale_magics.session import front_end
from kale_magics.session.notebook_session import NotebookSession, StepRun
from kale_magics.targets import kfp as kfp_target
from kale_magics.targets.child import ChildWorker
from kale_magics.targets.docker import DockerTarget
from kale_magics.targets.kfp import KfpTarget, connect
from kale_magics.targets.local import LocalTarget
from kale_magics.targets import sweep as sweep_targets
from kale_magics.targets.target import RunTarget

__all__ = ["CheckReport", "ChildWorker", "ComparedValue", "CompiledPipeline", "DockerOptions",
           "DockerTarget", "GrammarParser", "ImageContext", "KaleError", "KfpSession",
           "KfpTarget", "LiveValue", "LoadedValue", "LocalTarget", "MAXIMIZE", "MINIMIZE",
           "NotebookSession", "Parameter", "PipelineSettings", "Plan", "RegisteredVersion",
           "RunHistory", "RunHooks", "RunRecord", "RunStatus", "RunTarget", "STEP_MIME",
           "Schedule", "ScheduleInfo", "SearchSpace", "StepRun", "Submission", "Sweep", "Trial",
           "WatchOptions", "cancel_remote", "check", "chosen_docker_options", "coerce_arguments",
           "compare_runs", "compile_notebook", "connect", "convert", "default_output_dir",
           "delete_schedule", "describe", "did_you_mean", "docker_options", "grammar_help",
           "list_schedules", "live_values", "load_step", "locate_notebook", "model_versions",
           "notebook_image", "panel_notices", "parse_annotation", "parse_param",
           "parse_pipeline_settings", "plan_sweep", "read_plan", "remote_status", "run",
           "run_docker", "run_history", "run_local", "run_roots", "split_args", "submit", "sweep",
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


def panel_notices(namespace: Mapping[str, Any]) -> list[str]:
    """Why the deploy panel may not render in the front end showing this kernel, each with its
    fix: VS Code with ipywidgets 8.1.9 (see :mod:`kale_magics.session.front_end`)."""
    return front_end.widget_notices(namespace, front_end.installed_ipywidgets())


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
    hooks = hooks or RunHooks()
    typed = run_arguments(compiled.plan, arguments or {})
    extra, messages = registry_arguments(compiled.plan, target.name)
    for message in messages:
        hooks.run_hook("on_message", message)
    return target.run(compiled, {**typed, **extra}, hooks)


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
    extra, _ = registry_arguments(compiled.plan, "kfp")
    return remote.submit(session, compiled, {**run_arguments(compiled.plan, arguments or {}), **extra},
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
    return kfp_target.cancel(session, run_id, wait_s, plan, hooks, interval_s)


def list_schedules(session: KfpSession, experiment: str | None = None) -> list[ScheduleInfo]:
    """The recurring runs on the server (in the session's namespace, or one experiment)."""
    if experiment is None:
        return remote.list_schedules(session)
    experiment_id = remote.find_experiment(session, experiment)
    return remote.list_schedules(session, experiment_id) if experiment_id else []


def delete_schedule(session: KfpSession, recurring_run_id: str) -> None:
    """Delete a recurring run; the runs it already started stay."""
    remote.delete_schedule(session, recurring_run_id)


# -- a notebook's runs ------------------------------------------------------------------------

def run_roots(notebook: str | os.PathLike[str], pipeline_roots: Sequence[str] = ()) -> list[str]:
    """Where a notebook's local runs are: ``pipeline_roots`` (``--pipeline-root`` of earlier
    runs), then ``.kale/local_runs`` and ``.kale/container_runs`` next to it (the defaults), then
    the trials of its local sweeps (``.kale/sweeps/<pipeline>-<time>/trial-NNN``)."""
    out = default_output_dir(notebook)
    return [*pipeline_roots, os.path.join(out, "local_runs"), os.path.join(out, "container_runs"),
            *sweep_targets.trial_roots(out)]


def run_history(notebook: str | os.PathLike[str], *, pipeline_roots: Sequence[str] = (),
                server: KfpSession | None = None) -> RunHistory:
    """The notebook's runs, newest first: the local runs recorded under :func:`run_roots` and,
    with ``server``, the KFP server's runs of the notebook's pipeline (see
    :mod:`kale_magics.runner.history`), with the metric values ML Metadata holds for those
    that ended. A server that cannot list them, or a notebook that does not read (the server's
    runs are found by its pipeline's name), or ML Metadata that cannot be read adds a note
    instead; nothing is raised.
    """
    runs = history.local_runs(run_roots(notebook, pipeline_roots), str(notebook))
    notes: list[str] = []
    if server is not None:
        try:
            plan = read_plan(notebook)
            remote, note = history.with_remote_metrics(mlmd.reader_of(server), plan,
                                                       history.remote_runs(server, plan))
            runs += remote
            notes += [note] if note else []
        except KaleError as error:
            notes.append(f"runs on {server.connection.host} not listed: {error}")
    return RunHistory(tuple(sorted(runs, key=lambda r: r.start, reverse=True)), tuple(notes))


def compare_runs(first: RunRecord, second: RunRecord) -> list[ComparedValue]:
    """State, duration, parameters and metrics of two runs side by side (``differs`` marks
    the values that are not equal)."""
    return history.compare(first, second)


def load_step(notebook: str | os.PathLike[str], step: str, names: Sequence[str],
              namespace: MutableMapping[str, Any], *, run_id: str | None = None,
              pipeline_roots: Sequence[str] = ()) -> list[LoadedValue]:
    """Bind a local run's saved values of ``step`` in ``namespace`` (the user namespace): its
    outputs when it succeeded, its inputs when it failed, or only ``names``; from run
    ``run_id`` (a local run's id, or a part only it holds), default the latest.

    Raises
    ------
    RunError
        No recorded local run, an unknown run, step or variable, or a value that cannot be
        loaded; one line naming it and what there is.
    """
    roots = run_roots(notebook, pipeline_roots)
    runs = history.local_runs(roots, str(notebook))
    where = f"under {' or '.join(dict.fromkeys(os.path.relpath(r) for r in roots))}"
    return history.load_values(history.find_run(runs, run_id, where), step, names, namespace)
# -- the Model Registry -------------------------------------------------------------------------

def model_versions(notebook: str | os.PathLike[str], registry: str | None = None,
                   token: str | None = None) -> tuple[str, list[RegisteredVersion]]:
    """``(registry address, versions)``: every registered version of the models the notebook's
    steps ``--register``, oldest first per model.

    The address is ``registry``, else the notebook's ``--model-registry``, ``$MODEL_REGISTRY_URL``
    or the config file (:func:`kale_magics.runner.registry.resolve_registry`); the token is
    ``token``, else ``$MODEL_REGISTRY_TOKEN``.

    Raises
    ------
    KaleError
        The notebook does not read, registers no model, names no registry anywhere, or the
        registry cannot be reached or refuses.
    """
    plan = read_plan(notebook)
    models = registered_models(plan)
    if not models:
        raise KaleError(f"{os.path.basename(os.fspath(notebook))} registers no model; add "
                        "--register VAR[:NAME] to the %%kale step that makes it")
    found = resolve_registry(plan.settings, registry)
    if found is None:
        raise KaleError("no Model Registry address given: pass --model-registry URL, add it to "
                        "%kale pipeline, or set $MODEL_REGISTRY_URL")
    return found[0], list_versions(found[0], models, token)


# -- a notebook-server image --------------------------------------------------------------------

def notebook_image(output_dir: str | os.PathLike[str], base: str | None = None,
                   from_pypi: bool = False) -> ImageContext:
    """Write the Dockerfile and build context of a Kubeflow notebook-server image with
    kale-magics (see :mod:`kale_magics.codegen.image`).

    Raises
    ------
    KaleError
        A bad ``base``, an unwritable folder, or the kale-magics wheel cannot be built.
    """
    return write_image_context(output_dir, base, from_pypi)


# -- parameter sweeps ---------------------------------------------------------------------------

def plan_sweep(compiled: CompiledPipeline, specs: Sequence[str], *, metric: str, goal: str,
               random: int | None = None, seed: int | None = None,
               where: str = "locally") -> Sweep:
    """The trials of a sweep of ``compiled``, checked before anything runs: every combination
    of the values in ``specs`` (``["N=10,50", "CRITERION=gini,entropy"]``), or with ``random``
    that many random picks (ranges ``NAME=lo:hi`` and ``NAME=lo:hi:log`` allowed), the same for
    the same ``seed`` (default: a new seed, recorded in ``Sweep.seed``).

    See :mod:`kale_magics.runner.search_space` for the value syntax.

    Raises
    ------
    KaleError
        An unknown parameter or metric, a value not of the parameter's declared type, a range
        without ``random``, or ``goal`` neither :data:`MAXIMIZE` nor :data:`MINIMIZE`.
    """
    space = parse_space(compiled.plan.parameters, specs)
    if random is None:
        return _plan_trials(compiled.plan, space.grid(), metric, goal, None, where)
    seed = secrets.randbelow(2**32) if seed is None else seed
    return _plan_trials(compiled.plan, space.sample(random, seed), metric, goal, seed, where)


def sweep(notebook_or_compiled: str | os.PathLike[str] | CompiledPipeline, specs: Sequence[str],
          *, metric: str, goal: str, random: int | None = None, seed: int | None = None,
          parallel: int = 1, host: str | None = None, session: KfpSession | None = None,
          experiment: str | None = None, pipeline_root: str | None = None,
          output_dir: str | None = None, enable_caching: bool | None = None,
          watch: WatchOptions | None = None,
          on_change: Callable[[Sweep], Any] | None = None,
          on_plan: Callable[[Sweep], Any] | None = None,
          halt: threading.Event | None = None) -> Sweep:
    """Run one pipeline run per trial of a sweep (see :func:`plan_sweep`), compiled once, at most
    ``parallel`` at once, locally or on the KFP server at ``host`` (or of ``session``).

    A local trial runs in its own child process into ``<root>/trial-NNN`` (``pipeline_root``,
    default ``.kale/sweeps/<pipeline>-<time>``); a remote trial is one KFP run. A failed trial
    does not stop the others. ``on_plan`` is called once the trials are planned and checked,
    ``on_change`` (in this thread) as trials change; setting ``halt`` (from another thread)
    cancels the running trials and ends the sweep, the trials not started CANCELED.

    Returns
    -------
    Sweep
        Every trial ended; ``Sweep.best`` is the best SUCCEEDED trial by ``metric`` (None when no
        trial has a value; a remote trial's values are read from ML Metadata through the KFP
        UI's host, ``Trial.metrics_note`` says why when that failed).

    Raises
    ------
    KaleError
        The notebook does not compile, a spec, the metric or an option is wrong, or the server
        cannot be reached; all before any trial runs.
    """
    compiled = _compiled(notebook_or_compiled, output_dir)
    remote_run = host is not None or session is not None
    plan = plan_sweep(compiled, specs, metric=metric, goal=goal, random=random, seed=seed,
                      where=(session.connection.host if session else host) if remote_run
                      else "locally")
    if parallel < 1:
        raise KaleError(f"--parallel {parallel}: give how many trials may run at once, 1 or more")
    stamp = sweep_targets.sweep_stamp()
    if remote_run:
        session = session or connect(host, settings=compiled.plan.settings)
        sweep_targets.prepare_remote(session, compiled, experiment, enable_caching)
        targets = sweep_targets.remote_trials(session, compiled, stamp, experiment=experiment,
                                              enable_caching=enable_caching,
                                              pipeline_root=pipeline_root,
                                              watch_options=watch or WatchOptions())
    else:
        targets = sweep_targets.local_trials(sweep_targets.sweep_root(compiled, pipeline_root, stamp))
    if on_plan is not None:
        on_plan(plan)
    return run_sweep(plan, compiled, targets, parallel, on_change, halt)
