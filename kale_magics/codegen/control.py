"""Control flow in the generated pipeline: ``--for`` steps as ``dsl.ParallelFor`` groups.

A ``--for VAR in LIST`` step is one task inside ``dsl.ParallelFor`` (KFP 2,
``kfp.dsl.ParallelFor``). Its items are always a list of JSON texts, one per
item, so an item reaches the step exactly as the notebook has it (a KFP list
parameter would turn ``1`` into ``1.0``):

- LIST a list parameter: a small ``kale_items`` task turns the parameter's JSON
  text into that list;
- LIST a variable of an earlier step: that step returns the list as its
  component's return value (``Output``; kfp.local 2.17 resolves a loop's items
  from a task only through that output).

Consumers of a ``--for`` step's variables take ``dsl.Collected`` lists of its
per-item artifacts, in item order.

The steps sharing one ``--if "EXPR"`` are one ``dsl.If`` group, written where the
last of them stands (so every task they read from is made before it; a step
without that condition may not read them, ``analysis.control``). A small task,
``kale_if_<first step>``, evaluates EXPR with Python in the step runtime, from the
parameters and the JSON text of the scalar output parameters (``val_<name>``) the
steps it reads emit, and the group runs when that task returns True: EXPR means
exactly what it means in the kernel, ``and``/``or`` included.
"""

from __future__ import annotations

from dataclasses import dataclass

from kale_magics.codegen.embedding import LOADER, RUNTIME_INPUT
from kale_magics.codegen.layout import wrapped
from kale_magics.codegen.naming import task_variable
from kale_magics.codegen.parameters import kfp_type
from kale_magics.errors import CompileError
from kale_magics.model import Plan, Step

#: The loop step's component argument holding one item (JSON text).
LOOP_ITEM = "kale_item"
#: The component turning a list parameter into the loop's items.
ITEMS_COMPONENT = "kale_items"

ITEMS_SOURCE = f'''\
@dsl.component(base_image=BASE_IMAGE)
def {ITEMS_COMPONENT}(items: str) -> list:
    """The items of a --for loop over a list parameter (JSON text), each as JSON text."""
    import json

    return [json.dumps(item) for item in json.loads(items)]
'''


def loop_lists(plan: Plan) -> dict[str, str]:
    """The steps that return a list a later ``--for`` step loops over: ``{"split": "folds"}``.

    Raises
    ------
    CompileError
        One step would return two lists (two loops over different variables
        of the same step): KFP gives a component one return value.
    """
    found: dict[str, str] = {}
    for step in plan.steps:
        producer = _items_producer(step)
        if producer is None or step.loop is None:
            continue
        if found.setdefault(producer, step.loop.items) != step.loop.items:
            raise CompileError(
                f"step {step.name!r} loops over `{step.loop.items}` and another step over "
                f"`{found[producer]}`, both of step {producer!r}; a step can give one list to "
                f"loop over: loop over one of them, or assign the other in a step of its own")
    return found


def _items_producer(step: Step) -> str | None:
    if step.loop is None:
        return None
    return next((i.producer for i in step.inputs if i.name == step.loop.items), None)


def items_task(step: Step) -> str:
    """The pipeline function's variable of the ``kale_items`` task of ``step``'s loop."""
    return f"{ITEMS_COMPONENT}_{step.name}_task"


def loop_opening(step: Step) -> list[str]:
    """The statements opening ``step``'s ``dsl.ParallelFor`` (the items task first, for a loop
    over a parameter); the loop's item is ``kale_item_<step>``."""
    loop = step.loop
    assert loop is not None
    producer = _items_producer(step)
    lines = []
    if producer is None:
        lines.append(f"{items_task(step)} = {ITEMS_COMPONENT}(items={loop.items})")
        items = f"{items_task(step)}.output"
    else:
        items = f"{task_variable(producer)}.outputs['Output']"
    cap = f", parallelism={loop.parallelism}" if loop.parallelism else ""
    lines.append(f"with dsl.ParallelFor(items={items}{cap}) as {loop_item(step)}:")
    return lines


def loop_item(step: Step) -> str:
    """The loop variable of ``step``'s ``dsl.ParallelFor`` in the pipeline function."""
    return f"{LOOP_ITEM}_{step.name}"


def uses_items_component(plan: Plan) -> bool:
    """True when some ``--for`` step loops over a parameter (the module needs ``kale_items``)."""
    return any(s.loop is not None and _items_producer(s) is None for s in plan.steps)


#: Prefix of a step's output parameter holding a variable a ``--if`` compares (JSON text).
SCALAR_PREFIX = "val_"


@dataclass(frozen=True)
class ConditionGroup:
    """The steps sharing one ``--if`` EXPR, in plan order, and its condition task."""

    expression: str
    steps: tuple[Step, ...]

    @property
    def component(self) -> str:
        """The condition task's component: ``kale_if_<first step>``."""
        return f"kale_if_{self.steps[0].name}"

    @property
    def task(self) -> str:
        return task_variable(self.component)


def condition_groups(plan: Plan) -> list[ConditionGroup]:
    """The ``--if`` groups of ``plan``, in order of their first step."""
    groups: dict[str, list[Step]] = {}
    for step in plan.steps:
        if step.condition is not None:
            groups.setdefault(step.condition.expression, []).append(step)
    return [ConditionGroup(expression, tuple(steps)) for expression, steps in groups.items()]


def condition_component(plan: Plan, group: ConditionGroup) -> str:
    """Source of the component evaluating ``group``'s EXPR (returns a bool)."""
    head = group.steps[0]
    assert head.condition is not None
    parameters = {p.name: p for p in plan.parameters}
    produced = {i.name for i in head.condition_inputs}
    args = [f"{RUNTIME_INPUT}: Input[Artifact]"]
    args += [f"{n}: {'str' if n in produced else kfp_type(parameters[n])}"
             for n in head.condition.names]
    call = [repr([s.name for s in group.steps]), repr(group.expression),
            wrapped("{", [f"{n!r}: {n}" for n in head.condition.names], "}", 8)]
    if produced:
        call.append(f"json_values={sorted(produced)!r}")
    return ("@dsl.component(base_image=BASE_IMAGE)\n"
            + wrapped(f"def {group.component}(", args, ") -> bool:", 0) + "\n"
            + f'    """Whether the steps of --if {group.expression!r} run."""\n'
            + LOADER.replace("import run_step", "import run_condition")
            + "    return run_condition(\n"
            + "".join(f"        {argument},\n" for argument in call) + "    )\n")


def condition_lines(group: ConditionGroup, indent: int) -> list[str]:
    """The statements making ``group``'s condition task and opening its ``dsl.If``."""
    head = group.steps[0]
    assert head.condition is not None
    sources = {i.name: f"{task_variable(i.producer)}.outputs[{SCALAR_PREFIX + i.name!r}]"
               for i in head.condition_inputs}
    args = [f"{RUNTIME_INPUT}={task_variable('kale_runtime')}.output"]
    args += [f"{n}={sources.get(n, n)}" for n in head.condition.names]
    return [wrapped(f"{group.task} = {group.component}(", args, ")", indent),
            f"with dsl.If({group.task}.output == True, name={group.expression!r}):"]
