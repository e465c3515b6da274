"""The order a local run walks its tasks in, and which imports refuse a local run (pure units)."""

from __future__ import annotations

from kale_magics.codegen.packages import sure_imports
from kale_magics.runner.local_dag import task_order


def test_tasks_keep_edges_and_otherwise_follow_the_plan() -> None:
    dependencies = {"kale-runtime": [], "c": ["kale-runtime"], "a": ["kale-runtime"],
                    "b-two": ["kale-runtime", "c"], "d": ["kale-runtime", "a"]}
    # plan order a, b_two, c, d; b_two waits for c, so c comes before it
    assert task_order(dependencies, ["a", "b_two", "c", "d"]) == ["kale-runtime", "a", "c",
                                                                  "b-two", "d"]


def test_only_imports_that_always_run_count() -> None:
    source = ("import os, numpy.linalg as la\nfrom pandas import DataFrame\nfrom . import near\n"
              "from __future__ import annotations\nwith open('f') as f:\n    import yaml\n"
              "try:\n    import ujson\nexcept ImportError:\n    ujson = None\n"
              "if False:\n    import never\ndef later():\n    import inside\n")
    assert sure_imports(source) == ("os", "numpy", "pandas", "yaml")
    assert sure_imports("def broken(:\n") == ()
