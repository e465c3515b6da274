"""Build the pipeline :class:`~kale_magics.model.Plan` from annotated cells.

The producer of a variable a step reads is the nearest step ABOVE it in
notebook order that binds it: exactly the value the notebook sees when run top
to bottom. Producers become data edges; ``--after`` edges are kept as written
(Kale drops them) and independent steps stay parallel (Kale serialises them).
Every problem is an :class:`~kale_magics.errors.AnalysisError` raised here, at
compile time, naming the cell and the fix.
"""

from __future__ import annotations

import ast
import builtins
import difflib
import graphlib
from dataclasses import dataclass, field
from typing import Sequence

from kale_magics.analysis.names import NameUse, python_source, scan, scan_blocks
from kale_magics.analysis.parameters import read_parameters
from kale_magics.errors import AnalysisError
from kale_magics.model import (PRELUDE_KINDS, Cell, Input, Metric, Parameter, PipelineSettings, Plan,
                               Step, StepSettings)
from kale_magics.notebook.annotations import pipeline_name_from

#: Names every step has without a producer: Python's builtins and the names
#: the step runtime provides as IPython does in a notebook.
KNOWN_NAMES = frozenset(dir(builtins)) | {"get_ipython", "display", "__name__"}


@dataclass
class _StepDraft:
    """A step while the analysis fills it in."""

    cells: list[Cell]
    inputs: dict[str, str] = field(default_factory=dict)
    parameters: set[str] = field(default_factory=set)
    metrics: list[Metric] = field(default_factory=list)

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
    provided = set(_scan(prelude).writes) | {p.name for p in parameters}
    _link(cells, drafts, provided, parameters)
    steps = _order(drafts, _outputs(drafts), settings.step_defaults)
    name = settings.name or pipeline_name_from(_stem(notebook) or "pipeline")
    return Plan(name=name, settings=settings, parameters=parameters, prelude=prelude,
                steps=steps, notebook=notebook)


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


def _scan(cells: Sequence[Cell]) -> NameUse:
    sources = []
    for cell in cells:
        source = python_source(cell.source)
        try:
            ast.parse(source)
        except SyntaxError as error:
            raise AnalysisError(f"{cell.describe()}: SyntaxError at line {error.lineno}: "
                                f"{error.msg}; fix the cell (IPython syntax such as `!cmd` "
                                "and `%magic` is fine)") from None
        sources.append(source)
    return scan_blocks(sources)


def _link(cells: Sequence[Cell], drafts: list[_StepDraft], provided: set[str],
          parameters: Sequence[Parameter]) -> None:
    """Find each step's inputs and parameters, and attach metrics to their producers."""
    by_head = {d.head.index: d for d in drafts}
    writers: dict[str, _StepDraft] = {}
    param_names = {p.name for p in parameters}
    for cell in cells:
        draft = by_head.get(cell.index)
        if draft is not None:
            use = _scan(draft.cells)
            for name in (*use.reads, *cell.annotation.inputs):
                _resolve(draft, name, writers, provided, param_names, cells)
            for name in (*use.writes, *cell.annotation.outputs):
                writers[name] = draft
        elif cell.annotation.kind == "metrics":
            _attach_metrics(cell, writers, provided, param_names, cells)


def _resolve(draft: _StepDraft, name: str, writers: dict[str, _StepDraft], provided: set[str],
             param_names: set[str], cells: Sequence[Cell]) -> None:
    forced = name in draft.head.annotation.inputs
    if name in writers and writers[name] is not draft:
        draft.inputs[name] = writers[name].name
    elif name in param_names and not forced:
        draft.parameters.add(name)
    elif (name in provided or name in KNOWN_NAMES) and not forced:
        return
    elif not (forced and name in writers):
        raise _missing(name, f"step {draft.name!r}", draft.head, writers, cells)


def _missing(name: str, reader: str, cell: Cell, writers: dict[str, _StepDraft],
             cells: Sequence[Cell]) -> AnalysisError:
    """The error for a name no earlier step provides, listing where it IS bound."""
    later = [c for c in cells if c.index > cell.index and c.annotation.kind == "step"
             and name in _scan([c]).writes]
    if later:
        where = (f"it is assigned in {later[0].describe()} of step {later[0].annotation.name!r}, "
                 f"which comes later: move that assignment above, or into an earlier step")
    else:
        close = difflib.get_close_matches(name, list(writers), n=3)
        maybe = f" (did you mean {', '.join(f'`{c}`' for c in close)}?)" if close else ""
        where = (f"assign it in an earlier step, the functions cell or the parameters cell; "
                 f"if a step makes it in a way analysis cannot see (exec, a change in place), "
                 f"add `--outputs {name}` to that step{maybe}")
    return AnalysisError(f"{cell.describe()}: {reader} reads `{name}`, which no earlier step "
                         f"assigns; {where}")


def _attach_metrics(cell: Cell, writers: dict[str, _StepDraft], provided: set[str],
                    param_names: set[str], cells: Sequence[Cell]) -> None:
    for number, line in enumerate(python_source(cell.source).splitlines(), start=1):
        expression = line.split("#", 1)[0].strip()
        if not expression:
            continue
        try:
            reads = scan(f"({expression})").reads
        except SyntaxError:
            raise AnalysisError(f"{cell.describe()}, line {number}: `{expression}` is not a Python "
                                "expression; a metrics cell lists one name or expression "
                                "per line, such as `accuracy`") from None
        producers = [writers[n] for n in reads if n in writers]
        if not producers:
            raise AnalysisError(f"{cell.describe()}, line {number}: metric `{expression}` reads no "
                                "variable an earlier step assigns; name a variable a step computes")
        owner = max(producers, key=lambda d: d.head.index)
        for name in reads:
            if name in writers and writers[name] is not owner:
                owner.inputs.setdefault(name, writers[name].name)
            elif name in param_names:
                owner.parameters.add(name)
            elif name not in writers and name not in provided and name not in KNOWN_NAMES:
                raise _missing(name, f"metric `{expression}`", cell, writers, cells)
        owner.metrics.append(Metric(key=expression, expression=expression))


def _outputs(drafts: Sequence[_StepDraft]) -> dict[str, set[str]]:
    outputs: dict[str, set[str]] = {d.name: set(d.head.annotation.outputs) for d in drafts}
    for draft in drafts:
        for name, producer in draft.inputs.items():
            outputs[producer].add(name)
    return outputs


def _order(drafts: Sequence[_StepDraft], outputs: dict[str, set[str]],
           defaults: StepSettings) -> tuple[Step, ...]:
    """Freeze the drafts into Steps in a topological order, notebook order on ties."""
    steps = {d.name: Step(
        name=d.name, cells=tuple(d.cells), after=d.head.annotation.after,
        inputs=tuple(Input(n, p) for n, p in sorted(d.inputs.items())),
        outputs=tuple(sorted(outputs[d.name])), parameters=tuple(sorted(d.parameters)),
        metrics=tuple(d.metrics), settings=defaults.merged(d.head.annotation.settings))
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
