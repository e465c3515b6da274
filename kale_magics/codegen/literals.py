"""Python literals for generated code: user text enters generated code only through ``repr()``.

KFP replaces placeholders in a component's command, which holds the
component's source: ``{{$}}``, ``{{$.pipeline_job_name}}``, ``{{$.inputs...}}``
and ``/kfp-workspace`` (``kfp.local.placeholder_utils``, KFP 2.17; the KFP
backend's driver does the same, and Argo replaces ``{{...}}``). So no literal
written here contains ``{{`` or ``/kfp-workspace``: such text is cut into
adjacent literals (``'{' '{$}}'``), which Python joins back into the same
string, byte for byte. Parameter values are escaped by
:func:`kale_magics.runtime.step.escape_text` instead.
"""

from __future__ import annotations

import re
from typing import Any

from kale_magics.runtime.step import PLACEHOLDER_MARKS

#: Where text is cut: between the two braces of ``{{``, and after ``/kfp-`` of ``/kfp-workspace``.
_CUT = re.compile("|".join(f"(?<={re.escape(mark[:len(mark) // 2])})(?={re.escape(mark[len(mark) // 2:])})"
                           for mark in PLACEHOLDER_MARKS))


def string_literal(text: str) -> str:
    """``repr(text)``, as adjacent literals where KFP would substitute a placeholder in it."""
    return " ".join(repr(piece) for piece in _CUT.split(text)) if _CUT.search(text) else repr(text)


def literal(value: Any) -> str:
    """``repr(value)`` for str, int, float, bool, None and lists, tuples and dicts of them, with
    every string written by :func:`string_literal`."""
    if isinstance(value, str):
        return string_literal(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{literal(k)}: {literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        items = ", ".join(literal(v) for v in value)
        return f"[{items}]" if isinstance(value, list) else f"({items}{',' if len(value) == 1 else ''})"
    return repr(value)


def text_literal(text: str, indent: str) -> str:
    """Render ``text`` as a readable, parenthesised literal, one ``repr()`` per line.

    Parameters
    ----------
    text:
        Any string, quotes, backslashes and newlines included.
    indent:
        The indentation of the continuation lines.

    Returns
    -------
    str
        ``(\\n<indent>'line 1\\n'\\n<indent>'line 2'\\n<indent[:-4]>)``: implicit
        concatenation of ``repr()`` of each line (cut where :func:`string_literal`
        cuts), equal to ``text`` when evaluated.
    """
    lines = text.splitlines(keepends=True) or [""]
    body = "".join(f"{indent}{string_literal(line)}\n" for line in lines)
    return f"(\n{body}{indent[:-4]})"
