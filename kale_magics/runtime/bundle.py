"""Run a step from the runtime bundle: the artifact the pipeline's ``kale_runtime`` task writes.

A compiled pipeline holds the step runtime once, in its first task, not in
every step (see ``codegen.embedding``). That task writes a folder, the bundle:

``kale_magics/runtime/*.py``
    This package (``bundle``, ``marshal``, ``shell``, ``step``, ...).
``prelude.json``
    The notebook's imports and functions cells, ``[[filename, source], ...]``,
    run first in every step.

Each step receives the bundle as an input artifact, imports this module from it
and calls :func:`run_step`. A cell's source is a string, or ``{"zlib": TEXT}``
for a large cell: TEXT is the base64 of its zlib-compressed UTF-8 (one command
line argument of a container is limited to 128 KiB on Linux).

This module runs inside the pipeline step: it imports only the standard library.
"""

from __future__ import annotations

import base64
import json
import os
import zlib
from typing import Any, Mapping, Sequence, Union

from kale_magics.runtime import step as _step

#: The prelude's file in the bundle.
PRELUDE = "prelude.json"
#: Key of a compressed cell source.
PACKED = "zlib"

Source = Union[str, Mapping[str, str]]


def unpack(source: Source) -> str:
    """A cell's source text: ``source`` itself, or ``{"zlib": TEXT}`` decompressed."""
    if isinstance(source, str):
        return source
    return zlib.decompress(base64.b64decode(source[PACKED])).decode("utf-8")


def bundle_root() -> str:
    """The bundle folder this module was imported from (``<root>/kale_magics/runtime/bundle.py``)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def prelude() -> list[tuple[str, str]]:
    """The notebook's imports and functions cells, ``[(filename, source), ...]``, unpacked."""
    with open(os.path.join(bundle_root(), PRELUDE), encoding="utf-8") as f:
        return [(filename, unpack(source)) for filename, source in json.load(f)]


def run_step(step: str, code: Sequence[tuple[str, Source]], **arguments: Any) -> None:
    """Run ``step``: the prelude, then ``code``, through ``kale_magics.runtime.step.run_step``.

    Parameters
    ----------
    step:
        The step's name.
    code:
        The step's own cells, ``(filename, source)``, a source possibly packed.
    **arguments:
        The other arguments of ``step.run_step`` (parameters, inputs, outputs, ...).

    Raises
    ------
    SystemExit
        With status 1 when the step fails (from ``step.run_step``).
    """
    cells = [*prelude(), *((filename, unpack(source)) for filename, source in code)]
    _step.run_step(step=step, code=cells, **arguments)
