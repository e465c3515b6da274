"""What the deploy panel shows, as HTML and SVG: pure functions of plan and status, no kernel.

The DAG reuses :func:`kale_magics.dag.dag_svg` (the colours of ``%kale show`` and
``%kale run``); each node's second line says the step's state in words with its
elapsed time while running and its duration when done. Every element the
browser test reads has a ``kale-*`` class.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable

from kale_magics import report
from kale_magics.api import CheckReport, CompiledPipeline
from kale_magics.dag import dag_svg
from kale_magics.model import Plan, Step
from kale_magics.runner.status import (
    FAILED,
    RUNNING,
    TERMINAL_STATES,
    RunStatus,
    StepStatus,
)

#: How each state reads on a DAG node and in the status line.
STATE_WORDS = {None: "not started", "PENDING": "pending", "RUNNING": "running",
               "SUCCEEDED": "succeeded", "FAILED": "failed", "SKIPPED": "skipped",
               "CANCELING": "canceling", "CANCELED": "canceled", "PAUSED": "paused"}
RED, GREY = "#c62828", "#555"
_LINK_STYLE = "style='color:#1565c0;text-decoration:underline'"


def seconds_text(seconds: float) -> str:
    """``0.4 s``, ``12 s``, ``3 min 5 s``: a duration for people."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest} s"


def step_note(step: StepStatus | None, now: float) -> str:
    """The second line of a DAG node: ``running 3 s``, ``succeeded 1.2 s``, ``not started``.

    Parameters
    ----------
    step:
        The step's status, or None before any run.
    now:
        The current time (seconds since the epoch), for the elapsed time of a running step.
    """
    if step is None:
        return STATE_WORDS[None]
    word = STATE_WORDS.get(step.state, step.state.lower())
    if getattr(step, "cached", False):
        return f"{word} (cached)"
    if step.state == RUNNING and step.start:
        return f"{word} {seconds_text(max(0.0, now - step.start))}"
    if step.duration_s is not None:
        return f"{word} {seconds_text(step.duration_s)}"
    if step.start and step.end and step.state in TERMINAL_STATES:
        return f"{word} {seconds_text(step.end - step.start)}"
    return word


def dag_html(plan: Plan, status: RunStatus | None, now: float) -> str:
    """The pipeline's DAG as SVG, each step coloured and labelled by its state.

    Before a run (``status`` None) every step is "not started".
    """
    steps = status.steps if status is not None else {}
    states = {name: s.state for name, s in steps.items()}
    notes = {s.name: step_note(steps.get(s.name), now) for s in plan.steps}
    return f"<div class='kale-dag-view'>{dag_svg(report.dag_steps(plan), states, notes)}</div>"


def status_line_html(status: RunStatus | None, now: float, activity: str = "",
                     started: float | None = None) -> str:
    """The run's state, elapsed time and (remote runs) the link to the KFP UI.

    Parameters
    ----------
    status:
        The current or last run, or None.
    now:
        The current time, for the elapsed time of an active run.
    activity:
        What the panel is doing before the run has a status ("compiling", "submitting").
    started:
        When Run was pressed; the elapsed time counts from it when given.
    """
    if status is None:
        text = html.escape(activity or "ready: press Run to compile and run the pipeline")
        return f"<div class='kale-status' data-state=''>{text}</div>"
    begin = started if started is not None else status.start
    end = status.end if status.state in TERMINAL_STATES and status.end else now
    parts = [f"<b>{html.escape(status.pipeline)}</b>",
             f"<span class='kale-run-state'>{html.escape(status.state)}</span>",
             f"<span class='kale-elapsed'>{seconds_text(max(0.0, end - begin))}</span>"]
    if activity:
        parts.append(html.escape(activity))
    if status.url:
        url = html.escape(status.url, quote=True)
        parts.append(f"<a class='kale-run-link' href='{url}' target='_blank' {_LINK_STYLE}"
                     f"rel='noopener'>run {html.escape(status.run_id)} in the KFP UI</a>")
    return (f"<div class='kale-status' data-state='{html.escape(status.state)}'>"
            + " &middot; ".join(parts) + "</div>")


def metrics_html(status: RunStatus | None) -> str:
    """The run's final metrics as a small table (or why there are none)."""
    if status is None:
        return ""
    if status.metrics:
        rows = "".join(f"<tr><td class='kale-metric-name'>{html.escape(k)}</td>"
                       f"<td class='kale-metric-value' style='text-align:right'>{v:.6g}</td></tr>"
                       for k, v in status.metrics.items())
        return ("<table class='kale-metrics' style='border-collapse:collapse;font-size:12px'>"
                "<thead><tr><th style='text-align:left'>metric</th><th>value</th></tr></thead>"
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


def step_detail_html(step: Step, status: StepStatus | None, log_lines: int = 15) -> str:
    """One step's inputs (with producers), outputs, parameters and state; when it failed,
    the error with the notebook cell and line, and the log tail."""
    inputs = ", ".join(f"{i.name} (from {i.producer})" for i in step.inputs) or "none"
    rows = [("state", step_note(status, time.time())), ("inputs", inputs),
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
    return "".join(parts)


def _artifact_text(name: str, artifact: dict) -> str:
    """``df: DataFrame, parquet, 12.3 KiB`` from what the step runtime saved."""
    parts = [str(artifact[k]) for k in ("python_type", "kale_format") if artifact.get(k)]
    size = report.size_text(artifact.get("bytes"))
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


def check_html(result: CheckReport) -> str:
    """The pre-flight check: a table of passed variables, warnings, and the verdict."""
    verdict = ("every passed variable serialises" if result.ok
               else "some variables cannot be passed between steps; see the table")
    colour = "#2e7d32" if result.ok else RED
    return (f"<div class='kale-check' data-ok='{str(result.ok).lower()}'>{report.check_html(result)}"
            f"<div style='color:{colour}'>{html.escape(verdict)}</div></div>")
