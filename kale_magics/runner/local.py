"""Run a compiled pipeline on this machine with ``kfp.local`` (no cluster).

The compiled IR YAML is what runs, with changes that only make sense
locally, applied to a copy (:func:`local_ir`):

- KFP's ``pip install`` preamble is removed from every executor command, so a
  local run never installs into the user's environment (``kfp.local`` with
  ``SubprocessRunner(use_venv=False)`` would otherwise ``pip install kfp`` and
  every ``packages_to_install`` into the current environment, about 0.3 s per
  step even when nothing changes);
- steps run in the notebook's folder (``KALE_MAGICS_WORKDIR``), as the notebook does;
- each step's command asks the run's step server for its process (a fork of one process that
  imported KFP's executor and the notebook's leading imports once, ``runner.prefork``), and
  runs KFP's executor itself where there is no server;
- steps bypass the cache from ``--from STEP`` on (see ``runner.local_cache``);
- a pipeline named like one of its steps is renamed, or KFP would load it as
  that one step.

Step states come from the step runtime's own channel (``runtime.channel``): a
folder under the pipeline root, ``logs/<pipeline>-<time>/``, named to the steps
in ``$KALE_MAGICS_CHANNEL``, holding the events file and each step's whole log
(``<step>.log``). The output ``kfp.local`` streams is never parsed for events;
it only prompts a look at the events file. In memory a run keeps the end of
each step's log (:data:`LOG_TAIL_LINES` lines, read from the file when the step
ends) and of kfp.local's own output, so a step printing gigabytes costs disk,
not memory.
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import copy
import datetime
import importlib.machinery
import importlib.util
import io
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import warnings
from importlib import metadata
from typing import Any, Iterator, Mapping, TextIO

from kale_magics.codegen.cell_code import python_sources
from kale_magics.codegen.compile import CompiledPipeline, dump_ir, read_ir
from kale_magics.codegen.embedding import RUNTIME_COMPONENT
from kale_magics.codegen.packages import sure_imports
from kale_magics.codegen.settings import local_noops
from kale_magics.errors import RunError
from kale_magics.model import Plan, requirement_name
from kale_magics.redaction import redact_urls
from kale_magics.runner import history, local_cache, prefork
from kale_magics.runner.local_dag import ordered_dag
from kale_magics.runner.process_env import environment_variables
from kale_magics.runner.status import (FAILED, PENDING, RUNNING, SKIPPED, SUCCEEDED, RunHooks,
                                      RunStatus, StepStatus)
from kale_magics.runtime.channel import CHANNEL_ENV, EVENTS_FILE, log_path
from kale_magics.runtime.step import WORKDIR_ENV

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
#: The executor of the step runtime's task (``codegen.embedding``), as KFP names it.
RUNTIME_EXECUTOR = "exec-" + RUNTIME_COMPONENT.replace("_", "-")
#: Lines of each step's log kept in memory (the whole log is in its file).
LOG_TAIL_LINES = 200
#: Bytes read from the end of a step's log file for its tail.
LOG_TAIL_BYTES = 64 * 1024
#: Characters of one line kept in memory; longer lines are cut.
LINE_LIMIT = 4096


def local_ir(ir: dict[str, Any], env: Mapping[str, str], installs: bool = False) -> dict[str, Any]:
    """Return a copy of the IR for a local run: no pip installs, extra environment variables,
    and (unless ``installs``) each step started through the step server's client
    (``runner.prefork``), but the runtime task (it imports nothing of the notebook's, so it
    runs unforked at once, while the server imports).

    Parameters
    ----------
    ir:
        The compiled pipeline (the YAML document as a dict).
    env:
        Environment variables to set in every step.
    installs:
        Keep KFP's ``pip install`` preamble (a container run, where it installs
        into the step's own container as in a pod).
    """
    local = copy.deepcopy(ir)
    local["pipelineInfo"]["name"] = _unambiguous_name(local)
    for name, executor in local.get("deploymentSpec", {}).get("executors", {}).items():
        container = executor.get("container")
        if not container:
            continue
        command = container.get("command", [])
        # KFP's lightweight component: ["sh", "-c", "<pip install ...> && "$0" "$@"", "sh", "-ec", ...]
        if not installs and command[:2] == ["sh", "-c"] and "pip install" in command[2] \
                and command[3:4] == ["sh"]:
            container["command"] = command = command[3:]
        if not installs and command[:2] == ["sh", "-ec"] and name != RUNTIME_EXECUTOR:
            container["command"] = [*command[:2], prefork.client_command(command[2]),
                                    *command[3:]]
        container["env"] = [*container.get("env", []),
                            *({"name": k, "value": v} for k, v in sorted(env.items()))]
    return local


def _unambiguous_name(ir: dict[str, Any]) -> str:
    """The pipeline's name, made different from every component's.

    KFP loads a YAML whose pipeline is named like one of its components
    (``comp-<name>``) as that single component, so a notebook ``train.ipynb``
    with a step ``train`` would run one step only (``kfp.dsl.structures.
    ComponentSpec.from_ir_dicts``).
    """
    name = ir["pipelineInfo"]["name"]
    while "comp-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") in ir.get("components", {}):
        name += "-pipeline"
    return name


class LineSink(io.TextIOBase):
    """A stand-in for stdout that hands each complete line, without ANSI codes and trailing
    blanks, to :meth:`_line` (what kfp.local prints arrives in pieces and coloured). A line
    longer than :data:`LINE_LIMIT` characters is handed on in pieces, so memory stays bounded."""

    def __init__(self) -> None:
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        while len(self._partial) > LINE_LIMIT:
            lines.append(self._partial[:LINE_LIMIT])
            self._partial = self._partial[LINE_LIMIT:]
        for line in lines:
            self._line(ANSI.sub("", line).rstrip())
        return len(text)

    def _line(self, line: str) -> None:
        raise NotImplementedError


class _EventsFile:
    """Reads the events a step runtime appends to a channel's events file, as they come."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def new_events(self) -> list[dict[str, Any]]:
        """The complete events appended since the last call (malformed lines are skipped)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        events = []
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and isinstance(event.get("step"), str):
                events.append(event)
        return events


def log_tail(path: str, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of the log file at ``path`` (at most :data:`LOG_TAIL_BYTES`
    read), decoded as UTF-8 with bad bytes replaced, without ANSI codes and URL passwords,
    each cut to :data:`LINE_LIMIT` characters; ``[]`` when there is no such file."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - LOG_TAIL_BYTES))
            data = f.read()
    except OSError:
        return []
    text = data.decode("utf-8", errors="replace")
    found = text.splitlines()[1:] if size > LOG_TAIL_BYTES else text.splitlines()  # first: partial
    return [redact_urls(ANSI.sub("", line).rstrip()[:LINE_LIMIT]) for line in found[-lines:]]


class _EventSink(LineSink):
    """Stands in for stdout while kfp.local runs: applies the steps' events, keeps the end of
    kfp.local's own output. Every line kfp.local prints prompts a look at the events file."""

    def __init__(self, status: RunStatus, echo: TextIO | None, real_stdout: TextIO,
                 channel: str) -> None:
        super().__init__()
        self.status = status
        self.echo = echo
        self.real_stdout = real_stdout
        self.print = builtins.print  # kfp.local indents builtins.print while a task runs
        self.channel = channel
        self.events = _EventsFile(os.path.join(channel, EVENTS_FILE))
        self.run_log: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self.warnings: list[str] = []
        # the tasks of a dsl.ParallelFor print from kfp.local's threads at once: one reader of
        # the events file at a time, or an event is read twice or lost with its item's state
        self._polling = threading.RLock()

    def _line(self, line: str) -> None:
        if self.echo is not None:
            print(line, file=self.echo)
        if line.strip():
            self.run_log.append(line[4:] if line.startswith("    ") else line)
        self.poll()

    def poll(self) -> None:
        """Apply the events the steps wrote since the last look (``warning`` events are kept
        in :attr:`warnings`); safe to call from several threads at once."""
        with self._polling:
            self._apply(self.events.new_events())

    def _apply(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            if event.get("event") == "warning":
                self.warnings.append(str(event.get("message", "")))
            elif event["step"] in self.status.steps and event.get("event") in (
                    "start", "end", "condition"):
                self._event(event)

    def cached(self, step: str, outputs: dict[str, Any]) -> None:
        """Report ``step`` as done from the cache, with the outputs the cache recorded."""
        with contextlib.redirect_stdout(self.real_stdout), _plain_print(self.print):
            self.status.update_step(step, state=SUCCEEDED, cached=True, duration_s=0.0,
                                    artifacts=outputs["artifacts"], metrics=outputs["metrics"])

    def unfinished(self) -> None:
        """Give each step whose process ended without an ``end`` event its log's tail."""
        for step in self.status.steps.values():
            if step.state == RUNNING:
                path = log_path(self.channel, step.name)
                step.log, step.log_path = log_tail(path), path if os.path.exists(path) else ""

    def _event(self, event: dict[str, Any]) -> None:
        step = event["step"]
        with contextlib.redirect_stdout(self.real_stdout), _plain_print(self.print):
            if event["event"] == "condition":  # the step's --if, evaluated before it runs
                if not event.get("value"):
                    self.status.update_step(step, state=SKIPPED)
                return
            if "item" in event:  # one item of a --for step
                self._item_event(event)
                return
            if event["event"] == "start":
                self.status.update_step(step, state=RUNNING, start=event.get("time"))
                return
            path = log_path(self.channel, step)
            self.status.update_step(
                step, state=SUCCEEDED if event.get("state") == SUCCEEDED else FAILED,
                end=event.get("time"), duration_s=event.get("duration_s"),
                error=str(event.get("error", "")), cell=str(event.get("cell", "")),
                line=event.get("line", 0), artifacts=event.get("outputs", {}),
                metrics=event.get("metrics", {}), log=log_tail(path), log_path=path)


    def _item_event(self, event: dict[str, Any]) -> None:
        """One item of a ``--for`` step started or ended: the step is RUNNING while an item
        runs, FAILED once one failed, SUCCEEDED when every item started so far succeeded."""
        step = self.status.steps[event["step"]]
        items = dict(step.items)
        ended = SUCCEEDED if event.get("state") == SUCCEEDED else FAILED
        items[str(event["item"])] = RUNNING if event["event"] == "start" else ended
        states = set(items.values())
        state = FAILED if FAILED in states else RUNNING if RUNNING in states else SUCCEEDED
        changes: dict[str, Any] = {"items": items, "state": state}
        if step.start is None:
            changes["start"] = event.get("time")
        if event["event"] == "end":
            path = log_path(self.channel, step.name)
            changes.update(end=event.get("time"), log=log_tail(path), log_path=path,
                           duration_s=(event.get("time") or 0) - (step.start or event.get("time") or 0))
            if ended == FAILED:
                changes.update(error=str(event.get("error", "")), cell=str(event.get("cell", "")),
                               line=event.get("line", 0))
        self.status.update_step(step.name, **changes)


@contextlib.contextmanager
def _plain_print(original: Any) -> Iterator[None]:
    """Give hooks the real ``print`` back while kfp.local has replaced it."""
    patched, builtins.print = builtins.print, original
    try:
        yield
    finally:
        builtins.print = patched


def local_notices(compiled: CompiledPipeline,
                  versions: Mapping[str, str | None] | None = None) -> list[str]:
    """What a local run cannot honour: the settings ``kfp.local`` ignores, and package versions
    that differ from the ones installed here (``versions``: :func:`installed_versions`, read
    here when not given).

    Retries, caching options and environment variables are applied locally
    (``kfp.local`` honours them from the IR); resources, images, timeouts,
    secrets, volumes, node selectors and tolerations are not.
    """
    ignored = [f"{step.name} {' '.join(noops)}" for step in compiled.plan.steps
               if (noops := local_noops(step))]
    notices = [f"ignored locally (kfp.local runs every step here, in this Python): "
               f"{'; '.join(ignored)}"] if ignored else []
    versions = installed_versions(compiled) if versions is None else versions
    for step, requirements in compiled.packages.items():
        for requirement in requirements:
            wanted = requirement.partition("==")[2]
            installed = versions[requirement_name(requirement)]
            if wanted and installed and installed != wanted:
                notices.append(f"step {step} wants {requirement}; the local run uses "
                               f"{installed}, installed here")
    return notices


def missing_packages(compiled: CompiledPipeline,
                     versions: Mapping[str, str | None] | None = None) -> dict[str, list[str]]:
    """Requirements of each step that are not installed here (a local run installs nothing);
    ``versions`` as for :func:`local_notices`."""
    versions = installed_versions(compiled) if versions is None else versions
    missing = {step: [r for r in requirements if versions[requirement_name(r)] is None]
               for step, requirements in compiled.packages.items()}
    return {step: reqs for step, reqs in missing.items() if reqs}


def installed_versions(compiled: CompiledPipeline) -> dict[str, str | None]:
    """The installed version of each distribution the steps of ``compiled`` require, by name
    (None: not installed), each read once (``importlib.metadata`` scans ``sys.path``, about
    2 ms a name; the steps of a notebook mostly share their requirements)."""
    names = {requirement_name(r) for reqs in compiled.packages.values() for r in reqs}
    return {name: _installed_version(name) for name in sorted(names)}


def _installed_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _check_packages(compiled: CompiledPipeline,
                    versions: Mapping[str, str | None] | None = None) -> None:
    missing = missing_packages(compiled, versions)
    if missing:
        listed = "; ".join(f"{step}: {', '.join(reqs)}" for step, reqs in missing.items())
        every = sorted({r for reqs in missing.values() for r in reqs})
        raise RunError(f"steps need packages that are not installed here ({listed}); a local run "
                       f"never installs anything: run `pip install {' '.join(every)}` first, or "
                       "run on a cluster")


def missing_modules(plan: Plan, workdir: str) -> dict[str, list[str]]:
    """Modules each step of ``plan`` surely imports (``codegen.packages.sure_imports`` of the
    imports and functions cells and the step's cells) that this Python cannot import, by step
    name, steps without any left out.

    A module is importable when ``importlib.util.find_spec`` finds it here, or when it is a
    module or package in ``workdir`` (a step runs there with it on ``sys.path``, as a kernel
    started in the notebook's folder does). Nothing is imported to decide.
    """
    sources = python_sources((*plan.prelude, *(c for step in plan.steps for c in step.cells)))
    prelude = [m for c in plan.prelude for m in sure_imports(sources[c.index])]
    missing = {}
    for step in plan.steps:
        own = (m for c in step.cells for m in sure_imports(sources[c.index]))
        modules = dict.fromkeys([*prelude, *own])
        absent = [m for m in modules if not _importable(m, workdir)]
        if absent:
            missing[step.name] = absent
    return missing


def _importable(module: str, workdir: str) -> bool:
    if module in sys.stdlib_module_names or module in sys.builtin_module_names:
        return True
    try:
        if importlib.util.find_spec(module) is not None:
            return True
    except (ImportError, ValueError):  # a broken or half-imported module: not ours to judge
        return True
    return importlib.machinery.PathFinder.find_spec(module, [workdir]) is not None


def _check_modules(plan: Plan, workdir: str) -> None:
    missing = missing_modules(plan, workdir)
    if missing:
        listed = "; ".join(f"{step}: {', '.join(modules)}" for step, modules in missing.items())
        every = sorted({m for modules in missing.values() for m in modules})
        raise RunError(f"steps import modules that are not installed here ({listed}); a local run "
                       f"never installs anything: run `pip install {' '.join(every)}` first (a "
                       "package can be named differently from its module), or name the package "
                       "with --packages on the step and run in containers or on a cluster")


def run_local(compiled: CompiledPipeline, arguments: Mapping[str, Any] | None = None,
              pipeline_root: str | None = None, workdir: str | None = None,
              hooks: RunHooks | None = None, echo: TextIO | None = None,
              enable_caching: bool = True, from_step: str | None = None) -> RunStatus:
    """Run ``compiled`` with ``kfp.local.SubprocessRunner(use_venv=False)``.

    Parameters
    ----------
    compiled:
        The compiled pipeline (its YAML is what runs).
    arguments:
        Pipeline parameter values, already typed; missing ones take their defaults.
    pipeline_root:
        Folder for the run's artifacts; default ``<output folder>/local_runs``.
    workdir:
        The steps' working directory; default the notebook's folder.
    hooks:
        Subscribers to the run's status changes.
    echo:
        When given, every line of kfp.local's own output is also written here
        (a step's output goes to its log file, ``StepStatus.log_path``).
    enable_caching:
        Reuse the outputs of steps that did not change since an earlier run
        into the same pipeline root (``kfp.local``'s cache under
        ``<pipeline_root>/.kfp_cache``); steps with ``--no-cache`` always run.
    from_step:
        Run this step and everything downstream even when cached.

    Returns
    -------
    RunStatus
        The final state of the run and of every step. A failed step does not raise.

    Raises
    ------
    RunError
        The compiled YAML cannot be read, a step needs a package that is not
        installed here or imports a module this Python cannot import (nothing is
        installed; the message lists them), or the run's log folder cannot be
        created under the pipeline root.
    """
    versions = installed_versions(compiled)
    _check_packages(compiled, versions)
    plan = compiled.plan
    workdir = os.path.abspath(workdir or os.path.dirname(plan.notebook) or ".")
    _check_modules(plan, workdir)
    root = os.path.abspath(pipeline_root or os.path.join(os.path.dirname(compiled.yaml_path),
                                                         "local_runs"))
    status = plan_status(plan, root, hooks, local_notices(compiled, versions))
    ir, _ = read_ir(compiled)  # the platform spec (kfp-kubernetes) has no local effect
    if from_step is not None:
        ir = local_cache.rerun(ir, local_cache.downstream(plan, from_step))
    env = {WORKDIR_ENV: workdir}
    execute_plan(plan, local_ir(ir, env), dict(arguments or {}), status, echo, enable_caching,
                 step_env=env)
    return status


def plan_status(plan: Plan, pipeline_root: str, hooks: RunHooks | None,
                notices: list[str]) -> RunStatus:
    """A new run's status: every step of ``plan`` PENDING, with its inputs and outputs."""
    return RunStatus(pipeline=plan.name, pipeline_root=pipeline_root, hooks=hooks or RunHooks(),
                     steps={s.name: StepStatus(name=s.name, inputs=[i.name for i in s.inputs],
                                               outputs=list(s.outputs)) for s in plan.steps},
                     notices=notices, metric_order=[m.key for s in plan.steps for m in s.metrics])


def execute_plan(plan: Plan, ir: dict[str, Any], arguments: dict[str, Any], status: RunStatus,
                 echo: TextIO | None, enable_caching: bool, runner: Any = None,
                 step_env: Mapping[str, str] | None = None) -> None:
    """Run the prepared local copy ``ir`` of ``plan`` with ``kfp.local`` into ``status.pipeline_root``
    and follow it into ``status``: steps in plan order, a failed step stopping only the steps
    depending on it (``local_dag.ordered_dag``), a new channel folder (named to the steps in
    ``$KALE_MAGICS_CHANNEL`` while the run lasts), then the warnings of steps taken from the
    cache and those the steps reported, and the run's record
    (:func:`kale_magics.runner.history.write_record`) in the channel folder.

    ``runner`` is the kfp.local runner; default ``SubprocessRunner(use_venv=False)``, whose
    steps are forked from a step server (``runner.prefork``) given ``step_env``, the
    environment variables ``ir`` gives every step.

    Raises
    ------
    RunError
        The channel folder cannot be created.
    """
    channel = _channel_folder(status.pipeline_root, plan.name)
    server = (prefork.step_server(plan, step_env, step_env.get(WORKDIR_ENV, os.getcwd()), channel)
              if runner is None and step_env is not None else contextlib.nullcontext())
    with _run_environment(channel), server:
        step_warnings = _execute(ir, arguments, status.pipeline_root, status, echo, enable_caching,
                                 channel, runner, plan)
    found = [*local_cache.stale_warnings(plan, status), *step_warnings]
    status.warnings.extend(found)
    status.notices.extend(found)  # the panel shows notices
    history.write_record(plan, status, arguments, channel,
                         "local" if runner is None else "containers")


def _channel_folder(root: str, pipeline: str) -> str:
    """A new folder ``<root>/logs/<pipeline>-<local time>`` for the run's events and step logs.

    Raises
    ------
    RunError
        The folder cannot be created.
    """
    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H-%M-%S-%f")
    folder = os.path.join(root, "logs", f"{pipeline}-{stamp}")
    try:
        os.makedirs(folder)
    except OSError as error:
        raise RunError(f"cannot create the run's log folder {folder}: {error.strerror or error}; "
                       "pass another --pipeline-root") from None
    return folder


@contextlib.contextmanager
def _run_environment(channel: str) -> Iterator[None]:
    """Give the steps a private TMPDIR (removed after the run) and the run's channel folder.

    KFP's executor writes each step's program with ``mktemp -d`` and never
    removes it. Both are set in this process's environment (which the step
    processes inherit) for the run only, not in the IR, so they stay out of
    kfp.local's cache keys.
    """
    tmp = tempfile.mkdtemp(prefix="kale-magics-run-")
    try:
        with environment_variables({"TMPDIR": tmp, CHANNEL_ENV: channel}):
            yield
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def pipeline_component(ir: dict[str, Any]) -> Any:
    """The pipeline of the IR document ``ir`` as a callable KFP component, as
    ``kfp.components.load_component_from_text(dump_ir([ir]))`` makes it, without parsing YAML.

    KFP (2.17) parses the text with PyYAML's pure-Python loader twice per run: for the
    component's spec (``ComponentSpec.from_yaml_documents``) and again for the pipeline spec
    kfp.local runs (``YamlComponent.pipeline_spec``), about 0.2 s per run each on a loaded
    machine for 8 steps; from the dict the spec takes 0.01 s. The spec is the same
    (``from_yaml_documents`` calls ``ComponentSpec.from_ir_dicts`` on the parsed documents;
    the description it reads from the text's comments is empty: ``dump_ir`` writes none).
    """
    from google.protobuf import json_format
    from kfp.dsl import structures, yaml_component
    from kfp.pipeline_spec import pipeline_spec_pb2

    class IrComponent(yaml_component.YamlComponent):
        @property
        def pipeline_spec(self) -> pipeline_spec_pb2.PipelineSpec:
            return json_format.ParseDict(ir, pipeline_spec_pb2.PipelineSpec())

    return IrComponent(component_spec=structures.ComponentSpec.from_ir_dicts(ir, {}),
                       component_yaml=dump_ir([ir]))


def _execute(ir: dict[str, Any], arguments: dict[str, Any], root: str, status: RunStatus,
             echo: TextIO | None, enable_caching: bool, channel: str,
             runner: Any = None, plan: Plan | None = None) -> list[str]:
    """Run ``ir`` with kfp.local, updating ``status``; the warnings the steps reported."""
    from kfp import local

    cache_root = os.path.join(root, local_cache.CACHE_FOLDER)
    local.init(runner=runner or local.SubprocessRunner(use_venv=False), pipeline_root=root,
               raise_on_error=False, enable_caching=enable_caching, cache_root=cache_root)
    pipeline = pipeline_component(ir)
    real_stdout = sys.stdout
    sink = _EventSink(status, echo, real_stdout, channel)
    hits = local_cache.CacheHits(list(status.steps), lambda step, key: sink.cached(
        step, local_cache.cached_outputs(cache_root, key)))
    status.hooks.run_hook("on_status", status)
    try:
        with contextlib.redirect_stdout(sink), warnings.catch_warnings(record=True) as caught, \
                local_cache.listening(hits), ordered_dag(list(status.steps)):
            warnings.simplefilter("always")
            pipeline(**arguments)
        sink.run_log.extend(f"warning: {w.message}" for w in caught)
    except Exception as error:  # kfp.local failing outside a step (bad arguments, ...)
        sink.poll()
        sink.unfinished()
        status.finish(FAILED, f"kfp.local failed: {type(error).__name__}: {error}")
        return sink.warnings
    sink.poll()
    sink.unfinished()
    if plan is not None:
        skip_dependents(plan, status)
    failed = any(s.state not in (SUCCEEDED, SKIPPED) for s in status.steps.values())
    error = "" if not failed else _run_error(status, list(sink.run_log))
    status.finish(FAILED if failed else SUCCEEDED, error)
    return sink.warnings


def skip_dependents(plan: Plan, status: RunStatus) -> None:
    """Mark SKIPPED, with the reason, each step that did not start because a step it depends on
    (through data or ``--after``, directly or not) failed: ``upstream step 'b' failed``.

    Steps are visited in plan order (producers first); a step's reason names the failed
    steps upstream of it, in plan order.
    """
    causes: dict[str, list[str]] = {}
    for step in plan.steps:
        found: dict[str, None] = {}
        for upstream in step.upstream:
            state = status.steps[upstream].state if upstream in status.steps else None
            if state == FAILED:
                found[upstream] = None
            found.update(dict.fromkeys(causes.get(upstream, ())))
        causes[step.name] = list(found)
        if found and status.steps[step.name].state == PENDING:
            named = ", ".join(repr(c) for c in sorted(found, key=list(status.steps).index))
            status.update_step(step.name, state=SKIPPED,
                               error=f"upstream step{'s' if len(found) > 1 else ''} {named} failed")


def _run_error(status: RunStatus, run_log: list[str]) -> str:
    failed = status.failed_steps
    if failed:
        step = failed[0]
        return f"step {step.name!r} failed: {step.error}" + (f" ({step.cell}, line {step.line})"
                                                             if step.cell else "")
    tail = "\n".join(line for line in run_log[-15:] if line.strip())
    return f"kfp.local did not run every step; its log ends with:\n{tail}"
