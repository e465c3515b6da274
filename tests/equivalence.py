"""Run a notebook top to bottom with nbclient and as a pipeline, and compare what each step sees.

The faithfulness contract (DESIGN.md, "What a step sees") says a pipeline
computes what the notebook computes run top to bottom, or the compile says
why. :func:`compare` proves it for one notebook: it executes the notebook in a
real kernel (nbclient, the notebook's folder as working directory), compiles
and runs it as a local pipeline (``api.compile_notebook`` + ``api.run_local``,
what ``kale-magics run`` does), and returns both sides: what each step's cells
printed in the kernel and in the step's log, the metrics, and the compile
warnings.

A test then asserts :meth:`Equivalence.same_prints` and
:meth:`Equivalence.same_metrics`, or, for what cannot travel, that a warning
names the cell, the variable and the fix.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import nbformat
from nbclient import NotebookClient

from kale_magics import api
from kale_magics.model import Plan
from tests.conftest import write_notebook

#: The first cell of every equivalence notebook: the kernel needs the extension for `%%kale`.
LOAD = "%load_ext kale_magics"


@dataclass
class Equivalence:
    """Both runs of one notebook.

    Attributes
    ----------
    plan:
        The compiled pipeline's plan.
    warnings:
        The compile's warnings.
    notebook:
        Per step: the lines its cells printed to stdout in the kernel.
    pipeline:
        Per step: the lines of the step's log (stdout and stderr) in the pipeline run.
    notebook_metrics, pipeline_metrics:
        Metric values of both runs.
    status:
        The pipeline run's final status.
    """

    plan: Plan
    warnings: tuple[str, ...]
    notebook: dict[str, list[str]]
    pipeline: dict[str, list[str]]
    notebook_metrics: dict[str, float]
    pipeline_metrics: dict[str, float]
    status: api.RunStatus = field(repr=False)

    def differences(self) -> list[str]:
        """Steps whose notebook lines are not all in the step's log, in order."""
        found = []
        for step, lines in self.notebook.items():
            log = iter(self.pipeline.get(step, []))
            missing = [line for line in lines if not any(line == seen for seen in log)]
            if missing:
                found.append(f"step {step}: notebook printed {lines}, pipeline log "
                             f"{self.pipeline.get(step)}")
        return found

    def same_prints(self) -> bool:
        """Every line each step's cells printed in the kernel is in the step's log, in order."""
        return self.status.state == "SUCCEEDED" and not self.differences()

    def same_metrics(self) -> bool:
        """The pipeline logged the metrics the notebook computes, with equal values."""
        return self.pipeline_metrics == self.notebook_metrics

    def explain(self) -> str:
        """What differs, for an assertion message."""
        return (f"state {self.status.state} {self.status.error}\n" + "\n".join(self.differences())
                + f"\nwarnings: {self.warnings}\nmetrics: notebook {self.notebook_metrics}, "
                f"pipeline {self.pipeline_metrics}")

    def warning(self, *fragments: str) -> str:
        """The one compile warning holding every fragment; AssertionError when none does."""
        for warning in self.warnings:
            if all(fragment in warning for fragment in fragments):
                return warning
        raise AssertionError(f"no warning with {fragments}: {self.warnings}")


def execute(path: Path, extra: Sequence[str] = ()) -> nbformat.NotebookNode:
    """Execute the notebook at ``path`` top to bottom, plus ``extra`` cells, in a fresh kernel."""
    nb = nbformat.read(path, as_version=4)
    nb.cells.extend(nbformat.v4.new_code_cell(source) for source in extra)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


def printed(cell: nbformat.NotebookNode) -> list[str]:
    """The lines ``cell`` printed to stdout."""
    text = "".join(o.get("text", "") for o in cell.get("outputs", [])
                   if o.output_type == "stream" and o.get("name") == "stdout")
    return text.splitlines()


def compare(path: Path, arguments: dict[str, str] | None = None,
            pipeline_root: Path | None = None, caching: bool = False) -> Equivalence:
    """Run ``path`` with nbclient and as a local pipeline; see :class:`Equivalence`."""
    compiled = api.compile_notebook(path)
    plan = compiled.plan
    keys = [m.key for s in plan.steps for m in s.metrics]
    probe = f"import json as _j\nprint(_j.dumps({{k: float(eval(k)) for k in {keys!r}}}))"
    nb = execute(path, [probe])
    notebook = {s.name: [line for c in s.cells for line in printed(nb.cells[c.index])]
                for s in plan.steps if not s.cells[0].notebook}  # a sub-notebook's print there
    status = api.run_local(compiled, arguments, enable_caching=caching,
                           pipeline_root=str(pipeline_root) if pipeline_root else None)
    return Equivalence(plan, compiled.warnings, notebook,
                       {name: list(s.log) for name, s in status.steps.items()},
                       json.loads(printed(nb.cells[-1])[-1]), dict(status.metrics), status)


def notebook_of(folder: Path, *cells: str, name: str = "nb") -> Path:
    """Write ``folder/name.ipynb`` whose first cell loads the extension, then ``cells``."""
    os.makedirs(folder, exist_ok=True)
    return write_notebook(folder / f"{name}.ipynb", [LOAD, *cells])
