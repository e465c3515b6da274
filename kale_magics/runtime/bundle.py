"""Run a step from the runtime bundle: the artifact the pipeline's ``kale_runtime`` task writes.

A compiled pipeline holds the step runtime once, in its first task, not in
every step (see ``codegen.embedding``). That task writes a folder, the bundle:

``kale_magics/runtime/*.py``
    This package (``bundle``, ``marshal``, ``shell``, ``step``, ...).
``notebook.json``
    ``{"notebook": "titanic.ipynb", "prelude": [[index, kind, source], ...],
    "places": [[index, notebook, number], ...]}``: the notebook's file name,
    its imports and functions cells, which run first in every step, and where
    the cells of notebooks it references (Kale's ``notebook:NAME``) come from.

Each step receives the bundle as an input artifact, puts it first on
``sys.path``, imports this module and calls :func:`run_step`, which takes it off
again. A cell's source is a string, or ``{"xz": TEXT}`` for a large cell:
TEXT is the base64 of its UTF-8 compressed with LZMA (``.xz``; one command-line
argument of a container is limited to 128 KiB on Linux).

This module runs inside the pipeline step: it imports only the standard library.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from typing import Any, Mapping, Optional, Sequence, Union

from kale_magics.runtime import step as _step

#: The notebook's file in the bundle.
NOTEBOOK = "notebook.json"
#: Key of a compressed cell source.
PACKED = "xz"

Source = Union[str, Mapping[str, str]]


def unpack(source: Source) -> str:
    """A cell's source text: ``source`` itself, or ``{"xz": TEXT}`` decompressed."""
    if isinstance(source, str):
        return source
    import lzma  # only for large cells

    return lzma.decompress(base64.b64decode(source[PACKED])).decode("utf-8")


def cell_filename(notebook: str, index: float, label: str) -> str:
    """The filename a cell's code runs under: ``"titanic.ipynb, cell 8 (step train)"`` for
    the cell at 0-based ``index`` 7.

    Tracebacks and the step's ``end`` event name the cell by it, numbered as people see
    it: 1-based, every cell counted (``kale_magics.model.cell_place``, which this module,
    importing only the standard library, repeats).
    """
    return f"{notebook or 'notebook'}, cell {int(index) + 1} ({label})"


def bundle_root() -> str:
    """The bundle folder this module was imported from (``<root>/kale_magics/runtime/bundle.py``)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def notebook() -> dict[str, Any]:
    """The bundle's ``notebook.json`` (see the module's docstring)."""
    with open(os.path.join(bundle_root(), NOTEBOOK), encoding="utf-8") as f:
        return json.load(f)


def run_step(step: str, cells: Mapping[int, Source],
             imports: Sequence[tuple[int, str, str]] = (),
             parameters: Optional[Mapping[str, Any]] = None, inputs: Optional[Mapping[str, Any]] = None,
             outputs: Optional[Mapping[str, Any]] = None, metrics: Optional[Mapping[str, str]] = None,
             **arguments: Any) -> Any:
    """Run ``step`` through ``kale_magics.runtime.step.run_step``, with the bundle's prelude.

    The bundle folder is taken off ``sys.path`` first (the step put it there to
    import this module), so the step's code sees the ``sys.path`` it would see
    without the runtime.

    Parameters
    ----------
    step:
        The step's name.
    cells:
        The step's own cells: source (possibly packed) by notebook cell index,
        in notebook order; the first index is the step's position.
    imports:
        ``(cell index, label, statement)`` of the imports of earlier cells the
        step replays (``step.run_step``'s ``imports``); ``label`` as in
        :func:`cell_filename`.
    parameters, inputs, outputs, metrics:
        As for ``step.run_step``; empty when not given (the generated code
        leaves empty ones out).
    **arguments:
        The other arguments of ``step.run_step`` (``json_parameters``,
        ``metrics_artifact``, ``loop``, ``returns``).

    Returns
    -------
    list of str or None
        What ``step.run_step`` returns: the items of a later ``--for`` loop, with ``returns``.

    Raises
    ------
    SystemExit
        With status 1 when the step fails (from ``step.run_step``).
    """
    root = bundle_root()
    sys.path[:] = [p for p in sys.path if not p or os.path.abspath(p) != root]
    found = notebook()
    places = {index: (name, number) for index, name, number in found.get("places", ())}

    def filename(index: float, label: str) -> str:
        name, number = places.get(index, (found["notebook"], index))
        return cell_filename(name, number, label)

    prelude = [(filename(index, kind), unpack(source)) for index, kind, source in found["prelude"]]
    code = [(filename(index, f"step {step}"), unpack(source)) for index, source in cells.items()]
    replayed = [(filename(index, label), statement) for index, label, statement in imports]
    return _step.run_step(step=step, code=code, prelude=prelude, imports=replayed,
                   parameters=parameters or {}, inputs=inputs or {}, outputs=outputs or {},
                   metrics=metrics or {}, position=next(iter(cells)), **arguments)


def run_condition(steps: Sequence[str], expression: str, values: Mapping[str, Any],
                  json_values: Sequence[str] = ()) -> bool:
    """The ``--if`` condition task: ``step.run_condition`` with the bundle off ``sys.path``."""
    root = bundle_root()
    sys.path[:] = [p for p in sys.path if not p or os.path.abspath(p) != root]
    return _step.run_condition(steps, expression, values, json_values)
