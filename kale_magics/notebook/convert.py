"""Convert a notebook between ``%%kale`` lines and Kale's cell tags, both ways.

``to_kale_tags`` writes what Kale 2.3 accepts: tags and ``kubeflow_notebook``
metadata; the ``%%kale`` lines are removed; parameters Kale cannot take
(negative numbers, lists, dicts) move to a ``functions`` cell as constants;
metrics become ``print(name)`` lines. Each changed cell keeps its original
source in ``metadata.kale_magics`` (Kale ignores it), so ``to_magics`` restores
it exactly while its tags are unchanged: the round trip magics -> tags ->
magics is the identity. A Kale notebook without that record is converted from
its tags. Every other cell, output and metadata field is kept.
"""

from __future__ import annotations

import ast
import copy
from typing import Any

import nbformat

from kale_magics.analysis.names import python_source
from kale_magics.model import Annotation, Plan
from kale_magics.notebook import kale_tags
from kale_magics.notebook.annotations import (
    LINE_PREFIX,
    cell_line,
    cell_magic,
    pipeline_line,
)
from kale_magics.notebook.reader import code_cells, read_settings

STASH = "kale_magics"


def _strip_magics(source: str) -> str:
    """The cell without its ``%%kale`` line and without ``%load_ext kale_magics``/``%kale`` lines."""
    magic = cell_magic(source)
    lines = (magic[1].lstrip("\n") if magic else source).splitlines()
    return "\n".join(line for line in lines if not (
        line.strip().startswith(f"{LINE_PREFIX} ") or line.strip() == "%load_ext kale_magics"))


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
            warnings.append(f"cell {index}: metric `{text}` is not a variable name, which Kale "
                            "requires; left out of the Kale metrics cell")
    return "\n".join(lines)


def to_kale_tags(nb: Any, plan: Plan) -> tuple[Any, list[str]]:
    """A copy of ``nb`` annotated with Kale's tags, and warnings about what Kale cannot express."""
    out = copy.deepcopy(nb)
    annotated = {c.index: c for c in (*plan.prelude, *(c for s in plan.steps for c in s.cells))}
    upstream = {s.name: s.upstream for s in plan.steps}
    warnings: list[str] = []
    cells, seen = [], False
    for index, cell in enumerate(out.cells):
        cells.append(cell)
        if cell.get("cell_type") != "code":
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
            kale, lost = kale_tags.tags_for(own, upstream.get(own.name or "", ()))
            tags += kale
            if lost:
                warnings.append(f"cell {index}: Kale tags cannot express {' '.join(lost)}; "
                                "kept for converting back, ignored by Kale")
            if magic and own.kind == "parameters":
                source, moved = _kale_parameters(source)
                if moved:
                    cells.append(_moved_parameters(moved, index, warnings))
            elif magic and own.kind == "metrics":
                source = _kale_metrics(source, index, warnings)
        elif not seen and source.strip():
            tags.append("skip")
        if "skip" not in tags:
            source = _plain_python(source, index, warnings)
        if source != original or tags != original_tags:
            cell.setdefault("metadata", {})[STASH] = {
                "source": original, "tags": original_tags if had_tags else None,
                "exported_tags": tags}
        cell["source"] = source
        if tags != original_tags:
            cell.setdefault("metadata", {})["tags"] = tags
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
    warnings.append(f"cell {index}: IPython syntax written as get_ipython() calls for Kale, which "
                    f"run only where IPython is: {'; '.join(changed)[:200]}")
    return python


def _foreign_tags(cell: Any) -> list[str]:
    return [t for t in cell.get("metadata", {}).get("tags", []) if not kale_tags.is_kale_tag(t)]


def _moved_parameters(source: str, index: int, warnings: list[str]) -> Any:
    warnings.append(f"cell {index}: Kale 2.3 takes only plain int, float, str and bool "
                    f"parameters; {', '.join(line.split('=')[0].strip() for line in source.splitlines())} "
                    "became constants in a functions cell")
    moved = nbformat.v4.new_code_cell(source)
    moved.metadata = {"tags": ["functions"], STASH: {"inserted": True}}
    return moved


def to_magics(nb: Any) -> tuple[Any, list[str]]:
    """A copy of ``nb`` with Kale's tags turned into ``%%kale`` lines and a ``%kale pipeline`` line.

    Cells this tool exported are restored from their record while their tags
    are unchanged; other tagged cells are converted from their tags.

    Raises
    ------
    AnnotationError
        A tag that cannot be converted (an unusable step name, a malformed limit).
    """
    out = copy.deepcopy(nb)
    warnings: list[str] = []
    restored_any = False
    cells = []
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
        elif cell.get("cell_type") == "code":
            warnings += _convert_cell(cell, index)
        cells.append(cell)
    out.cells = cells
    meta = out.metadata.pop("kubeflow_notebook", None) or {}
    previous = (out.metadata.pop(STASH, None) or {}).get("kubeflow_notebook")
    if restored_any and previous is not None:
        out.metadata["kubeflow_notebook"] = previous
    if not restored_any:
        settings, found = kale_tags.settings_from_metadata(dict(meta))
        warnings += found
        header = f"%load_ext kale_magics\n{pipeline_line(settings.merged(read_settings(code_cells(out))))}"
        out.cells.insert(0, nbformat.v4.new_code_cell(header))
    return out, warnings


def _convert_cell(cell: Any, index: int) -> list[str]:
    tags = list(cell.get("metadata", {}).get("tags", []))
    annotation, warnings = kale_tags.annotation_from_tags(tags, index)
    if annotation is None:
        return warnings
    source = cell.get("source", "")
    if annotation.kind == "metrics":
        source = kale_tags.metrics_from_kale(source, index)
    cell["source"] = f"{cell_line(annotation)}\n{source}"
    cell["metadata"]["tags"] = _foreign_tags(cell)
    if not cell["metadata"]["tags"]:
        del cell["metadata"]["tags"]
    return warnings
