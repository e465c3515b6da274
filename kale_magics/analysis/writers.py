"""Where each name is assigned in the notebook: the history the analysis resolves reads against.

A step receives, for each name it reads, the value of the nearest assignment
above it in notebook order. The cells that assign names are steps,
``parameters`` cells, the ``imports``/``functions`` cells (the prelude, run at
the start of every step) and ``skip`` cells (which the pipeline never runs);
:class:`Writers` records each assignment with its cell, in notebook order, and
answers "which assignment of NAME is the nearest above cell N".
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from kale_magics.model import Cell

STEP, PARAMETERS, PRELUDE, SKIP = "step", "parameters", "prelude", "skip"


@dataclass(frozen=True)
class Writer:
    """One assignment of a name.

    Attributes
    ----------
    kind:
        :data:`STEP`, :data:`PARAMETERS`, :data:`PRELUDE` or :data:`SKIP`.
    cell:
        The cell that assigns the name (for a step: its first cell).
    step:
        The step's draft for :data:`STEP` (anything with ``name`` and ``head``), else None.
    conditional:
        True when the name is bound only on some paths (an ``if`` branch, a loop).
    imported:
        The import statements that give the name its value when its binding is a
        top-level import (a later step replays them), else ().
    handle:
        What handle the name is bound to (``"an open file"``), with the call and
        line, when the analysis sees one, else "".
    """

    kind: str
    cell: Cell
    step: Any = None
    conditional: bool = False
    imported: tuple[str, ...] = ()
    handle: str = ""

    def describe(self) -> str:
        """``step 'load' (cell 3 ('df = ...'))`` or ``the parameters cell 1 ('N = 1')``."""
        if self.kind == STEP:
            return f"step {self.step.name!r} ({self.cell.describe()})"
        label = {PARAMETERS: "parameters", SKIP: "skipped"}.get(self.kind,
                                                                 self.cell.annotation.kind)
        return f"the {label} {self.cell.describe()}"


@dataclass
class Writers:
    """Every assignment of every name, in notebook order."""

    _by_name: dict[str, list[Writer]] = field(default_factory=dict)

    def add(self, name: str, writer: Writer) -> None:
        """Record that ``writer`` assigns ``name`` (cells are added in notebook order)."""
        self._by_name.setdefault(name, []).append(writer)

    def nearest(self, name: str, below: int, kinds: tuple[str, ...] = ()) -> Writer | None:
        """The last assignment of ``name`` in a cell above cell index ``below`` (of ``kinds``)."""
        found = self._by_name.get(name, [])
        end = bisect.bisect_left([w.cell.index for w in found], below)
        for writer in reversed(found[:end]):
            if not kinds or writer.kind in kinds:
                return writer
        return None

    def step_names(self) -> list[str]:
        """Names some step assigns (for "did you mean" hints)."""
        return [n for n, ws in self._by_name.items() if any(w.kind == STEP for w in ws)]
