"""Views of a notebook's runs: the run table, two runs side by side, and what ``%kale load``
bound; as text (``%kale runs``, ``kale-magics runs``) and HTML (the panel's run history).

Pure functions of :class:`~kale_magics.runner.history.RunHistory` records. The HTML elements
the browser test reads have ``kale-*`` classes: ``kale-runs`` (the table, one ``kale-run``
row per run with ``data-run-id``), ``kale-compare`` and ``kale-differs`` (a differing row).
"""

from __future__ import annotations

import html
import json
from typing import Any, Iterable, Sequence

from kale_magics.runner.history import ComparedValue, LoadedValue, RunHistory, RunRecord
from kale_magics.views.text import clock, duration_text

#: The run table's columns.
RUN_COLUMNS = ("run", "where", "state", "start", "duration", "parameters", "metrics")
_CELL = "border:1px solid #ddd;padding:2px 8px;text-align:left;vertical-align:top"
_DIFFERS = "background:#fff3cd;font-weight:bold"


def value_text(value: Any) -> str:
    """A parameter or metric value as the notebook writes it: ``1.0``, ``'a'``, ``[1, 2]``;
    ``-`` for none; a long float in 6 significant digits (``0.981481``)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return repr(value) if len(repr(value)) <= 10 else f"{value:.6g}"
    return repr(value) if isinstance(value, (str, list, dict, bool)) else str(value)


def _pairs(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={value_text(v)}" for k, v in values.items()) or "-"


def _duration(run: RunRecord) -> str:
    return "-" if run.duration_s is None else duration_text(run.duration_s)


def run_row(run: RunRecord) -> tuple[str, ...]:
    """The run's cells in :data:`RUN_COLUMNS` order, as text."""
    metrics = _pairs(run.metrics) if run.metrics or run.where != "kfp" else "(not reported)"
    return (run.run_id, run.where, run.state, clock(run.start), _duration(run),
            _pairs(run.parameters), metrics)


def runs_text(history: RunHistory) -> str:
    """The run table as aligned text, newest first, then the notes; ``no runs yet`` when empty."""
    lines = [f"note: {n}" for n in history.notes]
    if not history.runs:
        return "\n".join(["no recorded runs of this notebook yet (run it: `%kale run`)", *lines])
    rows = [tuple(c.upper() for c in RUN_COLUMNS), *(run_row(r) for r in history.runs)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(RUN_COLUMNS) - 1)]
    table = ["  ".join([*(c.ljust(w) for c, w in zip(row, widths)), row[-1]]).rstrip()
             for row in rows]
    return "\n".join([*table, *lines])


def _label(row: ComparedValue) -> str:
    """``state``, ``duration``, ``parameter N``, ``metric accuracy``."""
    if row.kind == "run":
        return "duration" if row.name == "duration_s" else row.name
    return f"{row.kind} {row.name}"


def _compared(first: RunRecord, second: RunRecord, row: ComparedValue) -> tuple[str, str]:
    """The two values of ``row`` as text: durations in the one duration format, the state as
    a word, parameters and metrics as the notebook writes them."""
    if row.name == "duration_s" and row.kind == "run":
        return _duration(first), _duration(second)
    if row.kind == "run":
        return str(row.first), str(row.second)
    return value_text(row.first), value_text(row.second)


def comparison_text(first: RunRecord, second: RunRecord, rows: Sequence[ComparedValue]) -> str:
    """Two runs side by side, one line per value; a ``*`` marks a value that differs."""
    table = [("", "", first.run_id, second.run_id)]
    for row in rows:
        a, b = _compared(first, second, row)
        table.append(("*" if row.differs else "", _label(row), a, b))
    widths = [max(len(r[i]) for r in table) for i in range(3)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(r, widths)), r[3]]).rstrip()
                     for r in table)


def loaded_text(loaded: Iterable[LoadedValue]) -> str:
    """One line per loaded value: ``loaded df (pandas.DataFrame): output of step 'load', run R``."""
    return "\n".join(
        f"loaded {v.name} ({v.type_name}): " + (f"output of step {v.step!r}" if v.role == "output"
                                              else f"input of step {v.step!r}, made by "
                                                   f"{v.producer!r}") + f", run {v.run_id}"
        for v in loaded)


def _td(text: str, style: str = "", tag: str = "td") -> str:
    return f'<{tag} style="{_CELL};{style}">{html.escape(text)}</{tag}>'


def runs_html(history: RunHistory, chosen: Sequence[str] = ()) -> str:
    """The run table as HTML; the runs in ``chosen`` (ids, for comparing) are highlighted."""
    notes = "".join(f'<div class="kale-runs-note" style="color:#555">{html.escape(n)}</div>'
                    for n in history.notes)
    if not history.runs:
        return ('<div class="kale-runs kale-runs-empty">no recorded runs of this notebook yet'
                f"</div>{notes}")
    head = "".join(_td(c, tag="th") for c in RUN_COLUMNS)
    rows = []
    for run in history.runs:
        cells = list(run_row(run))
        first = (f'<a href="{html.escape(run.url)}" target="_blank">{html.escape(cells[0])}</a>'
                 if run.url else html.escape(cells[0]))
        style = "background:#e3f2fd" if run.run_id in chosen else ""
        rows.append(f'<tr class="kale-run" data-run-id="{html.escape(run.run_id)}" style="{style}">'
                    f'<td style="{_CELL}">{first}</td>' + "".join(_td(c) for c in cells[1:])
                    + "</tr>")
    return ('<table class="kale-runs" style="border-collapse:collapse;font-size:12px">'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{notes}")


def comparison_html(first: RunRecord, second: RunRecord, rows: Sequence[ComparedValue]) -> str:
    """Two runs side by side as an HTML table; rows whose values differ are highlighted
    (class ``kale-differs``)."""
    head = "".join(_td(c, tag="th") for c in ("", first.run_id, second.run_id))
    body = []
    for row in rows:
        a, b = _compared(first, second, row)
        css, style = ("kale-differs", _DIFFERS) if row.differs else ("", "")
        body.append(f'<tr class="{css}" data-name="{html.escape(row.name)}">'
                    + _td(_label(row)) + _td(a, style) + _td(b, style) + "</tr>")
    return ('<table class="kale-compare" style="border-collapse:collapse;font-size:12px">'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def history_json(history: RunHistory) -> list[dict[str, Any]]:
    """The runs as JSON-ready dicts (``kale-magics runs --json``)."""
    return [json.loads(json.dumps({"run_id": r.run_id, "where": r.where, "state": r.state,
                                   "start": r.start, "end": r.end, "duration_s": r.duration_s,
                                   "parameters": r.parameters, "metrics": r.metrics,
                                   "url": r.url, "error": r.error}, default=repr))
            for r in history.runs]
