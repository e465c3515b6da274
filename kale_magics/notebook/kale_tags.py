"""Export a ``%%kale``-annotated notebook as a copy annotated with Kale's cell tags.

Kale (kubeflow/kale) reads ``metadata.tags`` of each cell: ``imports``,
``functions``, ``pipeline-parameters``, ``pipeline-metrics``, ``skip``,
``step:NAME`` with ``prev:NAME`` for each step it waits for, and the pipeline
settings in ``metadata.kubeflow_notebook``. The copy drops the ``%%kale`` and
``%kale`` lines, writes metrics as the ``print(name)`` lines Kale expects,
keeps every other cell, output and metadata field.
"""

from __future__ import annotations

import copy
from typing import Any

from kale_magics.model import Plan
from kale_magics.notebook.annotations import LINE_PREFIX, is_cell_annotation

KIND_TAGS = {"imports": "imports", "functions": "functions", "parameters": "pipeline-parameters",
             "metrics": "pipeline-metrics", "skip": "skip"}


def _strip_magics(source: str) -> tuple[str, str | None]:
    """The cell without kale-magics lines, and its ``%%kale`` line (or None)."""
    first, _, rest = source.partition("\n")
    magic = first if is_cell_annotation(first) else None
    lines = (rest if magic else source).splitlines()
    kept = [line for line in lines if not (line.strip().startswith(f"{LINE_PREFIX} ")
                                           or line.strip() == "%load_ext kale_magics")]
    return "\n".join(kept), magic


def _tags(plan: Plan, index: int, kind: str, name: str | None) -> list[str]:
    if kind != "step":
        return [KIND_TAGS[kind]]
    step = plan.step(name or "")
    return [f"step:{step.name}", *(f"prev:{up}" for up in step.upstream)]


def to_kale_tags(nb: Any, plan: Plan) -> Any:
    """Return a copy of ``nb`` (an nbformat v4 notebook) annotated with Kale's tags."""
    out = copy.deepcopy(nb)
    annotated = {c.index: c for c in (*plan.prelude, *(c for s in plan.steps for c in s.cells))}
    seen_annotation = False
    for index, cell in enumerate(out.cells):
        if cell.get("cell_type") != "code":
            continue
        source, magic = _strip_magics(cell.get("source", ""))
        tags = [t for t in cell.get("metadata", {}).get("tags", []) if t not in KIND_TAGS.values()
                and not t.startswith(("step:", "prev:", "block:"))]
        if magic is not None:
            seen_annotation = True
            annotation = annotated[index].annotation if index in annotated else None
            kind = annotation.kind if annotation else magic.split()[1]
            tags += _tags(plan, index, kind, annotation.name if annotation else None)
            if kind == "metrics":
                source = "\n".join(f"print({line.strip()})" for line in source.splitlines()
                                   if line.strip() and not line.strip().startswith("#"))
        elif not seen_annotation and source.strip():
            tags.append("skip")
        cell["source"] = source
        cell.setdefault("metadata", {})["tags"] = tags
    out.metadata["kubeflow_notebook"] = _kale_metadata(plan)
    return out


def _kale_metadata(plan: Plan) -> dict[str, Any]:
    settings = plan.settings
    meta: dict[str, Any] = {"pipeline_name": plan.name,
                            "experiment_name": settings.experiment or plan.name,
                            "pipeline_description": settings.description or ""}
    if settings.image:
        meta["base_image"] = settings.image
    return meta
