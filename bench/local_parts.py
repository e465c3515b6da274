"""Two parts of a local run's time, each alone: ``python -m bench.local_parts [--runs N]``.

- ``collect``: the ``gc.collect()`` a step process makes before it exits
  (``runtime.step.prepare_exit``) after importing KFP's executor, then what
  Titanic's imports cell imports, and making a DataFrame and a fitted model,
  with what was imported before the step frozen (``gc.freeze()`` when the step
  starts, as ``runtime.step`` does) and without; fresh processes, the two ways
  taking turns;
- ``child_exit``: how long a process that has imported kfp.local and the local
  runner (the run's child process, ``targets.child``) takes to exit after its
  last report: what the caller waited for before it stopped waiting;
- ``pipeline_load``: making the callable pipeline kfp.local runs from the local
  IR of ``notebooks/titanic.ipynb``, and its pipeline spec: KFP's
  ``load_component_from_text`` (pure-Python YAML, twice) against
  ``runner.local.pipeline_component`` (from the dict).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

_STEP = r'''
import sys, time, gc
import kfp.dsl.executor_main
if sys.argv[1] == "frozen":
    gc.freeze()
import pandas as pd, numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
df = pd.DataFrame({"a": np.arange(1000), "b": np.arange(1000) * 2.0})
model = LogisticRegression().fit(df[["a"]], df["a"] % 2)
start = time.perf_counter()
gc.collect()
gc.freeze()
print(time.perf_counter() - start)
'''
_CHILD = ("import kfp.local, sys, time; from kale_magics.runner import local; "
          "sys.stdout.write('reported\\n'); sys.stdout.flush()")


def collect_seconds(runs: int) -> dict[str, float]:
    """Median seconds of the exit collection, ``{"plain": s, "frozen": s}``."""
    found: dict[str, list[float]] = {"plain": [], "frozen": []}
    for _ in range(runs):
        for mode, times in found.items():
            times.append(float(subprocess.run([sys.executable, "-c", _STEP, mode], check=True,
                                              capture_output=True, text=True).stdout))
    return {mode: statistics.median(times) for mode, times in found.items()}


def child_exit_seconds(runs: int) -> float:
    """Median seconds from the child's last report to its exit."""
    waits = []
    for _ in range(runs):
        process = subprocess.Popen([sys.executable, "-c", _CHILD], stdout=subprocess.PIPE, text=True)
        assert process.stdout is not None
        process.stdout.readline()
        reported = time.perf_counter()
        process.wait()
        waits.append(time.perf_counter() - reported)
    return statistics.median(waits)


def pipeline_load_seconds(runs: int) -> dict[str, float]:
    """Median seconds to make Titanic's local pipeline and its spec, ``{"kfp_yaml": s, "ours": s}``."""
    import tempfile
    from pathlib import Path

    from kfp import components

    from kale_magics import api
    from kale_magics.codegen.compile import dump_ir, read_ir
    from kale_magics.runner.local import local_ir, pipeline_component

    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "titanic.ipynb"
    with tempfile.TemporaryDirectory(prefix="bench-parts-") as folder:
        ir = local_ir(read_ir(api.compile_notebook(notebook, folder))[0], {})
    found: dict[str, list[float]] = {"kfp_yaml": [], "ours": []}
    for _ in range(runs):
        start = time.perf_counter()
        _ = components.load_component_from_text(dump_ir([ir])).pipeline_spec
        found["kfp_yaml"].append(time.perf_counter() - start)
        start = time.perf_counter()
        _ = pipeline_component(ir).pipeline_spec
        found["ours"].append(time.perf_counter() - start)
    return {way: statistics.median(times) for way, times in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    collect = collect_seconds(args.runs)
    print(f"exit collection, nothing frozen:     {collect['plain'] * 1000:8.1f} ms")
    print(f"exit collection, KFP frozen:         {collect['frozen'] * 1000:8.1f} ms")
    print(f"child's exit after its last report:  {child_exit_seconds(args.runs) * 1000:8.1f} ms")
    load = pipeline_load_seconds(args.runs)
    print(f"Titanic's pipeline, KFP from YAML:   {load['kfp_yaml'] * 1000:8.1f} ms")
    print(f"Titanic's pipeline, from the IR:     {load['ours'] * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
