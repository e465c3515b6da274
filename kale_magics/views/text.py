"""Plain-text views of a plan, a run, a check, a sweep and recurring runs (the CLI, terminals, ``text/plain``)."""

from __future__ import annotations

import datetime
from typing import Any, Iterable, Mapping, Optional

from kale_magics.analysis.live import LiveValue
from kale_magics.analysis.preflight import CheckReport
from kale_magics.model import Plan, Step, counted
from kale_magics.runner.registry import RegisteredVersion
from kale_magics.runner.remote import ScheduleInfo
from kale_magics.runner.status import (FAILED, RUNNING, SKIPPED, SUCCEEDED, TERMINAL_STATES,
                                      RunStatus, StepStatus)
from kale_magics.runner.sweep import Sweep, Trial
from kale_magics.session.notebook_session import StepRun

#: How each state reads on a DAG node and in the panel's status line.
STATE_WORDS = {None: "not started", "PENDING": "pending", "RUNNING": "running",
               "SUCCEEDED": "succeeded", "FAILED": "failed", "SKIPPED": "skipped",
               "CANCELING": "canceling", "CANCELED": "canceled", "PAUSED": "paused"}


def duration_text(seconds: float) -> str:
    """``0.4 s``, ``12 s``, ``3 min 5 s``: the one duration format of every view."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest} s"


def size_text(size: int | None) -> str:
    """``1.5 MiB``-style text for a byte count ("" for None)."""
    if size is None:
        return ""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return ""


def clock(seconds: Optional[float]) -> str:
    """``2024-05-01 12:00:03`` in local time, or ``-`` when unknown."""
    if seconds is None:
        return "-"
    return datetime.datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M:%S")


def live_text(name: str, live: Mapping[str, LiveValue]) -> str:
    """``df: DataFrame 891x12, 85.3 KiB`` (or just the name when the kernel has no value)."""
    value = live.get(name)
    if value is None:
        return name
    extra = ", ".join(p for p in (value.shape, size_text(value.size_bytes)) if p)
    return f"{name}: {value.type_name}" + (f" {extra}" if extra else "")


def plan_text(plan: Plan) -> str:
    """The pipeline as the analysis sees it: steps, edges, inputs with producers, outputs.

    Example::

        pipeline wine (4 steps, 2 parameters)
        parameters: N_ESTIMATORS: int = 100, TEST_SIZE: float = 0.3
        step load      cells 4
          -> df
        step train     cells 6, 7   after: load
          <- df (load)   params: N_ESTIMATORS
          -> model
    """
    params = ", ".join(f"{p.name}: {p.type} = {p.value!r}" for p in plan.parameters)
    lines = [f"pipeline {plan.name} ({counted(len(plan.steps), 'step')}, "
             f"{counted(len(plan.parameters), 'parameter')})"]
    if params:
        lines.append(f"parameters: {params}")
    width = max(len(s.name) for s in plan.steps)
    for step in plan.steps:
        cells = ", ".join(c.place.removeprefix("cell ") for c in step.cells)
        head = f"step {step.name:<{width}}  cells {cells}"
        if step.upstream:
            head += f"   after: {', '.join(step.upstream)}"
        lines.append(head)
        reads = [f"{i.name} ({i.producer})" for i in step.inputs]
        if reads or step.parameters:
            params_read = f"   params: {', '.join(step.parameters)}" if step.parameters else ""
            lines.append(f"  <- {', '.join(reads) or '-'}{params_read}")
        if step.outputs:
            lines.append(f"  -> {', '.join(step.outputs)}")
        if step.metrics:
            lines.append(f"  metrics: {', '.join(m.key for m in step.metrics)}")
        control = control_text(step, plan.settings.on_exit == step.name)
        if control:
            lines.append(f"  {control}")
    return "\n".join(lines)


def control_text(step: Step, exit_step: bool) -> str:
    """A step's control flow in words: ``for c in C_VALUES (2 at a time); if acc > 0.9``,
    ``on exit: after every other step``, ``from sub.ipynb``; "" for a plain step."""
    parts = []
    if step.loop is not None:
        cap = f" ({step.loop.parallelism} at a time)" if step.loop.parallelism else ""
        parts.append(f"for {step.loop.variable} in {step.loop.items}{cap}")
    if step.condition is not None:
        parts.append(f"if {step.condition.expression}")
    if exit_step:
        parts.append("on exit: after every other step")
    if step.cells and step.cells[0].notebook:
        parts.append(f"from {step.cells[0].notebook}")
    return "; ".join(parts)


def step_run_text(step: StepRun) -> str:
    """The line under a step cell run in the kernel (``text/plain``): what travels, inputs
    grouped by producer, then the outputs later steps read with those steps::

        step total  <- rows: list len 3 (load)  -> size: int (to report)

    Names the step binds that no step run in this kernel reads are left out.
    """
    by_producer: dict[str, list[str]] = {}
    for name, producer in step.inputs.items():
        by_producer.setdefault(producer, []).append(live_text(name, step.live))
    text = f"step {step.name}"
    if by_producer:
        text += "  <- " + "; ".join(f"{', '.join(v)} ({p})" for p, v in by_producer.items())
    if step.passed:
        text += "  -> " + ", ".join(_passed_text(n, step) for n in step.passed)
    return text


def _passed_text(name: str, step: StepRun) -> str:
    readers = step.readers.get(name, ())
    return live_text(name, step.live) + (f" (to {', '.join(readers)})" if readers else "")


def step_note(step: StepStatus | None, now: float) -> str:
    """A step's state in words with its time: ``running 3.2 s``, ``succeeded 1.2 s``, ``not started``.

    Parameters
    ----------
    step:
        The step's status, or None before any run.
    now:
        The current time (seconds since the epoch), for the elapsed time of a running step.
    """
    if step is None:
        return STATE_WORDS[None]
    if step.items:  # a --for step: its items' states, "3/5 succeeded"
        counts = step.item_counts()
        return ", ".join(f"{counts[state]}/{len(step.items)} "
                         f"{STATE_WORDS.get(state, state.lower())}"
                         for state in (SUCCEEDED, RUNNING, FAILED) if state in counts)
    word = STATE_WORDS.get(step.state, step.state.lower())
    if step.cached:
        return f"{word} (cached)"
    if step.state == RUNNING and step.start:
        return f"{word} {duration_text(max(0.0, now - step.start))}"
    if step.duration_s is not None:
        return f"{word} {duration_text(step.duration_s)}"
    if step.start and step.end and step.state in TERMINAL_STATES:
        return f"{word} {duration_text(step.end - step.start)}"
    return word


def step_line(step: StepStatus) -> str:
    """One line for a step's state change: ``train  SUCCEEDED  1.2 s``; in a container run
    the time its packages took to install comes after: ``train  RUNNING  (installed in 8.1 s)``."""
    line = f"{step.name}  {step.state}"
    if step.cached:
        return f"{line}  (cached)"
    if step.duration_s is not None:
        line += f"  {duration_text(step.duration_s)}"
    if step.install_s is not None:
        line += f"  (installed in {duration_text(step.install_s)})"
    if step.state in (FAILED, SKIPPED) and step.error:
        line += f"  {step.error}"
    return line


def skipped_steps(status: RunStatus) -> list[StepStatus]:
    """The steps that did not run because a step upstream of them failed (those with a reason)."""
    return [s for s in status.steps.values() if s.state == SKIPPED and s.error]


def run_summary(status: RunStatus) -> str:
    """The final summary: state, duration, metrics, failure details and pipeline root."""
    lines = [f"pipeline {status.pipeline} {status.state} in {duration_text(status.duration_s)}",
             *metrics_lines(status)]
    for step in status.failed_steps:
        where = f" ({step.cell}, line {step.line})" if step.cell else ""
        lines.append(f"step {step.name} failed{where}: {step.error}")
        tail = [line for line in step.log_tail(15) if line.strip()]
        lines.extend(f"  | {line}" for line in tail)
    lines.extend(f"step {step.name} skipped: {step.error}" for step in skipped_steps(status))
    if status.error and not status.failed_steps:
        lines.append(status.error)
    lines.extend(f"warning: {w}" for w in status.warnings)
    lines.append(f"artifacts under {status.pipeline_root}")
    return "\n".join(lines)


def metrics_lines(status: RunStatus) -> list[str]:
    """``  key = value`` per metric (notebook order), or, for a run that ended without any,
    ``metrics: <why>`` when the runner said why (a remote run whose ML Metadata could not be
    read); else nothing."""
    if status.metrics:
        return [f"  {key} = {value:.6g}" for key, value in status.metrics.items()]
    if status.metrics_note and status.state in TERMINAL_STATES:
        return [f"metrics: {status.metrics_note}"]
    return []


def status_text(status: RunStatus) -> str:
    """The run's state and one line per step: state, start, end, duration, error.

    Example::

        run 5f0c... wine-classifier: RUNNING  http://kfp/#/runs/details/5f0c...
          step          state      start                end                  duration
          load_data     SUCCEEDED  2024-05-01 12:00:01  2024-05-01 12:00:03  2.1 s
          split_data    RUNNING    2024-05-01 12:00:04  -
    """
    lines = [f"run {status.run_id} {status.pipeline}: {status.state}  {status.url}".rstrip()]
    width = max([len("step"), *(len(name) for name in status.steps)])
    lines.append(f"  {'step':<{width}}  {'state':<10} {'start':<20} {'end':<20} duration")
    for step in status.steps.values():
        duration = duration_text(step.duration_s) if step.duration_s is not None else ""
        lines.append(f"  {step.name:<{width}}  {step.state:<10} {clock(step.start):<20} "
                     f"{clock(step.end):<20} {duration}".rstrip())
        if step.state == FAILED and step.error:
            lines.append(f"  {'':<{width}}  error: {step.error}")
    if status.error and not status.failed_steps:
        lines.append(f"error: {status.error}")
    metrics = metrics_lines(status)
    lines.extend(["metrics:", *metrics] if status.metrics else metrics)
    return "\n".join(lines)


def schedules_text(schedules: Iterable[ScheduleInfo]) -> str:
    """One line per recurring run: id, name, cron, status, max concurrency, link."""
    rows = [f"{s.recurring_run_id}  {s.name}  cron '{s.cron}'  {s.status or '-'}  "
            f"max concurrency {s.max_concurrency or '-'}  {s.url}" for s in schedules]
    return "\n".join(rows) if rows else "no recurring runs"


def check_verdict(report: CheckReport) -> str:
    """The check's verdict in one line."""
    return ("every passed variable serialises" if report.ok
            else "some variables cannot be passed between steps")


def check_text(report: CheckReport) -> str:
    """``%kale check`` as text: one line per passed variable, then warnings and the verdict."""
    lines = []
    for v in report.variables:
        if v.state == "ok":
            lines.append(f"ok    {v.name:<16} {v.type_name:<20} {v.format:<11} "
                         f"{size_text(v.size_bytes):>10} {v.seconds * 1000:8.1f} ms  ({v.producer})")
        else:
            lines.append(f"{'FAIL' if v.state == 'cannot be passed' else 'skip'}  {v.name:<16} "
                         f"{v.message}")
    lines.extend(f"warning: {w}" for w in report.warnings)
    return "\n".join([*lines, check_verdict(report)])


def models_text(registry: str, versions: Iterable[RegisteredVersion]) -> str:
    """The registered versions of a notebook's models as a table, one line per version::

        Model Registry http://mr:8080
        model  version       format         created (UTC)     run
        wine   wine-2026...  sklearn 1.5.2  2026-12-02 11:49  wine-2026... (8b1f...)

    ``registry`` is the registry's address; a model with no version shows no line, and
    no version at all gives one line saying so.
    """
    rows = [(v.model, v.version, f"{v.format} {v.format_version}".strip(),
             datetime.datetime.fromtimestamp(v.created_ms / 1000, datetime.timezone.utc)
             .strftime("%Y-%m-%d %H:%M") if v.created_ms else "",
             f"{v.run_name} ({v.run_id})" if v.run_id else v.run_name, v.uri)
            for v in versions]
    if not rows:
        return f"Model Registry {registry}: no registered version of this notebook's models yet"
    header = ("model", "version", "format", "created (UTC)", "run", "uri")
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1]
             for row in (header, *rows)]
    return "\n".join([f"Model Registry {registry}", *(line.rstrip() for line in lines)])
def value_text(value: Any) -> str:
    """A parameter or metric value in a table cell: ``0.1``, ``'gini'``, ``[1, 2]``, ``-`` for None."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return repr(value)


def trial_state(trial: Trial) -> str:
    """``running 2/3 steps``, ``succeeded 1.6 s``, ``failed 2.0 s``, ``pending``."""
    word = STATE_WORDS.get(trial.state, trial.state.lower())
    if trial.state == RUNNING:
        return f"{word} {trial.steps_done}/{trial.steps or '?'} steps"
    duration = trial.duration_s
    return f"{word} {duration_text(duration)}" if trial.end and duration is not None else word


def sweep_rows(sweep: Sweep) -> tuple[list[str], list[list[str]]]:
    """The sweep table's header and rows (text cells): trial (``*`` marks the best), each swept
    parameter, state, each metric (the ranking one first)."""
    best, metrics = sweep.best, sweep.metric_names
    head = ["trial", *sweep.parameters, "state", *metrics]
    rows = [[f"{'*' if t is best else ' '}{t.number}", *(value_text(t.arguments[p]) for p in
                                                         sweep.parameters),
             trial_state(t), *(value_text(t.metrics.get(m)) for m in metrics)]
            for t in sweep.trials]
    return head, rows


def sweep_heading(sweep: Sweep) -> str:
    """``sweep of tiny: 3 trials locally, best by score (maximize)`` (and the random seed)."""
    seed = f", random picks with --seed {sweep.seed}" if sweep.seed is not None else ""
    return (f"sweep of {sweep.pipeline}: {len(sweep.trials)} trials {sweep.where}, best by "
            f"{sweep.metric} ({sweep.goal}){seed}")


def sweep_outcome(sweep: Sweep) -> list[str]:
    """Lines under the table: the best trial, or why there is none; each failed trial's error."""
    best = sweep.best
    lines = [f"trial {t.number} failed: {t.error}" for t in sweep.trials
             if t.state == FAILED and t.error]
    if best is not None:
        chosen = ", ".join(f"{p}={value_text(best.arguments[p])}" for p in sweep.parameters)
        lines.append(f"best{'' if sweep.done else ' so far'}: trial {best.number} ({chosen}): "
                     f"{sweep.metric} = "
                     f"{value_text(best.metrics[sweep.metric])}")
    elif sweep.done:
        note = next((t.metrics_note for t in sweep.trials if t.metrics_note), "")
        lines.append(f"no best trial: {note}" if note else
                     f"no best trial: no trial succeeded with a value of {sweep.metric}")
    return lines


def trial_line(sweep: Sweep, trial: Trial) -> str:
    """One line for a trial's change: ``trial 2 (X=2): failed 1.7 s  score=-  <error>``."""
    chosen = ", ".join(f"{p}={value_text(trial.arguments[p])}" for p in sweep.parameters)
    line = f"trial {trial.number} ({chosen}): {trial_state(trial)}"
    if trial.metrics:
        line += "  " + ", ".join(f"{k}={value_text(v)}" for k, v in trial.metrics.items())
    if trial.url and trial.state == RUNNING:
        line += f"  {trial.url}"
    if trial.state == FAILED and trial.error:
        line += f"  {trial.error}"
    return line


def sweep_text(sweep: Sweep) -> str:
    """The sweep as a text table (``*`` marks the best trial), then :func:`sweep_outcome`.

    Example::

        sweep of tiny: 3 trials locally, best by score (maximize)
        trial  X  state              score
         1     1  succeeded 1.7 s    12
         2     2  failed 1.7 s       -
        *3     3  succeeded 1.6 s    32
        trial 2 failed: step 'score' failed: ValueError: X=2 is refused (...)
        best: trial 3 (X=3): score = 32
    """
    head, rows = sweep_rows(sweep)
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    table = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in [head, *rows]]
    return "\n".join([sweep_heading(sweep), *table, *sweep_outcome(sweep)])
