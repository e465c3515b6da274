"""Local run of a notebook: kale-magics' pipeline versus nbclient and Kale's DSL under kfp.local.

For each notebook, each contender runs as its own process, as a user starts it:

- ``ours``: this module as a worker (``python -m bench.local_run NOTEBOOK OUTDIR``):
  import kale-magics, start the local target's process and compile meanwhile (as
  ``kale-magics run`` and ``%kale run`` do), run; it reports the compile and run
  times, each step's ``duration_s`` and the step runtime's bookkeeping;
- ``nbclient``: the notebook executed top to bottom in a fresh ``python3`` kernel
  of the same environment (what papermill does, without papermill's extras);
- ``kale``: ``kale --nb`` on the Kale-tagged twin, then its DSL with ``kfp.local``
  (``SubprocessRunner(use_venv=False)``) inside Kale's venv.

Our per-step overhead is ``(run_s - sum(duration_s) - imports_s) / steps``: the time of the
local run not spent inside the step runtime (process start, KFP's executor,
kfp.local's orchestration). ``imports_s`` is the time the step server spent running the
notebook's leading imports once for every step (``runner.prefork``, read from its log): the
notebook pays it once too, and before the step server each step paid it inside its runtime. The step runtime's own bookkeeping (loading the
embedded runtime, loading inputs, saving outputs) is inside ``duration_s``; it is
estimated by replaying the run's loads and saves in the worker.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.kale_env import KaleEnv, compile_with_kale, run_kale_dsl
from bench.timing import error_summary, median, timed

NBCLIENT = """
import sys, nbformat
from nbclient import NotebookClient
nb = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(nb, timeout=3600, kernel_name="python3",
               resources={"metadata": {"path": sys.argv[2]}}).execute()
"""
MARKER = "LOCAL_RUN_BENCH "


def run_ours(notebook: Path, out: Path) -> dict[str, Any]:
    """Run the worker on ``notebook`` in a fresh process; its figures plus ``total_s``.

    ``total_s`` runs from starting the process to the end of the local run (the
    worker's bookkeeping estimate afterwards is not counted).
    """
    start = time.time()
    result = subprocess.run([sys.executable, "-m", "bench.local_run", str(notebook), str(out)],
                            capture_output=True, text=True, timeout=3600,
                            cwd=Path(__file__).resolve().parents[1])
    for line in result.stdout.splitlines():
        if line.startswith(MARKER):
            figures = json.loads(line[len(MARKER):])
            return {**figures, "total_s": figures.pop("run_end_epoch") - start}
    return {"state": "FAILED", "error": error_summary(result.stderr), "total_s": None}


def run_nbclient(notebook: Path) -> tuple[float, str]:
    """Seconds to execute ``notebook`` top to bottom in a fresh kernel, and the error if any."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", NBCLIENT, str(notebook), str(notebook.parent)],
                            capture_output=True, text=True, timeout=3600)
    error = error_summary(result.stderr) if result.returncode else ""
    return time.perf_counter() - start, error


def run_kale(notebook: Path, kale: KaleEnv, workdir: Path) -> dict[str, Any]:
    """Compile the Kale-tagged twin with ``kale --nb`` and run its DSL under kfp.local."""
    from bench.notebooks import kale_tagged

    folder = workdir / "kale-run" / notebook.stem
    tagged, note = kale_tagged(notebook, folder)
    if tagged is None:
        return {"state": "NOT RUN", "error": note}
    data = notebook.parent / "data"
    if data.is_dir() and not (folder / "data").exists():
        (folder / "data").symlink_to(data)  # the examples read data/ relative to the notebook
    start = time.perf_counter()
    dsl, note = compile_with_kale(kale, tagged)
    compile_s = time.perf_counter() - start
    if dsl is None:
        return {"state": "NOT RUN", "error": note}
    ran = run_kale_dsl(kale, dsl, folder, workdir / "kale-root")
    total = compile_s + ran["run_s"] if ran.get("run_s") is not None else None
    return {"compile_s": compile_s, **ran, "total_s": total}


def compare(notebook: Path, kale: KaleEnv, runs: int, kale_runs: int,
            workdir: Path) -> dict[str, Any]:
    """Ours and nbclient ``runs`` times each, alternately; Kale ``kale_runs`` times.

    Returns
    -------
    dict
        Medians (``ours``, ``nbclient_s``, ``kale``), the runs themselves, ratios
        and notes; ``kale_note`` says why Kale was not run.
    """
    ours_runs, nbclient_runs, errors = [], [], []
    for index in range(max(1, runs)):
        ours_runs.append(run_ours(notebook, workdir / "ours" / f"{notebook.stem}-{index}"))
        seconds, error = run_nbclient(notebook)
        nbclient_runs += [] if error else [seconds]
        errors += [f"nbclient: {error}"] if error else []
    errors += [f"ours: {r['error']}" for r in ours_runs if r.get("state") != "SUCCEEDED"]
    kale_note = kale.note or ("" if kale_runs else "Kale's local run skipped in quick mode "
                              "(it takes about 10 s per step)")
    kale_results = [run_kale(notebook, kale, workdir) for _ in range(kale_runs)
                    if kale.available]
    kale_ok = [k for k in kale_results if k.get("state") == "SUCCEEDED"]
    kale_note = kale_note or next((k["error"] for k in kale_results if k not in kale_ok), "")
    ours = summarise_ours(ours_runs)
    nbclient_s = median(nbclient_runs)
    kale_total = median([k["total_s"] for k in kale_ok])
    kale_run = median([k["run_s"] for k in kale_ok])
    return {"notebook": notebook.name, "ours": ours, "ours_runs": ours_runs,
            "nbclient_s": nbclient_s, "nbclient_runs": nbclient_runs,
            "kale_total_s": kale_total, "kale_run_s": kale_run, "kale_runs": kale_results,
            "kale_note": kale_note, "errors": errors,
            "ours_over_nbclient": _ratio(ours.get("total_s"), nbclient_s),
            "kale_over_ours": _ratio(kale_total, ours.get("total_s")),
            "kale_over_ours_run_only": _ratio(kale_run, ours.get("run_s"))}


def summarise_ours(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the successful worker runs (empty when none succeeded)."""
    ok = [r for r in runs if r.get("state") == "SUCCEEDED"]
    if not ok:
        return {}
    keys = ("total_s", "import_s", "compile_s", "run_s", "step_sum_s", "imports_s",
            "overhead_per_step_s", "bookkeeping_per_step_s")
    return {"steps": ok[0]["steps"], **{key: median([r[key] for r in ok]) for key in keys},
            "largest_gap_s": median([max(r["gaps_s"]) for r in ok])}


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator and denominator else None


# --- the worker ----------------------------------------------------------------------------


def worker(notebook: Path, out: Path) -> dict[str, Any]:
    """Import, compile and run ``notebook`` locally in this process; the figures as a dict."""
    start = time.perf_counter()
    from kale_magics import api

    imported = time.perf_counter()
    target = api.LocalTarget(str(out / "root"))
    target.prepare()  # as `kale-magics run` and `%kale run` do: the run's process starts now
    compiled = api.compile_notebook(notebook, str(out))
    compiled_at = time.perf_counter()
    run_start_epoch = time.time()
    try:
        status = api.run(compiled, target)
    finally:
        target.close()
    run_s = time.perf_counter() - compiled_at
    run_end_epoch = time.time()
    steps = len(status.steps)
    step_sum = sum(s.duration_s or 0.0 for s in status.steps.values())
    imports = leading_imports_seconds(status)
    figures = {"state": status.state, "error": status.error, "steps": steps,
               "import_s": imported - start, "compile_s": compiled_at - imported,
               "run_s": run_s, "run_end_epoch": run_end_epoch, "step_sum_s": step_sum,
               "imports_s": imports, "overhead_per_step_s": (run_s - step_sum - imports) / steps,
               "durations": {n: s.duration_s for n, s in status.steps.items()},
               "gaps_s": step_gaps(status, run_start_epoch, run_end_epoch)}
    if status.state == "SUCCEEDED":
        figures["bookkeeping_per_step_s"] = bookkeeping_per_step(compiled, status)
    return figures


def leading_imports_seconds(status: Any) -> float:
    """Seconds the run's step server spent on the notebook's leading imports (its log's
    ``ran the leading imports in X s``); 0 when the steps were not forked."""
    from kale_magics.runner.prefork import LOG_NAME

    folders = {os.path.dirname(s.log_path) for s in status.steps.values() if s.log_path}
    for folder in folders:
        log = Path(folder) / LOG_NAME
        found = re.search(r"ran the leading imports in ([0-9.]+) s",
                          log.read_text()) if log.exists() else None
        if found:
            return float(found.group(1))
    return 0.0


def step_gaps(status: Any, run_start: float, run_end: float) -> list[float]:
    """Seconds outside every step's runtime, in order: before the first step, between steps
    (the previous step's process exit plus the next one's start), after the last.

    kfp.local runs the steps one after another, so these add up to the overhead.
    """
    marks = [run_start] + [t for s in sorted(status.steps.values(), key=lambda s: s.start or 0)
                           for t in (s.start, s.end) if t is not None] + [run_end]
    return [round(b - a, 4) for a, b in zip(marks[::2], marks[1::2])]


def bookkeeping_per_step(compiled: Any, status: Any) -> float:
    """Mean seconds per step the step runtime spends outside user code (an estimate).

    The embedded runtime's start in a fresh interpreter (as each step does it)
    plus the step's loads of its inputs and saves of its outputs, replayed
    here on the run's own artifacts after one untimed pass (imports).
    """
    from bench.local_overhead import loader_seconds
    from kale_magics.runtime import marshal

    plan = compiled.plan

    def replay() -> float:
        total = 0.0
        with tempfile.TemporaryDirectory(prefix="bench-replay-") as folder:
            for step in plan.steps:
                for item in step.inputs:
                    path = status.steps[item.producer].artifacts[item.name]["path"]
                    total += timed(lambda: marshal.load(path, item.name))
                for name in step.outputs:
                    value = marshal.load(status.steps[step.name].artifacts[name]["path"], name)
                    target = os.path.join(folder, f"{step.name}-{name}")
                    total += timed(lambda: marshal.save(value, target, name))
        return total

    replay()
    return loader_seconds(compiled.dsl_path, repeats=3) + replay() / len(plan.steps)


def main() -> None:
    """Worker entry point: ``python -m bench.local_run NOTEBOOK OUTDIR`` prints one JSON line."""
    notebook, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    print(MARKER + json.dumps(worker(notebook, out)), flush=True)


if __name__ == "__main__":
    main()
