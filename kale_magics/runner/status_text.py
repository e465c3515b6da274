"""Plain-text views of a remote run for ``kale-magics status`` and ``%kale status``.

Local and remote runs share :func:`kale_magics.report.step_line` and
:func:`kale_magics.report.run_summary` for streamed progress; this module adds
the table of a run's steps with their start and end times, and the listing of
recurring runs.
"""

from __future__ import annotations

import datetime
from typing import Iterable, Optional

from kale_magics.runner.remote import ScheduleInfo
from kale_magics.runner.status import FAILED, RunStatus


def clock(seconds: Optional[float]) -> str:
    """``2024-05-01 12:00:03`` in local time, or ``-`` when unknown."""
    if seconds is None:
        return "-"
    return datetime.datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M:%S")


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
        duration = f"{step.duration_s:.1f} s" if step.duration_s is not None else ""
        lines.append(f"  {step.name:<{width}}  {step.state:<10} {clock(step.start):<20} "
                     f"{clock(step.end):<20} {duration}".rstrip())
        if step.state == FAILED and step.error:
            lines.append(f"  {'':<{width}}  error: {step.error}")
    if status.error and not status.failed_steps:
        lines.append(f"error: {status.error}")
    return "\n".join(lines)


def schedules_text(schedules: Iterable[ScheduleInfo]) -> str:
    """One line per recurring run: id, name, cron, status, max concurrency, link."""
    rows = [f"{s.recurring_run_id}  {s.name}  cron '{s.cron}'  {s.status or '-'}  "
            f"max concurrency {s.max_concurrency or '-'}  {s.url}" for s in schedules]
    return "\n".join(rows) if rows else "no recurring runs"
