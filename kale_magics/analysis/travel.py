"""Compile warnings for what does not travel between steps: process state and skipped magics.

Every step runs in its own process. A change of process state (environment
variables, working directory, random seeds, ``sys.path``, library settings)
made in one step is gone in the next, while in the notebook every later cell
sees it; a skipped cell's change is seen by no step at all. Magics other than
the ones the step runtime runs (``runtime.shell``) are skipped in a step. These
cannot be made faithful by passing values, so the compile names them.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from kale_magics.analysis.effects import Effect, Effects
from kale_magics.model import PRELUDE_KINDS, Cell
from kale_magics.runtime.shell import CELL_MAGICS, LINE_MAGICS

_RUN_MAGICS = ", ".join([*(f"%{m}" for m in sorted(LINE_MAGICS)),
                         *(f"%%{m}" for m in sorted(CELL_MAGICS))])


def _listed(effects: Sequence[Effect]) -> str:
    return ", ".join(f"`{e.what}` (line {e.line})" for e in effects)


def _kinds(effects: Sequence[Effect]) -> str:
    return " and ".join(dict.fromkeys(e.kind for e in effects))


def _steps(drafts: Sequence[Any]) -> str:
    return ", ".join(f"{d.name!r} ({d.head.describe()})" for d in drafts)


def travel_warnings(cells: Sequence[Cell], drafts: Sequence[Any],
                    effects: Mapping[int, Effects]) -> list[str]:
    """One warning per cell that changes process state later steps may rely on, or uses a
    magic a step skips; each names the cell, what it does and the fix.

    Parameters
    ----------
    cells:
        The annotated cells, in notebook order.
    drafts:
        The steps (with ``name``, ``head`` and ``cells``), in notebook order.
    effects:
        What each cell's code does, by cell index (``analysis.effects``).
    """
    step_of = {c.index: d for d in drafts for c in d.cells}
    warnings = []
    for cell in cells:
        found, kind = effects[cell.index], cell.annotation.kind
        step = step_of.get(cell.index)
        later = [d for d in drafts if d.head.index > cell.index and d is not step]
        if found.state and later and (step is not None or kind == "skip"):
            warnings.append(_state_warning(cell, step, found.state, later))
        if found.opaque and later and step is not None:
            warnings.append(
                f"{cell.describe()}: step {step.name!r} assigns variables in a way the analysis "
                f"cannot see ({_listed(found.opaque)}); later steps {_steps(later)} get such a "
                "variable only if the step lists it: add `--outputs NAME` to the step's "
                "`%%kale step` line for each variable it assigns this way (in the notebook, "
                "every later cell sees them)")
        if found.opaque and kind in PRELUDE_KINDS and drafts:
            warnings.append(
                f"{cell.describe()}: the {kind} cell assigns variables in a way the analysis "
                f"cannot see ({_listed(found.opaque)}); a step that calls that code passes such "
                "a variable on to later steps only if it lists it: add `--outputs NAME` to "
                "that step's `%%kale step` line")
        if found.skipped_magics and (step is not None or kind in PRELUDE_KINDS):
            where = f"step {step.name!r}" if step else f"every step (this is the {kind} cell)"
            warnings.append(f"{cell.describe()}: {where} skips {_listed(found.skipped_magics)}, "
                            f"which only the notebook runs; a step runs `!cmd` and {_RUN_MAGICS}: "
                            "remove the magic, or move it to a `%%kale skip` cell if the "
                            "pipeline does not need it")
    return warnings


def _state_warning(cell: Cell, step: Any, state: Sequence[Effect], later: Sequence[Any]) -> str:
    what = f"{_kinds(state)} ({_listed(state)})"
    if step is None:
        return (f"{cell.describe()}: this skipped cell changes {what}; the notebook's later "
                f"cells see the change, but no pipeline step does (skipped cells do not run): "
                f"steps {_steps(later)} start without it; move it to the imports or functions "
                "cell, or into the steps that rely on it")
    return (f"{cell.describe()}: step {step.name!r} changes {what}; such changes stay in the "
            f"step's own process: later steps {_steps(later)} start without them, while in the "
            "notebook every later cell sees them; repeat them in the steps that rely on them, or move "
            "them to the imports or functions cell, which every step runs first")
