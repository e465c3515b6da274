"""Timing helpers shared by the benchmarks: medians of alternating runs within a time budget."""

from __future__ import annotations

import re
import statistics
import subprocess
import time
from typing import Callable, Mapping, Sequence


def timed(function: Callable[[], object]) -> float:
    """Seconds one call of ``function`` takes (``time.perf_counter``)."""
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def alternate(contenders: Mapping[str, Callable[[], object]], runs: int,
              budget_s: float = float("inf")) -> dict[str, list[float]]:
    """Run each contender in turn, ``runs`` rounds, stopping early once ``budget_s`` is spent.

    Taking turns spreads any drift of the machine (other load, thermal state,
    page cache) over every contender alike. At least one round always runs.

    Returns
    -------
    dict
        Seconds of each round, per contender name.
    """
    times: dict[str, list[float]] = {name: [] for name in contenders}
    start = time.perf_counter()
    for _ in range(max(1, runs)):
        for name, function in contenders.items():
            times[name].append(timed(function))
        if time.perf_counter() - start > budget_s:
            break
    return times


def median(values: Sequence[float]) -> float | None:
    """The median of ``values``, None when there are none."""
    return statistics.median(values) if values else None


def run_command(command: Sequence[str], cwd: str | None = None,
                timeout_s: float = 1800) -> subprocess.CompletedProcess[str]:
    """Run ``command`` capturing its output as text; raises ``CalledProcessError`` when it fails."""
    return subprocess.run(list(command), cwd=cwd, capture_output=True, text=True, check=True,
                          timeout=timeout_s)


def last_line(text: str) -> str:
    """The last non-empty line of ``text`` (an error's message at the end of a traceback)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Warning)\b")


def strip_ansi(text: str) -> str:
    """``text`` without terminal colour codes (kfp.local colours task names)."""
    return _ANSI.sub("", text)


def error_summary(stderr: str, limit: int = 300) -> str:
    """The message of the last exception in a traceback, on one line.

    ``RuntimeError: Flakes reported ...`` continues over the lines below it;
    they are joined with `` | ``. For a ``SyntaxError`` the offending source
    line (the one above the caret) is added. Falls back to the last line.
    """
    lines = strip_ansi(stderr).splitlines()
    starts = [i for i, line in enumerate(lines) if _EXCEPTION.match(line)]
    if not starts:
        return last_line(strip_ansi(stderr))[:limit]
    start = starts[-1]
    message = " | ".join(line.strip() for line in lines[start:] if line.strip())
    carets = [i for i in range(start) if lines[i].strip() and set(lines[i].strip()) == {"^"}]
    if lines[start].startswith("SyntaxError") and carets and carets[-1] > 0:
        message += f" (at `{lines[carets[-1] - 1].strip()}`)"
    return message[:limit]
