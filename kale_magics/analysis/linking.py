"""Link each step to where its reads come from, as the notebook run top to bottom would.

Walking the annotated cells in notebook order, every name a step reads is
resolved to the nearest assignment above the step (:mod:`~kale_magics.analysis.writers`):

* an earlier step: a data edge and an input artifact; but a name that step
  bound by a top-level import is *replayed* (the import runs again in this
  step: modules are not data), and a name that step binds only on some paths
  is also passed *into* that step, so it passes on what it received when the
  branch did not run;
* a ``parameters`` cell: a pipeline parameter;
* the imports/functions cells: nothing to pass, every step runs them first;
* a ``skip`` cell: the pipeline never runs it, so the value comes from the
  assignment above that cell, with a warning naming both cells.

Reading a function defined in the notebook also reads the globals that
function reads (soft reads, see :mod:`~kale_magics.analysis.names`): in the
kernel a function resolves its globals where it is called.
"""

from __future__ import annotations

import ast
import builtins
import difflib
from typing import Any, Mapping, Sequence

from kale_magics.analysis.changes import Changes
from kale_magics.analysis.effects import Effects
from kale_magics.analysis.names import NameUse, StarNames, python_source, scan, scan_blocks
from kale_magics.analysis.writers import PARAMETERS, PRELUDE, SKIP, STEP, Writer, Writers
from kale_magics.errors import AnalysisError
from kale_magics.model import PRELUDE_KINDS, Cell, Metric, Parameter

#: Names every step has without a producer: Python's builtins and the names
#: the step runtime provides as IPython does in a notebook.
KNOWN_NAMES = frozenset(dir(builtins)) | {"get_ipython", "display", "__name__"}
#: What the ``%kale pipeline --on-exit`` step reads about the run (``runtime.step.pipeline_status``).
PIPELINE_STATUS = "PIPELINE_STATUS"


def scan_cells(cells: Sequence[Cell], callees: Mapping[str, Sequence[str]] | None = None,
               star_names: StarNames | None = None,
               changers: Mapping[str, Changes] | None = None) -> NameUse:
    """The names ``cells`` (run one after the other) read and bind.

    Raises
    ------
    AnalysisError
        A cell is not valid Python once IPython syntax is removed.
    """
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
    return scan_blocks(sources, callees, star_names, changers)


class Linker:
    """Resolves the reads of steps and metrics against the assignments above them.

    Parameters
    ----------
    cells:
        Every annotated cell, in notebook order.
    parameters:
        The pipeline parameters.
    effects:
        What each cell's code does (by cell index), for handles.
    star_names:
        Resolves ``from X import *``.

    Attributes
    ----------
    warnings:
        What may make the pipeline differ from the notebook, naming the cells.
    """

    def __init__(self, cells: Sequence[Cell], parameters: Sequence[Parameter],
                 effects: Mapping[int, Effects], star_names: StarNames | None) -> None:
        self.cells = cells
        self.parameters = {p.name for p in parameters}
        self.effects = effects
        self.star_names = star_names
        self.writers = Writers()
        self.callees: dict[str, tuple[str, ...]] = {}
        self.changers: dict[str, Changes] = {}  # what calling each function changes
        self.classes: set[str] = set()
        self.functions: set[str] = set()
        self.derived: dict[str, tuple[str, Any]] = {}  # `view = arr[1:]`: (source, step)
        self._derived_changes: list[tuple[Any, str, str, Any]] = []  # (step, name, source, maker)
        self.same: dict[str, frozenset[str]] = {}  # names that are one object (`params = cfg`)
        self.warnings: list[str] = []
        self._uses: dict[str, NameUse] = {}
        self._drafts: list[Any] = []
        self._everywhere = self._prelude_and_parameters()

    def _prelude_and_parameters(self) -> dict[str, Writer]:
        """The first assignment of each name in a prelude or parameters cell, wherever it is."""
        found: dict[str, Writer] = {}
        for cell in self.cells:
            kind = cell.annotation.kind
            if kind in (*PRELUDE_KINDS, "parameters"):
                writer = Writer(PARAMETERS if kind == "parameters" else PRELUDE, cell)
                for name in scan_cells([cell]).writes:
                    found.setdefault(name, writer)
        return found

    # -- walking the notebook ---------------------------------------------------------------

    def link(self, drafts: Sequence[Any]) -> None:
        """Fill each draft's inputs, parameters, imports and metrics, in notebook order.

        A step merged from cells that share its name (Kale) is linked a run of
        adjacent cells at a time, each where it stands in the notebook.
        """
        self._drafts = list(drafts)
        by_head = {run[0].index: (d, run) for d in drafts for run in (d.segments or [d.cells])}
        in_steps = {c.index for d in drafts for c in d.cells}
        for cell in self.cells:
            kind = cell.annotation.kind
            if cell.index in by_head:
                self._link_step(*by_head[cell.index])
            elif kind in (*PRELUDE_KINDS, "skip"):
                self._record_cell(cell, PRELUDE if kind in PRELUDE_KINDS else SKIP)
            elif kind == "parameters":
                for name in scan_cells([cell]).writes:
                    self.writers.add(name, Writer(PARAMETERS, cell))
            elif kind == "metrics":
                self._attach_metrics(cell)
            elif kind == "step" and cell.index not in in_steps:
                self._record_cell(cell, SKIP)

    def _record_cell(self, cell: Cell, kind: str) -> None:
        use = scan_cells([cell], self.callees, self.star_names, self.changers)
        for name in use.writes:
            self.writers.add(name, Writer(kind, cell, conditional=name in use.conditional,
                                          imported=tuple(use.imported.get(name, ()))))
        if kind == PRELUDE:  # every step has the prelude's functions; a skipped cell's, none
            self._note_callees(use)

    def _note_callees(self, use: NameUse) -> None:
        """What calling each name ``use`` binds reads, from now on (nothing for a plain value)."""
        for name in use.writes:
            self.callees[name] = tuple(use.globals_of.get(name, ()))
            self.changers.pop(name, None)
        self.changers.update(use.changes_of)
        self.classes = (self.classes - set(use.writes)) | set(use.classes)
        self.functions = (self.functions - set(use.writes)) | set(use.functions)

    def _link_step(self, draft: Any, cells: Sequence[Cell]) -> None:
        """Link ``cells``, the step's cells (or a run of them) that start at ``cells[0]``."""
        use = scan_cells(cells, self.callees, self.star_names, self.changers)
        self._uses[draft.name] = use
        annotation, head = cells[0].annotation, cells[0]
        loop = draft.loop
        own = {loop.variable} if loop else set()  # the loop's item: bound in the step itself
        if draft.is_exit:
            own.add(PIPELINE_STATUS)  # the run's final state, bound by the step runtime
        items = (loop.items,) if loop and head is draft.head else ()
        for name in (*items, *use.reads, *annotation.inputs):
            if name not in own:
                self.resolve(draft, name, soft=False, below=head.index)
        for name in use.soft_reads:
            if name not in own:
                self.resolve(draft, name, soft=True, below=head.index)
        if draft.condition is not None and head is draft.head:
            self._link_condition(draft)
        handles = {n: e for c in cells for n, e in self.effects[c.index].handles.items()}
        for name in (*(n for n in use.writes if n not in own), *annotation.outputs):
            if name in use.via_functions and name not in use.changed_by_calls \
                    and name not in annotation.outputs:
                continue  # `def init(): global total; ...` binds `total` only when called
            handle = handles.get(name)
            self.writers.add(name, Writer(
                STEP, head, draft,
                conditional=name in use.conditional or name not in use.writes,
                imported=tuple(use.imported.get(name, ())),
                handle=f"{handle.kind} (`{handle.what}`, line {handle.line})" if handle else ""))
        changed = self._changed_by_methods(use, head) | self._changed_by_calls(use, head)
        for name in self._note_aliases(use) | changed:
            if name not in use.writes:  # changed in place, so passed on from this step
                self.writers.add(name, Writer(STEP, head, draft, conditional=True))
        self._note_derived(draft, use, changed)
        self._note_callees(use)

    def _link_condition(self, draft: Any) -> None:
        """Find where each name of the step's ``--if`` comes from: a parameter, or the step
        above that assigns it last (into ``draft.condition_inputs``)."""
        expression = draft.condition.expression
        for name in draft.condition.names:
            writer = self.writers.nearest(name, draft.head.index)
            if writer is not None and writer.kind == PARAMETERS:
                continue
            if writer is not None and writer.kind == STEP:
                draft.condition_inputs[name] = writer.step.name
                continue
            where = (f"which only {writer.describe()} assigns" if writer is not None else
                     "which is neither a parameter nor a variable an earlier step assigns")
            close = difflib.get_close_matches(name, [*self.writers.step_names(), *self.parameters],
                                              n=1)
            hint = f" (did you mean `{close[0]}`?)" if close else ""
            raise AnalysisError(f"{draft.head.describe()}: step {draft.name!r} runs --if "
                                f"{expression!r}, which reads `{name}`, {where}{hint}; use a "
                                "parameter or a variable an earlier step assigns")

    def _changed_by_methods(self, use: NameUse, head: Cell) -> set[str]:
        """Values (not modules, functions or classes) whose methods the step calls as statements
        (``model.fit(X, y)``), with their other names: they may be changed in place."""
        changed: set[str] = set()
        for name in use.maybe_changed:
            above = self.writers.nearest(name, head.index)
            if above is None or above.imported or name in self.functions or name in self.classes:
                continue
            changed |= self.same.get(name, frozenset()) | {name}
        return changed

    def _changed_by_calls(self, use: NameUse, head: Cell) -> set[str]:
        """Names the step's calls of notebook functions change (``bump()`` writing the global
        ``counter``, ``add(items)`` appending to its parameter), with their other names:
        the step passes them on, as the kernel would see them changed after this cell."""
        changed: set[str] = set()
        for name in use.changed_by_calls:
            above = self.writers.nearest(name, head.index)
            if above is not None and above.imported:
                continue
            changed |= self.same.get(name, frozenset()) | {name}
        return changed

    def _note_derived(self, draft: Any, use: NameUse, changed: set[str]) -> None:
        """Note values made from others (``view = arr[1:]``) and the steps that change such a
        value in place after another step made it: the two no longer share memory there."""
        in_place = set(use.changed_in_place) | changed
        for name in in_place & set(self.derived):
            source, maker = self.derived[name]
            if maker is not draft and name not in use.derived:
                self._derived_changes.append((draft, name, source, maker))
        for name in use.writes:
            if name in use.derived:
                self.derived[name] = (use.derived[name], draft)
            elif name not in in_place:
                self.derived.pop(name, None)
        for name in set(use.changed_in_place) & self.classes:  # `Cfg.rate = 5`
            self.warnings.append(
                f"{draft.head.describe()}: step {draft.name!r} changes the class `{name}` "
                "(an attribute of the class itself); instances that other steps saved carry "
                "the class as those steps saw it, so later steps may see the old attribute: "
                f"set it where `{name}` is defined, or keep the value in a variable of its own")

    def derived_warnings(self) -> list[str]:
        """A warning for each step that changes a value made from another in an earlier step
        (``view = arr[1:]`` there, ``view[0] = 5`` here) when a later step reads the source."""
        found = []
        for draft, name, source, maker in self._derived_changes:
            if not any(source in (*use.reads, *use.soft_reads) for step, use in self._uses.items()
                       if self._head_of(step) > draft.head.index):
                continue
            found.append(
                f"{draft.head.describe()}: step {draft.name!r} changes `{name}` in place, which "
                f"step {maker.name!r} ({maker.head.describe()}) made from `{source}` (a slice or "
                f"view may share memory with it); each step gets its own copy, so `{source}` does "
                "not change with it as in the notebook: make the change through "
                f"`{source}` (`{source}[...] = ...`), or make `{name}` from `{source}` again in "
                f"step {draft.name!r}")
        return found

    def _head_of(self, step: str) -> int:
        return next(d.head.index for d in self._drafts if d.name == step)

    def _note_aliases(self, use: NameUse) -> set[str]:
        """Follow which names are one object; return the other names of objects ``use`` changes
        in place (``cfg["lr"] = 2`` changes ``params`` too after ``params = cfg``)."""
        changed: set[str] = set()
        for name in use.writes:
            if name in use.changed_in_place:
                changed |= self.same.get(name, frozenset()) - {name}
                continue
            for other in self.same.pop(name, frozenset()) - {name}:
                self.same[other] = self.same[other] - {name}
            source = use.aliases.get(name)
            if source is not None:
                group = self.same.get(source, frozenset({source})) | {name}
                self.same.update(dict.fromkeys(group, group))
        return changed

    # -- resolving one read -----------------------------------------------------------------

    def resolve(self, draft: Any, name: str, soft: bool, below: int | None = None) -> None:
        """Give ``draft`` the value of ``name`` from the nearest assignment above cell ``below``
        (default: the step's first cell); ``soft`` reads without one are left alone."""
        forced = name in draft.head.annotation.inputs
        below = draft.head.index if below is None else below
        writer = self.writers.nearest(name, below, (STEP,) if forced else ())
        if writer is None and forced:
            raise self.missing(name, f"step {draft.name!r}", draft.head)
        if writer is None:
            self._unassigned(draft, name, soft)
        elif writer.kind == SKIP:
            self._from_skipped(draft, name, soft, writer)
        elif writer.kind == PARAMETERS:
            draft.parameters.add(name)
        elif writer.kind == STEP and writer.step is not draft:
            self._from_step(draft, name, writer, forced)

    def _from_step(self, draft: Any, name: str, writer: Writer, forced: bool) -> None:
        if writer.imported and not forced:
            draft.imports[name] = (writer.cell, writer.imported)
            return
        if writer.handle.startswith("a generator"):
            raise AnalysisError(
                f"{writer.cell.describe()}: step {writer.step.name!r} assigns `{name}` "
                f"{writer.handle}, and step {draft.name!r} reads it; a generator cannot be "
                "passed between steps (it cannot be saved, and what it already yielded is "
                f"gone): make a list of it (`{name} = list(...)`), or create it again in step "
                f"{draft.name!r}")
        if writer.handle:
            raise AnalysisError(
                f"{writer.cell.describe()}: step {writer.step.name!r} assigns `{name}` "
                f"{writer.handle}, and step {draft.name!r} reads it; a handle cannot be passed "
                "between steps (each step runs in its own process): pass what opens it (a path, "
                f"a URL) and open it again in step {draft.name!r}")
        if name in draft.inputs:
            return
        draft.inputs[name] = writer.step.name
        if writer.conditional:  # the producer passes on what it received when its branch did not run
            self.resolve(writer.step, name, soft=True)

    def _from_skipped(self, draft: Any, name: str, soft: bool, skipped: Writer) -> None:
        earlier = self.writers.nearest(name, skipped.cell.index)
        if earlier is None and not soft and name not in KNOWN_NAMES:
            message = (f"{draft.head.describe()}: step {draft.name!r} reads `{name}`, which only "
                       f"{skipped.describe()} assigns, and the pipeline does not run skipped "
                       "cells; move the assignment into a step (or remove `%%kale skip`)")
            if not draft.head.tagged:
                raise AnalysisError(message)
            draft.warnings.append(f"{message}; the step will fail with NameError (Kale compiles "
                                  "it too)")  # Kale drops skipped cells the same way
            return
        instead = f"the value from {earlier.describe()}" if earlier else "no value"
        if earlier is not None:
            self.warnings.append(
                f"{draft.head.describe()}: step {draft.name!r} reads `{name}`, which "
                f"{skipped.describe()} assigns last, but the pipeline does not run skipped "
                f"cells, so the step gets {instead} instead; move the assignment into a step "
                "(or remove `%%kale skip`) to keep the notebook's value")
        self.resolve(draft, name, soft, below=skipped.cell.index)

    def _unassigned(self, draft: Any, name: str, soft: bool) -> None:
        """No assignment above: a builtin, a prelude or parameter below the step (warn), or an error."""
        if name in KNOWN_NAMES or soft:
            return
        below = self._everywhere.get(name)
        if below is None:
            error = self.missing(name, f"step {draft.name!r}", draft.head)
            if not draft.head.tagged:
                raise error
            draft.warnings.append(f"{error.message}; the step will fail with NameError, as the "
                                  "notebook does run top to bottom (Kale compiles it too)")
            return
        if below.kind == PARAMETERS:
            draft.parameters.add(name)
        self.warnings.append(
            f"{draft.head.describe()}: step {draft.name!r} reads `{name}`, which only "
            f"{below.describe()} below it assigns; the pipeline gives the step that value, while "
            "the notebook run top to bottom would fail here with NameError: move that cell above "
            "the step")

    def missing(self, name: str, reader: str, cell: Cell) -> AnalysisError:
        """The error for a name no earlier step provides, listing where it IS bound."""
        later = [c for c in self.cells if c.index > cell.index and c.annotation.kind == "step"
                 and name in scan_cells([c]).writes]
        if later:
            where = (f"it is assigned in {later[0].describe()} of step "
                     f"{later[0].annotation.name!r}, which comes later: move that assignment "
                     "above, or into an earlier step")
        else:
            close = difflib.get_close_matches(name, self.writers.step_names(), n=3)
            maybe = f" (did you mean {', '.join(f'`{c}`' for c in close)}?)" if close else ""
            where = (f"assign it in an earlier step, the functions cell or the parameters cell; "
                     f"if a step makes it in a way analysis cannot see (exec, a change in place), "
                     f"add `--outputs {name}` to that step{maybe}")
        return AnalysisError(f"{cell.describe()}: {reader} reads `{name}`, which no earlier step "
                             f"assigns; {where}")

    # -- metrics ----------------------------------------------------------------------------

    def _attach_metrics(self, cell: Cell) -> None:
        """Each line of a metrics cell is logged by the latest step producing what it reads."""
        for number, line in enumerate(python_source(cell.source).splitlines(), start=1):
            expression = line.split("#", 1)[0].strip()
            if not expression:
                continue
            try:
                use = scan(f"({expression})")
            except SyntaxError:
                raise AnalysisError(f"{cell.describe()}, line {number}: `{expression}` is not a "
                                    "Python expression; a metrics cell lists one name or "
                                    "expression per line, such as `accuracy`") from None
            owner = self._metric_owner(cell, number, expression, use.reads)
            for name in use.reads:
                writer = self.writers.nearest(name, cell.index)
                if writer is None and name not in KNOWN_NAMES:
                    raise self.missing(name, f"metric `{expression}`", cell)
                if writer is not None and writer.step is owner:
                    if writer.conditional:
                        self.resolve(owner, name, soft=True)
                    continue
                self.resolve(owner, name, soft=False, below=cell.index)
            owner.metrics.append(Metric(key=expression, expression=expression))

    def _metric_owner(self, cell: Cell, number: int, expression: str, reads: Sequence[str]) -> Any:
        producers = [w.step for n in reads
                     if (w := self.writers.nearest(n, cell.index)) is not None and w.kind == STEP]
        parameters = set(reads) & self.parameters
        if not producers and parameters and self._drafts:
            # as Kale (``assign_metrics``): the first step reading the parameter logs it
            readers = [d for d in self._drafts if d.parameters & parameters]
            return readers[0] if readers else self._drafts[0]
        if not producers:
            raise AnalysisError(f"{cell.describe()}, line {number}: metric `{expression}` reads "
                                "no variable an earlier step assigns; name a variable a step "
                                "computes")
        return max(producers, key=lambda d: d.head.index)

    def use(self, step: str) -> NameUse:
        """What the analysis found in step ``step``'s code."""
        return self._uses[step]


def later_steps(drafts: Sequence[Any], index: int) -> list[Any]:
    """The steps whose first cell comes after cell ``index``, in notebook order."""
    return [d for d in drafts if d.head.index > index]

