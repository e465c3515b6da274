"""IR size at scale: bytes per step, the 100-step IR against Argo's limit, the largest argument.

Run through ``python -m bench`` (``--only ir_size``).

KFP on Argo keeps a run's workflow in one Kubernetes object: Argo refuses a
workflow over 1 MiB compressed, etcd a request over 1.5 MiB by default
(kubeflow/pipelines#4170, #13422). Linux refuses one command-line argument over
128 KiB (``MAX_ARG_STRLEN``), and KFP passes each component's source as one.

- :func:`measure`: synthetic notebooks of growing size compiled once each: the
  IR's bytes (YAML as written, and gzip), the bytes of the notebook's own code
  in it, the largest single argument of any component; a notebook with a
  142 KB functions cell; and the time a step takes to import the step runtime
  from the ``kale_runtime`` artifact, in a fresh interpreter.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from bench.compile_latency import growth
from bench.local_overhead import loader_seconds
from bench.notebooks import write_large_cell, write_synthetic

#: Argo's limit on a workflow, compressed, bytes.
ARGO_LIMIT = 1 << 20
#: etcd's default limit on one request, bytes.
ETCD_LIMIT = 3 << 19
#: Size of the large functions cell, bytes (the 142 KB cell of issue 14).
LARGE_CELL = 142_000

def ir_figures(notebook: Path, out: Path) -> dict[str, Any]:
    """Compile ``notebook`` into ``out`` and measure its IR.

    Returns
    -------
    dict
        ``steps``, ``ir_bytes`` (the YAML), ``gzip_bytes``, ``code_bytes`` (the
        notebook's code as the IR carries it, see :func:`code_bytes`),
        ``largest_argument_bytes`` and ``largest_argument_of`` (the executor),
        ``arguments_per_component`` (the largest argument of each, bytes).
    """
    from kale_magics import api

    compiled = api.compile_notebook(notebook, str(out))
    text = Path(compiled.yaml_path).read_bytes()
    largest = largest_arguments(compiled.yaml_path)
    biggest = max(largest, key=largest.get)
    return {"notebook": notebook.name, "steps": len(compiled.plan.steps), "ir_bytes": len(text),
            "gzip_bytes": len(gzip.compress(text, 6)), "code_bytes": code_bytes(compiled.plan),
            "largest_argument_bytes": largest[biggest], "largest_argument_of": biggest,
            "arguments_per_component": largest, "dsl_path": compiled.dsl_path}


def largest_arguments(yaml_path: str) -> dict[str, int]:
    """The largest command or args element of each executor of the IR, bytes of UTF-8."""
    import yaml

    with open(yaml_path, encoding="utf-8") as f:
        ir = next(yaml.load_all(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
    return {name: max(len(a.encode("utf-8")) for a in [*e["container"].get("command", []),
                                                        *e["container"].get("args", [])])
            for name, e in ir["deploymentSpec"]["executors"].items()}


def code_bytes(plan: Any) -> int:
    """Bytes the notebook's code takes in the IR: each cell's literal as the DSL writes it,
    escaped as in the YAML (as JSON escapes it), the imports and functions cells included."""
    from kale_magics.codegen.cell_code import prelude_cells, python_sources, step_cells

    sources = python_sources((*plan.prelude, *(c for step in plan.steps for c in step.cells)))
    literals = [step_cells(step.cells, sources, " " * 8) for step in plan.steps]
    literals.append(prelude_cells(plan.prelude, sources, " " * 12))
    return sum(len(json.dumps(text)) - 2 for text in literals)


def measure(sizes: list[int], workdir: Path, repeats: int) -> dict[str, Any]:
    """The IR figures of synthetic notebooks of ``sizes`` steps and of a 142 KB functions cell.

    Returns
    -------
    dict
        ``sizes`` (one row per size, see :func:`ir_figures`), ``fit`` (bytes per
        step: the slope of a least-squares line, and of the code-free bytes),
        ``large_cell`` (the 142 KB cell's row), ``runtime_load_s``, and the
        limits ``argo_limit_bytes``, ``etcd_limit_bytes``, ``argument_limit_bytes``.
    """
    from kale_magics.codegen.cell_code import ARGUMENT_MAX

    rows = []
    for steps in sizes:
        row = ir_figures(write_synthetic(workdir / "synthetic", steps), workdir / "ir" / str(steps))
        rows.append(row)
    fit = growth([(r["steps"], r["ir_bytes"]) for r in rows])
    code_free = growth([(r["steps"], r["ir_bytes"] - r["code_bytes"]) for r in rows])
    large = ir_figures(write_large_cell(workdir / "large", LARGE_CELL), workdir / "ir" / "large")
    load = loader_seconds(rows[0]["dsl_path"], repeats)
    for row in (*rows, large):
        row.pop("dsl_path")
    return {"sizes": rows, "bytes_per_step": fit["slope_s_per_step"],
            "code_free_bytes_per_step": code_free["slope_s_per_step"], "large_cell": large,
            "runtime_load_s": load, "argo_limit_bytes": ARGO_LIMIT, "etcd_limit_bytes": ETCD_LIMIT,
            "argument_limit_bytes": ARGUMENT_MAX}
