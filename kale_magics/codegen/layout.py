"""Line layout of the generated DSL: calls and literals on one line when short, else split."""

from __future__ import annotations

from typing import Sequence

#: Longest generated line before a call or literal is split one item per line.
LINE_MAX = 120


def wrapped(opening: str, items: Sequence[str], closing: str, indent: int) -> str:
    """``opening + items + closing`` on one line when short, else one item per line.

    Parameters
    ----------
    indent:
        The column the opening starts at; items go 4 further.
    """
    flat = opening + ", ".join(items) + closing
    if indent + len(flat) <= LINE_MAX or not items:
        return flat
    inner = " " * (indent + 4)
    return opening + "\n" + "".join(f"{inner}{item},\n" for item in items) + " " * indent + closing
