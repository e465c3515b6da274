"""Python literals for generated code: user text enters generated code only through ``repr()``."""

from __future__ import annotations


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
        concatenation of ``repr()`` of each line, equal to ``text`` when evaluated.
    """
    lines = text.splitlines(keepends=True) or [""]
    body = "".join(f"{indent}{line!r}\n" for line in lines)
    return f"(\n{body}{indent[:-4]})"
