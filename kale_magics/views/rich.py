"""HTML views of a plan, a run and a check, for notebooks (``text/html``) and the deploy panel.

Pure functions of plan and status, with the same content as the text views
(:mod:`kale_magics.views.text`, whose wording and duration format they use).
The DAG is :func:`kale_magics.views.dag.dag_svg`, each node's second line the
step's state in words with its elapsed time while running and its duration
when done. Every element the browser test reads has a ``kale-*`` class.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping

from kale_magics.analysis.live import LiveValue
from kale_magics.analysis.preflight import CheckReport
from kale_magics.codegen.compile import CompiledPipeline
from kale_magics.model import Plan, Step, counted
from kale_magics.runner.status import FAILED, SKIPPED, TERMINAL_STATES, RunStatus, StepStatus
from kale_magics.runner.sweep import Sweep
from kale_magics.session.notebook_session import StepRun
from kale_magics.views.dag import Shape, dag_svg
from kale_magics.views.text import (
    check_verdict,
    duration_text,
    live_text,
    size_text,
    skipped_steps,
    step_note,
    sweep_heading,
    sweep_outcome,
    sweep_rows,
)

RED, GREY, GREEN = "#c62828", "#555", "#2e7d32"
_LINK_STYLE = "style='color:#1565c0;text-decoration:underline'"
_TABLE = ('<table class="kale-table" style="border-collapse:collapse;font-size:12px">'
          '<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>')
_CELL = '<{tag} style="border:1px solid #ddd;padding:2px 6px;text-align:left">{text}</{tag}>'


def _table(head: list[str], rows: list[list[str]]) -> str:
    """An HTML table; ``rows`` hold already-escaped HTML."""
    head_html = "".join(_CELL.format(tag="th", text=html.escape(h)) for h in head)
    rows_html = "".join("<tr>" + "".join(_CELL.format(tag="td", text=c) for c in row) + "</tr>"
                        for row in rows)
    return _TABLE.format(head=head_html, rows=rows_html)


_STEP_LINE = ("<div class='kale-step-line' data-step='{step}' style='font-family:var(--jp-ui-font-"
              "family,system-ui,sans-serif);font-size:12px;line-height:1.7;color:#444;"
              "padding:1px 0'>{parts}</div>")
_CHIP = ("<span class='kale-{kind}' data-name='{name}' style='white-space:nowrap;margin-right:"
         "10px'><code style='background:#f3f3f3;border-radius:3px;padding:0 3px'>{name}</code>"
         "{detail}</span>")


def _chip(kind: str, name: str, live: LiveValue | None, link: str) -> str:
    """One variable of the step line: its name, its type (and shape), where it comes from or
    goes; never broken across lines."""
    kind_text = f" {live.type_name}" + (f" {live.shape}" if live.shape else "") if live else ""
    detail = (f"<span style='color:{GREY}'>{html.escape(kind_text)}</span>"
              f"<span style='color:#1565c0'> {html.escape(link)}</span>" if link else
              f"<span style='color:{GREY}'>{html.escape(kind_text)}</span>")
    return _CHIP.format(kind=kind, name=html.escape(name, quote=True), detail=detail)


def step_run_html(step: StepRun) -> str:
    """The line under a step cell run in the kernel (``text/html``): the step's name as a
    badge, then what travels: each input with its type and the step it comes from
    (``df DataFrame 891x12 ← load``), each output a later step reads with the steps that
    read it (``model RandomForestClassifier → evaluate``). Names the step binds that no
    step reads are left out; a variable never wraps in the middle. Same content as
    :func:`kale_magics.views.text.step_run_text`."""
    parts = [f"<span class='kale-step-badge' style='background:#e3f2fd;color:#0d47a1;border-radius"
             f":3px;padding:1px 6px;margin-right:10px;white-space:nowrap;font-weight:600'>step "
             f"{html.escape(step.name)}</span>"]
    if step.inputs:
        parts.append(f"<span style='color:{GREY};margin-right:4px'>in</span>")
        parts += [_chip("input", n, step.live.get(n), f"\u2190 {p}") for n, p in step.inputs.items()]
    if step.passed:
        parts.append(f"<span style='color:{GREY};margin-right:4px'>out</span>")
        parts += [_chip("output", n, step.live.get(n),
                        f"\u2192 {', '.join(step.readers[n])}" if step.readers.get(n) else "")
                  for n in step.passed]
    if not step.inputs and not step.passed:
        parts.append(f"<span style='color:{GREY}'>nothing passed to or from other steps yet</span>")
    return _STEP_LINE.format(step=html.escape(step.name, quote=True), parts="".join(parts))


def dag_steps(plan: Plan) -> list[tuple[str, tuple[str, ...]]]:
    """``(name, upstream)`` of every step, for :func:`kale_magics.views.dag.dag_svg`."""
    return [(s.name, s.upstream) for s in plan.steps]


def dag_shapes(plan: Plan) -> dict[str, Shape]:
    """How each step is drawn: loop, condition, sub-notebook group, exit step."""
    return {s.name: Shape(loop=s.loop is not None,
                          condition=s.condition.expression if s.condition else "",
                          group=s.cells[0].notebook, exit=s.name == plan.settings.on_exit)
            for s in plan.steps}


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
    title = html.escape(f"pipeline {plan.name}: {counted(len(plan.steps), 'step')}, "
                        f"{counted(len(plan.parameters), 'parameter')}")
    return (f"<div class='kale-show'><b>{title}</b><br>"
            f"{dag_svg(dag_steps(plan), shapes=dag_shapes(plan))}"
            + _table(["step", "cells", "--after", "inputs (producer)", "outputs", "parameters",
                      "metrics"], rows) + "</div>")


#: What a click on a DAG node does in the deploy panel: choose that step in the panel's step
#: chooser (an ipywidgets Dropdown, whose ``<option>`` values are its labels) and tell the
#: Dropdown's view, which listens for ``change`` on its ``<select>`` (ipywidgets 8
#: ``DropdownView._handle_change``) and sends the choice to the kernel. An ``HTML`` widget
#: sets its value as ``innerHTML``, which keeps inline handlers: no anywidget, no front-end build.
_CHOOSE_ON_CLICK = (
    "var n=event.target.closest('[data-step]'),p=this.closest('.kale-panel'),"
    "s=p&&p.querySelector('.kale-step-choice select');"
    "if(n&&s){s.value=n.getAttribute('data-step');"
    "s.dispatchEvent(new Event('change',{bubbles:true}));}")


def dag_html(plan: Plan, status: RunStatus | None, now: float, previous: bool = False,
             choose: bool = False, chosen: str = "") -> str:
    """The pipeline's DAG as SVG, each step coloured and labelled by its state.

    Before a run (``status`` None) every step is "not started". ``previous`` says
    ``status`` is the run before a Run press that started nothing (a compile error,
    a bad value): the DAG keeps that run's states under the caption "previous run".
    ``choose`` (the deploy panel) makes a click on a node choose that step in the
    panel's step chooser (:data:`_CHOOSE_ON_CLICK`); the ``chosen`` step's node is outlined.
    """
    steps = status.steps if status is not None else {}
    states = {name: s.state for name, s in steps.items()}
    notes = {s.name: step_note(steps.get(s.name), now) for s in plan.steps}
    caption = (f"<div class='kale-dag-caption' style='color:{GREY};font-size:12px'>"
               "previous run</div>" if previous and status is not None else "")
    click = (f" onclick=\"{_CHOOSE_ON_CLICK}\" title='click a step to see its details'"
             if choose else "")
    outline = (f".kale-dag-choose g.kale-step[data-step='{html.escape(chosen, quote=True)}'] rect"
               "{stroke:#1565c0;stroke-width:2.5}" if chosen else "")
    style = (f"<style>.kale-dag-choose g.kale-step{{cursor:pointer}}{outline}</style>"
             if choose else "")
    return (f"<div class='kale-dag-view{' kale-dag-choose' if choose else ''}' "
            f"data-previous='{str(previous).lower()}'{click}>{style}{caption}"
            f"{dag_svg(dag_steps(plan), states, notes, dag_shapes(plan))}</div>")


def run_html(status: RunStatus, plan: Plan, now: float) -> str:
    """A run's progress in a notebook (``%kale run``): the DAG by state, then metrics or the error.

    ``now`` (seconds since the epoch) gives running steps their elapsed time.
    """
    parts = [f"<b>{html.escape(status.pipeline)}</b> {html.escape(status.state)} "
             f"({duration_text(status.duration_s)})", dag_html(plan, status, now)]
    if status.metrics:
        parts.append(_table(["metric", "value"], [[html.escape(k), f"{v:.6g}"]
                                                   for k, v in status.metrics.items()]))
    for step in status.failed_steps:
        where = f" ({step.cell}, line {step.line})" if step.cell else ""
        tail = html.escape("\n".join(step.log_tail(15)))
        parts.append(f"<div style='color:{RED}'>step {html.escape(step.name)} failed"
                     f"{html.escape(where)}: {html.escape(step.error)}</div><pre>{tail}</pre>")
    parts.extend(f"<div class='kale-skipped' style='color:{GREY}'>step {html.escape(step.name)} "
                 f"skipped: {html.escape(step.error)}</div>" for step in skipped_steps(status))
    return "<div class='kale-run'>" + "<br>".join(parts) + "</div>"


def status_line_html(status: RunStatus | None, now: float, activity: str = "",
                     started: float | None = None, previous: bool = False) -> str:
    """The run's state, elapsed time and (remote runs) the link to the KFP UI.

    Parameters
    ----------
    status:
        The current or last run, or None.
    now:
        The current time, for the elapsed time of an active run.
    activity:
        What is going on before the run has a status ("compiling", "submitting").
    started:
        When Run was pressed; the elapsed time counts from it when given.
    previous:
        ``status`` is the run before a Run press that started nothing (a compile
        error, a bad value): the line says "previous run" so it is not read as the
        new attempt's result (its own start and end give its time).
    """
    if status is None:
        text = html.escape(activity or "ready: press Run to compile and run the pipeline")
        return f"<div class='kale-status' data-state=''>{text}</div>"
    begin = status.start if previous or started is None else started
    end = status.end if status.state in TERMINAL_STATES and status.end else now
    label = ["<span class='kale-previous'>previous run</span>"] if previous else []
    parts = [*label, f"<b>{html.escape(status.pipeline)}</b>",
             f"<span class='kale-run-state'>{html.escape(status.state)}</span>",
             f"<span class='kale-elapsed'>{duration_text(max(0.0, end - begin))}</span>"]
    if activity:
        parts.append(html.escape(activity))
    if status.url:
        url = html.escape(status.url, quote=True)
        parts.append(f"<a class='kale-run-link' href='{url}' target='_blank' {_LINK_STYLE}"
                     f"rel='noopener'>run {html.escape(status.run_id)} in the KFP UI</a>")
    return (f"<div class='kale-status' data-state='{html.escape(status.state)}' "
            f"data-previous='{str(previous).lower()}'>" + " &middot; ".join(parts) + "</div>")


#: A metrics table cell: padded apart, one compact line high (notebook themes make rows tall).
_METRIC_CELL = ("padding:1px 12px 1px 4px;line-height:1.35;height:auto;border:none;"
                "border-bottom:1px solid #eee;vertical-align:baseline")


def metrics_html(status: RunStatus | None) -> str:
    """The run's final metrics as a small table (or why there are none), in notebook order
    (:attr:`~kale_magics.runner.status.RunStatus.metrics`)."""
    if status is None:
        return ""
    if status.metrics:
        rows = "".join(f"<tr><td class='kale-metric-name' style='{_METRIC_CELL}'>{html.escape(k)}"
                       f"</td><td class='kale-metric-value' style='{_METRIC_CELL};text-align:right;"
                       f"font-variant-numeric:tabular-nums'>{v:.6g}</td></tr>"
                       for k, v in status.metrics.items())
        return ("<table class='kale-metrics' style='border-collapse:collapse;font-size:12px;"
                f"margin:2px 0'><thead><tr><th style='{_METRIC_CELL};text-align:left'>metric</th>"
                f"<th style='{_METRIC_CELL};text-align:right'>value</th></tr></thead>"
                f"<tbody>{rows}</tbody></table>")
    if status.metrics_note and status.state in TERMINAL_STATES:
        return f"<div class='kale-metrics-note' style='color:{GREY}'>{_linked(status.metrics_note)}</div>"
    return ""


def _linked(text: str) -> str:
    """Escape ``text`` and turn a trailing ``http(s)://`` URL into a link."""
    head, sep, url = text.rpartition(" ")
    if url.startswith(("http://", "https://")):
        link = html.escape(url, quote=True)
        return (f"{html.escape(head)}{sep}<a href='{link}' target='_blank' rel='noopener' "
                f"{_LINK_STYLE}>{html.escape(url)}</a>")
    return html.escape(text)


def step_detail_html(step: Step, status: StepStatus | None, now: float,
                     log_lines: int = 15) -> str:
    """One step's inputs (with producers), outputs, parameters and state; when it failed,
    the error with the notebook cell and line, and the log tail."""
    inputs = ", ".join(f"{i.name} (from {i.producer})" for i in step.inputs) or "none"
    rows = [("state", step_note(status, now)), ("inputs", inputs),
            ("outputs", ", ".join(step.outputs) or "none"),
            ("parameters", ", ".join(step.parameters) or "none")]
    if step.metrics:
        rows.append(("metrics", ", ".join(m.key for m in step.metrics)))
    if status is not None and status.artifacts:
        rows.append(("saved", "; ".join(_artifact_text(n, a) for n, a in status.artifacts.items())))
    body = "".join(f"<tr><th style='text-align:left;padding-right:8px'>{k}</th>"
                   f"<td>{html.escape(v)}</td></tr>" for k, v in rows)
    parts = [f"<table class='kale-step-detail' data-step='{html.escape(step.name)}' "
             f"style='font-size:12px'>{body}</table>"]
    if status is not None and status.state == FAILED:
        where = f" ({status.cell}, line {status.line})" if status.cell else ""
        parts.append(f"<div class='kale-step-error' style='color:{RED}'>"
                     f"{html.escape(status.error or 'failed')}{html.escape(where)}</div>")
        tail = "\n".join(status.log_tail(log_lines))
        if tail.strip():
            parts.append(f"<pre class='kale-log-tail' style='font-size:11px;max-height:16em;"
                         f"overflow:auto'>{html.escape(tail)}</pre>")
    elif status is not None and status.state == SKIPPED and status.error:
        parts.append(f"<div class='kale-step-skipped' style='color:{GREY}'>"
                     f"{html.escape(status.error)}</div>")
    return "".join(parts)


def _artifact_text(name: str, artifact: dict) -> str:
    """``df: DataFrame, arrow, 12.3 KiB`` from what the step runtime saved."""
    parts = [str(artifact[k]) for k in ("python_type", "kale_format") if artifact.get(k)]
    size = size_text(artifact.get("bytes"))
    return f"{name}: {', '.join([*parts, size] if size else parts) or 'saved'}"


def error_html(message: str) -> str:
    """One readable red message: what went wrong and the fix (never a traceback)."""
    return (f"<div class='kale-error' style='color:{RED};white-space:pre-wrap;font-weight:bold'>"
            f"{html.escape(message)}</div>")


def info_html(lines: Iterable[str]) -> str:
    """Plain notices (grey), one per line."""
    body = "<br>".join(html.escape(line) for line in lines)
    return f"<div class='kale-info' style='color:{GREY}'>{body}</div>" if body else ""


def compile_html(compiled: CompiledPipeline) -> str:
    """Where the compiled DSL module and IR YAML went, and any compile warnings."""
    rows = (f"<div class='kale-compiled'>DSL: <code class='kale-dsl-path'>{html.escape(compiled.dsl_path)}"
            f"</code><br>YAML: <code class='kale-yaml-path'>{html.escape(compiled.yaml_path)}</code></div>")
    return rows + info_html(f"warning: {w}" for w in compiled.warnings)


def check_html(report: CheckReport) -> str:
    """``%kale check``: a table of passed variables, the warnings in red, and the verdict."""
    rows = [[html.escape(v.name), html.escape(v.producer), html.escape(v.state),
             html.escape(v.type_name), html.escape(v.format), size_text(v.size_bytes),
             f"{v.seconds * 1000:.1f} ms" if v.state == "ok" else html.escape(v.message)]
            for v in report.variables]
    warnings = "".join(f"<div style='color:{RED}'>{html.escape(w)}</div>" for w in report.warnings)
    table = _table(["variable", "step", "state", "type", "format", "size", "time / fix"], rows)
    return (f"<div class='kale-check' data-ok='{str(report.ok).lower()}'>{table}{warnings}"
            f"<div style='color:{GREEN if report.ok else RED}'>{html.escape(check_verdict(report))}"
            "</div></div>")


def sweep_html(sweep: Sweep) -> str:
    """The sweep as an HTML table with the text view's content: the best trial's row bold and
    green (``data-best``), failed trials' states red, a remote trial's number linked to its run."""
    head, rows = sweep_rows(sweep)
    best = sweep.best
    body = []
    for trial, row in zip(sweep.trials, rows):
        color = GREEN if trial is best else RED if trial.state == FAILED else ""
        style = f"color:{color};" if color else ""
        weight = "font-weight:bold;" if trial is best else ""
        number = html.escape(row[0].strip())
        if trial.url:
            number = (f"<a href='{html.escape(trial.url, quote=True)}' target='_blank' "
                      f"rel='noopener' {_LINK_STYLE}>{number}</a>")
        cells = "".join(_CELL.format(tag="td", text=c) for c in
                        [number, *(html.escape(c) for c in row[1:])])
        body.append(f"<tr class='kale-trial' data-trial='{trial.number}' "
                    f"data-state='{html.escape(trial.state)}' data-best='{str(trial is best).lower()}' "
                    f"style='{style}{weight}'>{cells}</tr>")
    head_html = "".join(_CELL.format(tag="th", text=html.escape(h)) for h in head)
    outcome = "".join(f"<div class='kale-sweep-outcome'>{_linked(line)}</div>"
                      for line in sweep_outcome(sweep))
    return (f"<div class='kale-sweep' data-done='{str(sweep.done).lower()}'>"
            f"<div style='font-weight:bold'>{html.escape(sweep_heading(sweep))}</div>"
            + _TABLE.format(head=head_html, rows="".join(body)) + outcome + "</div>")
