"""The pre-flight check: will the pipeline's data survive the trip between steps?

Before anything is submitted, every variable the plan passes between steps is
serialised from the live kernel with the step runtime's own marshal layer (into
a temporary folder, removed afterwards), and the cells the kernel ran are
compared with the saved notebook: a ten-minute cluster round trip that fails
on an unpicklable object, or runs code the user never saved, is what this
prevents.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from kale_magics.model import Cell, Plan
from kale_magics.notebook.registry import ExecutedCell
from kale_magics.runtime import marshal

OK, MISSING, FAILS = "ok", "not in kernel", "cannot be passed"


@dataclass(frozen=True)
class VariableCheck:
    """The result of serialising one passed variable.

    Attributes
    ----------
    name, producer:
        The variable and the step that passes it.
    state:
        :data:`OK`, :data:`MISSING` (the kernel has no value yet) or :data:`FAILS`.
    type_name:
        The value's class name ("" when missing).
    format:
        The marshal format chosen (``npy``, ``arrow``, ``cloudpickle``, ``dill``).
    size_bytes:
        Bytes written.
    seconds:
        Time to save, in seconds.
    message:
        For a failure: what failed and the fix.
    """

    name: str
    producer: str
    state: str
    type_name: str = ""
    format: str = ""
    size_bytes: int = 0
    seconds: float = 0.0
    message: str = ""


@dataclass(frozen=True)
class CheckReport:
    """What ``%kale check`` found: per-variable results and warnings about unsaved cells."""

    variables: tuple[VariableCheck, ...]
    warnings: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when no variable fails to serialise."""
        return all(v.state != FAILS for v in self.variables)


def check_variables(plan: Plan, namespace: Mapping[str, Any]) -> tuple[VariableCheck, ...]:
    """Serialise every variable ``plan`` passes between steps, as the steps will."""
    passed = sorted({(name, step.name) for step in plan.steps for name in step.outputs})
    with tempfile.TemporaryDirectory(prefix="kale-magics-check-") as folder:
        return tuple(_check_one(name, producer, namespace, folder) for name, producer in passed)


def _check_one(name: str, producer: str, namespace: Mapping[str, Any], folder: str) -> VariableCheck:
    if name not in namespace:
        return VariableCheck(name, producer, MISSING,
                             message=f"run step {producer!r} in this kernel to check `{name}`")
    value = namespace[name]
    start = time.perf_counter()
    try:
        saved = marshal.save(value, os.path.join(folder, name), name)
    except marshal.MarshalError as error:
        return VariableCheck(name, producer, FAILS, type(value).__name__,
                             message=f"step {producer!r}: {error}")
    return VariableCheck(name, producer, OK, type(value).__name__, saved["kale_format"],
                         saved["bytes"], time.perf_counter() - start)


def unsaved_cells(saved: Sequence[Cell], executed: Iterable[ExecutedCell]) -> tuple[str, ...]:
    """Warnings for annotated cells whose executed source differs from the saved notebook.

    Parameters
    ----------
    saved:
        The annotated cells of the saved notebook file (``notebook.reader``).
    executed:
        The cells this kernel ran (``notebook.registry``). Only cells with a
        front-end cell id can be matched; the annotation and the body are compared.
    """
    by_id = {c.cell_id: c for c in saved if c.cell_id and c.explicit}
    warnings = []
    for cell in executed:
        file_cell = by_id.get(cell.key)
        if file_cell is None:
            if not cell.key.startswith(f"{cell.annotation.kind}:"):  # it has a real cell id
                warnings.append(f"a `%%kale {cell.annotation.kind}` cell ran in this kernel but "
                                "is not in the saved notebook: save the notebook")
        elif (file_cell.annotation, _body(file_cell.source)) != (cell.annotation,
                                                                   _body(cell.source)):
            warnings.append(f"{file_cell.describe()} differs from what this kernel ran: "
                            "save the notebook (or run the cell again)")
    return tuple(warnings)


def _body(source: str) -> str:
    """A cell body without the blank lines around it (the reader keeps line numbers with them)."""
    return source.lstrip("\n").rstrip()


def preflight(plan: Plan, namespace: Mapping[str, Any], saved: Sequence[Cell] = (),
              executed: Iterable[ExecutedCell] = ()) -> CheckReport:
    """Run the whole pre-flight check; see :class:`CheckReport`."""
    return CheckReport(check_variables(plan, namespace), unsaved_cells(saved, executed))
