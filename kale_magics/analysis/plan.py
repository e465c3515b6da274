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
from dataclasses import dataclass, field, replace
from typing import Sequence

from kale_magics.analysis.effects import Effects, cell_effects, notebook_facts
from kale_magics.analysis.linking import KNOWN_NAMES, Linker, scan_cells
from kale_magics.analysis.names import python_source
from kale_magics.analysis.parameters import read_parameters
from kale_magics.analysis.star import StarImports
from kale_magics.analysis.travel import travel_warnings
from kale_magics.errors import AnalysisError
from kale_magics.analysis.control import (check_conditions, check_exit_step, check_loops,
                                          check_scopes, mark_exit_step, scalar_outputs)
from kale_magics.model import (PRELUDE_KINDS, Annotation, Cell, Condition, Input, Loop, Metric,
                               PipelineSettings, Plan, Step, StepSettings)
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
    #: Runs of the step's cells with no other step's cell between them, in notebook order.
    segments: list[list[Cell]] = field(default_factory=list)
    #: Problems Kale accepts in a Kale-tagged step, reported as warnings.
    warnings: list[str] = field(default_factory=list)
    #: Names of the step's ``--if`` that earlier steps assign, with those steps.
    condition_inputs: dict[str, str] = field(default_factory=dict)
    #: True for the ``%kale pipeline --on-exit`` step (it reads ``PIPELINE_STATUS``).
    is_exit: bool = False

    @property
    def name(self) -> str:
        return self.cells[0].annotation.name or ""

    @property
    def head(self) -> Cell:
        return self.cells[0]

    @property
    def explicit(self) -> list[Cell]:
        """The cells that carry the step's own annotation (its ``%%kale step`` line or tags)."""
        return [c for c in self.cells if c.explicit]

    @property
    def loop(self) -> Loop | None:
        """``--for`` of the step's first annotated cell."""
        return self.explicit[0].annotation.loop if self.explicit else None

    @property
    def condition(self) -> Condition | None:
        """``--if`` of the step's first annotated cell."""
        return self.explicit[0].annotation.condition if self.explicit else None

    @property
    def after(self) -> tuple[str, ...]:
        """The ``--after`` edges of the step's first annotated cell (Kale reads the ``prev:``
        tags of the cell that creates a step only)."""
        return self.explicit[0].annotation.after if self.explicit else ()


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
        No steps, an unknown ``--after`` step, a cycle, a name no earlier step
        provides, a bad parameters or metrics cell, or code that is not valid
        Python once IPython syntax is removed.
    """
    try:
        return _build(cells, settings, notebook)
    except _MergeCycle as error:
        if not all(c.tagged for c in error.draft.cells):
            raise AnalysisError(error.message) from None
        split, renamed = _split(cells, error.draft)  # Kale compiles it: compile it faithfully
        plan = build_plan(split, settings, notebook)
        return replace(plan, warnings=(f"{error.message}; so {renamed}", *plan.warnings))


def _build(cells: Sequence[Cell], settings: PipelineSettings, notebook: str) -> Plan:
    """:func:`build_plan` for one grouping of the cells into steps."""
    drafts = _group_steps(cells)
    notes = _check_names(drafts)
    _check_registered(drafts)
    parameters = read_parameters([c for c in cells if c.annotation.kind == "parameters"])
    prelude = tuple(c for c in cells if c.annotation.kind in PRELUDE_KINDS)
    effects = _effects(cells)
    star = StarImports(os.path.dirname(os.path.abspath(notebook)) if notebook else "")
    linker = Linker(cells, parameters, effects, star)
    mark_exit_step(drafts, settings.on_exit)
    linker.link(drafts)
    linker.warnings.extend(linker.derived_warnings())
    check_loops(drafts, parameters)
    check_conditions(drafts, parameters)
    check_scopes(drafts, cells)
    notes += check_exit_step(drafts)
    outside = {d.name: tuple(dict.fromkeys(e.what for c in d.cells
                                           for e in effects[c.index].reads_outside))
               for d in drafts}
    steps = _order(drafts, _outputs(drafts), settings.step_defaults, outside)
    name = settings.name or pipeline_name_from(_stem(notebook) or "pipeline")
    warnings = [*notes, *star.warnings, *linker.warnings, *_merge_warnings(drafts, cells),
                *(w for d in drafts for w in d.warnings), *travel_warnings(cells, drafts, effects)]
    return Plan(name=name, settings=settings, parameters=parameters, prelude=prelude,
                steps=steps, notebook=notebook, warnings=tuple(dict.fromkeys(warnings)),
                lenient_steps=tuple(d.name for d in drafts if d.warnings))


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
    facts = notebook_facts(trees.values())
    return {index: cell_effects(tree, facts) for index, tree in trees.items()}


def _stem(path: str) -> str:
    base = path.replace("\\", "/").rsplit("/", 1)[-1]
    return base[:-6] if base.endswith(".ipynb") else base


def _group_steps(cells: Sequence[Cell]) -> list[_StepDraft]:
    """The steps in order of their first cell; cells naming the same step are one step.

    As Kale's ``NotebookProcessor.parse_notebook`` (``Pipeline.merge_code``):
    every cell whose step name is NAME, adjacent or not, joins step NAME in
    notebook order. A merge that makes a cycle is refused later, naming the
    cells (``_order``).
    """
    drafts: dict[str, _StepDraft] = {}
    previous = None
    for cell in cells:
        if cell.annotation.kind != "step":
            continue
        name = cell.annotation.name or ""
        draft = drafts.setdefault(name, _StepDraft(cells=[]))
        draft.cells.append(cell)
        if previous == name:
            draft.segments[-1].append(cell)
        else:
            draft.segments.append([cell])
        previous = name
    if not drafts:
        raise AnalysisError("the notebook has no `%%kale step NAME` cell; annotate at least one "
                            "cell as a step (see `kale-magics --help`)")
    return list(drafts.values())


def _merge_warnings(drafts: Sequence[_StepDraft], cells: Sequence[Cell]) -> list[str]:
    """Warn where merging cells that share a step name changes a value another cell sees.

    A merged producer passes the value its last cell leaves (Kale does the
    same), where the notebook's reader saw the value from before that cell;
    and in a merged reader, a value received from another step is bound
    before the step runs, so its own earlier cell that assigns the name wins.
    """
    by_name = {d.name: d for d in drafts}
    position = {cell: i for i, cell in enumerate(cells)}
    warnings = []
    for reader in drafts:
        for name, producer in sorted(reader.inputs.items()):
            later = [seg[0] for seg in by_name[producer].segments[1:]
                     if position[seg[0]] > position[reader.head] and name in scan_cells(seg).writes]
            if later:
                warnings.append(_merge_warning(reader, name, later[0], producer, "after"))
            shadowing = [seg[0] for seg in reader.segments[:-1] if name in scan_cells(seg).writes
                         and any(name in scan_cells(s).reads for s in reader.segments
                                 if position[s[0]] > position[seg[0]])]
            if shadowing and len(reader.segments) > 1:
                warnings.append(_merge_warning(reader, name, shadowing[0], reader.name, "before"))
    return warnings


def _merge_warning(reader: _StepDraft, name: str, cell: Cell, step: str, when: str) -> str:
    """The warning of :func:`_merge_warnings`: ``cell`` of merged ``step`` changes ``name``."""
    seen = ("the pipeline passes the value after that cell, the notebook had the one before"
            if when == "after" else "in the step that cell's value wins over the one received, "
            "the notebook had the value another step assigned in between")
    return (f"{reader.head.describe()}: step {reader.name!r} reads `{name}`, which "
            f"{cell.describe()} assigns {'afterwards ' if when == 'after' else ''}in the same step "
            f"{step!r} (one step because the cells share its name): {seen}; give that cell a "
            f"step name of its own")


def _check_names(drafts: Sequence[_StepDraft]) -> list[str]:
    """Check ``--after`` names; return warnings for settings a merged step's later cells repeat."""
    seen = {draft.name: draft.head for draft in drafts}
    warnings = []
    for draft in drafts:
        first = draft.explicit[0].annotation if draft.explicit else draft.head.annotation
        for cell in draft.explicit[1:]:
            own = cell.annotation
            if (own.settings, own.after) != (first.settings, first.after) \
                    and (own.settings, own.after) != (StepSettings(), ()):
                warnings.append(f"{cell.describe()}: the settings and --after (prev:) edges of step "
                                f"{draft.name!r} are taken from its first cell, "
                                f"{draft.explicit[0].describe()}; these are ignored (as Kale does): "
                                "move them to the first cell")
        for after in draft.after:
            if after not in seen:
                close = difflib.get_close_matches(after, list(seen), n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"steps are: {', '.join(seen)}"
                raise AnalysisError(f"{draft.head.describe()}: step {draft.name!r} runs --after "
                                    f"{after!r}, which is not a step; {hint}")
    return warnings


def _check_registered(drafts: Sequence[_StepDraft]) -> None:
    """Refuse a ``--register VAR`` whose step never assigns VAR (it would fail after running)."""
    for draft in drafts:
        registrations = draft.head.annotation.registrations
        writes = scan_cells(draft.cells).writes if registrations else set()
        for registration in registrations:
            if registration.variable not in writes:
                raise AnalysisError(
                    f"{draft.head.describe()}: step {draft.name!r} registers `{registration.variable}`"
                    f" (--register), which the step never assigns; assign it in the step, or "
                    f"register a variable the step makes")


def _replayed(draft: _StepDraft) -> tuple[tuple[Cell, str], ...]:
    """The import statements the step replays, in notebook order, each once."""
    found = sorted(draft.imports.values(), key=lambda item: item[0].index)
    return tuple(dict.fromkeys((cell, statement) for cell, statements in found
                               for statement in statements))


def _outputs(drafts: Sequence[_StepDraft]) -> dict[str, set[str]]:
    outputs = {d.name: {n for c in d.explicit for n in c.annotation.outputs}
               | {r.variable for r in d.head.annotation.registrations} for d in drafts}
    for draft in drafts:
        for name, producer in draft.inputs.items():
            outputs[producer].add(name)
    return outputs


def _order(drafts: Sequence[_StepDraft], outputs: dict[str, set[str]],
           defaults: StepSettings, outside: dict[str, tuple[str, ...]]) -> tuple[Step, ...]:
    """Freeze the drafts into Steps in a topological order, notebook order on ties."""
    scalars = scalar_outputs(drafts)
    steps = {d.name: Step(
        name=d.name, cells=tuple(d.cells), after=d.after,
        inputs=tuple(Input(n, p) for n, p in sorted(d.inputs.items())),
        outputs=tuple(sorted(outputs[d.name])), parameters=tuple(sorted(d.parameters)),
        metrics=tuple(d.metrics), settings=_settings(defaults, d.head.annotation),
        imports=_replayed(d), reads_outside=outside[d.name], loop=d.loop,
        condition=d.condition,
        condition_inputs=tuple(Input(n, p) for n, p in sorted(d.condition_inputs.items())),
        scalars=scalars.get(d.name, ()), registrations=d.head.annotation.registrations)
        for d in drafts}
    position = {d.name: i for i, d in enumerate(drafts)}
    last = {d.name for d in drafts if d.is_exit}  # the exit step runs after every other step
    sorter = graphlib.TopologicalSorter({
        s.name: tuple(n for n in steps if n not in last) if s.name in last else s.upstream
        for s in steps.values()})
    try:
        sorter.prepare()
    except graphlib.CycleError as error:
        raise _cycle_error(error.args[1], drafts) from None
    order: list[Step] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=position.__getitem__)
        order.extend(steps[name] for name in ready)
        sorter.done(*ready)
    return tuple(order)


def _settings(defaults: StepSettings, annotation: Annotation) -> StepSettings:
    """The step's settings over the pipeline's defaults; a step that registers models is not
    cached unless it says so (``--cache``): a cached step would register nothing."""
    settings = defaults.merged(annotation.settings)
    if annotation.registrations and annotation.settings.cache is None:
        settings = replace(settings, cache=False)
    return settings


class _MergeCycle(AnalysisError):
    """A cycle closed by a step merged from cells that share its name (``draft``)."""

    def __init__(self, message: str, draft: _StepDraft) -> None:
        super().__init__(message)
        self.draft = draft


def _cycle_error(cycle: Sequence[str], drafts: Sequence[_StepDraft]) -> AnalysisError:
    """The error for steps that form a cycle; names the cells when a merged step closes it."""
    path = " -> ".join(cycle)
    merged = [d for d in drafts if d.name in cycle and len(d.segments) > 1]
    if not merged:
        return AnalysisError(f"the steps form a cycle: {path}; remove one of the --after edges "
                             "that close it")
    draft = merged[0]
    cells = " and ".join(segment[0].describe() for segment in draft.segments)
    return _MergeCycle(f"the cells of step {draft.name!r} ({cells}) are one step because they "
                       f"share its name, and merging them makes a cycle: {path}; give the later "
                       "cells a step name of their own", draft)


def _split(cells: Sequence[Cell], draft: _StepDraft) -> tuple[list[Cell], str]:
    """``cells`` with each later run of ``draft``'s cells renamed to a step of its own
    (``NAME_2``, ...), and a sentence saying so.

    For Kale-tagged cells only: Kale compiles such a notebook (its merged
    step then fails at run time); run as separate steps, the cells compute
    what the notebook computes top to bottom.
    """
    taken = {c.annotation.name for c in cells if c.annotation.kind == "step"}
    free = (f"{draft.name}_{n}" for n in range(2, len(taken) + len(draft.segments) + 2)
            if f"{draft.name}_{n}" not in taken)
    names = [draft.name, *(next(free) for _ in draft.segments[1:])]
    run_of = {c.index: k for k, segment in enumerate(draft.segments) for c in segment}
    renamed = [replace(c, annotation=replace(c.annotation, name=names[run_of[c.index]], after=()))
               if run_of.get(c.index, 0) > 0 else c for c in cells]
    said = ", ".join(f"{segment[0].place} runs as step {name!r}"
                     for segment, name in zip(draft.segments[1:], names[1:]))
    return renamed, said
