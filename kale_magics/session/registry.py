"""What the kernel has executed: the ``%%kale`` cells run in this kernel (kernel state).

The cell magic records every annotated cell it runs, keyed by the front end's
cell id when it sends one (JupyterLab, Notebook 7 and VS Code send ``cellId``
with each execute request), else by the annotation itself. ``%kale check``
compares these sources with the saved notebook (:meth:`Registry.unsaved`), and
the magic validates ``--after`` against the steps known here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kale_magics.analysis.names import NameUse
from kale_magics.model import Annotation, Cell


@dataclass(frozen=True)
class ExecutedCell:
    """One annotated cell as this kernel last ran it.

    Attributes
    ----------
    key:
        The front end's cell id, or a key derived from the annotation.
    annotation:
        The parsed ``%%kale`` line.
    source:
        The cell's body as executed: the cell without its ``%%kale`` line.
    order:
        Position in execution order (0 for the first cell run).
    use:
        Names the cell's body reads and binds.
    """

    key: str
    annotation: Annotation
    source: str
    order: int
    use: NameUse


class Registry:
    """Annotated cells executed in this kernel, the latest run of each cell kept."""

    def __init__(self) -> None:
        self._cells: dict[str, ExecutedCell] = {}
        self._count = 0

    def record(self, cell_id: str | None, annotation: Annotation, source: str,
               use: NameUse) -> ExecutedCell:
        """Record a run of an annotated cell and return the entry."""
        key = cell_id or f"{annotation.kind}:{annotation.name or source}"
        if cell_id is None and annotation.kind == "step":
            # without cell ids, a step is known by its name: drop an older cell of that name
            self._cells = {k: c for k, c in self._cells.items()
                           if c.annotation.name != annotation.name}
        entry = ExecutedCell(key=key, annotation=annotation, source=source, order=self._count,
                             use=use)
        self._count += 1
        self._cells[key] = entry
        return entry

    def cells(self) -> list[ExecutedCell]:
        """Every recorded cell, in the order of their latest runs."""
        return sorted(self._cells.values(), key=lambda c: c.order)

    def producers(self, exclude: str) -> dict[str, str]:
        """Variable -> the step that last bound it, among the steps run here other than ``exclude``."""
        found: dict[str, str] = {}
        for cell in self.cells():
            if cell.key != exclude and cell.annotation.kind == "step":
                found.update(dict.fromkeys(cell.use.writes, cell.annotation.name or ""))
        return found

    def readers(self, key: str, names: Iterable[str]) -> dict[str, tuple[str, ...]]:
        """Name -> the other steps run here that read it, for each of ``names`` some step reads.

        What the cell ``key`` binds and another step cell run in this kernel reads (a
        step of another name, in the order of their latest runs): what travels from
        it, as far as this kernel knows; steps not yet run are not known.
        """
        own = self._cells[key].annotation.name if key in self._cells else None
        found: dict[str, tuple[str, ...]] = {}
        for name in names:
            steps = [c.annotation.name or "" for c in self.cells()
                     if c.key != key and c.annotation.kind == "step"
                     and c.annotation.name != own and name in c.use.reads]
            if steps:
                found[name] = tuple(dict.fromkeys(steps))
        return found

    def step_names(self) -> set[str]:
        """Names of the steps executed in this kernel."""
        return {c.annotation.name for c in self._cells.values() if c.annotation.name}

    def unsaved(self, saved: Iterable[Cell]) -> tuple[str, ...]:
        """Warnings for annotated cells whose executed source differs from the saved notebook.

        Parameters
        ----------
        saved:
            The annotated cells of the saved notebook file (``notebook.reader``).
            Only cells with a front-end cell id can be matched; the annotation
            and the body are compared.
        """
        by_id = {c.cell_id: c for c in saved if c.cell_id and c.explicit}
        warnings = []
        for cell in self.cells():
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
