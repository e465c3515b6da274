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
"""

from __future__ import annotations

from kale_magics.codegen.naming import task_variable
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
