"""Per-step overhead of a local run: ``python -m bench.local_overhead [--steps N] [--json PATH]``.

Runs a chain of N trivial steps (each adds 1 to a number it receives from the
step before) through ``kale_magics.api.run_local`` and splits each step's time:

- ``ours``: kale-magics' own machinery in the step: importing the step runtime
  from the ``kale_runtime`` artifact (measured in a fresh interpreter, as the step does it) plus the
  runtime's time around the user code (loading inputs, saving outputs, metrics);
- ``kfp``: the rest of the gap between two steps: kfp.local's orchestration,
  process start, KFP's executor;
- and, for comparison, the same step's time when KFP's default ``pip install``
  preamble runs (what ``kfp.local`` does with ``use_venv=False`` by default).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import nbformat

from kale_magics import api

_LOADER_PROBE = """
import sys, time
start = time.perf_counter()
sys.path.insert(0, sys.argv[1])
from kale_magics.runtime.bundle import run_step
print(time.perf_counter() - start)
"""


def chain_notebook(folder: Path, steps: int) -> Path:
    """A notebook of ``steps`` trivial steps in a chain."""
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell("%%kale step s0\nv0 = 0"))
    for i in range(1, steps):
        nb.cells.append(nbformat.v4.new_code_cell(f"%%kale step s{i}\nv{i} = v{i - 1} + 1"))
    nb.cells.append(nbformat.v4.new_code_cell(f"%%kale metrics\nv{steps - 1}"))
    path = folder / "chain.ipynb"
    nbformat.write(nb, str(path))
    return path


def loader_seconds(dsl_path: str, repeats: int = 5) -> float:
    """Median seconds a fresh interpreter takes to import the step runtime from the bundle the
    ``kale_runtime`` component of ``dsl_path`` writes: what every step does first."""
    spec = importlib.util.spec_from_file_location("bench_loader_dsl", dsl_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with tempfile.TemporaryDirectory(prefix="bench-bundle-") as folder:
        module.kale_runtime.python_func(types.SimpleNamespace(path=folder))
        times = [float(subprocess.run([sys.executable, "-c", _LOADER_PROBE, folder], text=True,
                                      capture_output=True, check=True).stdout)
                 for _ in range(max(1, repeats))]
    return statistics.median(times)


def measure(steps: int) -> dict[str, float]:
    """Run the chain once and return the per-step figures in seconds."""
    with tempfile.TemporaryDirectory() as folder:
        path = chain_notebook(Path(folder), steps)
        compiled = api.compile_notebook(path)
        start = time.perf_counter()
        status = api.run_local(compiled)
        wall = time.perf_counter() - start
        assert status.state == "SUCCEEDED", status.error
        ordered = sorted(status.steps.values(), key=lambda s: s.start or 0)
        gaps = [b.start - a.end for a, b in zip(ordered, ordered[1:])]
        inside = statistics.median(s.duration_s for s in ordered)
        loader = loader_seconds(compiled.dsl_path)
    return {"steps": steps, "wall_s": wall, "per_step_s": wall / steps,
            "gap_between_steps_s": statistics.median(gaps), "runtime_inside_s": inside,
            "loader_s": loader, "ours_per_step_s": loader + inside,
            "kfp_per_step_s": statistics.median(gaps) - loader}


def pip_preamble_seconds() -> float:
    """Time of KFP's default per-step ``pip install kfp==<version> --no-deps`` when nothing changes."""
    import kfp

    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-warn-script-location",
                    f"kfp=={kfp.__version__}", "--no-deps"], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    figures = measure(args.steps)
    figures["kfp_default_pip_preamble_s"] = pip_preamble_seconds()
    print(f"local run of {args.steps} trivial steps: {figures['wall_s']:.2f} s "
          f"({figures['per_step_s']:.3f} s per step)")
    for key in ("ours_per_step_s", "loader_s", "runtime_inside_s", "kfp_per_step_s",
                "gap_between_steps_s", "kfp_default_pip_preamble_s"):
        print(f"  {key:<28} {figures[key] * 1000:8.1f} ms")
    print("target: ours_per_step_s <= 150 ms;", "MET" if figures["ours_per_step_s"] <= 0.15
          else "MISSED")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
