"""A notebook's runs: the record each local run leaves, the runs a KFP server lists, and
bringing a step's saved values back into a namespace.

Each local run (kfp.local, also in containers) writes :data:`RECORD_FILE` into its channel
folder ``<pipeline root>/logs/<pipeline>-<time>/`` (:func:`write_record`) when it ends: the
notebook, state, start and end, parameter values, metrics, and per step its state and the
artifact folders of its outputs and inputs. The run's id is the folder's name. Runs made
before run records existed have no record and are not listed.

Remote runs are the KFP server's runs of the pipeline named like the notebook's
(``run_service_list_runs``, as ``kfp.Client.list_runs`` calls it, kept when their
``pipeline_version_reference`` names that pipeline). KFP's REST API does not report metric
values; :func:`with_remote_metrics` reads those of the runs that ended from ML Metadata
(:mod:`kale_magics.runner.mlmd`), as the KFP UI does.

Issue 20 items 9 and 10; Kale users asked for run history in kubeflow/kale issue 855, and Kale
brought a step back into the kernel with Rok snapshots.
"""

from __future__ import annotations

import copy
import dataclasses
import glob
import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, MutableMapping, Sequence

from kale_magics.atomic import write_text_atomic
from kale_magics.codegen.parameters import JSON_TYPES
from kale_magics.errors import RunError
from kale_magics.model import Plan
from kale_magics.runner.status import SUCCEEDED, TERMINAL_STATES, RunStatus
from kale_magics.runtime import marshal
from kale_magics.runtime.step import unescape_text

#: The run record's file name in the run's channel folder.
RECORD_FILE = "run.json"
#: Version of the run record's JSON shape.
RECORD_VERSION = 1
#: Runs listed at most (newest first).
MAX_RUNS = 100


@dataclass(frozen=True)
class StepRecord:
    """One step of a recorded run.

    Attributes
    ----------
    name, state:
        The step and its final V2beta1RuntimeState name.
    duration_s:
        Seconds the step took (None when it did not run; 0.0 from the cache).
    cached:
        True when its outputs came from kfp.local's cache.
    error:
        ``"ZeroDivisionError: division by zero"`` for a failed step, else "".
    outputs:
        Variable -> artifact folder of what the step saved (variables later steps read).
    types:
        Variable -> ``module.qualname`` of the saved value's type.
    inputs:
        Variable -> ``(producer step, artifact folder)`` of what the step received.
    parameters:
        The pipeline parameters the step reads (their values are the run's).
    """

    name: str
    state: str
    duration_s: float | None = None
    cached: bool = False
    error: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, tuple[str, str]] = field(default_factory=dict)
    parameters: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunRecord:
    """One run of a notebook's pipeline, local or remote.

    Attributes
    ----------
    run_id:
        A local run's folder name (``wine-2026-12-02-11-46-08-123456``) or the KFP run id.
    pipeline, notebook:
        Pipeline name and the notebook's absolute path ("" for a remote run).
    where:
        ``"local"``, ``"containers"`` or ``"kfp"``.
    state:
        Final (or, for a remote run, current) V2beta1RuntimeState name.
    start, end:
        Seconds since the epoch (``end`` None while running).
    parameters:
        Parameter name -> value as the notebook writes it (lists and dicts decoded).
    metrics:
        Metric name -> value, in the notebook's order (a remote run's read from ML Metadata,
        empty when they could not be).
    steps:
        The steps in plan order (empty for remote runs).
    error:
        Why the run failed, else "".
    url:
        The KFP UI link of a remote run, else "".
    folder:
        A local run's channel folder (logs, events, this record), else "".
    """

    run_id: str
    pipeline: str
    where: str
    state: str
    start: float
    end: float | None = None
    notebook: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    steps: tuple[StepRecord, ...] = ()
    error: str = ""
    url: str = ""
    folder: str = ""

    @property
    def duration_s(self) -> float | None:
        """Seconds from start to end, None while running."""
        return None if self.end is None else max(0.0, self.end - self.start)

    def step(self, name: str) -> StepRecord:
        """The step called ``name``.

        Raises
        ------
        RunError
            The run has no such step; the message lists its steps.
        """
        for step in self.steps:
            if step.name == name:
                return step
        known = ", ".join(s.name for s in self.steps) or "none recorded"
        raise RunError(f"run {self.run_id} has no step {name!r}; its steps are: {known}")


# -- writing ----------------------------------------------------------------------------------

def _plain_parameters(plan: Plan, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """Every parameter's value in the run (defaults for those not given), as the notebook
    writes it: lists and dicts decoded from KFP's JSON text, escaped text unescaped."""
    values = {}
    for parameter in plan.parameters:
        value = arguments.get(parameter.name, parameter.value)
        if parameter.type in JSON_TYPES and isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        values[parameter.name] = unescape_text(value)
    return values


def record_of(plan: Plan, status: RunStatus, arguments: Mapping[str, Any], folder: str,
              where: str) -> RunRecord:
    """The record of a finished local run of ``plan`` whose channel folder is ``folder``."""
    steps = []
    for step in plan.steps:
        done = status.steps[step.name]
        outputs = {name: str(a.get("path", "")) for name, a in done.artifacts.items()}
        inputs = {}
        for item in step.inputs:
            produced = status.steps.get(item.producer)
            path = produced.artifacts.get(item.name, {}).get("path") if produced else None
            if path:
                inputs[item.name] = (item.producer, str(path))
        types = {n: str(a.get("python_type", "")) for n, a in done.artifacts.items()}
        steps.append(StepRecord(step.name, done.state, done.duration_s, done.cached, done.error,
                                outputs, types, inputs, tuple(step.parameters)))
    return RunRecord(run_id=os.path.basename(folder), pipeline=plan.name, where=where,
                     state=status.state, start=status.start, end=status.end,
                     notebook=os.path.abspath(plan.notebook) if plan.notebook else "",
                     parameters=_plain_parameters(plan, arguments), metrics=status.metrics,
                     steps=tuple(steps), error=status.error, folder=folder)


def _to_json(record: RunRecord) -> dict[str, Any]:
    steps = {s.name: {"state": s.state, "duration_s": s.duration_s, "cached": s.cached,
                      "error": s.error, "outputs": s.outputs, "types": s.types,
                      "inputs": {n: {"producer": p, "path": path}
                                 for n, (p, path) in s.inputs.items()},
                      "parameters": list(s.parameters)}
             for s in record.steps}
    return {"version": RECORD_VERSION, "run_id": record.run_id, "pipeline": record.pipeline,
            "notebook": record.notebook, "where": record.where, "state": record.state,
            "start": record.start, "end": record.end, "error": record.error,
            "parameters": record.parameters, "metrics": record.metrics, "steps": steps}


def write_record(plan: Plan, status: RunStatus, arguments: Mapping[str, Any], folder: str,
                 where: str = "local") -> None:
    """Write the run's record as ``<folder>/run.json``; a folder that cannot be written is
    skipped (the run's result does not depend on it)."""
    record = record_of(plan, status, arguments, folder, where)
    try:
        write_text_atomic(os.path.join(folder, RECORD_FILE),
                          json.dumps(_to_json(record), default=repr, indent=1))
    except OSError:
        pass


# -- reading ----------------------------------------------------------------------------------

def _step_from_json(name: str, data: Mapping[str, Any]) -> StepRecord:
    inputs = {n: (i["producer"], i["path"]) for n, i in (data.get("inputs") or {}).items()}
    return StepRecord(name, data["state"], data.get("duration_s"), bool(data.get("cached")),
                      data.get("error", ""), dict(data.get("outputs") or {}),
                      dict(data.get("types") or {}), inputs,
                      tuple(data.get("parameters") or ()))


def _from_json(data: Mapping[str, Any], folder: str) -> RunRecord:
    steps = tuple(_step_from_json(name, s) for name, s in data["steps"].items())
    return RunRecord(run_id=data["run_id"], pipeline=data["pipeline"], where=data["where"],
                     state=data["state"], start=float(data["start"]), end=data.get("end"),
                     notebook=data.get("notebook", ""), parameters=dict(data["parameters"]),
                     metrics=dict(data["metrics"]), steps=steps, error=data.get("error", ""),
                     folder=folder)


def local_runs(roots: Sequence[str], notebook: str | None = None) -> list[RunRecord]:
    """The recorded runs under the pipeline roots ``roots``, newest first (at most
    :data:`MAX_RUNS`), only those of ``notebook`` (an .ipynb path) when given. Unreadable
    or foreign records are skipped."""
    wanted = os.path.abspath(notebook) if notebook else None
    found: dict[str, RunRecord] = {}
    for root in dict.fromkeys(os.path.abspath(r) for r in roots):
        for path in glob.glob(os.path.join(glob.escape(root), "logs", "*", RECORD_FILE)):
            try:
                with open(path, encoding="utf-8") as f:
                    data = json.load(f)
                record = _from_json(data, os.path.dirname(path))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue
            if data.get("version") == RECORD_VERSION and wanted in (None, record.notebook):
                found[record.folder] = record
    return sorted(found.values(), key=lambda r: r.start, reverse=True)[:MAX_RUNS]


def find_run(runs: Sequence[RunRecord], run_id: str | None, where: str) -> RunRecord:
    """The run ``run_id`` names among ``runs`` (newest first): the whole id or a part only it
    holds; the newest for None.

    Raises
    ------
    RunError
        No runs, no run matches, or several do; ``where`` says where runs were looked for.
    """
    if not runs:
        raise RunError(f"no recorded run of this notebook {where}; run it first "
                       "(`%kale run`, or Run in the panel)")
    if run_id is None:
        return runs[0]
    exact = [r for r in runs if r.run_id == run_id]
    matches = exact or [r for r in runs if run_id in r.run_id]
    if len(matches) == 1:
        return matches[0]
    listed = ", ".join(r.run_id for r in (matches or runs)[:5])
    if matches:
        raise RunError(f"run {run_id!r} matches {len(matches)} runs ({listed}, ...); give more of "
                       "its id")
    raise RunError(f"no run {run_id!r} of this notebook {where}; the latest are: {listed} "
                   "(`%kale runs` lists them)")


# -- remote -----------------------------------------------------------------------------------

def remote_runs(session: Any, plan: Plan, limit: int = MAX_RUNS) -> list[RunRecord]:
    """The KFP server's runs of the pipeline named ``plan.name``, newest first.

    ``session`` is a :class:`~kale_magics.runner.connection.KfpSession`. Runs are listed in
    its namespace (``run_service_list_runs``, newest first, up to ``limit``) and kept when
    their ``pipeline_version_reference.pipeline_id`` is that pipeline's; parameter values
    are decoded as in :func:`record_of`.

    Raises
    ------
    KfpConnectionError, KfpAuthError, RunError
    """
    from kale_magics.runner import remote
    from kale_magics.runner.task_map import seconds
    from kale_magics.runner.transport import call

    pipeline_id = remote.find_pipeline(session, plan.name)
    if pipeline_id is None:
        return []
    conn = session.connection
    kwargs: dict[str, Any] = {"namespace": conn.namespace} if conn.namespace else {}
    found = call(conn, f"listing runs of pipeline {plan.name!r}",
                 session.client.runs.run_service_list_runs, page_size=limit,
                 sort_by="created_at desc", **kwargs)
    records = []
    for run in found.runs or []:
        reference = run.pipeline_version_reference
        if reference is None or reference.pipeline_id != pipeline_id:
            continue
        config = run.runtime_config.parameters if run.runtime_config else None
        start = seconds(run.created_at) or 0.0
        records.append(RunRecord(
            run_id=run.run_id, pipeline=plan.name, where="kfp", state=str(run.state or "PENDING"),
            start=start, end=seconds(run.finished_at),
            parameters=_plain_parameters(plan, config or {}),
            error=str(getattr(run.error, "message", "") or "") if run.error else "",
            url=conn.run_url(run.run_id)))
    return sorted(records, key=lambda r: r.start, reverse=True)


def with_remote_metrics(reader: Any, plan: Plan,
                        records: Sequence[RunRecord]) -> tuple[list[RunRecord], str]:
    """``records`` (a KFP server's runs, :func:`remote_runs`), each that ended with the metric
    values ML Metadata holds for it (in the notebook's order), and why they could not be read
    ("" when they were): after the first failure no other run is asked.

    ``reader`` is the session's :class:`~kale_magics.runner.mlmd.MetricsReader`
    (:func:`~kale_magics.runner.mlmd.reader_of`), whose lasting failures the session's runs
    share; each run read costs four or five gRPC-Web calls
    (:meth:`~kale_magics.runner.mlmd.MlmdClient.run_metrics`). Never raises.
    """
    from kale_magics.runner import mlmd

    note, found = "", []
    order = [m.key for step in plan.steps for m in step.metrics]
    for record in records:
        if note or record.state not in TERMINAL_STATES:
            found.append(record)
            continue
        try:
            per_task = reader.read(record.run_id)
        except mlmd.MlmdUnavailable as error:
            note = str(error)
            found.append(record)
            continue
        values = {k: v for step in mlmd.step_metrics(per_task, plan).values() for k, v in step.items()}
        found.append(dataclasses.replace(record, metrics={
            **{k: values[k] for k in order if k in values}, **values}))
    return found, note


# -- comparing --------------------------------------------------------------------------------

@dataclass(frozen=True)
class ComparedValue:
    """One row of two runs side by side: ``kind`` ("run", "parameter", "metric"), ``name``,
    each run's value (None: the run has none) and whether they differ."""

    kind: str
    name: str
    first: Any
    second: Any

    @property
    def differs(self) -> bool:
        """True when the two values are not equal (a missing one differs from any); durations
        always differ a little, so they are never marked."""
        return self.name != "duration_s" and self.first != self.second


def compare(first: RunRecord, second: RunRecord) -> list[ComparedValue]:
    """State, duration, every parameter and every metric of two runs side by side
    (names in ``first``'s order, then those only ``second`` has)."""
    rows = [ComparedValue("run", "state", first.state, second.state),
            ComparedValue("run", "duration_s", first.duration_s, second.duration_s)]
    for kind, a, b in (("parameter", first.parameters, second.parameters),
                       ("metric", first.metrics, second.metrics)):
        rows.extend(ComparedValue(kind, name, a.get(name), b.get(name))
                    for name in dict.fromkeys([*a, *b]))
    return rows


# -- loading ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoadedValue:
    """A value :func:`load_values` bound: its name, type, the step and run it came from,
    and whether it was the step's ``"output"``, ``"input"`` (then ``producer`` made it) or
    ``"parameter"`` (the run's value)."""

    name: str
    type_name: str
    step: str
    run_id: str
    role: str
    producer: str


def _loadable(record: RunRecord, step: StepRecord) -> dict[str, tuple[str, str, str]]:
    """Variable -> (role, producer, folder): a succeeded step's outputs, then what it received,
    its inputs and (role ``"parameter"``, no folder) the parameters it reads, each sorted."""
    found = {n: ("output", step.name, p) for n, p in sorted(step.outputs.items())}
    if step.state != SUCCEEDED:  # a failed step's outputs are not saved; its inputs are
        found = {}
    for name, (producer, path) in sorted(step.inputs.items()):
        found.setdefault(name, ("input", producer, path))
    for name in sorted(step.parameters):
        if name in record.parameters:
            found.setdefault(name, ("parameter", "", ""))
    return found


def _type_name(value: Any) -> str:
    """The type of ``value`` as people write it: ``pandas.DataFrame``, ``int``, ``Model``."""
    cls = type(value)
    module = cls.__module__.split(".")[0]
    if module in ("builtins", "__main__"):
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"


def _chosen(step: StepRecord, loadable: Mapping[str, tuple[str, str, str]],
            names: Sequence[str], run_id: str) -> list[str]:
    """``names``, each checked; by default a succeeded step's outputs (for a last step, what it
    received), a failed or skipped step's inputs and parameters.

    Raises
    ------
    RunError
        A name the step neither saved nor received, or nothing to load.
    """
    if not loadable:
        what = ("passes nothing on and received nothing" if step.state == SUCCEEDED
                else f"was {step.state} and received nothing")
        raise RunError(f"step {step.name!r} of run {run_id} {what}: there is nothing to load")
    unknown = [n for n in names if n not in loadable]
    if unknown:
        kind = ("saved or received" if step.state == SUCCEEDED
                else f"received (it was {step.state})")
        raise RunError(f"step {step.name!r} of run {run_id} {kind} no "
                       f"{', '.join(f'`{n}`' for n in unknown)}; it has: {', '.join(loadable)}")
    if names:
        return list(names)
    outputs = [n for n, (role, _, _) in loadable.items() if role == "output"]
    return outputs if step.state == SUCCEEDED and outputs else list(loadable)


def load_values(record: RunRecord, step_name: str, names: Sequence[str],
                namespace: MutableMapping[str, Any]) -> list[LoadedValue]:
    """Load step ``step_name``'s saved outputs (for a succeeded step), or what it received, its
    inputs and the run's values of the parameters it reads (for a failed or skipped one), or
    only ``names`` among those, into ``namespace``, with the step runtime's marshal code
    (:func:`kale_magics.runtime.marshal.load`); functions and classes the notebook defines
    resolve their globals in ``namespace``, as in a step. Nothing is bound unless every value
    loads.

    Returns
    -------
    list of LoadedValue
        What was bound, in order.

    Raises
    ------
    RunError
        No such step, a name the step neither saved nor received, nothing to load, or an
        artifact that cannot be loaded (missing, removed, a package missing here).
    """
    step = record.step(step_name)
    loadable = _loadable(record, step)
    chosen = _chosen(step, loadable, names, record.run_id)
    globals_of = namespace if isinstance(namespace, dict) else None
    values = {}
    for name in chosen:
        role, _, path = loadable[name]
        if role == "parameter":
            values[name] = copy.deepcopy(record.parameters[name])
            continue
        try:
            values[name] = marshal.load(path, name, globals_of, namespace)
        except marshal.MarshalError as error:
            raise RunError(f"cannot load `{name}` of step {step_name!r} (run {record.run_id}): "
                           f"{error}") from None
    loaded = []
    for name, value in values.items():  # bind only once every value loaded
        namespace[name] = value
        role, producer, _ = loadable[name]
        loaded.append(LoadedValue(name, _type_name(value), step_name, record.run_id, role,
                                  producer))
    return loaded


@dataclass(frozen=True)
class RunHistory:
    """A notebook's runs, newest first, and ``notes`` on what could not be listed (a KFP
    server that did not answer: its one-line error)."""

    runs: tuple[RunRecord, ...]
    notes: tuple[str, ...] = ()

    def find(self, run_id: str | None, where: str = "") -> RunRecord:
        """See :func:`find_run`."""
        return find_run(self.runs, run_id, where)
