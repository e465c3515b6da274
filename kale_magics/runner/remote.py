"""Submit a compiled pipeline to a KFP server: pipeline, version, experiment, run or schedule.

The flow of :func:`submit`, each step one call through :mod:`.transport`:

1. the pipeline is found by name, or created once (``POST /apis/v2beta1/pipelines``);
2. the IR (with caching switched on or off in every task) gets a content-derived
   version name, ``<pipeline>-<12 hex digits of its SHA-256>``: a version of that
   name is reused, otherwise the IR is uploaded as a new version
   (``POST /apis/v2beta1/pipelines/upload_version``). Resubmitting unchanged code
   therefore adds no version; the SDK version field is left out of the hash;
3. the experiment is found by name (in the namespace) or created;
4. a run of that version is created with the parameter values
   (``POST /apis/v2beta1/runs``), or, with a :class:`Schedule`, a recurring run
   (``POST /apis/v2beta1/recurringruns``).

Creating calls are never retried (see :mod:`.transport`), so a lost answer can
never make two runs.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from kale_magics.codegen.compile import CompiledPipeline, dump_ir, read_ir
from kale_magics.errors import KaleError
from kale_magics.runner.connection import KfpSession, config_path
from kale_magics.model import task_name
from kale_magics.runner.transport import call

DEFAULT_EXPERIMENT = "Default"


@dataclass(frozen=True)
class Schedule:
    """When a recurring run starts runs.

    Attributes
    ----------
    cron:
        Cron expression: 5 fields (minute hour day month weekday) or KFP's 6
        (with seconds first); 5 fields get ``0`` seconds prepended.
    max_concurrency:
        How many of its runs may run at once (KFP accepts 1-10).
    start_time, end_time:
        Timezone-aware datetimes bounding the schedule, or None.
    catchup:
        Whether runs missed while paused are started afterwards.
    """

    cron: str
    max_concurrency: int = 1
    start_time: Optional[datetime.datetime] = None
    end_time: Optional[datetime.datetime] = None
    catchup: bool = False

    def kfp_cron(self) -> str:
        """The cron expression with 6 fields, as KFP's scheduler (robfig/cron) reads it.

        Raises
        ------
        KaleError
            Not 5 or 6 fields, or a concurrency outside 1-10.
        """
        fields = self.cron.split()
        if len(fields) not in (5, 6):
            raise KaleError(f"--schedule {self.cron!r} is not a cron expression: use 5 fields "
                            "(minute hour day month weekday), e.g. --schedule '0 6 * * *' for "
                            "06:00 every day")
        if not 1 <= self.max_concurrency <= 10:
            raise KaleError(f"--max-concurrency {self.max_concurrency} is out of range; KFP "
                            "accepts 1 to 10")
        return " ".join(["0", *fields] if len(fields) == 5 else fields)


@dataclass(frozen=True)
class Submission:
    """What :func:`submit` created or reused on the server.

    Attributes
    ----------
    pipeline, pipeline_id:
        The KFP pipeline (its name is the notebook's pipeline name).
    version_name, version_id, new_version:
        The pipeline version run, and whether this submission uploaded it.
    experiment, experiment_id:
        The experiment the run belongs to.
    run_id, recurring_run_id:
        The run created, or the recurring run for a scheduled submission ("" otherwise).
    url:
        Its page in the KFP UI.
    """

    pipeline: str
    pipeline_id: str
    version_name: str
    version_id: str
    new_version: bool
    experiment: str
    experiment_id: str
    run_id: str = ""
    recurring_run_id: str = ""
    url: str = ""


def package(compiled: CompiledPipeline, enable_caching: Optional[bool]) -> tuple[str, str]:
    """The IR to upload and its content-derived version name.

    Both YAML documents are kept: the PipelineSpec and, when steps use
    kfp-kubernetes settings (timeouts, secrets, volumes, ...), the PlatformSpec.
    ``enable_caching`` None keeps each step's compiled caching option; True or
    False sets it for every task.

    Raises
    ------
    RunError
        The compiled YAML cannot be read.
    """
    ir, platform = read_ir(compiled)
    ir = copy.deepcopy(ir)
    if enable_caching is not None:
        for task in ir.get("root", {}).get("dag", {}).get("tasks", {}).values():
            task.setdefault("cachingOptions", {})["enableCache"] = enable_caching
    hashed = [{k: v for k, v in ir.items() if k != "sdkVersion"}, platform]
    digest = hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()
    text = dump_ir([ir, platform] if platform else [ir])
    return text, f"{compiled.plan.name}-{digest[:12]}"


def _equals(key: str, value: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": key, "stringValue": value}]})


def _find_id(session: KfpSession, what: str, name: str, list_call: Any, kind: str,
             **kwargs: Any) -> Optional[str]:
    """The id of the first ``kind`` (``"pipeline"``: its ``pipelines`` listed, ``pipeline_id``)
    that ``list_call`` lists with display name ``name``, or None. The server filters by name;
    the names are compared again here."""
    found = call(session.connection, f"looking up {what} {name!r}", list_call,
                 filter=_equals("display_name", name), page_size=100, **kwargs)
    items = getattr(found, f"{kind}s") or []
    ids = [getattr(item, f"{kind}_id") for item in items if item.display_name == name]
    return ids[0] if ids else None


def _namespaced(session: KfpSession) -> dict[str, str]:
    namespace = session.connection.namespace
    return {"namespace": namespace} if namespace else {}


def find_pipeline(session: KfpSession, name: str) -> Optional[str]:
    """The id of the pipeline called ``name``, or None."""
    return _find_id(session, "pipeline", name, session.client.pipelines.pipeline_service_list_pipelines,
                    "pipeline", **_namespaced(session))


def find_version(session: KfpSession, pipeline_id: str, version_name: str) -> Optional[str]:
    """The id of the pipeline's version called ``version_name``, or None."""
    return _find_id(session, "version", version_name,
                    session.client.pipelines.pipeline_service_list_pipeline_versions,
                    "pipeline_version", pipeline_id=pipeline_id)


def upload(session: KfpSession, compiled: CompiledPipeline,
           enable_caching: Optional[bool] = None) -> tuple[str, str, str, bool]:
    """Make sure the server has this exact pipeline version.

    Returns
    -------
    tuple
        ``(pipeline_id, version_id, version_name, uploaded)``; ``uploaded`` is
        False when an identical version already existed.

    Raises
    ------
    RunError, KfpConnectionError, KfpAuthError
    """
    import kfp_server_api

    conn, plan = session.connection, compiled.plan
    text, version_name = package(compiled, enable_caching)
    pipeline_id = find_pipeline(session, plan.name)
    if pipeline_id is None:
        body = kfp_server_api.V2beta1Pipeline(display_name=plan.name, description=plan.settings.description,
                                              namespace=conn.namespace or None)
        pipeline_id = call(conn, f"creating pipeline {plan.name!r}",
                           session.client.pipelines.pipeline_service_create_pipeline,
                           body, idempotent=False).pipeline_id
    version_id = find_version(session, pipeline_id, version_name)
    if version_id is not None:
        return pipeline_id, version_id, version_name, False
    with tempfile.TemporaryDirectory(prefix="kale-magics-upload-") as folder:
        path = os.path.join(folder, f"{plan.name}.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        version = call(conn, f"uploading version {version_name!r} of pipeline {plan.name!r}",
                       session.client.pipeline_uploads.upload_pipeline_version, path,
                       name=version_name, pipelineid=pipeline_id, idempotent=False)
    return pipeline_id, version.pipeline_version_id, version_name, True


def find_experiment(session: KfpSession, name: str) -> Optional[str]:
    """The id of experiment ``name`` in the session's namespace, or None."""
    return _find_id(session, "experiment", name,
                    session.client.experiments.experiment_service_list_experiments,
                    "experiment", **_namespaced(session))


def ensure_experiment(session: KfpSession, name: str) -> str:
    """The id of experiment ``name`` in the session's namespace, created when missing."""
    import kfp_server_api

    found = find_experiment(session, name)
    if found is not None:
        return found
    conn, api = session.connection, session.client.experiments
    body = kfp_server_api.V2beta1Experiment(display_name=name, namespace=conn.namespace or None)
    return call(conn, f"creating experiment {name!r}", api.experiment_service_create_experiment,
                body, idempotent=False).experiment_id


def require_namespace(session: KfpSession, doing: str) -> None:
    """Refuse, before anything is created, to work on a multi-user server without a namespace.

    In multi-user mode (healthz ``multi_user``) experiments need a namespace (HTTP 400
    without, ``server/experiment_server.go``) and a pipeline without one is shared, which
    only KFP's admins may write (HTTP 403, ``server/pipeline_server.go``).

    Raises
    ------
    KaleError
        Multi-user server and no namespace from ``--namespace``, ``$KF_PIPELINES_NAMESPACE``,
        the config file or the pod's namespace file.
    """
    if session.multi_user and not session.connection.namespace:
        raise KaleError(f"KFP at {session.connection.host} is multi-user, so {doing} needs your "
                        "namespace (your Kubeflow profile, e.g. kubeflow-user-example-com): pass "
                        "--namespace NS, set $KF_PIPELINES_NAMESPACE or put {\"namespace\": NS} in "
                        f"{config_path()}; nothing was created")


def check_task_names(compiled: CompiledPipeline) -> None:
    """Refuse a pipeline KFP's Argo backend cannot run: a step named like another step's driver.

    KFP runs task ``x`` as the Argo tasks ``x-driver`` and ``x``
    (``v2/compiler/argocompiler/container.go``), so a step ``x_driver`` (task ``x-driver``)
    beside a step ``x`` gives the root DAG two tasks of one name.

    Raises
    ------
    KaleError
        Naming both steps and the fix, before anything is created.
    """
    steps = {task_name(step.name): step.name for step in compiled.plan.steps}
    for task, step in steps.items():
        other = steps.get(task[:-len("-driver")]) if task.endswith("-driver") else None
        if other is not None:
            raise KaleError(f"step {step!r} cannot run beside step {other!r} on KFP: KFP runs step "
                            f"{other!r} with a driver task named {task!r}, which is also step {step!r}'s "
                            f"task name; rename step {step!r} (for example to {step[:-7] + '_setup'!r})")


def _runtime_config(arguments: Mapping[str, Any], pipeline_root: Optional[str]) -> Any:
    import kfp_server_api

    return kfp_server_api.V2beta1RuntimeConfig(parameters=dict(arguments), pipeline_root=pipeline_root)


def create_run(session: KfpSession, ids: tuple[str, str, str], run_name: str,
               arguments: Mapping[str, Any], pipeline_root: Optional[str] = None) -> str:
    """Create one run of version ``ids = (pipeline_id, version_id, experiment_id)``; return its id.

    Never retried: a lost answer raises KfpConnectionError saying to check before resubmitting.
    """
    import kfp_server_api

    pipeline_id, version_id, experiment_id = ids
    body = kfp_server_api.V2beta1Run(
        experiment_id=experiment_id, display_name=run_name,
        pipeline_version_reference=kfp_server_api.V2beta1PipelineVersionReference(
            pipeline_id=pipeline_id, pipeline_version_id=version_id),
        runtime_config=_runtime_config(arguments, pipeline_root))
    run = call(session.connection, f"creating run {run_name!r}",
               session.client.runs.run_service_create_run, body, idempotent=False)
    return run.run_id


def create_schedule(session: KfpSession, ids: tuple[str, str, str], name: str,
                    arguments: Mapping[str, Any], schedule: Schedule,
                    pipeline_root: Optional[str] = None) -> str:
    """Create a recurring run of version ``ids`` on ``schedule``; return its id."""
    import kfp_server_api

    pipeline_id, version_id, experiment_id = ids
    trigger = kfp_server_api.V2beta1Trigger(cron_schedule=kfp_server_api.V2beta1CronSchedule(
        cron=schedule.kfp_cron(), start_time=schedule.start_time, end_time=schedule.end_time))
    body = kfp_server_api.V2beta1RecurringRun(
        display_name=name, experiment_id=experiment_id, mode="ENABLE", trigger=trigger,
        max_concurrency=str(schedule.max_concurrency), no_catchup=not schedule.catchup,
        pipeline_version_reference=kfp_server_api.V2beta1PipelineVersionReference(
            pipeline_id=pipeline_id, pipeline_version_id=version_id),
        runtime_config=_runtime_config(arguments, pipeline_root))
    created = call(session.connection, f"creating recurring run {name!r}",
                   session.client.recurring_runs.recurring_run_service_create_recurring_run,
                   body, idempotent=False)
    return created.recurring_run_id


def submit(session: KfpSession, compiled: CompiledPipeline, arguments: Mapping[str, Any], *,
           experiment: Optional[str] = None, run_name: Optional[str] = None,
           enable_caching: Optional[bool] = None, schedule: Optional[Schedule] = None,
           pipeline_root: Optional[str] = None) -> Submission:
    """Upload (when changed) and run ``compiled``, or schedule it.

    Parameters
    ----------
    arguments:
        Parameter values as KFP takes them (:func:`~kale_magics.codegen.parameters.kfp_arguments`).
    experiment:
        Experiment name; default the notebook's ``--experiment``, else ``Default``.
    run_name:
        Display name of the run or recurring run; default ``<pipeline> <UTC time>``.
    enable_caching:
        None keeps each step's caching option (``--cache``/``--no-cache``, on by
        default); True or False sets it for every task.
    schedule:
        Create a recurring run instead of one run.
    pipeline_root:
        Where the run's artifacts go (e.g. ``minio://mlpipeline/v2/artifacts``);
        default the server's.

    Raises
    ------
    KaleError
        A multi-user server and no namespace (:func:`require_namespace`), step names KFP
        cannot run (:func:`check_task_names`) or a bad schedule, before anything is created.
    RunError, KfpConnectionError, KfpAuthError
        From the server, with its reason (an upload's error text included).
    """
    require_namespace(session, "submitting a run")
    check_task_names(compiled)
    if schedule is not None:
        schedule.kfp_cron()  # validate before anything is uploaded
    conn, plan = session.connection, compiled.plan
    pipeline_id, version_id, version_name, uploaded = upload(session, compiled, enable_caching)
    experiment = experiment or plan.settings.experiment or DEFAULT_EXPERIMENT
    experiment_id = ensure_experiment(session, experiment)
    ids = (pipeline_id, version_id, experiment_id)
    name = run_name or f"{plan.name} {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M:%S}"
    common = dict(pipeline=plan.name, pipeline_id=pipeline_id, version_name=version_name,
                  version_id=version_id, new_version=uploaded, experiment=experiment,
                  experiment_id=experiment_id)
    if schedule is not None:
        recurring_id = create_schedule(session, ids, name, arguments, schedule, pipeline_root)
        return Submission(**common, recurring_run_id=recurring_id, url=conn.schedule_url(recurring_id))
    run_id = create_run(session, ids, name, arguments, pipeline_root)
    return Submission(**common, run_id=run_id, url=conn.run_url(run_id))


@dataclass(frozen=True)
class ScheduleInfo:
    """A recurring run as ``kale-magics schedules`` lists it."""

    recurring_run_id: str
    name: str
    cron: str
    status: str
    max_concurrency: str
    experiment_id: str
    url: str


def list_schedules(session: KfpSession, experiment_id: Optional[str] = None) -> list[ScheduleInfo]:
    """The recurring runs in the session's namespace (or one experiment), up to 200."""
    if not experiment_id:
        require_namespace(session, "listing recurring runs")
    conn, api = session.connection, session.client.recurring_runs
    kwargs: dict[str, Any] = {"experiment_id": experiment_id} if experiment_id else {}
    if conn.namespace and not experiment_id:
        kwargs["namespace"] = conn.namespace
    found = call(conn, "listing recurring runs", api.recurring_run_service_list_recurring_runs,
                 page_size=200, **kwargs)
    return [ScheduleInfo(recurring_run_id=r.recurring_run_id, name=r.display_name or "",
                         cron=(r.trigger.cron_schedule.cron if r.trigger and r.trigger.cron_schedule
                               else f"every {r.trigger.periodic_schedule.interval_second} s"
                               if r.trigger and r.trigger.periodic_schedule else ""),
                         status=str(r.status or ""), max_concurrency=str(r.max_concurrency or ""),
                         experiment_id=r.experiment_id or "", url=conn.schedule_url(r.recurring_run_id))
            for r in found.recurring_runs or []]


def delete_schedule(session: KfpSession, recurring_run_id: str) -> None:
    """Delete a recurring run (runs it already started are kept)."""
    call(session.connection, f"deleting recurring run {recurring_run_id}",
         session.client.recurring_runs.recurring_run_service_delete_recurring_run,
         recurring_run_id=recurring_run_id)


def terminate(session: KfpSession, run_id: str) -> None:
    """Ask the server to terminate a run (retried through outages).

    KFP sets the run CANCELING and stops its Argo workflow; the run then ends FAILED. A run
    that has finished or is already terminating gets HTTP 400 "Row not found"
    (``storage/run_store.go`` TerminateRun), raised as RunError, which
    :func:`kale_magics.runner.watch.cancel` expects.
    """
    call(session.connection, f"terminating run {run_id}",
         session.client.runs.run_service_terminate_run, run_id=run_id)
