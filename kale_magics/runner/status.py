"""The one status model of a pipeline run, shared by local and remote runs.

A runner owns a :class:`RunStatus` and changes it only through
:meth:`RunStatus.update_step` and :meth:`RunStatus.finish`, which call the
subscribed :class:`RunHooks` (the CLI, the magics, the widget). The hook shape
follows nbclient's ``on_cell_*`` hooks: optional callables, each called with
the changed object, an exception in a hook never breaking the run.

States follow KFP's ``V2beta1RuntimeState``: PENDING, RUNNING, SUCCEEDED,
SKIPPED, FAILED, CANCELING, CANCELED, PAUSED.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

from kale_magics.redaction import redact_urls

PENDING, RUNNING, SUCCEEDED, SKIPPED, FAILED = "PENDING", "RUNNING", "SUCCEEDED", "SKIPPED", "FAILED"
CANCELING, CANCELED, PAUSED = "CANCELING", "CANCELED", "PAUSED"
TERMINAL_STATES = frozenset({SUCCEEDED, SKIPPED, FAILED, CANCELED})

log = logging.getLogger(__name__)


@dataclass
class StepStatus:
    """State of one step.

    Attributes
    ----------
    name:
        The step name.
    state:
        A V2beta1RuntimeState name.
    start, end:
        Wall-clock times (seconds since the epoch), None until known.
    duration_s:
        Seconds the step's code, inputs and outputs took, None until done.
    inputs, outputs:
        Variables read from earlier steps and passed on.
    error:
        ``"ZeroDivisionError: division by zero"`` for a failed step, else "".
    cell, line:
        Where the error happened: the cell's filename and line (1-based).
    log:
        The end of the step's log (stdout and stderr, without ANSI codes); a local
        run keeps the whole log in the file ``log_path``.
    log_path:
        The file holding the step's whole log, when the runner keeps one ("" else).
    artifacts:
        Per output variable: format, size and location, as the step saved it.
    metrics:
        Metric values the step logged.
    cached:
        True when the step's outputs came from the cache (it did not run).
    install_s:
        Seconds from the step's container starting to the step's code starting,
        which is installing its ``packages_to_install`` (container runs only, else None);
        not part of :attr:`duration_s`.
    items:
        For a ``--for`` step: the state of each item run so far, by the item's JSON text, in
        the order they started (empty for other steps).
    """

    name: str
    state: str = PENDING
    start: Optional[float] = None
    end: Optional[float] = None
    duration_s: Optional[float] = None
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    error: str = ""
    cell: str = ""
    line: int = 0
    log: list[str] = field(default_factory=list)
    log_path: str = ""
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    cached: bool = False
    install_s: Optional[float] = None
    items: dict[str, str] = field(default_factory=dict)

    def item_counts(self) -> dict[str, int]:
        """How many items of a ``--for`` step are in each state: ``{"SUCCEEDED": 3, ...}``."""
        counts: dict[str, int] = {}
        for state in self.items.values():
            counts[state] = counts.get(state, 0) + 1
        return counts

    def log_tail(self, lines: int = 20) -> list[str]:
        """The last ``lines`` lines of the step's log."""
        return self.log[-lines:]


@dataclass
class RunHooks:
    """Callbacks a front end subscribes to; each is optional.

    Attributes
    ----------
    on_step:
        Called with the :class:`StepStatus` whenever a step changes state.
    on_status:
        Called with the :class:`RunStatus` whenever anything changes.
    on_done:
        Called once with the final :class:`RunStatus`.
    on_message:
        Called with a line for people about what the target is doing before
        the run has steps to report: connecting, submitting, the run's link.
    """

    on_step: Optional[Callable[[StepStatus], Any]] = None
    on_status: Optional[Callable[["RunStatus"], Any]] = None
    on_done: Optional[Callable[["RunStatus"], Any]] = None
    on_message: Optional[Callable[[str], Any]] = None

    def run_hook(self, name: str, *args: Any) -> None:
        """Call hook ``name`` if set; log and swallow its exceptions.

        Text arguments (``on_message`` lines) pass through :func:`redact_urls`
        first, so no target can show a URL's user name or password.
        """
        hook = getattr(self, name)
        if hook is None:
            return
        try:
            hook(*(redact_urls(a) if isinstance(a, str) else a for a in args))
        except Exception:  # a broken subscriber must not break the run
            log.exception("kale-magics hook %s failed", name)


@dataclass
class RunStatus:
    """State of a whole run.

    Attributes
    ----------
    pipeline:
        Pipeline name.
    state:
        A V2beta1RuntimeState name.
    steps:
        Per-step status, in the pipeline's step order.
    pipeline_root:
        Where artifacts are written (a local folder for local runs).
    run_id, url:
        The KFP run's id and UI link for remote runs, else "".
    error:
        Why the run failed, when it failed outside any step.
    notices:
        Things the user should know before the run starts (e.g. settings a
        local run ignores).
    metrics_note:
        Why :attr:`metrics` is empty when the runner cannot read metric values (a remote
        run before it ends, or whose ML Metadata could not be read: KFP's REST API has none,
        :mod:`kale_magics.runner.mlmd`), else "".
    warnings:
        What the run found that may make its results differ from the
        notebook's, e.g. a step taken from the cache whose code reads files.
    metric_order:
        The metric keys in notebook order (the ``%%kale metrics`` lines); :attr:`metrics`
        follows it whichever way the values arrived (a cached step's come back sorted).
    """

    pipeline: str
    state: str = PENDING
    steps: dict[str, StepStatus] = field(default_factory=dict)
    start: float = field(default_factory=time.time)
    end: Optional[float] = None
    pipeline_root: str = ""
    run_id: str = ""
    url: str = ""
    error: str = ""
    hooks: RunHooks = field(default_factory=RunHooks, repr=False, compare=False)
    metrics_note: str = ""
    notices: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    metric_order: list[str] = field(default_factory=list, repr=False)

    @property
    def metrics(self) -> dict[str, float]:
        """All metrics logged by the steps, in :attr:`metric_order` (then any others)."""
        found = {k: v for s in self.steps.values() for k, v in s.metrics.items()}
        return {**{k: found[k] for k in self.metric_order if k in found}, **found}

    @property
    def duration_s(self) -> float:
        """Seconds from start to end (or to now while running)."""
        return (self.end or time.time()) - self.start

    @property
    def failed_steps(self) -> list[StepStatus]:
        """Steps in state FAILED."""
        return [s for s in self.steps.values() if s.state == FAILED]

    def update_step(self, name: str, **changes: Any) -> StepStatus:
        """Change step ``name`` and notify the hooks (an error's URL passwords redacted)."""
        step = self.steps[name]
        if isinstance(changes.get("error"), str):
            changes["error"] = redact_urls(changes["error"])
        for key, value in changes.items():
            setattr(step, key, value)
        if self.state == PENDING:
            self.state = RUNNING
        self.hooks.run_hook("on_step", step)
        self.hooks.run_hook("on_status", self)
        return step

    def set_state(self, state: str, error: str = "") -> None:
        """Change the run's state while it is not finished (e.g. RUNNING, CANCELING); notify on change."""
        error = redact_urls(error)
        if (state, error or self.error) == (self.state, self.error):
            return
        self.state, self.error = state, error or self.error
        self.hooks.run_hook("on_status", self)

    def finish(self, state: str, error: str = "", *, end: Optional[float] = None,
               running_state: str = FAILED) -> None:
        """Mark the run done; steps that never started become SKIPPED.

        Parameters
        ----------
        state, error:
            The run's final state and, for a failure outside any step, why.
        end:
            When the run ended (seconds since the epoch); default now.
        running_state:
            What a step still RUNNING becomes: FAILED (default; its process
            ended without reporting) or e.g. CANCELED for a terminated run.
        """
        for step in self.steps.values():
            if step.state == PENDING:
                step.state = SKIPPED
            elif step.state == RUNNING:
                step.state = running_state
                if running_state == FAILED:
                    step.error = step.error or "the step's process ended without reporting; see its log"
        self.state, self.error, self.end = state, redact_urls(error), end or time.time()
        self.hooks.run_hook("on_status", self)
        self.hooks.run_hook("on_done", self)

    def to_json(self) -> dict[str, Any]:
        """The JSON shape of ``kale-magics run --json``."""
        steps = {n: {k: v for k, v in asdict(s).items() if k not in ("name", "log")}
                 for n, s in self.steps.items()}
        return {"pipeline": self.pipeline, "state": self.state, "steps": steps,
                "metrics": self.metrics, "pipeline_root": self.pipeline_root,
                "duration_s": round(self.duration_s, 3), "run_id": self.run_id,
                "url": self.url, "error": self.error, "metrics_note": self.metrics_note,
                "warnings": self.warnings}
