"""Notebook cells as they enter a component: readable literals, compressed when large.

KFP puts a lightweight component's whole source into ONE command-line argument
of its container (``sh -ec 'printf "%s" "$0" > ...' SOURCE``, KFP 2.17
``component_factory._get_command_and_args_for_lightweight_component``), and
Linux limits one argument to 128 KiB (``MAX_ARG_STRLEN``, 32 pages): a bigger
one fails with ``OSError: [Errno 7] Argument list too long``, on a cluster as
locally. So a cell whose literal is over :data:`INLINE_MAX` is written as
``{'xz': BASE64}``, its text compressed with LZMA (the runtime's ``bundle.unpack``
restores it; zlib made 369 KiB of repetitive code 129 KiB, LZMA 11 KiB), and a
component whose source would still be over the limit is refused, naming its
largest cell and its size.
"""

from __future__ import annotations

import base64
import json
import lzma
from typing import Any, Iterable, Mapping, Sequence

from kale_magics.analysis.names import python_source
from kale_magics.codegen.layout import wrapped
from kale_magics.codegen.literals import string_literal, text_literal
from kale_magics.errors import CompileError
from kale_magics.model import Cell

#: Linux's limit on one command-line argument, bytes (``MAX_ARG_STRLEN``, the NUL included).
ARGUMENT_MAX = 128 * 1024
#: What KFP adds to a component's source: its import header and the additional functions.
SOURCE_MARGIN = 2048
#: A cell whose readable literal is longer than this many characters is compressed.
INLINE_MAX = 16 * 1024
#: Characters of base64 per line of a compressed cell.
PACKED_LINE = 1024


def python_sources(cells: Iterable[Cell]) -> dict[int, str]:
    """Each cell's code as plain Python (``analysis.names.python_source``), by cell index."""
    return {c.index: python_source(c.source) for c in cells}


def step_cells(cells: Sequence[Cell], sources: Mapping[int, str], indent: str) -> str:
    """The ``cells={...}`` argument of ``bundle.run_step``: source by cell index.

    ``sources`` holds each cell's plain Python (:func:`python_sources`);
    ``indent`` is the indentation of the line the argument starts on. A single
    cell stays on that line: ``cells={7: (...)}``.
    """
    if len(cells) == 1:
        index = cells[0].index
        return f"cells={{{index}: {_source_literal(sources[index], indent + '    ')}}}"
    inner = indent + "    "
    entries = "".join(f"{inner}{c.index}: {_source_literal(sources[c.index], inner + '    ')},\n"
                      for c in cells)
    return "cells={\n" + entries + indent + "}"


def prelude_cells(cells: Sequence[Cell], sources: Mapping[int, str], indent: str) -> str:
    """``(index, kind, source),`` lines for the imports and functions cells, each at ``indent``."""
    return "".join(f"{indent}({c.index}, {c.annotation.kind!r}, "
                   f"{_source_literal(sources[c.index], indent + '    ')}),\n" for c in cells)


def _source_literal(source: str, indent: str) -> str:
    literal = text_literal(source, indent)
    if len(literal) <= INLINE_MAX:
        return literal
    packed = base64.b64encode(lzma.compress(source.encode("utf-8"))).decode("ascii")
    lines = "".join(f"{indent}{packed[i:i + PACKED_LINE]!r}\n"
                    for i in range(0, len(packed), PACKED_LINE))
    return f"{{'xz': (\n{lines}{indent[:-4]})}}"


def places(cells: Iterable[Cell]) -> str:
    """``[(index, notebook, number), ...]`` for the cells of referenced notebooks (Kale's
    ``notebook:NAME`` composition), which tracebacks name by their own notebook and number."""
    found = {c.index: (c.notebook, c.number) for c in cells if c.notebook}
    return wrapped("[", [f"({index!r}, {string_literal(notebook)}, {number!r})"
                         for index, (notebook, number) in found.items()], "]", 8)


def check_argument_size(component: str, source: str, cells: Sequence[Cell]) -> None:
    """Refuse a component whose source would not fit in one command-line argument.

    Parameters
    ----------
    component:
        What the component is, for the message: ``"step 'train'"``.
    source:
        The component's rendered source (decorator and function).
    cells:
        The cells whose code it carries; the largest is named.

    Raises
    ------
    CompileError
        ``len(source)`` in UTF-8 plus :data:`SOURCE_MARGIN` is over
        :data:`ARGUMENT_MAX` - 1; the message names the largest cell, its size
        and the fix.
    """
    size = len(source.encode("utf-8")) + SOURCE_MARGIN
    if size < ARGUMENT_MAX or not cells:
        return
    largest = max(cells, key=lambda c: len(c.source.encode("utf-8")))
    raise CompileError(
        f"{largest.describe()} is {_kib(len(largest.source.encode('utf-8')))} of code: with it "
        f"the {component} would be {_kib(size)} even compressed, over the {_kib(ARGUMENT_MAX)} "
        "Linux allows for one command-line argument of its container; move data out of the "
        "code (read it from a file in a step) or split the cell")


def check_parameter_sizes(step: str, values: Mapping[str, Any]) -> None:
    """Refuse parameter defaults that would not fit in the step's executor input argument.

    KFP hands a step its parameter values in one command-line argument
    (``--executor_input``, a JSON document), under the same 128 KiB limit.

    Parameters
    ----------
    step:
        The step's name, for the message.
    values:
        The step's parameters as KFP carries them (``parameters.kfp_value``), by name.

    Raises
    ------
    CompileError
        Their JSON plus :data:`SOURCE_MARGIN` is over :data:`ARGUMENT_MAX` - 1; the
        message names the largest parameter and its size.
    """
    sizes = {name: len(json.dumps(value).encode("utf-8")) for name, value in values.items()}
    if not sizes or sum(sizes.values()) + SOURCE_MARGIN < ARGUMENT_MAX:
        return
    largest = max(sizes, key=sizes.get)
    raise CompileError(
        f"parameter {largest!r} is {_kib(sizes[largest])}: KFP hands step {step!r} its parameters "
        f"in one command-line argument, which Linux limits to {_kib(ARGUMENT_MAX)}; save the "
        "data to a file and read it in the step, or make the value smaller")


def _kib(size: int) -> str:
    return f"{size / 1024:.0f} KiB"
