"""A parameter sweep: one run of the same compiled pipeline per trial, the best trial by a metric.

Katib cannot tune a KFP v2 pipeline (kubeflow/katib#1914), so the sweep runs in KFP (or
locally): the pipeline is compiled once and each trial is one run with its own arguments, at
most ``parallel`` at once, each on its own run target (a local trial in its own child process
and pipeline root; a remote trial a run on the KFP server). A trial that fails, or whose
target cannot start it, is recorded FAILED with its error; the others go on.

Progress is reported to ``on_change`` from the calling thread only (the trials run in worker
threads and post their changes to a queue), so a front end may update a notebook display from
it. The best trial is the SUCCEEDED one with the best finite value of the metric (the first
of equals).
"""

from __future__ import annotations

import math
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Protocol

from kale_magics.codegen.compile import CompiledPipeline
from kale_magics.codegen.parameters import kfp_arguments
from kale_magics.errors import KaleError
from kale_magics.model import Plan
from kale_magics.runner.status import (
    CANCELED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    TERMINAL_STATES,
    RunHooks,
    RunStatus,
)

MAXIMIZE, MINIMIZE = "maximize", "minimize"


class TrialTarget(Protocol):
    """What a trial runs on: a :class:`~kale_magics.targets.target.RunTarget`."""

    def run(self, compiled: CompiledPipeline, arguments: Mapping[str, Any],
            hooks: RunHooks) -> RunStatus: ...

    def cancel(self) -> None: ...

    def close(self) -> None: ...


@dataclass
class Trial:
    """One run of the sweep.

    Attributes
    ----------
    number:
        1-based, in the order the trials were planned.
    arguments:
        The swept parameters' values (typed as declared); the others keep their defaults.
    state:
        PENDING, RUNNING, SUCCEEDED, FAILED or CANCELED.
    metrics:
        Every metric the run's steps logged (empty for a remote run: see ``metrics_note``).
    steps_done, steps:
        Steps finished so far, and the pipeline's step count.
    error:
        Why the trial failed ("" else).
    run_id, url:
        The KFP run of a remote trial ("" for a local one).
    pipeline_root:
        Where the trial's artifacts went.
    start, end:
        Wall-clock times (seconds since the epoch), None until known.
    metrics_note:
        Why ``metrics`` is empty though the run succeeded, else "".
    """

    number: int
    arguments: dict[str, Any]
    state: str = PENDING
    metrics: dict[str, float] = field(default_factory=dict)
    steps_done: int = 0
    steps: int = 0
    error: str = ""
    run_id: str = ""
    url: str = ""
    pipeline_root: str = ""
    start: Optional[float] = None
    end: Optional[float] = None
    metrics_note: str = ""

    @property
    def duration_s(self) -> Optional[float]:
        """Seconds from start to end (or to now while running); None before it starts."""
        return None if self.start is None else (self.end or time.time()) - self.start

    def follow(self, status: RunStatus) -> None:
        """Copy what ``status`` (the trial's run) says so far."""
        self.metrics = dict(status.metrics)
        self.steps = len(status.steps)
        self.steps_done = sum(s.state in TERMINAL_STATES for s in status.steps.values())
        self.run_id, self.url = status.run_id, status.url
        self.pipeline_root = status.pipeline_root or self.pipeline_root
        self.metrics_note = status.metrics_note
        if status.end is None:
            self.state = RUNNING
        else:
            self.state = status.state if status.state in (SUCCEEDED, CANCELED) else FAILED
            self.error, self.end = status.error or _step_error(status), status.end


@dataclass
class Sweep:
    """A sweep's plan and, as it runs, its trials.

    Attributes
    ----------
    pipeline:
        The pipeline's name.
    metric:
        The metric that ranks the trials (a ``%%kale metrics`` line).
    goal:
        :data:`MAXIMIZE` or :data:`MINIMIZE`.
    trials:
        In planned order.
    parameters:
        The swept parameters' names, in the order given.
    seed:
        The seed of random picks (None for a grid): the same seed gives the same trials.
    where:
        ``"locally"`` or the KFP host, for messages.
    """

    pipeline: str
    metric: str
    goal: str
    trials: list[Trial]
    parameters: tuple[str, ...]
    seed: Optional[int] = None
    where: str = "locally"

    @property
    def best(self) -> Optional[Trial]:
        """The SUCCEEDED trial with the best finite metric value (first of equals), or None."""
        scored = [t for t in self.trials if t.state == SUCCEEDED and _finite(t.metrics.get(self.metric))]
        if not scored:
            return None
        sign = 1 if self.goal == MAXIMIZE else -1
        return max(scored, key=lambda t: (sign * t.metrics[self.metric], -t.number))

    @property
    def done(self) -> bool:
        """True when every trial has ended."""
        return all(t.state in TERMINAL_STATES for t in self.trials)

    @property
    def metric_names(self) -> list[str]:
        """Every metric some trial logged, the ranking metric first."""
        names = [self.metric]
        for trial in self.trials:
            names.extend(k for k in trial.metrics if k not in names)
        return names

    def records(self) -> list[dict[str, Any]]:
        """One dict per trial: ``trial``, the swept parameters, ``state``, each metric (None when
        missing), ``best`` (bool), ``duration_s``, ``error``, ``run_id``, ``url``, ``pipeline_root``."""
        best, metrics = self.best, self.metric_names
        return [{"trial": t.number, **{p: t.arguments[p] for p in self.parameters},
                 "state": t.state, **{m: t.metrics.get(m) for m in metrics},
                 "best": t is best, "duration_s": t.duration_s, "error": t.error,
                 "run_id": t.run_id, "url": t.url, "pipeline_root": t.pipeline_root}
                for t in self.trials]

    def table(self) -> tuple[Any, str]:
        """:meth:`records` as a pandas DataFrame indexed by trial, or the list of dicts and a
        note saying pandas is missing (pandas is optional)."""
        try:
            import pandas
        except ImportError:
            return self.records(), ("pandas is not installed: the result is a list of dicts "
                                    "(pip install pandas for a DataFrame)")
        return pandas.DataFrame.from_records(self.records(), index="trial"), ""


def _step_error(status: RunStatus) -> str:
    """``step 'train' failed (nb.ipynb, cell 3, line 2): ValueError: ...`` for the first failed
    step of a run that gives no error of its own (a remote run), else ""."""
    for step in status.failed_steps:
        where = f" ({step.cell}, line {step.line})" if step.cell else ""
        return f"step {step.name!r} failed{where}: {step.error or 'see its log'}"
    return ""


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def plan_sweep(plan: Plan, picks: list[dict[str, Any]], metric: str, goal: str,
               seed: Optional[int] = None, where: str = "locally") -> Sweep:
    """A sweep of ``plan`` with one PENDING trial per pick.

    Raises
    ------
    KaleError
        ``metric`` is not one of the pipeline's ``%%kale metrics``, ``goal`` is neither
        maximize nor minimize, or there are no picks.
    """
    known = [m.key for step in plan.steps for m in step.metrics]
    if metric not in known:
        raise KaleError(f"--metric {metric!r} is not a metric of the pipeline; its metrics "
                        f"(%%kale metrics) are: {', '.join(known) or 'none, add a %%kale metrics cell'}")
    if goal not in (MAXIMIZE, MINIMIZE):
        raise KaleError("say which way the metric is better: --maximize or --minimize")
    if not picks:
        raise KaleError("the sweep has no trials; give at least one value per parameter")
    return Sweep(plan.name, metric, goal, [Trial(i, pick, steps=len(plan.steps))
                                           for i, pick in enumerate(picks, 1)],
                 tuple(picks[0]), seed, where)


def run_sweep(sweep: Sweep, compiled: CompiledPipeline,
              new_target: Callable[[Trial], TrialTarget], parallel: int = 1,
              on_change: Callable[[Sweep], Any] | None = None) -> Sweep:
    """Run every trial of ``sweep``, at most ``parallel`` at once; blocks until all end.

    Parameters
    ----------
    new_target:
        Makes the target of one trial (called in the trial's worker thread).
    on_change:
        Called with ``sweep`` (in this thread) when a trial changes, and once at the end.

    Returns
    -------
    Sweep
        ``sweep``, every trial ended. A trial that failed, or whose target raised, is FAILED.

    Raises
    ------
    KaleError
        ``parallel`` is below 1.
    KeyboardInterrupt
        After canceling the running trials; trials not started are CANCELED.
    """
    if parallel < 1:
        raise KaleError(f"--parallel {parallel}: give how many trials may run at once, 1 or more")
    changes: queue.Queue[Optional[Trial]] = queue.Queue()
    running: dict[int, TrialTarget] = {}
    stop = threading.Event()
    arguments = {t.number: kfp_arguments(compiled.plan, t.arguments) for t in sweep.trials}

    def one(trial: Trial) -> None:
        try:
            if not stop.is_set():
                _run_trial(trial, compiled, arguments[trial.number], new_target, running, changes)
        finally:
            if trial.state not in TERMINAL_STATES:
                trial.state, trial.error = CANCELED, trial.error or "the sweep was stopped"
            changes.put(trial)

    pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="kale-sweep")
    futures = [pool.submit(one, trial) for trial in sweep.trials]
    try:
        while not all(f.done() for f in futures) or not changes.empty():
            try:
                changes.get(timeout=0.5)
                while not changes.empty():  # one update for a burst of changes
                    changes.get_nowait()
            except queue.Empty:
                continue
            _notify(on_change, sweep)
    except BaseException:
        stop.set()
        for target in list(running.values()):
            target.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        for trial in sweep.trials:
            if trial.state not in TERMINAL_STATES:
                trial.state, trial.error = CANCELED, "the sweep was stopped"
        raise
    pool.shutdown(wait=True)
    _notify(on_change, sweep)
    return sweep


def _notify(on_change: Callable[[Sweep], Any] | None, sweep: Sweep) -> None:
    if on_change is not None:
        RunHooks(on_status=on_change).run_hook("on_status", sweep)


def _run_trial(trial: Trial, compiled: CompiledPipeline, arguments: dict[str, Any],
               new_target: Callable[[Trial], TrialTarget], running: dict[int, TrialTarget],
               changes: queue.Queue[Optional[Trial]]) -> None:
    """Run one trial on its own target, recording its state; never raises an Exception."""
    trial.start, trial.state = time.time(), RUNNING
    changes.put(trial)

    def follow(status: RunStatus) -> None:
        trial.follow(status)
        changes.put(trial)

    try:
        target = new_target(trial)
    except Exception as error:  # noqa: BLE001 (a failed trial does not stop the others)
        _failed(trial, error)
        return
    running[trial.number] = target
    try:
        follow(target.run(compiled, arguments, RunHooks(on_status=follow)))
    except Exception as error:  # noqa: BLE001
        _failed(trial, error)
    finally:
        running.pop(trial.number, None)
        target.close()


def _failed(trial: Trial, error: Exception) -> None:
    trial.state, trial.end = FAILED, time.time()
    trial.error = str(error) if isinstance(error, KaleError) else f"{type(error).__name__}: {error}"
