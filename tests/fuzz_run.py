"""Run the fuzzing harness by hand and print what was tried, by class and outcome.

    python -m tests.fuzz_run 20000        # examples; the table goes to docs/reliability.md

Each example is checked as in tests/test_fuzz.py; the first failing one stops the run
with hypothesis' minimal example.
"""

from __future__ import annotations

import collections
import contextlib
import sys
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings

from tests import fuzzing


def run(examples: int) -> collections.Counter[tuple[str, str]]:
    """Check ``examples`` hostile notebooks; the count of each ``(class, outcome)``."""
    tally: collections.Counter[tuple[str, str]] = collections.Counter()

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(sample=fuzzing.example())
    def check(sample: tuple[str, str, bytes]) -> None:
        kind, name, data = sample
        with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
            outcome = fuzzing.check_compile(Path(tmp), name, data)
        assert kind != "valid" or outcome == "compiled", outcome
        tally[kind, outcome] += 1

    check()
    return tally


def table(tally: collections.Counter[tuple[str, str]]) -> str:
    """The counts as a Markdown table: one row per class, one column per outcome."""
    outcomes = sorted({o for _, o in tally})
    rows = ["| class | tried | " + " | ".join(outcomes) + " |",
            "|---|---|" + "---|" * len(outcomes)]
    for kind in fuzzing.CLASSES:
        counts = [tally[kind, o] for o in outcomes]
        rows.append(f"| {kind} | {sum(counts)} | " + " | ".join(map(str, counts)) + " |")
    rows.append(f"| all | {sum(tally.values())} | "
                + " | ".join(str(sum(tally[k, o] for k in fuzzing.CLASSES)) for o in outcomes) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    started = time.monotonic()
    counts = run(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
    print(table(counts))
    print(f"\n{sum(counts.values())} examples in {time.monotonic() - started:.0f} s")
