"""Overhead of ``%%kale step`` over a plain cell: ``python -m bench.magic_overhead [--runs N]``.

Runs the same 50-line cell with and without the magic line in an in-process
IPython shell, alternately, and prints the medians and their difference
(target: at most 1 ms). The cell's own work is small, so the difference is
the magic's cost: parsing the line, analysing the body, running it, and
publishing the step's compact line.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import time

from IPython.core.interactiveshell import InteractiveShell

CELL = "\n".join([f"v{i} = {i} * 2 + len(str({i}))" for i in range(49)] + ["total = v48 + 1"])


def timed(shell: InteractiveShell, source: str) -> float:
    start = time.perf_counter()
    result = shell.run_cell(source, store_history=True)
    elapsed = time.perf_counter() - start
    assert result.success, result.error_in_exec
    return elapsed


def measure(runs: int) -> dict[str, float]:
    """Median seconds of a plain and an annotated run of the 50-line cell."""
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "kale_magics")
    plain, annotated = [], []
    with contextlib.redirect_stdout(io.StringIO()):
        for _ in range(20):  # warm up
            timed(shell, CELL), timed(shell, "%%kale step s\n" + CELL)
        for _ in range(runs):
            plain.append(timed(shell, CELL))
            annotated.append(timed(shell, "%%kale step s\n" + CELL))
    return {"cell_lines": 50, "runs": runs, "plain_ms": statistics.median(plain) * 1000,
            "magic_ms": statistics.median(annotated) * 1000,
            "overhead_ms": (statistics.median(annotated) - statistics.median(plain)) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    figures = measure(args.runs)
    print(f"50-line cell, median of {args.runs}: plain {figures['plain_ms']:.3f} ms, "
          f"%%kale step {figures['magic_ms']:.3f} ms, overhead {figures['overhead_ms']:.3f} ms "
          f"(target <= 1 ms: {'MET' if figures['overhead_ms'] <= 1 else 'MISSED'})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
