"""Build the pipeline :class:`~kale_magics.model.Plan` from annotated cells.

A step receives, for each name it reads, the value of the nearest assignment
ABOVE it in notebook order (a step, a parameters cell, the prelude, a skipped
cell: see :mod:`~kale_magics.analysis.linking`): exactly the value the notebook
sees when run top to bottom. Producing steps become data edges; ``--after``
edges are kept as written (Kale drops them) and independent steps stay parallel
(Kale serialises them). Every problem is an
:class:`~kale_magics.errors.AnalysisError` raised here, at compile time, naming
the cell and the fix; what cannot be made faithful (process state, skipped
magics, skipped cells) becomes a warning in :attr:`Plan.warnings`.
"""

from __future__ import annotations

import ast
import difflib
import graphlib
import os
from dataclasses import dataclass, field
from typing import Sequence

from kale_magics.analysis.effects import Effects, cell_effects, import_aliases
from kale_magics.analysis.linking import KNOWN_NAMES, Linker, scan_cells
from kale_magics.analysis.names import python_source
from kale_magics.analysis.parameters import read_parameters
from kale_magics.analysis.star import StarImports
from kale_magics.analysis.travel import travel_warnings
from kale_magics.errors import AnalysisError
from kale_magics.model import (PRELUDE_KINDS, Cell, Input, Metric, PipelineSettings, Plan, Step,
                               StepSettings)
from kale_magics.notebook.annotations import pipeline_name_from

__all__ = ["KNOWN_NAMES", "build_plan"]


@dataclass
class _StepDraft:
    """A step while the analysis fills it in."""

    cells: list[Cell]
    inputs: dict[str, str] = field(default_factory=dict)
    parameters: set[str] = field(default_factory=set)
    metrics: list[Metric] = field(default_factory=list)
    imports: dict[str, tuple[Cell, tuple[str, ...]]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.cells[0].annotation.name or ""

    @property
    def head(self) -> Cell:
        return self.cells[0]


def build_plan(cells: Sequence[Cell], settings: PipelineSettings, notebook: str = "") -> Plan:
    """Analyse annotated cells into a pipeline plan.

    Parameters
    ----------
    cells:
        Annotated code cells in notebook order (see ``notebook.reader``).
    settings:
        The notebook's ``%kale pipeline`` settings.
    notebook:
        The notebook's path, used for the default pipeline name and messages.

    Raises
    ------
    AnalysisError
        No steps, duplicate step names, an unknown ``--after`` step, a cycle,
        a name no earlier step provides, a bad parameters or metrics cell, or
        code that is not valid Python once IPython syntax is removed.
    """
    drafts = _group_steps(cells)
    _check_names(drafts)
    parameters = read_parameters([c for c in cells if c.annotation.kind == "parameters"])
    prelude = tuple(c for c in cells if c.annotation.kind in PRELUDE_KINDS)
    effects = _effects(cells)
    star = StarImports(os.path.dirname(os.path.abspath(notebook)) if notebook else "")
    linker = Linker(cells, parameters, effects, star)
    linker.link(drafts)
    outside = {d.name: tuple(dict.fromkeys(e.what for c in d.cells
                                           for e in effects[c.index].reads_outside))
               for d in drafts}
    steps = _order(drafts, _outputs(drafts), settings.step_defaults, outside)
    name = settings.name or pipeline_name_from(_stem(notebook) or "pipeline")
    warnings = [*star.warnings, *linker.warnings, *travel_warnings(cells, drafts, effects)]
    return Plan(name=name, settings=settings, parameters=parameters, prelude=prelude,
                steps=steps, notebook=notebook, warnings=tuple(dict.fromkeys(warnings)))


def _effects(cells: Sequence[Cell]) -> dict[int, Effects]:
    """What each cell's code does (``analysis.effects``), import aliases from the whole notebook."""
    trees = {}
    for cell in cells:
        if cell.annotation.kind == "metrics":  # expressions, one per line: no effects
            trees[cell.index] = ast.Module(body=[], type_ignores=[])
            continue
        try:
            trees[cell.index] = ast.parse(python_source(cell.source))
        except SyntaxError:
            scan_cells([cell])  # raises the AnalysisError naming the cell
    aliases = import_aliases(trees.values())
    return {index: cell_effects(tree, aliases) for index, tree in trees.items()}


def _stem(path: str) -> str:
    base = path.replace("\\", "/").rsplit("/", 1)[-1]
    return base[:-6] if base.endswith(".ipynb") else base


def _group_steps(cells: Sequence[Cell]) -> list[_StepDraft]:
    drafts: list[_StepDraft] = []
    for cell in cells:
        if cell.annotation.kind != "step":
            continue
        if cell.explicit or not drafts or drafts[-1].cells[-1].annotation is not cell.annotation:
            drafts.append(_StepDraft(cells=[cell]))
        else:
            drafts[-1].cells.append(cell)
    if not drafts:
        raise AnalysisError("the notebook has no `%%kale step NAME` cell; annotate at least one "
                            "cell as a step (see `kale-magics --help`)")
    return drafts


def _check_names(drafts: Sequence[_StepDraft]) -> None:
    seen: dict[str, Cell] = {}
    for draft in drafts:
        if draft.name in seen:
            raise AnalysisError(f"duplicate step name {draft.name!r}: {seen[draft.name].describe()} "
                                f"and {draft.head.describe()}; rename one of them")
        seen[draft.name] = draft.head
    for draft in drafts:
        for after in draft.head.annotation.after:
            if after not in seen:
                close = difflib.get_close_matches(after, list(seen), n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"steps are: {', '.join(seen)}"
                raise AnalysisError(f"{draft.head.describe()}: step {draft.name!r} runs --after "
                                    f"{after!r}, which is not a step; {hint}")


def _replayed(draft: _StepDraft) -> tuple[tuple[Cell, str], ...]:
    """The import statements the step replays, in notebook order, each once."""
    found = sorted(draft.imports.values(), key=lambda item: item[0].index)
    return tuple(dict.fromkeys((cell, statement) for cell, statements in found
                               for statement in statements))


def _outputs(drafts: Sequence[_StepDraft]) -> dict[str, set[str]]:
    outputs: dict[str, set[str]] = {d.name: set(d.head.annotation.outputs) for d in drafts}
    for draft in drafts:
        for name, producer in draft.inputs.items():
            outputs[producer].add(name)
    return outputs


def _order(drafts: Sequence[_StepDraft], outputs: dict[str, set[str]],
           defaults: StepSettings, outside: dict[str, tuple[str, ...]]) -> tuple[Step, ...]:
    """Freeze the drafts into Steps in a topological order, notebook order on ties."""
    steps = {d.name: Step(
        name=d.name, cells=tuple(d.cells), after=d.head.annotation.after,
        inputs=tuple(Input(n, p) for n, p in sorted(d.inputs.items())),
        outputs=tuple(sorted(outputs[d.name])), parameters=tuple(sorted(d.parameters)),
        metrics=tuple(d.metrics), settings=d.head.annotation.settings.over(defaults),
        imports=_replayed(d), reads_outside=outside[d.name])
        for d in drafts}
    position = {d.name: i for i, d in enumerate(drafts)}
    sorter = graphlib.TopologicalSorter({s.name: s.upstream for s in steps.values()})
    try:
        sorter.prepare()
    except graphlib.CycleError as error:
        cycle = " -> ".join(error.args[1])
        raise AnalysisError(f"the steps form a cycle: {cycle}; remove one of the --after edges "
                            "that close it") from None
    order: list[Step] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=position.__getitem__)
        order.extend(steps[name] for name in ready)
        sorter.done(*ready)
    return tuple(order)
