"""Read a notebook file's annotations: ``%%kale`` lines and Kale's cell tags.

The reader never writes the notebook. It returns the annotated code cells (each
with its effective annotation: a cell without one continues the annotation of
the code cell above it, as in Kale), the pipeline settings (Kale's
``kubeflow_notebook`` metadata, then every ``%kale pipeline`` line in notebook
order), and warnings about Kale tags and keys it ignored. A notebook may mix
``%%kale`` lines and Kale tags, but not in one cell.

A well-formed nbformat-4 file is read with :mod:`json`; anything else (older
versions, malformed files) goes through nbformat, which upgrades it or names
what is wrong. Importing nbformat imports jsonschema and its format checkers,
about 1.8 s on the benchmark machine, more than the rest of a compile.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Iterable

from kale_magics.errors import AnnotationError, NotebookError
from kale_magics.model import Annotation, Cell, PipelineSettings
from kale_magics.notebook import kale_tags
from kale_magics.notebook.annotations import (
    cell_magic,
    check_unicode,
    is_pipeline_line,
    parse_cell_line,
    parse_pipeline_line,
)


@dataclass(frozen=True)
class CodeCell:
    """A code cell as the file holds it: position, source, id and ``metadata.tags``."""

    index: int
    source: str
    cell_id: str | None = None
    tags: tuple[str, ...] = ()


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
        Pipeline settings: Kale's ``kubeflow_notebook`` metadata, overridden by
        the ``%kale pipeline`` lines.
    warnings:
        Unknown Kale tags and metadata keys, ignored.
    """

    path: str
    cells: tuple[Cell, ...]
    settings: PipelineSettings
    warnings: tuple[str, ...] = ()


def read_notebook(path: str | os.PathLike[str]) -> AnnotatedNotebook:
    """Read the annotations of the notebook at ``path``: ``%%kale`` lines and Kale's tags.

    Raises
    ------
    NotebookError
        The file is missing or is not a valid nbformat-4 notebook.
    AnnotationError
        A ``%%kale`` or ``%kale pipeline`` line is malformed, or a cell has both
        a ``%%kale`` line and Kale tags; the message names the cell.
    """
    nb = _read_v4_json(path) or load_notebook(path)
    cells = code_cells(nb)
    meta = dict(nb["metadata"].get("kubeflow_notebook") or {})
    _check_unicode(cells, meta)
    annotated, warnings = annotate_cells(cells)
    settings, meta_warnings = kale_tags.settings_from_metadata(meta)
    return AnnotatedNotebook(path=os.fspath(path), cells=annotated,
                             settings=settings.merged(read_settings(cells)),
                             warnings=tuple(meta_warnings + warnings))


def code_cells(nb: Any) -> list[CodeCell]:
    """The code cells of a version-4 notebook (an nbformat node or its plain JSON dict).

    A source saved as a list of lines (the usual form on disk) is joined, as
    nbformat does on read.
    """
    return [CodeCell(i, _text(cell.get("source", "")), cell.get("id"),
                     tuple(t for t in cell.get("metadata", {}).get("tags", []) if isinstance(t, str)))
            for i, cell in enumerate(nb["cells"]) if cell.get("cell_type") == "code"]


def _check_unicode(cells: Iterable[CodeCell], meta: dict[str, Any]) -> None:
    """Refuse lone surrogates (a ``\\ud800`` escape in the JSON) in code cells, their tags and
    Kale's metadata: no file, parser or KFP field can hold them (see :func:`check_unicode`)."""
    for cell in cells:
        for text in (cell.source, *cell.tags):
            try:
                check_unicode(text, "the cell")
            except AnnotationError as error:
                raise AnnotationError(error.message, cell=cell.index) from None
    check_unicode(json.dumps(meta, ensure_ascii=False, default=str), "the kubeflow_notebook metadata")


def _text(source: str | list[str]) -> str:
    return source if isinstance(source, str) else "".join(source)


def _read_v4_json(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The notebook at ``path`` as a JSON dict if it is well-formed nbformat 4, else None.

    None sends the caller to nbformat (:func:`load_notebook`), which upgrades
    older versions and words every failure; this function never raises.
    """
    try:
        with open(path, encoding="utf-8") as f:
            nb = json.load(f)
    except (OSError, ValueError):
        return None
    if not (isinstance(nb, dict) and nb.get("nbformat") == 4 and isinstance(nb.get("metadata"), dict)
            and isinstance(nb.get("cells"), list)):
        return None
    return nb if all(_well_formed(cell) for cell in nb["cells"]) else None


def _well_formed(cell: Any) -> bool:
    if not isinstance(cell, dict) or not isinstance(cell.get("metadata", {}), dict):
        return False
    source = cell.get("source", "")
    lines_ok = isinstance(source, list) and all(isinstance(line, str) for line in source)
    return (isinstance(source, str) or lines_ok) and isinstance(cell.get("metadata", {}).get("tags", []), list)


def load_notebook(path: str | os.PathLike[str]) -> Any:
    """Load ``path`` with nbformat as version 4, turning every failure into NotebookError.

    Raises
    ------
    NotebookError
        The file is missing, unreadable, not a notebook, or has a cell whose
        source is not text (nbformat itself only logs such schema errors).
    """
    import nbformat

    try:
        with open(path, encoding="utf-8") as f:
            nb = nbformat.read(f, as_version=4)
    except FileNotFoundError:
        raise NotebookError(f"notebook not found: {os.fspath(path)}; check the path") from None
    except (OSError, UnicodeDecodeError) as error:
        raise NotebookError(f"cannot read notebook {os.fspath(path)}: {error}") from None
    except Exception as error:  # nbformat raises NotJSONError, ValidationError, ...
        raise NotebookError(f"{os.fspath(path)} is not a valid Jupyter notebook "
                            f"({type(error).__name__}: {str(error)[:200]}); "
                            "open and re-save it in Jupyter") from None
    bad = [i for i, cell in enumerate(nb.cells) if not _well_formed(cell)]
    if bad:  # nbformat only logs schema errors
        raise NotebookError(f"{os.fspath(path)} is not a valid Jupyter notebook (cell {bad[0]}: the "
                            "source must be text and the metadata a mapping with a list of tags); "
                            "open and re-save it in Jupyter")
    return nb


def _own_annotation(cell: CodeCell) -> tuple[Annotation | None, str, list[str]]:
    """The cell's own annotation (from its ``%%kale`` line or its Kale tags), its code, warnings."""
    magic = cell_magic(cell.source)
    kale, warnings = kale_tags.annotation_from_tags(list(cell.tags), cell.index)
    if magic and (kale is not None or any(kale_tags.is_kale_tag(t) for t in cell.tags)):
        raise AnnotationError(f"the cell has both a `%%kale` line and Kale tags "
                              f"({', '.join(cell.tags)}); keep one of them", cell=cell.index)
    if magic:
        arguments, body = magic
        try:
            return parse_cell_line(arguments), body, warnings
        except AnnotationError as error:
            raise AnnotationError(error.message, line=f"%%kale {arguments}",
                                  cell=cell.index) from None
    if kale is not None and kale.kind == "metrics":
        return kale, kale_tags.metrics_from_kale(cell.source, cell.index), warnings
    return kale, cell.source, warnings


def annotate_cells(cells: Iterable[CodeCell]) -> tuple[tuple[Cell, ...], list[str]]:
    """Give each code cell its effective annotation.

    Returns
    -------
    tuple of (tuple of Cell, list of str)
        The cells at or below the first annotated cell (a cell with no
        annotation continues the one above it, as in Kale), and warnings.
    """
    result: list[Cell] = []
    warnings: list[str] = []
    current: Annotation | None = None
    for cell in cells:
        own, source, found = _own_annotation(cell)
        warnings += found
        if own is not None:
            current = own
            result.append(Cell(index=cell.index, source=source, annotation=own, explicit=True,
                               cell_id=cell.cell_id))
        elif current is not None and cell.source.strip():
            result.append(Cell(index=cell.index, source=cell.source, annotation=current,
                               explicit=False, cell_id=cell.cell_id))
    return tuple(result), warnings


def read_settings(cells: Iterable[CodeCell]) -> PipelineSettings:
    """Merge the ``%kale pipeline`` lines of ``cells`` in order (later lines win)."""
    settings = PipelineSettings()
    for cell in cells:
        for line in cell.source.splitlines():
            if is_pipeline_line(line):
                try:
                    settings = settings.merged(parse_pipeline_line(line))
                except AnnotationError as error:
                    raise AnnotationError(error.message, line=line, cell=cell.index) from None
    return settings
