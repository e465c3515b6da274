"""Every benchmark in one run: ``python -m bench [--quick] [--out DIR] [--only SECTIONS]``.

Runs, in order: (1) whole-process compile against Kale 2.3, (2) compile in a
warm kernel as the notebook grows, (3) local runs against nbclient and Kale's
DSL under kfp.local, (4) data passing against pickle 5 and Kale's formats,
(5) the ``%%kale step`` magic's overhead, (6) the IR's size as the notebook
grows, against Argo's limit, and the largest argument of a component. Prints a table, writes
``latest.json`` and PNG plots into the output folder (default
``bench/results``; ``bench/results/quick`` in quick mode) and checks the
targets of issues 8 and 18.

Kale runs from its own venv (``--kale-venv``, default
``~/.cache/kale-magics-bench/kale-venv``), created on first use in full mode;
quick mode uses it only when it already exists.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from bench import (compile_latency, ir_size, local_run, magic_overhead, marshal, plots, tables,
                   targets)
from bench.kale_env import DEFAULT_VENV, KaleEnv, kale_env
from bench.machine import load_average, machine_info
from bench.notebooks import write_synthetic

RESULTS = Path(__file__).resolve().parent / "results"
EXAMPLES = Path(__file__).resolve().parents[1] / "notebooks"
SECTION_NAMES = ("compile_process", "compile_warm", "local_run", "marshal", "magic", "ir_size")


@dataclass(frozen=True)
class Mode:
    """Sizes and repetitions of one mode."""

    name: str
    process_runs: int
    process_notebooks: tuple[str, ...]  # "synthetic:N" or an example's file name
    warm_sizes: tuple[int, ...]
    warm_runs: int
    warm_budget_s: float
    local_runs: int
    local_kale_runs: int
    local_notebooks: tuple[str, ...]
    magic_runs: int
    ir_sizes: tuple[int, ...]
    ir_repeats: int

    @property
    def quick(self) -> bool:
        """Whether this is the quick mode."""
        return self.name == "quick"


FULL = Mode("full", 5, ("synthetic:10", "wine.ipynb", "titanic.ipynb"), (10, 100, 1000), 5, 60.0,
            3, 1, ("synthetic:10", "wine.ipynb", "titanic.ipynb"), 300, (10, 20, 50, 100, 200), 9)
QUICK = Mode("quick", 1, ("synthetic:10",), (5, 10, 20), 2, 3.0, 1, 0, ("synthetic:4",), 30,
             (5, 10, 20), 1)


def notebook_path(spec: str, workdir: Path) -> Path:
    """``synthetic:N`` -> a synthetic notebook of N steps; else an example notebook."""
    if spec.startswith("synthetic:"):
        return write_synthetic(workdir / "synthetic", int(spec.partition(":")[2]))
    return EXAMPLES / spec


def run_sections(mode: Mode, kale: KaleEnv, workdir: Path,
                 only: set[str]) -> dict[str, dict[str, Any]]:
    """Run the selected sections; a section that fails records ``error`` and the rest go on."""
    def process() -> dict[str, Any]:
        rows = [compile_latency.process_latency(notebook_path(spec, workdir), kale,
                                                mode.process_runs, workdir,
                                                warm_up=not mode.quick)
                for spec in mode.process_notebooks]
        return {"runs": mode.process_runs, "notebooks": rows}

    def local() -> dict[str, Any]:
        rows = [local_run.compare(notebook_path(spec, workdir), kale, mode.local_runs,
                                  mode.local_kale_runs, workdir)
                for spec in mode.local_notebooks]
        return {"runs": mode.local_runs, "kale_runs": mode.local_kale_runs, "notebooks": rows}

    def data() -> dict[str, Any]:
        results, notes = marshal.measure(mode.quick, parent=str(workdir))
        return marshal.to_json(results, notes, mode.quick, 1 if mode.quick else 3)

    sections: dict[str, Callable[[], dict[str, Any]]] = {
        "compile_process": process,
        "compile_warm": lambda: {**compile_latency.warm_latency(
            list(mode.warm_sizes), mode.warm_runs, mode.warm_budget_s, workdir),
            "runs": mode.warm_runs, "budget_s": mode.warm_budget_s},
        "local_run": local, "marshal": data,
        "magic": lambda: magic_overhead.measure(mode.magic_runs),
        "ir_size": lambda: ir_size.measure(list(mode.ir_sizes), workdir, mode.ir_repeats)}
    return {name: _guarded(name, section) for name, section in sections.items() if name in only}


def _guarded(name: str, section: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        result = section()
    except Exception as error:  # one broken section must not hide the others' figures
        traceback.print_exc()
        result = {"error": f"{type(error).__name__}: {error}"}
    result["seconds"] = time.perf_counter() - start
    print(f"[bench] {name} done in {result['seconds']:.1f} s", file=sys.stderr, flush=True)
    return result


def run(mode: Mode, out: Path, kale_venv: Path, use_kale: bool = True,
        only: set[str] | None = None) -> dict[str, Any]:
    """Run the benchmarks, write ``out/latest.json`` and the plots; return the results."""
    started, machine = time.perf_counter(), machine_info()
    kale = (kale_env(kale_venv, may_install=not mode.quick) if use_kale
            else KaleEnv(kale_venv, note="Kale not measured: --no-kale"))
    with tempfile.TemporaryDirectory(prefix="kale-magics-bench-") as folder:
        sections = run_sections(mode, kale, Path(folder), set(only or SECTION_NAMES))
    results: dict[str, Any] = {
        "mode": mode.name, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "kale": {"venv": str(kale.venv), "version": kale.version, "note": kale.note},
        "sections": sections, "load_average_end": load_average(),
        "notes": [kale.note] if kale.note else []}
    results["targets"] = [t.as_dict() for t in targets.check_all(results)]
    out.mkdir(parents=True, exist_ok=True)
    results["plots"], plot_note = plots.save_plots(results, out)
    results["notes"] += [plot_note] if plot_note else []
    results["duration_s"] = time.perf_counter() - started
    (out / "latest.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return results


def main(argv: list[str] | None = None) -> int:
    """Command line: run, print the table, say where the files are. Exit 1 if a section failed."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and few runs (under 2 minutes); what CI runs")
    parser.add_argument("--out", type=Path, help="output folder (default bench/results, "
                                                 "or bench/results/quick with --quick)")
    parser.add_argument("--kale-venv", type=Path, default=DEFAULT_VENV,
                        help=f"Kale's virtual environment (default {DEFAULT_VENV})")
    parser.add_argument("--no-kale", action="store_true", help="do not run Kale at all")
    parser.add_argument("--only", help="comma-separated sections: " + ", ".join(SECTION_NAMES))
    args = parser.parse_args(argv)
    only = set(args.only.split(",")) if args.only else set(SECTION_NAMES)
    if only - set(SECTION_NAMES):
        parser.error(f"unknown section(s) {', '.join(sorted(only - set(SECTION_NAMES)))}; "
                     f"choose from {', '.join(SECTION_NAMES)}")
    mode = QUICK if args.quick else FULL
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    results = run(mode, out, args.kale_venv, use_kale=not args.no_kale, only=only)
    print(tables.render(results))
    print(f"\nwrote {out / 'latest.json'}" + "".join(f", {out / p}" for p in results["plots"]))
    return 1 if any("error" in s for s in results["sections"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
