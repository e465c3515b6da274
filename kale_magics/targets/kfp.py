"""The KFP server target: connect, submit, then follow the run through the one status model."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from kale_magics.codegen.compile import CompiledPipeline
from kale_magics.model import PipelineSettings, Plan, counted
from kale_magics.runner import remote, watch
from kale_magics.runner.connection import KfpSession, open_session, resolve_connection
from kale_magics.runner.mlmd import MetricsReader, reader_of
from kale_magics.runner.status import RunHooks, RunStatus
from kale_magics.runner.transport import RetryPolicy
from kale_magics.targets.target import RunTarget


def connect(host: str | None = None, namespace: str | None = None, token: str | None = None,
            cookies: str | None = None, *, settings: PipelineSettings | None = None,
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


def status_of(session: KfpSession, run_id: str, plan: Plan | None = None,
              hooks: RunHooks | None = None, retry: RetryPolicy = RetryPolicy(), *,
              metrics: MetricsReader | None = None) -> RunStatus:
    """The current state of a run and of each step (one request, no waiting); a run that
    has ended carries its metric values, read from ML Metadata by ``metrics`` (default: the
    session's reader, :func:`~kale_magics.runner.mlmd.reader_of`)."""
    reading = reading_metrics(hooks or RunHooks(), metrics or reader_of(session), plan)
    return watch.start(session, run_id, plan, reading, retry).status


def follow(session: KfpSession, run_id: str, hooks: RunHooks | None = None,
           plan: Plan | None = None, options: watch.WatchOptions = watch.WatchOptions(), *,
           metrics: MetricsReader | None = None) -> RunStatus:
    """Follow a run to its end, calling ``hooks`` as steps change state (see
    :func:`watch.watch_run`); as it ends its metric values are read from ML Metadata by
    ``metrics`` (default: the session's reader), before the final ``on_status``/``on_done``."""
    reading = reading_metrics(hooks or RunHooks(), metrics or reader_of(session), plan)
    return watch.watch_run(watch.start(session, run_id, plan, reading, options.retry), options)


def cancel(session: KfpSession, run_id: str, wait_s: float = 60.0, plan: Plan | None = None,
           hooks: RunHooks | None = None, interval_s: float = 1.0, *,
           metrics: MetricsReader | None = None) -> RunStatus:
    """Terminate a run and wait up to ``wait_s`` seconds for it to end (see
    :func:`watch.cancel`); a run that ended carries the metric values its steps logged, read
    from ML Metadata by ``metrics`` (default: the session's reader)."""
    reading = reading_metrics(hooks or RunHooks(), metrics or reader_of(session), plan)
    return watch.cancel(session, run_id, wait_s, plan, reading, interval_s)


def reading_metrics(hooks: RunHooks, reader: MetricsReader, plan: Plan | None) -> RunHooks:
    """``hooks``, but the run's metric values are read (once, by ``reader``) as it ends, before
    its final ``on_status`` and ``on_done``, so subscribers see them with the end state (or
    the ``metrics_note`` saying why there are none). KFP's REST API has no metric values: they
    are in ML Metadata (:mod:`kale_magics.runner.mlmd`)."""
    read: list[bool] = []

    def on_status(status: RunStatus) -> None:
        if status.end is not None and not read:
            read.append(True)
            reader.fill(status, plan)
        hooks.run_hook("on_status", status)

    return dataclasses.replace(hooks, on_status=on_status)


class KfpTarget(RunTarget):
    """Run on a KFP server: upload the pipeline (a version per distinct IR), start a run, follow it.

    Parameters
    ----------
    host, namespace, token, cookies, connect_timeout_s:
        The connection, as :func:`connect` takes it; unset
        values come from the notebook's ``%kale pipeline`` settings (``settings``
        laid over the compiled plan's), the environment, the config file.
    session:
        An open connection to use instead.
    settings:
        Pipeline settings from the kernel (``%kale pipeline`` lines run there),
        laid over the notebook's for finding the server.
    experiment, run_name, enable_caching, pipeline_root:
        As :func:`kale_magics.runner.remote.submit` takes them.
    watch_options:
        How to follow the run (poll interval, time limit, outage tolerance).
    follow:
        False: return right after the run was created (state as first reported).
    metrics:
        Reads the run's metric values from ML Metadata when it ends (KFP's REST API has none);
        default: the session's reader (:func:`~kale_magics.runner.mlmd.reader_of`), one per
        KFP connection.

    Attributes
    ----------
    session:
        The connection used (set once connected).
    submission:
        Ids and link of the created run (set once submitted).
    """

    name = "kfp"

    def __init__(self, host: str | None = None, namespace: str | None = None,
                 token: str | None = None, cookies: str | None = None, *,
                 connect_timeout_s: float | None = None, session: KfpSession | None = None,
                 settings: PipelineSettings | None = None, experiment: str | None = None,
                 run_name: str | None = None, enable_caching: bool | None = None,
                 pipeline_root: str | None = None,
                 watch_options: watch.WatchOptions = watch.WatchOptions(),
                 follow: bool = True, metrics: MetricsReader | None = None) -> None:
        self.connection_options: dict[str, Any] = dict(
            host=host, namespace=namespace, token=token, cookies=cookies,
            connect_timeout_s=connect_timeout_s)
        self.settings = settings or PipelineSettings()
        self.submit_options: dict[str, Any] = dict(
            experiment=experiment, run_name=run_name, enable_caching=enable_caching,
            pipeline_root=pipeline_root)
        self.watch_options, self.follow, self.metrics = watch_options, follow, metrics
        self.session = session
        self.submission: remote.Submission | None = None

    def connect(self, notebook_settings: PipelineSettings | None = None,
                hooks: RunHooks | None = None) -> KfpSession:
        """The open connection, made on first use (``notebook_settings`` under the kernel's)."""
        if self.session is None:
            host = self.connection_options["host"]
            (hooks or RunHooks()).run_hook(
                "on_message", f"connecting to {host or 'the configured KFP host'}")
            settings = (notebook_settings or PipelineSettings()).merged(self.settings)
            self.session = connect(**self.connection_options, settings=settings)
            if self.session.connection.withheld:  # credentials kept from a host the notebook named
                (hooks or RunHooks()).run_hook("on_message",
                                               f"notice: {self.session.connection.withheld}")
        return self.session

    def run(self, compiled: CompiledPipeline, arguments: Mapping[str, Any],
            hooks: RunHooks) -> RunStatus:
        plan = compiled.plan
        session = self.connect(plan.settings, hooks)
        hooks.run_hook("on_message", f"submitting {plan.name} to {session.connection.host} "
                                     f"({counted(len(plan.steps), 'step')})")
        submission = remote.submit(session, compiled, arguments, **self.submit_options)
        self.submission = submission
        verb = "uploaded new" if submission.new_version else "reusing unchanged"
        hooks.run_hook("on_message", f"pipeline {submission.pipeline}: {verb} version "
                                     f"{submission.version_name}; experiment {submission.experiment}")
        hooks.run_hook("on_message", f"run {submission.run_id}: {submission.url}")
        if not self.follow:
            return status_of(session, submission.run_id, plan, hooks, self.watch_options.retry,
                             metrics=self.metrics)
        return follow(session, submission.run_id, hooks, plan, self.watch_options,
                      metrics=self.metrics)

    @property
    def can_cancel(self) -> bool:
        return self.submission is not None and self.session is not None

    def cancel(self) -> None:
        """Ask the server to terminate the run (without waiting); the watch then reports it
        CANCELED (KFP itself ends a terminated run FAILED, see :func:`watch.cancel`)."""
        if self.submission is not None and self.session is not None:
            watch.cancel(self.session, self.submission.run_id, wait_s=0)
