"""Read a notebook file's annotations: ``%%kale`` lines and Kale's cell tags.

The reader never writes the notebook. It returns the annotated code cells (each
with its effective annotation: a cell without one continues the annotation of
the code cell above it, as in Kale; Kale's ``skip`` tag and cells of ``%kale``
line magics only are transparent), the
pipeline settings (Kale's ``kubeflow_notebook`` metadata, then every ``%kale
pipeline`` line in notebook order), and warnings about Kale tags and keys it
ignored. A notebook may mix ``%%kale`` lines and Kale tags, but not in one
cell. A ``notebook:NAME`` cell (Kale 2.3's composition) brings in the cells of
the notebook it references.

A well-formed nbformat-4 file is read with :mod:`json`; anything else (older
versions, malformed files) goes through nbformat, which upgrades it or names
what is wrong. Importing nbformat imports jsonschema and its format checkers,
about 1.8 s on the benchmark machine, more than the rest of a compile.
"""

from __future__ import annotations

import ast
import functools
import json
import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

from kale_magics.errors import AnnotationError, KaleError, NotebookError
from kale_magics.model import Annotation, Cell, PipelineSettings, cell_place
from kale_magics.notebook import kale_tags
from kale_magics.notebook.annotations import (
    cell_magic,
    check_step_name,
    check_unicode,
    is_pipeline_line,
    is_tool_cell,
    parse_cell_line,
    parse_pipeline_line,
    step_name_hint,
)
from kale_magics.notebook.step_record import recorded_artifacts


@dataclass(frozen=True)
class CodeCell:
    """A code cell as the file holds it: position, source, id and ``metadata.tags``."""

    index: int
    source: str
    cell_id: str | None = None
    tags: tuple[str, ...] = ()
    #: ``metadata.notebook_path`` of a ``notebook:NAME`` cell (Kale 2.3), else None.
    reference: str | None = None


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
    artifact_types:
        KFP artifact class per variable, as the step cells' saved outputs record it
        (``notebook.step_record``).
    """

    path: str
    cells: tuple[Cell, ...]
    settings: PipelineSettings
    warnings: tuple[str, ...] = ()
    artifact_types: Mapping[str, str] = field(default_factory=dict)


def read_notebook(path: str | os.PathLike[str]) -> AnnotatedNotebook:
    """Read the annotations of the notebook at ``path``: ``%%kale`` lines and Kale's tags.

    Raises
    ------
    NotebookError
        The file is missing or is not a valid nbformat-4 notebook.
    AnnotationError
        A ``%%kale`` or ``%kale pipeline`` line is malformed, a cell has both a
        ``%%kale`` line and Kale tags, or a Kale tag is malformed; the message
        names the cell and carries the warnings found before it.
    NotebookError
        A notebook a ``notebook:NAME`` cell references cannot be read.
    """
    nb = _read_v4_json(path) or load_notebook(path)
    cells = code_cells(nb)
    meta = dict(nb["metadata"].get("kubeflow_notebook") or {})
    _check_unicode(cells, meta)
    settings, meta_warnings = kale_tags.settings_from_metadata(meta)
    expand = functools.partial(read_reference, os.path.dirname(os.path.abspath(path)))
    sub = functools.partial(read_sub_notebook, (os.path.abspath(path),), "")
    try:
        annotated, warnings = annotate_cells(cells, expand, sub)
    except (AnnotationError, NotebookError) as error:
        raise with_warnings(error, meta_warnings) from None
    return AnnotatedNotebook(path=os.fspath(path), cells=annotated,
                             settings=settings.merged(read_settings(cells)),
                             warnings=tuple(meta_warnings + warnings),
                             artifact_types=recorded_artifacts(nb["cells"]))


def code_cells(nb: Any) -> list[CodeCell]:
    """The code cells of a version-4 notebook (an nbformat node or its plain JSON dict).

    A source saved as a list of lines (the usual form on disk) is joined, as
    nbformat does on read.
    """
    return [CodeCell(i, _text(cell.get("source", "")), cell.get("id"),
                     tuple(t for t in cell.get("metadata", {}).get("tags", []) if isinstance(t, str)),
                     _reference_path(cell.get("metadata", {})))
            for i, cell in enumerate(nb["cells"]) if cell.get("cell_type") == "code"]


def _reference_path(metadata: Any) -> str | None:
    path = metadata.get("notebook_path")
    return path if isinstance(path, str) and path else None


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
        raise NotebookError(f"{os.fspath(path)} is not a valid Jupyter notebook ({cell_place(bad[0])}: the "
                            "source must be text and the metadata a mapping with a list of tags); "
                            "open and re-save it in Jupyter")
    return nb


def _own_annotation(cell: CodeCell) -> tuple[Annotation | None, str, list[str], bool]:
    """The cell's own annotation (from its ``%%kale`` line or its Kale tags), its code, warnings,
    and whether the annotation came from Kale tags."""
    magic = cell_magic(cell.source)
    kale, warnings = kale_tags.annotation_from_tags(list(cell.tags), cell.index)
    if magic and (kale is not None or any(kale_tags.is_kale_tag(t) for t in cell.tags)):
        raise AnnotationError(f"the cell has both a `%%kale` line and Kale tags "
                              f"({', '.join(cell.tags)}); keep one of them", cell=cell.index)
    if magic:
        arguments, body = magic
        try:
            return parse_cell_line(arguments), body, warnings, False
        except AnnotationError as error:
            raise AnnotationError(error.message, line=f"%%kale {arguments}",
                                  cell=cell.index) from None
    if kale is not None and kale.kind == "metrics":
        return kale, kale_tags.metrics_from_kale(cell.source, cell.index), warnings, True
    return kale, cell.source, warnings, kale is not None


#: Reads the notebook a ``notebook:NAME`` cell references: ``(name, cell) -> (cells, warnings)``.
Expand = Callable[[str, CodeCell], tuple[list[Cell], list[str]]]


@dataclass
class _Reading:
    """The state of :func:`annotate_cells` while it walks the cells."""

    cells: list[Cell] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    current: Annotation | None = None
    tagged: bool = False
    #: After a ``notebook:`` cell: untagged cells wait for the next step cell (Kale 2.3).
    awaiting: bool = False
    pending: list[tuple[CodeCell, str]] = field(default_factory=list)
    #: Reads the notebook of a ``%%kale notebook`` cell (:func:`read_sub_notebook`).
    sub: "SubReader | None" = None


#: Reads the notebook of a ``%%kale notebook`` cell: ``(annotation, cell) -> (cells, warnings)``.
SubReader = Callable[[Annotation, CodeCell], tuple[list[Cell], list[str]]]


def annotate_cells(cells: Iterable[CodeCell], expand: Expand | None = None,
                   sub: SubReader | None = None) -> tuple[tuple[Cell, ...], list[str]]:
    """Give each code cell its effective annotation, following Kale's ``parse_notebook``.

    A cell with no annotation continues the annotation of the cell above it,
    except a cell of ``%kale ...`` line magics only (``%kale panel``): it is tool
    control, never pipeline code, and the cell after it continues as if it were
    not there (:func:`~kale_magics.notebook.annotations.is_tool_cell`). A cell tagged ``skip`` with Kale's tags is transparent, as in Kale
    (``NotebookProcessor.parse_notebook`` does not make it the previous step):
    the untagged cells after it continue the annotation before it. After a
    ``%%kale skip`` line the untagged cells are skipped too: for the magics
    what a cell continues is the annotation written above it (README, "Coming
    from Kale"). Step cells that share a name are one step (see
    ``analysis.plan``). A ``notebook:NAME`` cell (Kale 2.3's composition) is
    replaced by the referenced notebook's cells (``expand``); the untagged
    cells after it belong to the next step cell, as in Kale.

    Returns
    -------
    tuple of (tuple of Cell, list of str)
        The cells at or below the first annotated cell, and warnings.

    Raises
    ------
    AnnotationError
        A malformed ``%%kale`` line or Kale tag, or a reference that cannot be
        read; the error's ``warnings`` attribute holds the warnings found before it.
    """
    reading = _Reading(sub=sub)
    for cell in cells:
        try:
            _annotate(cell, reading, expand)
        except AnnotationError as error:
            raise with_warnings(error, reading.warnings) from None
    if reading.pending:
        raise with_warnings(AnnotationError(
            "untagged code after a `notebook:` cell must be followed by a `step:` cell that owns "
            "it (as in Kale); tag it, or move it", cell=reading.pending[0][0].index), reading.warnings)
    return tuple(reading.cells), reading.warnings


def _annotate(cell: CodeCell, reading: _Reading, expand: Expand | None) -> None:
    """Annotate one cell: append it (or the cells it references) to ``reading``."""
    name = kale_tags.reference_name(cell.tags, cell.index)
    if name is not None:
        _reference(cell, name, reading, expand)
        return
    own, source, found, tagged = _own_annotation(cell)
    if own is None and is_tool_cell(cell.source):
        reading.warnings += found
        return  # `%kale panel` and the like: tool control, no pipeline code, continues nothing
    if own is None and reading.tagged and reading.current is not None \
            and reading.current.kind == "metrics":
        source = kale_tags.metrics_from_kale(cell.source, cell.index)
    reading.warnings += found
    if own is not None and own.kind == "notebook":
        check_notebook_body(source, cell.index)
        cells, warnings = reading.sub(own, cell) if reading.sub else ([], [])  # no file: no cells
        reading.cells += cells
        reading.warnings += warnings
        reading.current, reading.tagged, reading.awaiting = None, False, False
        return
    if own is None:
        if reading.awaiting and cell.source.strip():
            reading.pending.append((cell, source))
        elif reading.current is not None and cell.source.strip():
            reading.cells.append(Cell(index=cell.index, source=source, annotation=reading.current,
                                      explicit=False, cell_id=cell.cell_id, tagged=reading.tagged))
        return
    if own.kind == "step":
        reading.cells += [Cell(index=c.index, source=text, annotation=own, explicit=False,
                               cell_id=c.cell_id, tagged=True) for c, text in reading.pending]
        reading.pending = []
    if not (tagged and own.kind == "skip"):
        reading.current, reading.tagged, reading.awaiting = own, tagged, False
    reading.cells.append(Cell(index=cell.index, source=source, annotation=own, explicit=True,
                              cell_id=cell.cell_id, tagged=tagged))


def _reference(cell: CodeCell, name: str, reading: _Reading, expand: Expand | None) -> None:
    """A ``notebook:NAME`` cell: its referenced notebook's cells, then untagged cells wait."""
    if any(line.strip() and not line.strip().startswith("#") for line in cell.source.splitlines()):
        raise AnnotationError(f"`notebook:{name}` cell contains code; a cell that references a "
                              "notebook holds no code of its own (as in Kale): move the code to "
                              "its own `step:` cell", cell=cell.index)
    if reading.pending:
        raise AnnotationError("untagged code after a `notebook:` cell must be followed by a "
                              "`step:` cell that owns it, not by another `notebook:` cell (as in "
                              "Kale)", cell=reading.pending[0][0].index)
    if expand is None:
        raise AnnotationError(f"`notebook:{name}` references another notebook, which is not "
                              "supported inside a referenced notebook (as in Kale): reference "
                              "every notebook from the root notebook", cell=cell.index)
    cells, warnings = expand(name, cell)
    reading.cells += cells
    reading.warnings += warnings
    reading.current, reading.tagged, reading.awaiting = None, True, True


def read_reference(base: str, name: str, cell: CodeCell) -> tuple[list[Cell], list[str]]:
    """The cells of the notebook a ``notebook:NAME`` cell references (Kale 2.3's composition).

    As Kale's ``NotebookProcessor._add_notebook_reference``: the path is the
    cell's ``metadata.notebook_path``, relative to the folder ``base`` of the
    referencing notebook; the referenced notebook is read with its own rules
    and settings (``kubeflow_notebook``, e.g. its base image). Its steps are
    named ``NAME_STEP`` (its ``prev:`` tags too), so two notebooks may use the
    same step names; its cells name the notebook in messages.

    Raises
    ------
    AnnotationError
        No ``notebook_path``, a step name too long with the prefix, or a
        reference inside the referenced notebook.
    NotebookError
        The referenced file is missing or not a notebook.
    """
    if not cell.reference:
        raise AnnotationError(f"`notebook:{name}` cell is missing a 'notebook_path' in its cell "
                              "metadata; set it to the referenced notebook's path", cell=cell.index)
    path = os.path.normpath(os.path.join(base, cell.reference))
    nb = _read_v4_json(path) or load_notebook(path)
    meta = dict(nb["metadata"].get("kubeflow_notebook") or {})
    _check_unicode(code_cells(nb), meta)
    settings, found = kale_tags.settings_from_metadata(meta)
    cells, warnings = annotate_cells(code_cells(nb))
    renamed: dict[int, Annotation] = {}
    for a in {id(c.annotation): c.annotation for c in cells if c.annotation.kind == "step"}.values():
        try:
            renamed[id(a)] = replace(a, name=check_step_name(f"{name}_{a.name}"),
                                     after=tuple(f"{name}_{step}" for step in a.after),
                                     settings=settings.step_defaults.merged(a.settings))
        except AnnotationError as error:
            raise AnnotationError(f"`notebook:{name}`: its step {a.name!r} is named {name}_{a.name} "
                                  f"here, which is not usable ({error.message})", cell=cell.index) from None
    file, step = os.path.basename(path), 1 / (len(cells) + 1)
    return ([replace(c, annotation=renamed.get(id(c.annotation), c.annotation), notebook=file,
                     number=c.index, index=cell.index + (k + 1) * step)  # between it and the next
             for k, c in enumerate(cells)], [f"{file}: {w}" for w in found + warnings])


def check_notebook_body(body: str, index: int | None = None) -> None:
    """Refuse code in a ``%%kale notebook`` cell (comments are fine: IPython needs a body).

    Raises
    ------
    AnnotationError
        The body holds code, which would never run.
    """
    if any(line.strip() and not line.strip().startswith("#") for line in body.splitlines()):
        raise AnnotationError("a `%%kale notebook` cell runs the sub-notebook only: its body holds "
                              "comments, not code (code there would not run); move the code to a "
                              "step cell", cell=index)


def read_sub_notebook(chain: tuple[str, ...], scope: str, annotation: Annotation,
                      cell: CodeCell) -> tuple[list[Cell], list[str]]:
    """The cells a ``%%kale notebook PATH`` cell brings into the pipeline (a sub-pipeline).

    The sub-notebook is read with these rules (its own ``%%kale notebook`` cells
    too); its steps are named ``LABEL_STEP`` (LABEL from its file name, nested
    labels joined by ``_``) and grouped under :attr:`Cell.scope`; its parameters
    cells become one step, ``LABEL_params``, that assigns each parameter its
    default or, for ``--param NAME=EXPR``, EXPR evaluated first over this
    notebook's variables. The cell itself is kept (kind ``notebook``) with the
    sub-notebook's scope, for its ``--outputs``.

    Parameters
    ----------
    chain:
        The absolute paths of the notebooks that hold this cell, outermost first.
    scope:
        The scope of the notebook holding the cell ("" for the pipeline's own).

    Raises
    ------
    AnnotationError
        A cycle of notebooks (the message names the chain), a ``--param`` naming
        no parameter of the sub-notebook, or a step name too long with its label.
    NotebookError
        The file is missing or not a notebook.
    """
    assert annotation.notebook is not None
    base = os.path.dirname(chain[-1])
    path = os.path.normpath(os.path.join(base, annotation.notebook.path))
    if path in chain:
        names = " -> ".join(os.path.basename(p) for p in (*chain[chain.index(path):], path))
        raise AnnotationError(f"%%kale notebook {annotation.notebook.path!r} makes a cycle of "
                              f"notebooks: {names}; a notebook cannot run itself", cell=cell.index)
    nb = _read_v4_json(path) or load_notebook(path)
    label = step_name_hint(os.path.splitext(os.path.basename(path))[0])
    inner_scope = f"{scope}/{label}" if scope else label
    reader = functools.partial(read_sub_notebook, (*chain, path), inner_scope)
    inner, warnings = annotate_cells(code_cells(nb), None, reader)
    file = os.path.basename(path)
    cells = [replace(c, scope=c.scope or inner_scope, notebook=c.notebook or file,
                     number=c.number if c.notebook else c.index) for c in inner
             if c.annotation.kind != "skip"]
    cells = _params_step(cells, annotation, inner_scope, cell)
    cells = [_prefixed(c, label + "_", cell) if c.scope == inner_scope else c for c in cells]
    step = 1 / (len(cells) + 2)
    marker = Cell(index=cell.index, source="", annotation=annotation, cell_id=cell.cell_id,
                  scope=inner_scope)
    return ([marker, *(replace(c, index=cell.index + (k + 1) * step)
                       for k, c in enumerate(cells))], [f"{file}: {w}" for w in warnings])


def _prefixed(c: Cell, prefix: str, at: CodeCell) -> Cell:
    """``c`` with its step (and --after steps) named ``PREFIX + name``."""
    a = c.annotation
    if a.kind != "step" or a.name is None:
        return c
    try:
        name = check_step_name(prefix + a.name)
    except AnnotationError as error:
        raise AnnotationError(f"%%kale notebook: its step {a.name!r} is named {prefix + a.name} "
                              f"here, which is not usable ({error.message})",
                              cell=at.index) from None
    return replace(c, annotation=replace(a, name=name, after=tuple(prefix + s for s in a.after)))


def _params_step(cells: list[Cell], annotation: Annotation, scope: str, at: CodeCell) -> list[Cell]:
    """``cells`` with the sub-notebook's own parameters cells replaced by one step, ``params``,
    which sets each parameter: ``--param`` values first (over the outer notebook's variables),
    then the defaults, then the given values over them."""
    assert annotation.notebook is not None
    own = [c for c in cells if c.scope == scope and c.annotation.kind == "parameters"]
    given = dict(annotation.notebook.params)
    names: list[str] = []
    for c in own:
        for node in ast.walk(ast.parse(c.source)):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.append(node.id)
    unknown = [n for n in given if n not in names]
    if unknown:
        raise AnnotationError(f"%%kale notebook {annotation.notebook.path!r}: --param "
                              f"{unknown[0]} names no parameter of that notebook (its parameters: "
                              f"{', '.join(names) or 'none'})", cell=at.index)
    if not own:
        return cells
    lines = ["_kale_given = {" + ", ".join(f"{n!r}: ({e})" for n, e in given.items()) + "}"]
    lines += [c.source for c in own]
    lines += [f"{n} = _kale_given[{n!r}]" for n in given]
    step = Cell(index=own[0].index, source="\n".join(lines),
                annotation=Annotation(kind="step", name="params"), scope=scope,
                notebook=own[0].notebook, number=own[0].number)
    first = cells.index(own[0])
    rest = [c for c in cells if c not in own]
    return rest[:first] + [step] + rest[first:]


E = TypeVar("E", bound=KaleError)


def with_warnings(error: E, warnings: Sequence[str]) -> E:
    """``error`` with ``warnings`` (found before it) in its message and its ``warnings`` attribute.

    Warnings about tags the reader ignored often explain a failure that comes
    later (Kale 0.x's ``parameters`` tag ignored, then a name no step
    provides), so they travel with the error to every front end.
    """
    error.warnings = (*getattr(error, "warnings", ()), *warnings)  # type: ignore[attr-defined]
    if warnings:
        error.message = f"{error.message} (warnings: {'; '.join(warnings)})"
        error.args = (error.message,)
    return error


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
