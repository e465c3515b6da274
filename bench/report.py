"""Show a stored run again: ``python -m bench.report [RESULTS_JSON]``.

Prints the text report of ``bench/results/latest.json`` (or the file given) and
its targets as a Markdown table, the form README.md and docs/benchmarks.md quote.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

from bench.tables import limit_text, measured_text, render

LATEST = Path(__file__).resolve().parent / "results" / "latest.json"


def markdown_targets(rows: Sequence[dict[str, Any]]) -> str:
    """The targets as a Markdown table: target, what is measured, value, limit, status."""
    lines = ["| target | measured | value | limit | status |", "|---|---|---|---|---|"]
    for t in rows:
        lines.append(f"| {t['id']} | {t['what']} | {measured_text(t)} | {limit_text(t)} | {t['status']} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Print the report and the Markdown targets of the results file in ``argv`` (or the latest)."""
    args = sys.argv[1:] if argv is None else list(argv)
    results = json.loads(Path(args[0] if args else LATEST).read_text(encoding="utf-8"))
    print(render(results))
    print()
    print(markdown_targets(results["targets"]))


if __name__ == "__main__":
    main()
