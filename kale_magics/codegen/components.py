"""Render one pipeline step as a KFP lightweight component (``@dsl.component``).

Every variable passed between steps is its own artifact: ``out_<name>`` as an
``Output[...]`` on the producer, ``in_<name>`` as an ``Input[...]`` on each
consumer. Pipeline parameters the step reads are plain component parameters
with their literal type, never text spliced into code.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

from kale_magics.analysis.names import python_source
from kale_magics.codegen.literals import literal, string_literal, text_literal
from kale_magics.codegen.parameters import JSON_TYPES, kfp_type
from kale_magics.errors import CompileError
from kale_magics.model import Cell, Parameter, Plan, Step

METRICS_ARTIFACT = "kale_metrics"
ARTIFACT_CLASSES = ("Artifact", "Dataset", "Model")


def cell_filename(plan: Plan, cell: Cell) -> str:
    """The filename user code runs under: ``"titanic.ipynb, cell 7 (step train)"``."""
    notebook = cell.notebook or os.path.basename(plan.notebook) or "notebook"
    kind = cell.annotation.kind
    label = f"step {cell.annotation.name}" if kind == "step" else kind
    return f"{notebook}, cell {cell.index if cell.number is None else cell.number} ({label})"


def signature(step: Step, parameters: Mapping[str, Parameter],
              artifact_types: Mapping[str, str]) -> list[str]:
    """The component's arguments, ``["N: int", "in_df: Input[Dataset]", ...]``.

    Raises
    ------
    CompileError
        Two arguments would have the same name (a parameter called like an
        artifact argument, e.g. ``in_df``); the message says which to rename.
    """
    args = [f"{name}: {kfp_type(parameters[name])}" for name in step.parameters]
    args += [f"in_{i.name}: Input[{_artifact_class(i.name, artifact_types)}]" for i in step.inputs]
    args += [f"out_{n}: Output[{_artifact_class(n, artifact_types)}]" for n in step.outputs]
    if step.metrics:
        args.append(f"{METRICS_ARTIFACT}: Output[Metrics]")
    names = [a.split(":")[0] for a in args]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise CompileError(f"step {step.name!r}: the component argument {clash[0]!r} would be both "
                           "a parameter and an artifact; rename the parameter")
    return args


def _artifact_class(name: str, artifact_types: Mapping[str, str]) -> str:
    kind = artifact_types.get(name, "Artifact")
    return kind if kind in ARTIFACT_CLASSES else "Artifact"


def _decorator(plan: Plan, step: Step, packages: list[str]) -> str:
    image = repr(step.settings.image) if step.settings.image else "BASE_IMAGE"
    lines = [f"base_image={image}", f"packages_to_install={packages!r}"]
    if plan.settings.pip_index_urls:
        lines.append(f"pip_index_urls={list(plan.settings.pip_index_urls)!r}")
    if plan.settings.pip_trusted_hosts:
        lines.append(f"pip_trusted_hosts={list(plan.settings.pip_trusted_hosts)!r}")
    lines.append("additional_funcs=[_kale_prelude, _kale_runtime]")
    return "@dsl.component(\n" + "".join(f"    {line},\n" for line in lines) + ")\n"


def render_component(plan: Plan, step: Step, artifact_types: Mapping[str, str],
                     packages: list[str]) -> str:
    """Source of the ``@dsl.component`` function for ``step``, installing ``packages``."""
    parameters = {p.name: p for p in plan.parameters}
    args = "".join(f"    {a},\n" for a in signature(step, parameters, artifact_types))
    cells = ", ".join(c.place.removeprefix("cell ") for c in step.cells)
    code = _blocks(plan, step.cells, " " * 12)
    imports = "".join(f"\n            ({string_literal(cell_filename(plan, cell))}, "
                      f"{string_literal(statement)})," for cell, statement in step.imports)
    imports += "\n        " if imports else ""
    return (
        _decorator(plan, step, packages)
        + f"def {step.name}(\n{args}):\n"
        f"    \"\"\"Step {step.name!r}: notebook cell{'s' if len(step.cells) > 1 else ''} {cells}.\"\"\"\n"
        "    _kale_runtime().run_step(\n"
        f"        step={step.name!r},\n"
        "        prelude=_kale_prelude(),\n"
        f"        imports=[{imports}],\n"
        f"        code=[\n{code}        ],\n"
        f"        parameters={_mapping(step.parameters, '')},\n"
        f"        json_parameters={_json_names(step, parameters)!r},\n"
        f"        inputs={_mapping([i.name for i in step.inputs], 'in_')},\n"
        f"        outputs={_mapping(step.outputs, 'out_')},\n"
        f"        metrics={literal({m.key: m.expression for m in step.metrics})},\n"
        f"        metrics_artifact={METRICS_ARTIFACT if step.metrics else None},\n"
        f"        position={step.cells[0].index},\n"
        "    )\n"
    )


def _json_names(step: Step, parameters: Mapping[str, Parameter]) -> list[str]:
    return [name for name in step.parameters if parameters[name].type in JSON_TYPES]


def _mapping(names: tuple[str, ...] | list[str], prefix: str) -> str:
    items = ", ".join(f"{name!r}: {prefix}{name}" for name in names)
    return "{" + items + "}"


def _blocks(plan: Plan, cells: Sequence[Cell], indent: str) -> str:
    """``(filename, source),`` lines of ``cells`` for a code list, one per cell."""
    return "".join(f"{indent}({string_literal(cell_filename(plan, c))}, "
                   f"{text_literal(python_source(c.source), indent + ' ' * 4)}),\n" for c in cells)


def render_prelude(plan: Plan) -> str:
    """Source of ``_kale_prelude()``: the imports and functions cells, run first in every step."""
    code = _blocks(plan, plan.prelude, " " * 8)
    return (
        "def _kale_prelude():\n"
        "    \"\"\"The notebook's imports and functions cells, run first in every step.\"\"\"\n"
        f"    return [\n{code}    ]\n"
    )
