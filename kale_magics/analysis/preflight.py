"""The pre-flight check: will the pipeline's data survive the trip between steps?

Before anything is submitted, every variable the plan passes between steps is
serialised from the live kernel with the step runtime's own marshal layer (into
a temporary folder, removed afterwards): a ten-minute cluster round trip that
fails on an unpicklable object is what this prevents. The cells the kernel ran
are compared with the saved notebook by the kernel's registry
(``session.registry``), which adds its warnings to the :class:`CheckReport`.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Mapping

from kale_magics.model import Plan
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
