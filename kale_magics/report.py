"""Views of a plan, a run and a check: plain text (CLI, terminal) and HTML (notebooks)."""

from __future__ import annotations

import html
import time
from typing import Mapping

from kale_magics.analysis.live import LiveValue
from kale_magics.analysis.preflight import CheckReport
from kale_magics.dag import dag_svg
from kale_magics.model import Plan
from kale_magics.runner.status import FAILED, RunStatus, StepStatus


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
    lines = [f"pipeline {plan.name} ({len(plan.steps)} steps, {len(plan.parameters)} parameters)"]
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
    return "\n".join(lines)


def step_line(step: StepStatus) -> str:
    """One line for a step's state change: ``train  SUCCEEDED  1.23 s``."""
    line = f"{step.name}  {step.state}"
    if step.cached:
        return f"{line}  (cached)"
    if step.duration_s is not None:
        line += f"  {step.duration_s:.2f} s"
    if step.state == FAILED and step.error:
        line += f"  {step.error}"
    return line


def run_summary(status: RunStatus) -> str:
    """The final summary: state, duration, metrics, failure details and pipeline root."""
    lines = [f"pipeline {status.pipeline} {status.state} in {status.duration_s:.1f} s"]
    for key, value in status.metrics.items():
        lines.append(f"  {key} = {value:.6g}")
    for step in status.failed_steps:
        where = f" ({step.cell}, line {step.line})" if step.cell else ""
        lines.append(f"step {step.name} failed{where}: {step.error}")
        tail = [line for line in step.log_tail(15) if line.strip()]
        lines.extend(f"  | {line}" for line in tail)
    if status.error and not status.failed_steps:
        lines.append(status.error)
    lines.extend(f"warning: {w}" for w in status.warnings)
    lines.append(f"artifacts under {status.pipeline_root}")
    return "\n".join(lines)


# -- rich views for notebooks (HTML), with the same content as the text views --------------

_TABLE = ('<table class="kale-table" style="border-collapse:collapse;font-size:12px">'
          '<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>')
_CELL = '<{tag} style="border:1px solid #ddd;padding:2px 6px;text-align:left">{text}</{tag}>'


def _table(head: list[str], rows: list[list[str]]) -> str:
    """An HTML table; ``rows`` hold already-escaped HTML."""
    head_html = "".join(_CELL.format(tag="th", text=html.escape(h)) for h in head)
    rows_html = "".join("<tr>" + "".join(_CELL.format(tag="td", text=c) for c in row) + "</tr>"
                        for row in rows)
    return _TABLE.format(head=head_html, rows=rows_html)


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


def live_text(name: str, live: Mapping[str, LiveValue]) -> str:
    """``df: DataFrame 891x12, 85.3 KiB`` (or just the name when the kernel has no value)."""
    value = live.get(name)
    if value is None:
        return name
    extra = ", ".join(p for p in (value.shape, size_text(value.size_bytes)) if p)
    return f"{name}: {value.type_name}" + (f" {extra}" if extra else "")


def dag_steps(plan: Plan) -> list[tuple[str, tuple[str, ...]]]:
    """``(name, upstream)`` of every step, for :func:`kale_magics.dag.dag_svg`."""
    return [(s.name, s.upstream) for s in plan.steps]


def plan_html(plan: Plan, live: Mapping[str, LiveValue]) -> str:
    """``%kale show`` in a notebook: the DAG picture and a table of steps."""
    rows = []
    for step in plan.steps:
        inputs = "<br>".join(html.escape(f"{live_text(i.name, live)} ({i.producer})")
                             for i in step.inputs)
        outputs = "<br>".join(html.escape(live_text(n, live)) for n in step.outputs)
        rows.append([f"<b>{html.escape(step.name)}</b>",
                     html.escape(", ".join(c.place.removeprefix("cell ") for c in step.cells)),
                     html.escape(", ".join(step.after)), inputs, outputs,
                     html.escape(", ".join(step.parameters)),
                     html.escape(", ".join(m.key for m in step.metrics))])
    title = html.escape(f"pipeline {plan.name}: {len(plan.steps)} steps, "
                        f"{len(plan.parameters)} parameters")
    return (f"<div class='kale-show'><b>{title}</b><br>{dag_svg(dag_steps(plan))}"
            + _table(["step", "cells", "--after", "inputs (producer)", "outputs", "parameters",
                      "metrics"], rows) + "</div>")


def step_notes(status: RunStatus) -> dict[str, str]:
    """Second line of each step's DAG node: duration, or elapsed time while running."""
    notes = {}
    for step in status.steps.values():
        if step.duration_s is not None:
            notes[step.name] = f"{step.state.lower()} {step.duration_s:.1f} s"
        elif step.state == "RUNNING" and step.start:
            notes[step.name] = f"running {time.time() - step.start:.0f} s"
    return notes


def run_html(status: RunStatus, plan: Plan) -> str:
    """A run's progress in a notebook: the DAG coloured by state, then metrics or the error."""
    states = {name: step.state for name, step in status.steps.items()}
    parts = [f"<b>{html.escape(status.pipeline)}</b> {html.escape(status.state)} "
             f"({status.duration_s:.1f} s)",
             dag_svg(dag_steps(plan), states, step_notes(status))]
    if status.metrics:
        parts.append(_table(["metric", "value"], [[html.escape(k), f"{v:.6g}"]
                                                   for k, v in status.metrics.items()]))
    for step in status.failed_steps:
        where = f" ({step.cell}, line {step.line})" if step.cell else ""
        tail = html.escape("\n".join(step.log_tail(15)))
        parts.append(f"<div style='color:#c62828'>step {html.escape(step.name)} failed"
                     f"{html.escape(where)}: {html.escape(step.error)}</div><pre>{tail}</pre>")
    return "<div class='kale-run'>" + "<br>".join(parts) + "</div>"


def check_text(report: CheckReport) -> str:
    """``%kale check`` as text: one line per passed variable, then warnings."""
    lines = []
    for v in report.variables:
        if v.state == "ok":
            lines.append(f"ok    {v.name:<16} {v.type_name:<20} {v.format:<11} "
                         f"{size_text(v.size_bytes):>10} {v.seconds * 1000:8.1f} ms  ({v.producer})")
        else:
            lines.append(f"{'FAIL' if v.state == 'cannot be passed' else 'skip'}  {v.name:<16} "
                         f"{v.message}")
    lines.extend(f"warning: {w}" for w in report.warnings)
    verdict = "every passed variable serialises" if report.ok else "some variables cannot be passed"
    return "\n".join([*lines, verdict])


def check_html(report: CheckReport) -> str:
    """``%kale check`` in a notebook: a table of passed variables and the warnings in red."""
    rows = [[html.escape(v.name), html.escape(v.producer), html.escape(v.state),
             html.escape(v.type_name), html.escape(v.format), size_text(v.size_bytes),
             f"{v.seconds * 1000:.1f} ms" if v.state == "ok" else html.escape(v.message)]
            for v in report.variables]
    warnings = "".join(f"<div style='color:#c62828'>{html.escape(w)}</div>" for w in report.warnings)
    return _table(["variable", "step", "state", "type", "format", "size", "time / fix"], rows) + warnings
