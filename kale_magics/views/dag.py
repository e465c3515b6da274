"""Draw a pipeline's steps as a layered DAG in SVG (pure functions, no kernel needed).

Each step sits in the layer of its longest path from a source, so every edge
points downwards; steps in a layer keep the pipeline's order. Colours show a
step's state, the same in ``%kale show``, ``%kale run`` and the widget.

Control flow (:class:`Shape`): a ``--for`` step is one stacked node (its note
gives the per-item states, "3/5 succeeded"); the edges into a ``--if`` step are
dashed and labelled with its EXPR; the steps of one sub-notebook are framed as
a group with its name; the ``--on-exit`` step stands apart, below a dashed line,
without edges (it runs after every other step).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Mapping, Sequence

NODE_W, NODE_H, GAP_X, GAP_Y, MARGIN = 150, 40, 24, 44, 10

#: Fill and stroke per state; None is "not started".
COLOURS: dict[str | None, tuple[str, str]] = {
    None: ("#f5f5f5", "#9e9e9e"),
    "PENDING": ("#fff8e1", "#f9a825"),
    "RUNNING": ("#e3f2fd", "#1e88e5"),
    "SUCCEEDED": ("#e8f5e9", "#43a047"),
    "FAILED": ("#ffebee", "#e53935"),
    "SKIPPED": ("#fafafa", "#bdbdbd"),
    "CANCELING": ("#fff3e0", "#fb8c00"),
    "CANCELED": ("#fff3e0", "#fb8c00"),
    "PAUSED": ("#ede7f6", "#5e35b1"),
}


@dataclass(frozen=True)
class Shape:
    """How a step is drawn besides its state.

    Attributes
    ----------
    loop:
        A ``--for`` step: drawn as a stack of nodes.
    condition:
        A ``--if`` step's EXPR: its incoming edges are dashed and labelled with it.
    group:
        The sub-notebook the step comes from ("" for the pipeline's own notebook).
    exit:
        The ``--on-exit`` step: drawn apart, below the others.
    """

    loop: bool = False
    condition: str = ""
    group: str = ""
    exit: bool = False


def layers(steps: Sequence[tuple[str, Sequence[str]]]) -> list[list[str]]:
    """Group steps into layers by longest path from a source.

    Parameters
    ----------
    steps:
        ``(name, upstream names)`` in a topological order.

    Returns
    -------
    list of list of str
        Layer 0 first; inside a layer, the order of ``steps``.
    """
    depth: dict[str, int] = {}
    for name, upstream in steps:
        depth[name] = 1 + max((depth[u] for u in upstream if u in depth), default=-1)
    result: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for name, _ in steps:
        result[depth[name]].append(name)
    return result


def dag_svg(steps: Sequence[tuple[str, Sequence[str]]],
            states: Mapping[str, str] | None = None,
            notes: Mapping[str, str] | None = None,
            shapes: Mapping[str, Shape] | None = None) -> str:
    """Render the DAG as a standalone ``<svg>`` element.

    Parameters
    ----------
    steps:
        ``(name, upstream names)`` in a topological order.
    states:
        V2beta1RuntimeState name per step; a missing step is "not started".
    notes:
        A short second line per step, e.g. ``"1.2 s"`` or ``"running 3 s"``.
    shapes:
        Control flow per step (:class:`Shape`); a missing step is a plain one.

    Returns
    -------
    str
        SVG markup; every node is a ``<g class="kale-step" data-step=NAME data-state=STATE>``
        (with ``data-kind="loop"`` or ``"exit"`` for those), a condition's edges are
        ``<g class="kale-condition">``, a group ``<g class="kale-group" data-group=NAME>``.
    """
    states, notes, shapes = states or {}, notes or {}, shapes or {}
    apart = [name for name, _ in steps if shapes.get(name, Shape()).exit]
    body = [(name, up) for name, up in steps if name not in apart]
    grid = layers(body) + ([apart] if apart else [])
    width = max((len(layer) for layer in grid), default=1) * (NODE_W + GAP_X) - GAP_X + 2 * MARGIN
    height = len(grid) * (NODE_H + GAP_Y) - GAP_Y + 2 * MARGIN
    position = {name: _position(i, j, len(layer), width)
                for i, layer in enumerate(grid) for j, name in enumerate(layer)}
    edges = [_edge(position[u], position[name], shapes.get(name, Shape()).condition)
             for name, upstream in body for u in upstream if u in position and u not in apart]
    edges += [_condition_label(position[name], shape.condition) for name, _ in body
              if (shape := shapes.get(name, Shape())).condition]
    groups = _groups(body, shapes, position)
    separator = _separator(position[apart[0]], width) if apart else ""
    nodes = [_node(name, position[name], states.get(name), notes.get(name, ""),
                   shapes.get(name, Shape())) for name, _ in steps]
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="kale-dag" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" '
            f'font-size="12">{groups}{separator}{"".join(edges)}{"".join(nodes)}</svg>')


def _groups(steps: Sequence[tuple[str, Sequence[str]]], shapes: Mapping[str, Shape],
            position: Mapping[str, tuple[int, int]]) -> str:
    """A dashed frame with its name around the steps of each sub-notebook."""
    members: dict[str, list[tuple[int, int]]] = {}
    for name, _ in steps:
        group = shapes.get(name, Shape()).group
        if group:
            members.setdefault(group, []).append(position[name])
    frames = []
    for group, points in members.items():
        left, top = min(x for x, _ in points) - 6, min(y for _, y in points) - 16
        right, bottom = max(x for x, _ in points) + NODE_W + 6, max(y for _, y in points) + NODE_H + 6
        frames.append(f'<g class="kale-group" data-group="{html.escape(group)}">'
                      f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" '
                      f'rx="8" fill="#f3f6fb" stroke="#7986cb" stroke-dasharray="6 3"/>'
                      f'<text x="{left + 6}" y="{top + 11}" font-size="10" fill="#3949ab">'
                      f'{html.escape(group)}</text></g>')
    return "".join(frames)


def _separator(at: tuple[int, int], width: int) -> str:
    """The dashed line above the exit step, labelled "on exit"."""
    y = at[1] - GAP_Y // 2
    return (f'<g class="kale-exit-line"><line x1="{MARGIN}" y1="{y}" x2="{width - MARGIN}" '
            f'y2="{y}" stroke="#b0bec5" stroke-dasharray="4 4"/><text x="{MARGIN}" y="{y - 4}" '
            'font-size="10" fill="#607d8b">on exit: after every other step</text></g>')


def _condition_label(at: tuple[int, int], condition: str) -> str:
    """``if EXPR`` just above a conditional step, the end of its dashed incoming edges (the
    whole EXPR in its tooltip)."""
    x, y = at[0] + NODE_W // 2, at[1] - 7
    return (f'<g class="kale-condition" data-condition="{html.escape(condition)}">'
            f'<title>if {html.escape(condition)}</title><text x="{x}" y="{y}" '
            f'text-anchor="middle" font-size="10" fill="#6a1b9a">'
            f'if {html.escape(_short(condition))}</text></g>')


def _short(text: str, limit: int = 26) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _position(layer: int, index: int, count: int, width: int) -> tuple[int, int]:
    row_width = count * (NODE_W + GAP_X) - GAP_X
    x = (width - row_width) // 2 + index * (NODE_W + GAP_X)
    return x, MARGIN + layer * (NODE_H + GAP_Y)


def _edge(start: tuple[int, int], end: tuple[int, int], condition: str = "") -> str:
    x1, y1 = start[0] + NODE_W // 2, start[1] + NODE_H
    x2, y2 = end[0] + NODE_W // 2, end[1]
    mid = (y1 + y2) // 2
    dash = ' stroke-dasharray="5 4"' if condition else ""
    path = (f'<path d="M{x1},{y1} C{x1},{mid} {x2},{mid} {x2},{y2 - 4}" fill="none" '
            f'stroke="#90a4ae" stroke-width="1.5"{dash} marker-end="none"/>'
            f'<circle cx="{x2}" cy="{y2 - 3}" r="3" fill="#90a4ae"/>')
    if not condition:
        return path
    return f'<g class="kale-condition" data-condition="{html.escape(condition)}">{path}</g>'


def _node(name: str, at: tuple[int, int], state: str | None, note: str,
          shape: Shape = Shape()) -> str:
    fill, stroke = COLOURS.get(state, COLOURS[None])
    x, y = at
    label = html.escape(name if len(name) <= 20 else name[:19] + "…")
    second = html.escape(note or (state.lower() if state else "not started"))
    dash = ' stroke-dasharray="4 3"' if state == "SKIPPED" else ""
    kind = ' data-kind="loop"' if shape.loop else ' data-kind="exit"' if shape.exit else ""
    stack = "".join(f'<rect x="{x + d}" y="{y - d}" width="{NODE_W}" height="{NODE_H}" rx="6" '
                    f'fill="{fill}" stroke="{stroke}" stroke-width="1"/>'
                    for d in (6, 3)) if shape.loop else ""
    return (f'<g class="kale-step" data-step="{html.escape(name)}" data-state="{state or ""}"{kind}>'
            f'<title>{html.escape(name)}: {html.escape(state or "not started")}</title>{stack}'
            f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="6" fill="{fill}" '
            f'stroke="{stroke}" stroke-width="2"{dash}/>'
            f'<text x="{x + NODE_W // 2}" y="{y + 16}" text-anchor="middle" font-weight="bold">'
            f'{label}</text><text x="{x + NODE_W // 2}" y="{y + 32}" text-anchor="middle" '
            f'fill="#555">{second}</text></g>')
