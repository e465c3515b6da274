"""Checks of the control-flow options of steps: what ``--for`` loops over and who reads it.

A ``--for VAR in LIST`` step runs once per item of LIST (KFP ``dsl.ParallelFor``) and
passes on, for each variable a later step reads, the list of its per-item values
(``dsl.Collected``). What KFP cannot express that way is refused here, at compile
time, naming the cell and the fix.
"""

from __future__ import annotations

from typing import Any, Sequence

from kale_magics.errors import AnalysisError
from kale_magics.model import Parameter


def check_loops(drafts: Sequence[Any], parameters: Sequence[Parameter]) -> None:
    """Check every ``--for`` step once the steps are linked.

    Parameters
    ----------
    drafts:
        The linked step drafts (``analysis.plan._StepDraft``), in notebook order.
    parameters:
        The pipeline parameters.

    Raises
    ------
    AnalysisError
        LIST is a parameter that is not a list, or neither a parameter nor a
        variable an earlier step assigns (a prelude value), or it comes from
        another ``--for`` step; a ``--for`` step reads a variable of another
        ``--for`` step; a metric is computed by a ``--for`` step.
    """
    by_name = {p.name: p for p in parameters}
    loops = {d.name for d in drafts if d.loop}
    for draft in drafts:
        loop = draft.loop
        if loop is not None:
            _check_items(draft, loop.items, by_name, loops)
            nested = sorted((n, p) for n, p in draft.inputs.items() if p in loops)
            if nested:
                name, producer = nested[0]
                raise AnalysisError(
                    f"{draft.head.describe()}: --for step {draft.name!r} reads `{name}` of --for "
                    f"step {producer!r}, a list of per-item values; a loop cannot take another "
                    f"loop's lists: read `{name}` in a step without --for and pass on what this "
                    "step needs")
        if loop is not None and draft.metrics:
            raise AnalysisError(
                f"{draft.head.describe()}: metric `{draft.metrics[0].key}` would be logged by "
                f"--for step {draft.name!r}, which runs once per item; compute the metric in a "
                "later step without --for (which receives the per-item values as a list)")


def _check_items(draft: Any, items: str, parameters: dict[str, Parameter],
                 loops: set[str]) -> None:
    where = f"{draft.head.describe()}: step {draft.name!r} runs --for each item of `{items}`"
    if items in draft.parameters:
        parameter = parameters.get(items)
        if parameter is not None and parameter.type != "list":
            raise AnalysisError(f"{where}, but the parameter `{items}` is "
                                f"{parameter.value!r}, a {parameter.type}, not a list; make it a "
                                f"list, e.g. `{items} = [{parameter.value!r}]`")
        return
    producer = draft.inputs.get(items)
    if producer is None:
        raise AnalysisError(f"{where}, which is neither a parameter nor a variable an earlier "
                            f"step assigns; assign `{items}` (a list) in an earlier step or in "
                            "the parameters cell")
    if producer in loops:
        raise AnalysisError(f"{where}, which --for step {producer!r} passes on as a list of "
                            "per-item values; build the list to loop over in a step without --for")
