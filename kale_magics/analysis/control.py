"""Checks of the control-flow options of steps: what ``--for`` loops over, what ``--if`` reads,
and who reads their steps' variables.

A ``--for VAR in LIST`` step runs once per item of LIST (KFP ``dsl.ParallelFor``) and
passes on, for each variable a later step reads, the list of its per-item values
(``dsl.Collected``). What KFP cannot express that way is refused here, at compile
time, naming the cell and the fix.
"""

from __future__ import annotations

import difflib
from dataclasses import replace
from typing import Any, Sequence

from kale_magics.analysis.linking import scan_cells
from kale_magics.errors import AnalysisError
from kale_magics.model import Parameter, Plan


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


def check_conditions(drafts: Sequence[Any], parameters: Sequence[Parameter]) -> None:
    """Check every ``--if`` step once the steps are linked.

    A step that did not run assigns nothing, so a step reading its variables (or
    running ``--after`` it) must have the same condition: then both run or neither.

    Raises
    ------
    AnalysisError
        A condition reads a list or dict parameter, or a variable of a ``--for``
        step (a list); a step reads a variable of (or runs after) a step whose
        ``--if`` it does not share; an ``--if`` step reads a ``--for`` step's lists
        (KFP 2.17 cannot compile ``dsl.Collected`` inside ``dsl.If``).
    """
    by_name = {p.name: p for p in parameters}
    steps = {d.name: d for d in drafts}
    for draft in drafts:
        condition = draft.condition
        if condition is not None:
            _check_condition_names(draft, by_name, steps)
        for name, producer in sorted(draft.inputs.items()):
            _check_same_condition(draft, steps[producer], f"reads `{name}` of")
        for after in draft.after:
            if after in steps:
                _check_same_condition(draft, steps[after], "runs --after")


def _check_condition_names(draft: Any, parameters: dict[str, Parameter],
                           steps: dict[str, Any]) -> None:
    expression = draft.condition.expression
    where = f"{draft.head.describe()}: step {draft.name!r} runs --if {expression!r}"
    for name in draft.condition.names:
        parameter = parameters.get(name)
        producer = draft.condition_inputs.get(name)
        if name not in draft.condition_inputs and parameter is not None \
                and parameter.type in ("list", "dict"):
            raise AnalysisError(f"{where}, but the parameter `{name}` is a {parameter.type}; a "
                                "condition compares numbers, text or booleans")
        if producer is not None and steps[producer].loop is not None:
            raise AnalysisError(f"{where}, but `{name}` of --for step {producer!r} is a list of "
                                "per-item values; compute a number from it in a step without "
                                "--for and compare that")
    loops = sorted(p for n, p in draft.inputs.items() if steps[p].loop is not None)
    if loops:
        raise AnalysisError(f"{where} and reads the per-item lists of --for step {loops[0]!r}; "
                            "KFP cannot pass those into a condition: read them in a step without "
                            "--if first and pass on what this step needs")


def _check_same_condition(reader: Any, producer: Any, how: str) -> None:
    if producer.condition is None:
        return
    mine = reader.condition.expression if reader.condition else None
    if mine == producer.condition.expression:
        return
    theirs = producer.condition.expression
    raise AnalysisError(
        f"{reader.head.describe()}: step {reader.name!r} {how} step {producer.name!r}, which runs "
        f"only --if {theirs!r}, so it may not have run; give step {reader.name!r} the same "
        f"`--if {theirs!r}`, or compute what it needs in a step without --if")


def scalar_outputs(drafts: Sequence[Any]) -> dict[str, tuple[str, ...]]:
    """Per step, the variables later conditions read from it (emitted as output parameters):
    ``{"train": ("best_accuracy",)}``."""
    found: dict[str, set[str]] = {}
    for draft in drafts:
        for name, producer in draft.condition_inputs.items():
            found.setdefault(producer, set()).add(name)
    return {step: tuple(sorted(names)) for step, names in found.items()}


def mark_exit_step(drafts: Sequence[Any], name: str | None) -> None:
    """Mark the ``%kale pipeline --on-exit`` step among ``drafts`` (before linking).

    Raises
    ------
    AnalysisError
        No step has that name; the message suggests one.
    """
    if name is None:
        return
    found = [d for d in drafts if d.name == name]
    if not found:
        close = difflib.get_close_matches(name, [d.name for d in drafts], n=1)
        hint = f"did you mean {close[0]!r}?" if close else \
            f"steps are: {', '.join(d.name for d in drafts)}"
        raise AnalysisError(f"%kale pipeline --on-exit {name!r} names no step; {hint}")
    found[0].is_exit = True


def check_exit_step(drafts: Sequence[Any]) -> list[str]:
    """Check the exit step; return a warning when it is not the notebook's last step.

    The exit step runs after every other step whether they succeeded or not
    (``dsl.ExitHandler``), so it cannot wait for their variables: it reads
    parameters and ``PIPELINE_STATUS`` only, and no step reads its variables.

    Raises
    ------
    AnalysisError
        The exit step reads a variable of a step, has ``--for``, ``--if`` or
        ``--after``, or another step reads its variables or runs after it.
    """
    exits = [d for d in drafts if d.is_exit]
    if not exits:
        return []
    exit_step = exits[0]
    where = f"{exit_step.head.describe()}: the exit step {exit_step.name!r}"
    if exit_step.inputs:
        name, producer = sorted(exit_step.inputs.items())[0]
        raise AnalysisError(f"{where} reads `{name}` of step {producer!r}, but it runs whether or "
                            "not the other steps succeeded, so it cannot wait for their "
                            "variables: read parameters and PIPELINE_STATUS there, or compute "
                            f"`{name}` in the exit step itself")
    if exit_step.loop or exit_step.condition or exit_step.after:
        raise AnalysisError(f"{where} runs after every other step; remove its --for, --if and "
                            "--after")
    for draft in drafts:
        if exit_step.name in (*draft.inputs.values(), *draft.after):
            raise AnalysisError(f"{draft.head.describe()}: step {draft.name!r} reads from (or runs "
                                f"--after) the exit step {exit_step.name!r}, which runs last; "
                                "move what it needs into another step")
    later = [d for d in drafts if d.head.index > exit_step.head.index]
    if not later:
        return []
    return [f"{where} runs after every other step in the pipeline, but in the notebook it runs "
            f"before step {later[0].name!r} ({later[0].head.place}), so PIPELINE_STATUS differs: "
            "move the exit step's cell to the end of the notebook"]


def _parent(scope: str) -> str:
    return scope.rpartition("/")[0]


def check_scopes(drafts: Sequence[Any], cells: Sequence[Any]) -> None:
    """Check what the steps of ``%%kale notebook`` sub-notebooks read, and what reads them.

    A sub-notebook runs as its own pipeline in the kernel, so in the pipeline too
    its steps see only its own variables and its parameters (its ``LABEL_params``
    step, which alone reads the outer notebook's variables), and the outer
    notebook sees only the variables its ``--outputs`` lists.

    Raises
    ------
    AnalysisError
        A step reads a variable across a sub-notebook's edge that the rules above do
        not let through; the message names the notebook and the fix.
    """
    markers = {c.scope: c for c in cells if c.annotation.kind == "notebook"}
    scopes = {d.name: d.head.scope for d in drafts}
    for draft in drafts:
        mine = draft.head.scope
        params_step = bool(mine) and draft.name == mine.replace("/", "_") + "_params"
        outer = _parent(mine) if params_step else mine
        for name, producer in sorted(draft.inputs.items()):
            theirs = scopes[producer]
            if theirs == mine or (params_step and theirs == outer):
                continue
            marker = markers.get(theirs)
            if marker is not None and _parent(theirs) == outer and name in marker.annotation.outputs:
                continue
            raise AnalysisError(_scope_message(draft, name, producer, theirs, markers))
        if mine and draft.parameters and not params_step:
            name = sorted(draft.parameters)[0]
            raise AnalysisError(
                f"{draft.head.describe()}: step {draft.name!r} of {markers[mine].annotation.notebook.path} "
                f"reads `{name}`, a parameter of the notebook that runs it, not its own; a "
                f"sub-notebook sees its own variables and parameters only: pass it with "
                f"`--param {name}={name}` and a parameter `{name}` in the sub-notebook")


def _scope_message(draft: Any, name: str, producer: str, theirs: str,
                   markers: dict[str, Any]) -> str:
    marker = markers.get(theirs)
    where = f"{draft.head.describe()}: step {draft.name!r} reads `{name}` of step {producer!r}"
    if marker is not None and _parent(theirs) == draft.head.scope:
        path = marker.annotation.notebook.path
        return (f"{where}, which the sub-notebook {path} assigns but does not pass on; add "
                f"`--outputs {name}` to its `%%kale notebook {path}` cell")
    inside = markers[draft.head.scope].annotation.notebook.path if draft.head.scope in markers \
        else "this notebook"
    return (f"{where}, outside {inside}; a sub-notebook sees only its own variables and its "
            "parameters (pass values in with --param) and passes out only its --outputs")


def passing(plan: Plan, names: Sequence[str]) -> tuple[Plan, dict[str, str]]:
    """``plan`` (a sub-notebook's) with each of ``names`` passed on as an artifact by the last
    step that assigns it, and that step per name: what a ``%%kale notebook --outputs`` run in
    the kernel reads back.

    Raises
    ------
    AnalysisError
        No step assigns a name, or only a ``--for`` step does (its values are per item).
    """
    producers: dict[str, str] = {}
    steps = list(plan.steps)
    for name in names:
        writers = [i for i, s in enumerate(steps)
                   if name in scan_cells(s.cells).writes or name in s.outputs]
        if not writers:
            raise AnalysisError(f"--outputs {name}: no step of {plan.notebook or 'the notebook'} "
                                f"assigns `{name}`; list a variable one of its steps assigns")
        last = steps[writers[-1]]
        if last.loop is not None:
            raise AnalysisError(f"--outputs {name}: `{name}` comes from --for step "
                                f"{last.name!r} of {plan.notebook}; pass on a list built in a "
                                "step without --for")
        steps[writers[-1]] = replace(last, outputs=tuple(sorted({*last.outputs, name})))
        producers[name] = last.name
    return replace(plan, steps=tuple(steps)), producers
