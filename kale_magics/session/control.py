"""Control flow of a step cell in the kernel: a ``--for`` step runs its body once per item, a
``--if`` step only when its condition holds.

The kernel does what the pipeline does (``codegen.control``): each item runs
from the values the step's variables had before the cell (as each
``dsl.ParallelFor`` iteration starts from the step's inputs), with the loop
variable bound to the item as JSON carries it; afterwards each variable the
body assigns is the list of its per-item values, in item order (as
``dsl.Collected`` gives them to later steps), and the loop variable is as it
was before the cell.
"""

from __future__ import annotations

import json
from typing import Any, Callable, MutableMapping, Sequence

from kale_magics.errors import AnnotationError
from kale_magics.model import Condition, Loop
from kale_magics.runtime.step import condition_value, item_problem, json_item, scalar_problem

_UNSET = object()


def loop_items(step: str, loop: Loop, namespace: MutableMapping[str, Any]) -> list[str]:
    """The items of ``loop`` as JSON texts, read from ``namespace``.

    Raises
    ------
    AnnotationError
        LIST is not defined, is not a list (or tuple), or holds an item JSON
        cannot carry unchanged; the body must not run.
    """
    if loop.items not in namespace:
        raise AnnotationError(f"step {step!r} runs --for each item of `{loop.items}`, which is not "
                              "defined in this kernel; run the cell that assigns it first")
    items = namespace[loop.items]
    if not isinstance(items, (list, tuple)):
        raise AnnotationError(f"step {step!r} runs --for each item of `{loop.items}`, which is a "
                              f"{type(items).__name__}, not a list; loop over a list, e.g. "
                              f"`{loop.items} = [...]`")
    texts = []
    for item in items:
        text = json_item(item)
        if text is None:
            raise AnnotationError(item_problem(step, loop.items, item))
        texts.append(text)
    return texts


def run_loop(step: str, loop: Loop, assigned: Sequence[str],
             namespace: MutableMapping[str, Any], run_once: Callable[[], Any]) -> str:
    """Run ``run_once`` (the cell's body) once per item; return a line saying so.

    Parameters
    ----------
    step, loop:
        The step's name and its ``--for``.
    assigned:
        The names the body assigns (``analysis.names``): after the loop each is the list of
        its per-item values.
    namespace:
        The user namespace.
    run_once:
        Runs the body once in ``namespace``.

    Raises
    ------
    AnnotationError
        From :func:`loop_items`. An exception of the body propagates, with the
        namespace's variables put back as they were before the cell.
    """
    texts = loop_items(step, loop, namespace)
    names = [n for n in dict.fromkeys(assigned) if n != loop.variable]
    before = {n: namespace.get(n, _UNSET) for n in (*names, loop.variable)}
    values: dict[str, list[Any]] = {n: [] for n in names}
    try:
        for text in texts:
            _restore(namespace, before)
            namespace[loop.variable] = json.loads(text)
            run_once()
            for name in names:
                if name in namespace:
                    values[name].append(namespace[name])
    finally:
        _restore(namespace, before)
    namespace.update({n: v for n, v in values.items() if len(v) == len(texts)})
    return (f"step {step!r} ran once for each of the {len(texts)} items of `{loop.items}`; "
            f"{', '.join(f'`{n}`' for n in names) or 'nothing it assigns'} now "
            f"{'holds' if len(names) == 1 else 'hold'} the per-item values, in item order")


def _restore(namespace: MutableMapping[str, Any], values: dict[str, Any]) -> None:
    for name, value in values.items():
        if value is _UNSET:
            namespace.pop(name, None)
        else:
            namespace[name] = value


def condition_holds(step: str, condition: Condition, namespace: MutableMapping[str, Any]) -> bool:
    """The value of ``step``'s ``--if`` EXPR over the user namespace, as the pipeline's
    condition task computes it (``runtime.step.condition_value``).

    Raises
    ------
    AnnotationError
        A name EXPR reads is not defined in the kernel, or is not a number, text,
        boolean or None.
    """
    values = {}
    for name in condition.names:
        if name not in namespace:
            raise AnnotationError(f"step {step!r} runs --if {condition.expression!r}, which reads "
                                  f"`{name}`, not defined in this kernel; run the cell that "
                                  "assigns it first, or fix the name")
        problem = scalar_problem(name, namespace[name])
        if problem:
            raise AnnotationError(f"step {step!r} runs --if {condition.expression!r}: {problem}")
        values[name] = namespace[name]
    return condition_value(condition.expression, values)
