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

    @property
    def can_cancel(self) -> bool: ...

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
        Every metric the run's steps logged (a remote run's read from ML Metadata as it ends;
        empty when that failed: see ``metrics_note``).
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
        Why ``metrics`` is empty though the run succeeded (ML Metadata could not be read), else "".
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
              on_change: Callable[[Sweep], Any] | None = None,
              halt: threading.Event | None = None) -> Sweep:
    """Run every trial of ``sweep``, at most ``parallel`` at once; blocks until all end.

    Parameters
    ----------
    new_target:
        Makes the target of one trial (called in the trial's worker thread).
    on_change:
        Called with ``sweep`` (in this thread) when a trial changes, and once at the end.
    halt:
        Set from another thread to stop the sweep: running trials are canceled, the trials
        not started are CANCELED, and the sweep returns.

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
    trials = _TrialPool(compiled, new_target, parallel)
    try:
        trials.start(sweep.trials)
        while trials.wait_for_change(halt):
            _notify(on_change, sweep)
    except BaseException:
        trials.stop(sweep)
        raise
    if halt is not None and halt.is_set():
        trials.stop(sweep)
    trials.close()
    _notify(on_change, sweep)
    return sweep


def _notify(on_change: Callable[[Sweep], Any] | None, sweep: Sweep) -> None:
    if on_change is not None:
        RunHooks(on_status=on_change).run_hook("on_status", sweep)


class _TrialPool:
    """Worker threads running trials, each on its own target, posting changes to a queue."""

    def __init__(self, compiled: CompiledPipeline, new_target: Callable[[Trial], TrialTarget],
                 parallel: int) -> None:
        self.compiled, self.new_target = compiled, new_target
        self.changes: queue.Queue[Trial] = queue.Queue()
        self.running: dict[int, TrialTarget] = {}
        self.stopping = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="kale-sweep")
        self.futures: list[Any] = []

    def start(self, trials: list[Trial]) -> None:
        self.futures = [self.pool.submit(self._one, trial) for trial in trials]

    def wait_for_change(self, halt: threading.Event | None) -> bool:
        """Wait for changes (taking a burst as one); False once every trial ended or ``halt``."""
        while not (halt is not None and halt.is_set()):
            if all(f.done() for f in self.futures) and self.changes.empty():
                return False
            try:
                self.changes.get(timeout=0.2)
                while not self.changes.empty():
                    self.changes.get_nowait()
                return True
            except queue.Empty:
                continue
        return False

    def stop(self, sweep: Sweep) -> None:
        """Cancel the running trials, wait for their threads, mark the rest CANCELED.

        A target can be canceled only once its run has started (a local run's process, a
        submitted remote run: ``can_cancel``), so each running target is canceled as soon as
        it can be, once, until every trial's thread has ended.
        """
        self.stopping.set()
        for future in self.futures:
            future.cancel()  # the trials not started
        canceled: set[int] = set()
        while not all(f.done() for f in self.futures):
            for target in list(self.running.values()):
                if id(target) not in canceled and target.can_cancel:
                    canceled.add(id(target))
                    try:
                        target.cancel()
                    except Exception:  # noqa: BLE001 (the run may have ended meanwhile)
                        pass
            time.sleep(0.1)
        self.pool.shutdown(wait=True)
        for trial in sweep.trials:
            if trial.state not in TERMINAL_STATES:
                trial.state, trial.error = CANCELED, "the sweep was stopped"

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def _one(self, trial: Trial) -> None:
        try:
            if not self.stopping.is_set():
                self._run(trial)
        finally:
            if trial.state not in TERMINAL_STATES:
                trial.state, trial.error = CANCELED, trial.error or "the sweep was stopped"
            self.changes.put(trial)

    def _run(self, trial: Trial) -> None:
        """Run one trial on its own target, recording its state; never raises an Exception."""
        trial.start, trial.state = time.time(), RUNNING
        self.changes.put(trial)

        def follow(status: RunStatus) -> None:
            trial.follow(status)
            self.changes.put(trial)

        try:
            target = self.new_target(trial)
        except Exception as error:  # noqa: BLE001 (a failed trial does not stop the others)
            _failed(trial, error)
            return
        self.running[trial.number] = target
        try:
            if not self.stopping.is_set():  # stopped while the target was made
                arguments = kfp_arguments(self.compiled.plan, trial.arguments)
                follow(target.run(self.compiled, arguments, RunHooks(on_status=follow)))
        except Exception as error:  # noqa: BLE001
            _failed(trial, error)
        finally:
            self.running.pop(trial.number, None)
            target.close()


def _failed(trial: Trial, error: Exception) -> None:
    trial.state, trial.end = FAILED, time.time()
    trial.error = str(error) if isinstance(error, KaleError) else f"{type(error).__name__}: {error}"
