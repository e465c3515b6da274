"""Fuzzing (hypothesis): hostile notebooks through reader, analysis, code generation and compile.

Every example compiles to a DSL that parses, with its files under the output folder, or is
refused with a one-line KaleError that is not "a kale-magics bug"; code planted in every
place user text can go never runs at compile time (see tests/fuzzing.py). CI runs
FUZZ_EXAMPLES examples (15-40 s here, depending on load); `KALE_FUZZ_EXAMPLES=N` runs more, and
`python -m tests.fuzz_run N` prints the counts per class for docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import os

from hypothesis import HealthCheck, given, settings

from tests import fuzzing

FUZZ_EXAMPLES = int(os.environ.get("KALE_FUZZ_EXAMPLES", "1000"))


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(sample=fuzzing.example())
def test_hostile_notebook_compiles_or_is_refused_in_one_line(tmp_path_factory, sample) -> None:
    kind, name, data = sample
    folder = tmp_path_factory.mktemp("fuzz")
    with contextlib.chdir(folder):
        outcome = fuzzing.check_compile(folder, name, data)
    if kind == "valid":
        assert outcome == "compiled"
