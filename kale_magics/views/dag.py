"""Draw a pipeline's steps as a layered DAG in SVG (pure functions, no kernel needed).

Each step sits in the layer of its longest path from a source, so every edge
points downwards; steps in a layer keep the pipeline's order. Colours show a
step's state, the same in ``%kale show``, ``%kale run`` and the widget.
"""

from __future__ import annotations

import html
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
            notes: Mapping[str, str] | None = None) -> str:
    """Render the DAG as a standalone ``<svg>`` element.

    Parameters
    ----------
    steps:
        ``(name, upstream names)`` in a topological order.
    states:
        V2beta1RuntimeState name per step; a missing step is "not started".
    notes:
        A short second line per step, e.g. ``"1.2 s"`` or ``"running 3 s"``.

    Returns
    -------
    str
        SVG markup; every node is a ``<g class="kale-step" data-step=NAME data-state=STATE>``.
    """
    states, notes = states or {}, notes or {}
    grid = layers(steps)
    width = max((len(layer) for layer in grid), default=1) * (NODE_W + GAP_X) - GAP_X + 2 * MARGIN
    height = len(grid) * (NODE_H + GAP_Y) - GAP_Y + 2 * MARGIN
    position = {name: _position(i, j, len(layer), width)
                for i, layer in enumerate(grid) for j, name in enumerate(layer)}
    edges = [_edge(position[u], position[name]) for name, upstream in steps
             for u in upstream if u in position]
    nodes = [_node(name, position[name], states.get(name), notes.get(name, "")) for name, _ in steps]
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="kale-dag" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" '
            f'font-size="12">{"".join(edges)}{"".join(nodes)}</svg>')


def _position(layer: int, index: int, count: int, width: int) -> tuple[int, int]:
    row_width = count * (NODE_W + GAP_X) - GAP_X
    x = (width - row_width) // 2 + index * (NODE_W + GAP_X)
    return x, MARGIN + layer * (NODE_H + GAP_Y)


def _edge(start: tuple[int, int], end: tuple[int, int]) -> str:
    x1, y1 = start[0] + NODE_W // 2, start[1] + NODE_H
    x2, y2 = end[0] + NODE_W // 2, end[1]
    mid = (y1 + y2) // 2
    return (f'<path d="M{x1},{y1} C{x1},{mid} {x2},{mid} {x2},{y2 - 4}" fill="none" '
            f'stroke="#90a4ae" stroke-width="1.5" marker-end="none"/>'
            f'<circle cx="{x2}" cy="{y2 - 3}" r="3" fill="#90a4ae"/>')


def _node(name: str, at: tuple[int, int], state: str | None, note: str) -> str:
    fill, stroke = COLOURS.get(state, COLOURS[None])
    x, y = at
    label = html.escape(name if len(name) <= 20 else name[:19] + "…")
    second = html.escape(note or (state.lower() if state else "not started"))
    dash = ' stroke-dasharray="4 3"' if state == "SKIPPED" else ""
    return (f'<g class="kale-step" data-step="{html.escape(name)}" data-state="{state or ""}">'
            f'<title>{html.escape(name)}: {html.escape(state or "not started")}</title>'
            f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="6" fill="{fill}" '
            f'stroke="{stroke}" stroke-width="2"{dash}/>'
            f'<text x="{x + NODE_W // 2}" y="{y + 16}" text-anchor="middle" font-weight="bold">'
            f'{label}</text><text x="{x + NODE_W // 2}" y="{y + 32}" text-anchor="middle" '
            f'fill="#555">{second}</text></g>')
