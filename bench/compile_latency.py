"""Compile latency: whole process against Kale 2.3, and in a warm kernel as notebooks grow.

Run through ``python -m bench`` (``--only compile`` for these two alone).

- :func:`process_latency`: ``kale-magics compile NB`` versus Kale's ``kale --nb NB`` on
  the Kale-tagged twin of the same notebook, each a fresh process, run alternately.
- :func:`warm_latency`: ``api.compile_notebook`` in this (warm) process on synthetic
  notebooks of growing size, split into read+analysis, codegen and the KFP IR compile.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from bench.kale_env import KaleEnv, compile_with_kale
from bench.notebooks import kale_tagged, write_synthetic
from bench.timing import alternate, median, run_command


def ours_command() -> list[str]:
    """The ``kale-magics`` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "kale-magics"
    return [str(script)] if script.exists() else [sys.executable, "-m", "kale_magics"]


def process_latency(notebook: Path, kale: KaleEnv, runs: int, workdir: Path,
                    warm_up: bool = True) -> dict[str, Any]:
    """Median seconds of ``kale-magics compile`` and of ``kale --nb`` on ``notebook``.

    Both are whole processes (interpreter start, imports, reading, analysis,
    DSL and IR written). Kale runs on the notebook exported with Kale's tags;
    when Kale is missing or rejects the notebook only ours is timed and
    ``kale_note`` says why.

    Returns
    -------
    dict
        ``notebook``, ``steps``, ``ours_s``, ``ours_runs``, ``kale_s``, ``kale_runs``,
        ``kale_over_ours`` (None without Kale), ``kale_note``.
    """
    from kale_magics import api

    out = workdir / "ours" / notebook.stem
    ours = ours_command() + ["compile", str(notebook), "-o", str(out)]
    contenders: dict[str, Callable[[], object]] = {"ours": lambda: run_command(ours)}
    note = kale.note
    if kale.available:
        tagged, note = kale_tagged(notebook, workdir / "kale" / notebook.stem)
        if tagged is not None:
            dsl, note = compile_with_kale(kale, tagged)  # also the warm-up
            if dsl is not None:
                contenders["kale"] = lambda: run_command([kale.kale, "--nb", tagged.name],
                                                         cwd=str(tagged.parent))
    compile_bytecode()
    if warm_up:
        run_command(ours)
    times = alternate(contenders, runs)
    ours_s, kale_s = median(times["ours"]), median(times.get("kale", []))
    return {"notebook": notebook.name, "steps": len(api.read_plan(notebook).steps),
            "ours_s": ours_s, "ours_runs": times["ours"], "kale_s": kale_s,
            "kale_runs": times.get("kale", []), "kale_note": note,
            "kale_over_ours": kale_s / ours_s if kale_s and ours_s else None}


def compile_bytecode() -> None:
    """Write kale_magics' bytecode (``__pycache__``), as installing a wheel does.

    Kale's venv was installed by pip, which compiles every module; an editable
    install compiles nothing, and with ``PYTHONDONTWRITEBYTECODE`` set (as on the
    machine of the committed figures) each run would compile every module again.
    """
    import compileall

    import kale_magics

    compileall.compile_dir(str(Path(kale_magics.__file__).parent), quiet=1)


@contextlib.contextmanager
def phase_timer(module: Any, name: str, sink: list[float]) -> Iterator[None]:
    """While active, append the seconds of every call of ``module.name`` to ``sink``.

    Used to split ``compile_plan`` into codegen (``render_module``) and the rest
    without calling anything twice; the module is restored on exit.
    """
    original = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            sink.append(time.perf_counter() - start)

    setattr(module, name, wrapper)
    try:
        yield
    finally:
        setattr(module, name, original)


def warm_round(notebook: Path, out: Path) -> dict[str, float]:
    """One warm compile of ``notebook``: seconds of each phase and the total."""
    from kale_magics import api
    from kale_magics.codegen import compile as compile_module

    rendering: list[float] = []
    start = time.perf_counter()
    plan = api.read_plan(notebook)
    analysed = time.perf_counter()
    with phase_timer(compile_module, "render_module", rendering):
        compile_module.compile_plan(plan, str(out))
    end = time.perf_counter()
    return {"read_analysis_s": analysed - start, "codegen_s": sum(rendering),
            "ir_compile_s": end - analysed - sum(rendering), "total_s": end - start}


def warm_latency(sizes: list[int], runs: int, budget_s: float, workdir: Path) -> dict[str, Any]:
    """Warm-kernel compile latency of synthetic notebooks of ``sizes`` steps.

    Each size is compiled ``runs`` times (fewer when one size has used
    ``budget_s`` seconds, at least once) after one untimed warm-up compile
    (imports, first-call caches). Phases are medians over the rounds.

    Returns
    -------
    dict
        ``sizes``: one row per size (``steps``, ``cells``, ``runs``, phase medians),
        ``fit``: the least-squares line and the growth exponent (see :func:`growth`).
    """
    warm = write_synthetic(workdir / "synthetic", 5)
    warm_round(warm, workdir / "warm-up")
    rows = []
    for steps in sizes:
        notebook = write_synthetic(workdir / "synthetic", steps)
        out = workdir / "warm" / notebook.stem
        rounds = [warm_round(notebook, out)]
        while len(rounds) < runs and sum(r["total_s"] for r in rounds) < budget_s:
            rounds.append(warm_round(notebook, out))
        shutil.rmtree(out, ignore_errors=True)
        rows.append({"steps": steps, "cells": _cell_count(notebook), "runs": len(rounds),
                     **{key: median([r[key] for r in rounds]) for key in rounds[0]},
                     "total_runs": [r["total_s"] for r in rounds]})
    return {"sizes": rows, "fit": growth([(r["steps"], r["total_s"]) for r in rows])}


def _cell_count(notebook: Path) -> int:
    import nbformat

    return len(nbformat.read(str(notebook), as_version=4).cells)


def growth(points: list[tuple[int, float]]) -> dict[str, float | None]:
    """How time grows with size: least-squares ``t = intercept + slope * n`` and the exponent.

    ``exponent`` is the log-log slope between the two largest sizes: 1 for
    linear growth, 2 for quadratic (a fixed cost makes it below 1).
    """
    if len(points) < 2:
        return {"intercept_s": None, "slope_s_per_step": None, "exponent": None}
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx
    (x1, y1), (x2, y2) = sorted(points)[-2:]
    exponent = math.log(y2 / y1) / math.log(x2 / x1) if y1 > 0 and y2 > 0 else None
    return {"intercept_s": mean_y - slope * mean_x, "slope_s_per_step": slope,
            "exponent": exponent}
