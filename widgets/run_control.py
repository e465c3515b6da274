"""What the panel's buttons do, without widgets: check, compile, run (local or remote), cancel.

Everything goes through :mod:`kale_magics.api`; progress arrives through the
shared status model (:class:`~kale_magics.runner.status.RunHooks`). One run at
a time per panel: :meth:`RunControl.start_run` refuses while a run is active.
Compiling happens in the caller's thread (the kernel's, when a button is
pressed); watching happens in one background thread, so the kernel stays free
for other cells. A local run executes in a child process
(:mod:`kale_widgets.local_worker`); a remote one is polled on the KFP server.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kale_widgets.form import Target
from kale_widgets.local_worker import Job, LocalWorker, run_options

from kale_magics import api
from kale_magics.model import Plan
from kale_magics.notebook.registry import ExecutedCell
from kale_magics.runner.status import SUCCEEDED, RunStatus, StepStatus


@dataclass(frozen=True)
class RunRequest:
    """What Run was pressed with: settings as ``%kale pipeline`` options, arguments, target."""

    options: str
    arguments: Mapping[str, Any]
    target: Target
    caching: bool = True


class RunControl:
    """The panel's actions and the state of its current or last run.

    Parameters
    ----------
    notebook:
        The .ipynb path (read, never written).
    namespace:
        The kernel's user namespace: live values for the check and for artifact types.
    executed:
        Returns the annotated cells the kernel ran (for the check's "save the notebook").
    on_change:
        Called (from any thread) whenever something the panel shows has changed.
    interval_s:
        Seconds between polls of a remote run.
    warm_worker:
        Start the child process of the next local run ahead of time.

    Attributes
    ----------
    status:
        The current or last run's status (None before the first run, and while a
        remote run is being submitted).
    activity:
        What is going on before a status exists ("compiling", "submitting ...").
    error:
        The last failure as one message naming the fix ("" when none).
    started, all_succeeded_at:
        When Run was pressed, and when the last step turned SUCCEEDED (seconds since the epoch).
    """

    def __init__(self, notebook: str, namespace: Mapping[str, Any],
                 executed: Callable[[], Iterable[ExecutedCell]] = tuple,
                 on_change: Callable[[], None] = lambda: None, *, interval_s: float = 1.0,
                 warm_worker: bool = True) -> None:
        self.notebook, self.namespace, self.executed = notebook, namespace, executed
        self.on_change, self.interval_s, self.warm_worker = on_change, interval_s, warm_worker
        self.status: RunStatus | None = None
        self.compiled: api.CompiledPipeline | None = None
        self.activity = ""
        self.error = ""
        self.started: float | None = None
        self.all_succeeded_at: float | None = None
        self.session: Any = None
        self.run_id = ""
        self._lock = threading.Lock()
        self._active = False
        self._thread: threading.Thread | None = None
        self._worker: LocalWorker | None = None
        self._running_worker: LocalWorker | None = None
        if warm_worker:
            self._worker = self._new_worker()

    # -- state ------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """True from pressing Run until the run has ended (or failed to start)."""
        return self._active

    @property
    def can_cancel(self) -> bool:
        """True while a local run's process or a submitted remote run can be stopped."""
        return self.active and (self._running_worker is not None or bool(self.run_id))

    # -- actions ----------------------------------------------------------------------------

    def plan(self, options: str = "") -> Plan:
        """The saved notebook's plan with the panel's settings over the notebook's."""
        return api.read_plan_with_settings(self.notebook, api.parse_pipeline_settings(options))

    def check(self) -> api.CheckReport:
        """The pre-flight check against the kernel's live values."""
        return api.check(self.notebook, self.namespace, self.executed())

    def compile(self, options: str = "") -> api.CompiledPipeline:
        """Compile the saved notebook (artifact types from the live values) to ``.kale/``."""
        overrides = api.parse_pipeline_settings(options)
        plan = api.read_plan_with_settings(self.notebook, overrides)
        types = api.artifact_types(plan, self.namespace)
        self.compiled = api.compile_with_settings(self.notebook, overrides, None, types)
        return self.compiled

    def start_run(self, request: RunRequest) -> bool:
        """Compile now, then run in the background; False (nothing done) while a run is active.

        Raises
        ------
        KaleError
            The notebook does not compile or an argument is wrong (nothing started).
        """
        with self._lock:
            if self._active:
                return False
            self._active = True
            self.activity, self.error, self.status, self.run_id = "compiling", "", None, ""
            self.started, self.all_succeeded_at = time.time(), None
        self._changed()
        try:
            compiled = self.compile(request.options)
            arguments = api.coerce_arguments(compiled.plan, request.arguments)
        except Exception:
            self.activity, self._active = "", False
            raise
        target = self._remote if request.target.remote else self._local
        self.activity = ""
        self._thread = threading.Thread(target=self._guarded, name="kale-panel-run", daemon=True,
                                        args=(target, compiled, arguments, request, True))
        self._thread.start()
        return True

    def cancel(self) -> None:
        """Stop the active run: kill a local run's process, or ask KFP to terminate the run."""
        worker = self._running_worker
        if worker is not None:
            worker.cancel()
        elif self.run_id and self.session is not None:
            threading.Thread(target=self._guarded, name="kale-panel-cancel", daemon=True,
                             args=(self._cancel_remote, self.session, self.run_id, False)).start()

    def wait(self, timeout: float | None = None) -> RunStatus | None:
        """Block until the active run has ended (tests, scripts); return its status."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.status

    def close(self) -> None:
        """Stop the waiting child process of the next local run (and a running one)."""
        for worker in (self._worker, self._running_worker):
            if worker is not None:
                worker.close()
        self._worker = self._running_worker = None

    # -- in the background ------------------------------------------------------------------

    def _guarded(self, action: Callable[..., None], *args: Any) -> None:
        """Run ``action(*args[:-1])``; the last argument says whether it is the run (which
        ends the active state). Errors become :attr:`error`."""
        *args, ends_run = args
        try:
            action(*args)
        except api.KaleError as error:
            self.error = f"{type(error).__name__}: {error}"
        except Exception as error:  # shown in the panel, never as a traceback in the notebook
            self.error = f"unexpected {type(error).__name__}: {error}"
        finally:
            self.activity = ""
            if ends_run:
                self._active = False
            self._changed()

    def _hooks(self) -> api.RunHooks:
        return api.RunHooks(on_status=self._on_status)

    def _on_status(self, status: RunStatus) -> None:
        self.status, self.activity = status, ""
        steps = status.steps.values()
        if self.all_succeeded_at is None and steps and all(s.state == SUCCEEDED for s in steps):
            self.all_succeeded_at = time.time()
        self._changed()

    def _local(self, compiled: api.CompiledPipeline, arguments: dict[str, Any],
               request: RunRequest) -> None:
        worker = self._worker if self._worker is not None and self._worker.process.poll() is None \
            else self._new_worker()
        self._worker, self._running_worker = None, worker
        status = RunStatus(pipeline=compiled.plan.name, hooks=self._hooks(), steps={
            s.name: StepStatus(name=s.name, inputs=[i.name for i in s.inputs],
                               outputs=list(s.outputs)) for s in compiled.plan.steps})
        self._on_status(status)
        try:
            worker.run(Job(compiled, arguments, options=run_options(request.caching)), status)
        finally:
            self._running_worker = None
            worker.close()
            if self.warm_worker:
                self._worker = self._new_worker()
        if status.state != SUCCEEDED:
            self.error = status.error or f"pipeline {status.pipeline} {status.state}"

    def _remote(self, compiled: api.CompiledPipeline, arguments: dict[str, Any],
                request: RunRequest) -> None:
        target = request.target
        self.activity = f"connecting to {target.host or 'the configured KFP host'}"
        self._changed()
        self.session = api.connect(target.host, target.namespace, target.token, target.cookies,
                                   settings=compiled.plan.settings)
        self.activity = "submitting"
        self._changed()
        submission = api.submit(compiled, self.session, arguments,
                                enable_caching=None if request.caching else False)
        self.run_id = submission.run_id
        self.activity = f"submitted run {submission.run_id}; waiting for the server"
        self._changed()
        status = api.watch_remote(self.session, submission.run_id, self._hooks(),
                                  plan=compiled.plan, interval_s=self.interval_s)
        self.status = status
        if status.state != SUCCEEDED:
            self.error = status.error or f"pipeline {status.pipeline} {status.state}"

    def _cancel_remote(self, session: Any, run_id: str) -> None:
        api.cancel_remote(session, run_id, wait_s=0)

    def _new_worker(self) -> LocalWorker:
        return LocalWorker(cwd=os.path.dirname(os.path.abspath(self.notebook)))

    def _changed(self) -> None:
        self.on_change()
