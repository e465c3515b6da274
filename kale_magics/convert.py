"""Convert a notebook between ``%%kale`` lines and Kale's cell tags, both ways.

``to_kale_tags`` writes what Kale 2.3 accepts: tags and ``kubeflow_notebook``
metadata; the ``%%kale`` lines are removed; parameters Kale cannot take
(negative numbers, lists, dicts) move to a ``functions`` cell as constants;
metrics become ``print(name)`` lines. Each changed cell keeps its original
source in ``metadata.kale_magics`` (Kale ignores it), so ``to_magics`` restores
it exactly while its tags are unchanged: the round trip magics -> tags ->
magics is the identity. A Kale notebook without that record is converted from
its tags. Every other cell, output and metadata field is kept.

:func:`convert_file` holds the file policy: a new file written atomically,
never over the source. The module sits above ``notebook`` and ``analysis``: it
reads the file and needs the analysed plan.
"""

from __future__ import annotations

import ast
import copy
import os
from dataclasses import replace
from typing import Any, Callable

from kale_magics.analysis.names import python_source
from kale_magics.atomic import write_text_atomic
from kale_magics.errors import NotebookError
from kale_magics.model import Annotation, Plan, cell_place
from kale_magics.notebook import kale_tags
from kale_magics.notebook.annotations import (
    cell_line,
    cell_magic,
    is_tool_line,
    pipeline_line,
)
from kale_magics.notebook.reader import annotate_cells, code_cells, load_notebook, read_settings

STASH = "kale_magics"


def _strip_magics(source: str) -> str:
    """The cell without its ``%%kale`` line and without ``%load_ext kale_magics``/``%kale`` lines."""
    magic = cell_magic(source)
    lines = (magic[1].lstrip("\n") if magic else source).splitlines()
    return "\n".join(line for line in lines if not is_tool_line(line))


def _kale_parameters(source: str) -> tuple[str, str]:
    """Split a parameters cell into what Kale accepts (plain constants) and the rest."""
    keep, move = [], []
    for node in ast.parse(source).body:
        value = getattr(node, "value", None)
        plain = isinstance(node, ast.Assign) and isinstance(value, ast.Constant) \
            and type(value.value) in (int, float, str, bool)
        (keep if plain else move).append(ast.get_source_segment(source, node) or "")
    return "\n".join(keep), "\n".join(move)


def _kale_metrics(source: str, index: int, warnings: list[str]) -> str:
    lines = []
    for line in source.splitlines():
        text = line.split("#", 1)[0].strip()
        if text.isidentifier():
            lines.append(f"print({text})")
        elif text:
            warnings.append(f"{cell_place(index)}: metric `{text}` is not a variable name, which Kale "
                            "requires; left out of the Kale metrics cell")
    return "\n".join(lines)


def convert_file(notebook: str | os.PathLike[str], out: str | os.PathLike[str], to: str,
                 plan: Callable[[], Plan]) -> tuple[str, list[str]]:
    """Write ``notebook`` converted to Kale's tags (``to="kale-tags"``) or to ``%%kale`` lines
    (``to="magics"``) as ``out``, atomically; never over the source.

    Parameters
    ----------
    plan:
        Reads the notebook's plan (its annotations must describe a valid
        pipeline); called once the paths and ``to`` are known to be good.

    Returns
    -------
    tuple of (str, list of str)
        The path written, and warnings (what the target cannot express, tags ignored).

    Raises
    ------
    NotebookError
        ``out`` is the notebook itself, cannot be written, or ``to`` is unknown.
    AnnotationError, AnalysisError
        The notebook's annotations are invalid.
    """
    if os.path.abspath(out) == os.path.abspath(notebook):
        raise NotebookError(f"refusing to overwrite the source notebook {notebook}; "
                            "choose another output path")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise NotebookError(f"cannot write {out}: the folder {folder} does not exist; create it "
                            "or choose another output path")
    if to not in ("kale-tags", "magics"):
        raise NotebookError(f"cannot convert to {to!r}; use --to magics or --to kale-tags")
    import nbformat  # here, not at the top: importing it takes seconds (see notebook.reader)

    analysed = plan()  # the tags must describe a valid pipeline, whichever way
    source = load_notebook(notebook)
    converted, warnings = (to_kale_tags(source, analysed) if to == "kale-tags"
                           else to_magics(source, *_magics_hints(analysed)))
    try:
        write_text_atomic(out, nbformat.writes(converted))
    except OSError as error:
        raise NotebookError(f"cannot write {out}: {error}; choose a writable path") from None
    return os.fspath(out), warnings


def _magics_hints(plan: Plan) -> tuple[str, frozenset[int], dict[int, str]]:
    """What :func:`to_magics` needs from the analysed plan: its name, the cells that keep their
    Kale tags (``Plan.lenient_steps``), and each step cell's step name."""
    keep = frozenset(c.index for s in plan.steps if s.name in plan.lenient_steps
                     for c in s.cells if not c.notebook)
    steps = {c.index: s.name for s in plan.steps for c in s.cells if c.explicit and not c.notebook}
    return plan.name, keep, steps


def to_kale_tags(nb: Any, plan: Plan) -> tuple[Any, list[str]]:
    """A copy of ``nb`` annotated with Kale's tags, and warnings about what Kale cannot express."""
    out = copy.deepcopy(nb)
    annotated = {c.index: c for c in (*plan.prelude, *(c for s in plan.steps for c in s.cells))
                 if not c.notebook}  # cells of referenced notebooks stay in those
    skipped = {c.index for c in annotate_cells(code_cells(nb), _no_cells)[0]
               if c.annotation.kind == "skip" and not c.explicit}
    first_cells = {s.cells[0].index for s in plan.steps}
    upstream = {s.name: s.upstream for s in plan.steps}
    warnings: list[str] = []
    cells, seen = [], False
    for index, cell in enumerate(out.cells):
        cells.append(cell)
        if cell.get("cell_type") != "code" or _is_reference(cell):
            continue
        original = cell.get("source", "")
        had_tags = "tags" in cell.get("metadata", {})
        original_tags = list(cell.get("metadata", {}).get("tags", []))
        magic = cell_magic(original) is not None
        own = annotated.get(index)
        own = own.annotation if own is not None and own.explicit else None
        if own is None and magic:
            own = Annotation(kind=cell_magic(original)[0].split()[0])  # type: ignore[index]  # parameters, metrics and skip cells
        source, tags = _strip_magics(original), _foreign_tags(cell)
        if own is not None:
            seen = True
            edges = upstream.get(own.name or "", ()) if index in first_cells else ()
            kale, lost = kale_tags.tags_for(own, edges)
            tags += kale
            if lost:
                warnings.append(f"{cell_place(index)}: Kale tags cannot express {' '.join(lost)}; "
                                "kept for converting back, ignored by Kale")
            if magic and own.kind == "parameters":
                source, moved = _kale_parameters(source)
                if moved:
                    cells.append(_moved_parameters(out, moved, index, warnings))
            elif magic and own.kind == "metrics":
                source = _kale_metrics(source, index, warnings)
        elif (not seen or index in skipped) and source.strip():
            tags.append("skip")  # Kale's skip is transparent: a cell after it is not skipped
        if "skip" not in tags:
            source = _plain_python(source, index, warnings)
        if source != original or tags != original_tags:
            cell.setdefault("metadata", {})[STASH] = {
                "source": original, "tags": original_tags if had_tags else None,
                "exported_tags": tags}
        cell["source"] = source
        if tags != original_tags:
            cell.setdefault("metadata", {})["tags"] = tags
    if plan.settings.on_exit:
        warnings.append(f"%kale pipeline --on-exit {plan.settings.on_exit}: Kale tags cannot "
                        "express an exit step; Kale runs it as an ordinary step, only when the "
                        "others succeed, without PIPELINE_STATUS")
    out.cells = cells
    out.metadata[STASH] = {"kubeflow_notebook": out.metadata.get("kubeflow_notebook")}
    out.metadata["kubeflow_notebook"] = kale_tags.metadata_for(plan.name, plan.settings)
    return out, warnings


def _plain_python(source: str, index: int, warnings: list[str]) -> str:
    """``source`` with IPython syntax written as Python, which Kale's parser needs.

    Kale fails on ``!cmd`` and ``%magic`` lines (kubeflow/kale issues 142 and
    225); IPython's own transformer writes them as ``get_ipython()`` calls.
    """
    python = python_source(source).rstrip("\n")
    if python.strip() == source.strip():
        return source
    changed = [line.strip() for line in source.splitlines() if line.strip().startswith(("%", "!"))]
    warnings.append(f"{cell_place(index)}: IPython syntax written as get_ipython() calls for Kale, which "
                    f"run only where IPython is: {'; '.join(changed)[:200]}")
    return python


def _no_cells(name: str, cell: Any) -> tuple[list[Any], list[str]]:
    """Stand-in for the cells a ``notebook:`` cell references: conversion leaves them in their file."""
    return [], []


def _is_reference(cell: Any) -> bool:
    """Whether ``cell`` is a ``notebook:NAME`` cell (Kale 2.3's reference to another notebook)."""
    return any(isinstance(t, str) and t.startswith("notebook:")
               for t in cell.get("metadata", {}).get("tags", []))


def _foreign_tags(cell: Any) -> list[str]:
    return [t for t in cell.get("metadata", {}).get("tags", []) if not kale_tags.is_kale_tag(t)]


def _new_code_cell(nb: Any, source: str) -> Any:
    """A code cell for ``nb``: with an id only where its nbformat version has them (4.5+)."""
    from nbformat.v4 import new_code_cell  # here: importing nbformat takes seconds (notebook.reader)

    cell = new_code_cell(source)
    if (nb.get("nbformat"), nb.get("nbformat_minor", 0)) < (4, 5):
        cell.pop("id", None)
    return cell


def _moved_parameters(nb: Any, source: str, index: int, warnings: list[str]) -> Any:
    warnings.append(f"{cell_place(index)}: Kale 2.3 takes only plain int, float, str and bool "
                    f"parameters; {', '.join(line.split('=')[0].strip() for line in source.splitlines())} "
                    "became constants in a functions cell")
    moved = _new_code_cell(nb, source)
    moved.metadata = {"tags": ["functions"], STASH: {"inserted": True}}
    return moved


def to_magics(nb: Any, name: str | None = None, keep: frozenset[int] = frozenset(),
              steps: dict[int, str] | None = None) -> tuple[Any, list[str]]:
    """A copy of ``nb`` with Kale's tags turned into ``%%kale`` lines and a ``%kale pipeline`` line.

    Cells this tool exported are restored from their record while their tags
    are unchanged; other tagged cells are converted from their tags. Where
    Kale's reading differs from the magics' (an untagged cell after a
    ``skip`` cell continues the step before the skip in Kale, the skip itself
    for the magics), the cell gets an explicit ``%%kale`` line, so the
    pipeline is the same. ``name`` (the pipeline's name, from the source
    notebook) is written on the ``%kale pipeline`` line when the metadata
    names none, so the converted file keeps it. Cells at the indices in
    ``keep`` keep their Kale tags (a notebook may mix both): steps that only
    Kale's rules compile (see ``Plan.lenient_steps``). ``steps`` gives the
    step name the analysis gave each step cell, written where it is not its
    tag's (cells of one name split because merging them makes a cycle).

    Raises
    ------
    AnnotationError
        A tag that cannot be converted (an unusable step name, a malformed limit).
    """
    out = copy.deepcopy(nb)
    warnings: list[str] = []
    restored_any = False
    cells = []
    continued = _kale_continuations(nb)
    for index, cell in enumerate(out.cells):
        stash = cell.get("metadata", {}).pop(STASH, None)
        if stash and stash.get("inserted"):
            continue  # a cell the export added: its code is back in the parameters cell
        if stash and stash.get("exported_tags") == cell.get("metadata", {}).get("tags", []):
            cell["source"], restored_any = stash["source"], True
            if stash["tags"] is None:
                cell["metadata"].pop("tags", None)
            else:
                cell["metadata"]["tags"] = stash["tags"]
        elif _is_reference(cell):
            warnings.append(f"{cell_place(index)}: `notebook:` references keep their Kale tag, which "
                            "has no %%kale form (a notebook may mix both)")
        elif index in keep:
            warnings.append(f"{cell_place(index)}: kept with its Kale tags: its step reads names no step "
                            "assigns, which Kale's rules compile and %%kale lines do not")
        elif cell.get("cell_type") == "code":
            warnings += _convert_cell(cell, index, continued.get(index), (steps or {}).get(index))
        cells.append(cell)
    out.cells = cells
    meta = out.metadata.pop("kubeflow_notebook", None) or {}
    previous = (out.metadata.pop(STASH, None) or {}).get("kubeflow_notebook")
    if restored_any and previous is not None:
        out.metadata["kubeflow_notebook"] = previous
    if not restored_any:
        warnings += _insert_pipeline_line(out, meta, name)
    return out, warnings


def _insert_pipeline_line(out: Any, meta: dict[str, Any], name: str | None) -> list[str]:
    """Insert the ``%kale pipeline`` cell that holds Kale's notebook metadata (and ``name``
    when the metadata names no pipeline); return warnings about metadata keys ignored."""
    settings, found = kale_tags.settings_from_metadata(dict(meta))
    settings = settings.merged(read_settings(code_cells(out)))
    if settings.name is None and name:
        settings = replace(settings, name=name)
    header = f"%load_ext kale_magics\n{pipeline_line(settings)}"
    out.cells.insert(0, _new_code_cell(out, header))
    return found


def _kale_continuations(nb: Any) -> dict[int, tuple[Annotation, bool]]:
    """Untagged cells whose conversion needs care: the annotation Kale gives each, and whether
    the cell needs a ``%%kale`` line of its own.

    Kale's ``skip`` is transparent (an untagged cell after it continues the
    annotation before it); after ``%%kale skip`` an untagged cell is skipped:
    such a cell needs its own line. An untagged cell continuing a Kale
    metrics cell holds ``print(name)`` lines, written as ``name`` lines.
    """
    cells, _ = annotate_cells(code_cells(nb), _no_cells)
    result, last_own = {}, None
    for cell in cells:
        if cell.explicit:
            last_own = cell.annotation
            continue
        own_line = last_own is not None and last_own.kind == "skip" and cell.annotation.kind != "skip"
        if own_line or cell.annotation.kind == "metrics":
            result[cell.index] = (cell.annotation, own_line)
    return result


def _convert_cell(cell: Any, index: int, continued: tuple[Annotation, bool] | None = None,
                  step: str | None = None) -> list[str]:
    """Turn the Kale tags of ``cell`` into a ``%%kale`` line.

    ``continued``: for an untagged cell, the annotation it continues in Kale
    and whether it needs a line of its own (with no options: a step takes
    them from its first cell). ``step``: the step name the analysis gave the
    cell, written where it differs from the tag's.
    """
    tags = list(cell.get("metadata", {}).get("tags", []))
    annotation, warnings = kale_tags.annotation_from_tags(tags, index)
    if annotation is not None and annotation.kind == "step" and step and step != annotation.name:
        annotation = replace(annotation, name=step, after=())
    own_line = annotation is not None
    if annotation is None and continued is not None:
        annotation, own_line = Annotation(kind=continued[0].kind, name=continued[0].name), continued[1]
    if annotation is None:
        _drop_kale_tags(cell)  # `step:` alone: an untagged cell
        return warnings
    source = cell.get("source", "")
    source = source if isinstance(source, str) else "".join(source)
    if annotation.kind == "metrics":
        source = kale_tags.metrics_from_kale(source, index)
    cell["source"] = f"{cell_line(annotation)}\n{source}" if own_line else source
    _drop_kale_tags(cell)
    return warnings


def _drop_kale_tags(cell: Any) -> None:
    """Remove Kale's tags from ``cell``, keeping other tags (and no empty tag list)."""
    if "tags" not in cell.get("metadata", {}):
        return
    cell["metadata"]["tags"] = _foreign_tags(cell)
    if not cell["metadata"]["tags"]:
        del cell["metadata"]["tags"]
