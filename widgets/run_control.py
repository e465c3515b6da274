"""What the panel's buttons do, without widgets: check, compile, run (local or remote), cancel.

Everything goes through :mod:`kale_magics.api`: the kernel's
:class:`~kale_magics.api.NotebookSession` for the check, :func:`kale_magics.api.run`
with a run target for runs; progress arrives through the shared status model
(:class:`~kale_magics.api.RunHooks`). One run at a time per panel:
:meth:`RunControl.start_run` refuses while a run is active. Compiling happens in
the caller's thread (the kernel's, when a button is pressed); the run is
followed in one background thread, so the kernel stays free for other cells. A
local run executes in a child process (started ahead of time), a remote one on
the KFP server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kale_widgets.form import TargetChoice

from kale_magics import api


@dataclass(frozen=True)
class RunRequest:
    """What Run was pressed with: settings as ``%kale pipeline`` options, arguments, target."""

    options: str
    arguments: Mapping[str, Any]
    target: TargetChoice
    caching: bool = True


class RunControl:
    """The panel's actions and the state of its current or last run.

    Parameters
    ----------
    session:
        The kernel's session: live values and executed cells for the check; the
        last run is recorded there.
    notebook:
        The .ipynb path (read, never written).
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
    previous:
        True when :attr:`status` is the run before a Run press that started nothing (the
        notebook did not compile, a value was bad): the panel shows it as "previous run"
        beside the new error, not as the new attempt's result and not as "not started".
    started, all_succeeded_at:
        When Run was pressed, and when the last step turned SUCCEEDED (seconds since the epoch).
    """

    def __init__(self, session: api.NotebookSession, notebook: str,
                 on_change: Callable[[], None] = lambda: None, *, interval_s: float = 1.0,
                 warm_worker: bool = True) -> None:
        self.session, self.notebook = session, notebook
        self.on_change, self.interval_s, self.warm_worker = on_change, interval_s, warm_worker
        self.status: api.RunStatus | None = None
        self.compiled: api.CompiledPipeline | None = None
        self.activity = ""
        self.error = ""
        self.previous = False
        self.started: float | None = None
        self.all_succeeded_at: float | None = None
        self._lock = threading.Lock()
        self._active = False
        self._thread: threading.Thread | None = None
        self._target: api.RunTarget | None = None
        self._spare = api.ChildWorker() if warm_worker else None

    # -- state ------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """True from pressing Run until the run has ended (or failed to start)."""
        return self._active

    @property
    def can_cancel(self) -> bool:
        """True while a local run's process or a submitted remote run can be stopped."""
        target = self._target
        return self.active and target is not None and target.can_cancel

    # -- actions ----------------------------------------------------------------------------

    def plan(self, options: str = "") -> api.Plan:
        """The saved notebook's plan with the panel's settings over the notebook's."""
        return api.read_plan(self.notebook, api.parse_pipeline_settings(options))

    def check(self) -> api.CheckReport:
        """The pre-flight check against the kernel's live values."""
        return api.check(self.notebook, self.session)

    def compile(self, options: str = "") -> api.CompiledPipeline:
        """Compile the saved notebook to ``.kale/`` with the panel's settings."""
        overrides = api.parse_pipeline_settings(options)
        self.compiled = api.compile_notebook(self.notebook, None, overrides)
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
            self.activity, self.error, self.started = "compiling", "", time.time()
            self.previous = self.status is not None  # shown as such until the new run starts
        self._changed()
        try:
            compiled = self.compile(request.options)
            api.coerce_arguments(compiled.plan, request.arguments, fields=True)  # nothing starts
            self._target = self._new_target(request)  # bad target options: nothing starts
        except Exception:
            self.activity, self._active = "", False
            raise
        self.activity, self.status, self.previous, self.all_succeeded_at = "", None, False, None
        self._thread = threading.Thread(target=self._guarded, name="kale-panel-run", daemon=True,
                                        args=(self._run, compiled, request.arguments, True))
        self._thread.start()
        return True

    def nothing_started(self) -> None:
        """A Run or Compile press failed before a run could start (the caller's own step, such
        as re-reading the notebook): the last run stays shown, as the previous run."""
        self.previous = self.status is not None

    def cancel(self) -> None:
        """Stop the active run: kill a local run's process, or ask KFP to terminate the run."""
        target = self._target
        if target is not None and target.can_cancel:
            threading.Thread(target=self._guarded, name="kale-panel-cancel", daemon=True,
                             args=(target.cancel, False)).start()

    def wait(self, timeout: float | None = None) -> api.RunStatus | None:
        """Block until the active run has ended (tests, scripts); return its status."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.status

    def close(self) -> None:
        """Stop the waiting child process of the next local run (and a running one)."""
        for closing in (self._spare, self._target):
            if closing is not None:
                closing.close()
        self._spare = self._target = None

    def server(self) -> api.KfpSession | None:
        """The KFP session of the last remote run, else the kernel's (``%kale`` magics'), or None."""
        return getattr(self._target, "session", None) or self.session.server

    def pipeline_roots(self) -> list[str]:
        """The last local run's pipeline root (where its record is), if any."""
        last = self.session.last_run
        return [last.pipeline_root] if last is not None and not last.run_id and \
            last.pipeline_root else []

    # -- in the background ------------------------------------------------------------------

    def _new_target(self, request: RunRequest) -> api.RunTarget:
        """The chosen target; a local or container run takes the child process waiting for it.

        Raises
        ------
        KaleError
            A container option is wrong (a volume map that is not ``PVC=DIR``).
        """
        choice = request.target
        if choice.remote:
            return api.KfpTarget(choice.host, choice.namespace, choice.token, choice.cookies,
                                 enable_caching=None if request.caching else False,
                                 watch_options=api.watch_options(self.interval_s))
        options = (api.docker_options(choice.docker_network, choice.volume_map,
                                      choice.secret_env_file) if choice.containers else None)
        spare, self._spare = self._spare, None
        worker = spare if spare is not None and spare.alive else None
        if options is not None:
            return api.DockerTarget(options=options, enable_caching=request.caching, worker=worker)
        return api.LocalTarget(enable_caching=request.caching, worker=worker)

    def _run(self, compiled: api.CompiledPipeline, arguments: Mapping[str, Any]) -> None:
        assert self._target is not None
        hooks = api.RunHooks(on_status=self._on_status, on_message=self._on_message)
        try:
            status = api.run(compiled, self._target, hooks, arguments=arguments)
        finally:
            if self.warm_worker and self._spare is None:
                self._spare = api.ChildWorker()
        self.status = self.session.last_run = status
        if status.state != "SUCCEEDED":
            self.error = status.error or f"pipeline {status.pipeline} {status.state}"

    def _guarded(self, action: Callable[..., None], *args: Any) -> None:
        """Run ``action(*args[:-1])``; the last argument says whether it is the run (which
        ends the active state). Errors become :attr:`error`."""
        *args, ends_run = args
        try:
            action(*args)
        except api.KaleError as error:
            self.error = str(error)
        except Exception as error:  # shown in the panel, never as a traceback in the notebook
            self.error = f"unexpected {type(error).__name__}: {error}"
        finally:
            self.activity = ""
            if ends_run:
                self._active = False
            self._changed()

    def _on_message(self, text: str) -> None:
        self.activity = text
        self._changed()

    def _on_status(self, status: api.RunStatus) -> None:
        self.status, self.activity = status, ""
        steps = status.steps.values()
        if self.all_succeeded_at is None and steps and all(s.state == "SUCCEEDED" for s in steps):
            self.all_succeeded_at = time.time()
        self._changed()

    def _changed(self) -> None:
        self.on_change()
