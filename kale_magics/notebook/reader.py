"""Read a notebook file's ``%%kale`` annotations with nbformat.

The reader never writes the notebook. It returns the annotated code cells (each
with its effective annotation: a cell without a ``%%kale`` line continues the
annotation of the code cell above it, as in Kale) and the pipeline settings
merged from every ``%kale pipeline`` line, in notebook order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable

from kale_magics.errors import AnnotationError, NotebookError
from kale_magics.model import Annotation, Cell, PipelineSettings
from kale_magics.notebook.annotations import (
    is_cell_annotation,
    is_pipeline_line,
    parse_cell_line,
    parse_pipeline_line,
)


@dataclass(frozen=True)
class AnnotatedNotebook:
    """What the reader found in a notebook.

    Attributes
    ----------
    path:
        The notebook's path as given.
    cells:
        Code cells inside the pipeline (at or below the first annotation), each
        with its effective annotation, in notebook order.
    settings:
        Pipeline settings merged from all ``%kale pipeline`` lines.
    """

    path: str
    cells: tuple[Cell, ...]
    settings: PipelineSettings


def read_notebook(path: str | os.PathLike[str]) -> AnnotatedNotebook:
    """Read the annotations of the notebook at ``path``.

    Raises
    ------
    NotebookError
        The file is missing or is not a valid nbformat-4 notebook.
    AnnotationError
        A ``%%kale`` or ``%kale pipeline`` line is malformed; the message names the cell.
    """
    nb = load_notebook(path)
    cells = [(i, cell.get("source", ""), cell.get("id")) for i, cell in enumerate(nb.cells)
             if cell.get("cell_type") == "code"]
    return AnnotatedNotebook(path=os.fspath(path), cells=annotate_cells(cells),
                             settings=read_settings(cells))


def load_notebook(path: str | os.PathLike[str]) -> Any:
    """Load ``path`` with nbformat as version 4, turning every failure into NotebookError."""
    import nbformat

    try:
        with open(path, encoding="utf-8") as f:
            return nbformat.read(f, as_version=4)
    except FileNotFoundError:
        raise NotebookError(f"notebook not found: {os.fspath(path)}; check the path") from None
    except (OSError, UnicodeDecodeError) as error:
        raise NotebookError(f"cannot read notebook {os.fspath(path)}: {error}") from None
    except Exception as error:  # nbformat raises NotJSONError, ValidationError, ...
        raise NotebookError(f"{os.fspath(path)} is not a valid Jupyter notebook "
                            f"({type(error).__name__}: {str(error)[:200]}); "
                            "open and re-save it in Jupyter") from None


def annotate_cells(cells: Iterable[tuple[int, str, str | None]]) -> tuple[Cell, ...]:
    """Give each code cell its effective annotation.

    Parameters
    ----------
    cells:
        ``(index, source, cell_id)`` of each code cell, in notebook order.

    Returns
    -------
    tuple of Cell
        The cells at or below the first annotated cell; a cell with no
        ``%%kale`` line continues the annotation above it (Kale semantics).
    """
    result: list[Cell] = []
    current: Annotation | None = None
    for index, source, cell_id in cells:
        first, _, body = source.partition("\n")
        if is_cell_annotation(first):
            try:
                current = parse_cell_line(first)
            except AnnotationError as error:
                raise AnnotationError(error.message, line=first, cell=index) from None
            result.append(Cell(index=index, source="\n" + body, annotation=current,
                               explicit=True, cell_id=cell_id))
        elif current is not None and source.strip():
            result.append(Cell(index=index, source=source, annotation=current,
                               explicit=False, cell_id=cell_id))
    return tuple(result)


def read_settings(cells: Iterable[tuple[int, str, str | None]]) -> PipelineSettings:
    """Merge the ``%kale pipeline`` lines of ``cells`` in order (later lines win)."""
    settings = PipelineSettings()
    for index, source, _ in cells:
        for line in source.splitlines():
            if is_pipeline_line(line):
                try:
                    settings = settings.merged(parse_pipeline_line(line))
                except AnnotationError as error:
                    raise AnnotationError(error.message, line=line, cell=index) from None
    return settings
