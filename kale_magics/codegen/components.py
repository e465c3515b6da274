"""Render one pipeline step as a KFP lightweight component (``@dsl.component``).

Every variable passed between steps is its own artifact: ``out_<name>`` as an
``Output[...]`` on the producer, ``in_<name>`` as an ``Input[...]`` on each
consumer. Pipeline parameters the step reads are plain component parameters
with their literal type, never text spliced into code. Each step's first
argument is the runtime bundle (``kale_runtime``, see ``codegen.embedding``).
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Mapping

from kale_magics.codegen.cell_code import (check_argument_size, check_parameter_sizes, places,
                                            prelude_cells, step_cells)
from kale_magics.codegen.control import LOOP_ITEM, SCALAR_PREFIX, loop_lists
from kale_magics.codegen.registration_arguments import (REGISTRATION_ARGUMENTS, REGISTRY_PARAMETER,
                                                        RUN_ID_ARGUMENT, RUN_NAME_ARGUMENT)
from kale_magics.codegen.embedding import (LOADER, RUNTIME_INPUT, embedded_loader,
                                           runtime_component_function)
from kale_magics.codegen.layout import wrapped
from kale_magics.codegen.literals import literal, string_literal
from kale_magics.codegen.parameters import JSON_TYPES, kfp_type, kfp_value
from kale_magics.errors import CompileError
from kale_magics.model import Cell, Parameter, Plan, Registration, Step

METRICS_ARTIFACT = "kale_metrics"
#: The exit step's argument holding KFP's ``dsl.PipelineTaskFinalStatus``.
FINAL_STATUS = "kale_status"
ARTIFACT_CLASSES = ("Artifact", "Dataset", "Model")
#: Module constants the decorators name (see ``pipeline.render_module``).
PIP_INDEX_URLS = "PIP_INDEX_URLS"
PIP_TRUSTED_HOSTS = "PIP_TRUSTED_HOSTS"


def signature(step: Step, parameters: Mapping[str, Parameter],
              artifact_types: Mapping[str, str], loops: frozenset[str] = frozenset(),
              exit_step: bool = False) -> list[str]:
    """The component's arguments, ``["kale_runtime: Input[Artifact]", "N: int", ...]``.

    ``loops`` names the ``--for`` steps: an input from one of them is the list of its
    per-item artifacts (``Input[List[Artifact]]``, fed by ``dsl.Collected``), and a
    ``--for`` step takes its item as ``kale_item: str`` (JSON text).
    The ``--on-exit`` step (``exit_step``) takes KFP's ``PipelineTaskFinalStatus`` as
    ``kale_status``.

    Raises
    ------
    CompileError
        Two arguments would have the same name (a parameter called like an
        artifact argument, e.g. ``in_df``); the message says which to rename.
    """
    args = [] if exit_step else [f"{RUNTIME_INPUT}: Input[Artifact]"]
    args += [f"{name}: {kfp_type(parameters[name])}" for name in step.parameters]
    args += [f"{LOOP_ITEM}: str"] if step.loop is not None else []
    for i in step.inputs:
        kind = _artifact_class(i.name, artifact_types)
        args.append(f"in_{i.name}: Input[{f'List[{kind}]' if i.producer in loops else kind}]")
    args += [f"out_{n}: Output[{_artifact_class(n, artifact_types)}]" for n in step.outputs]
    args += [f"{SCALAR_PREFIX}{n}: dsl.OutputPath(str)" for n in step.scalars]
    args += [f"{FINAL_STATUS}: dsl.PipelineTaskFinalStatus"] if exit_step else []
    if step.metrics:
        args.append(f"{METRICS_ARTIFACT}: Output[Metrics]")
    if step.registrations:
        args += [f"{name}: str" for name in REGISTRATION_ARGUMENTS]
    names = [a.split(":")[0] for a in args]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise CompileError(f"step {step.name!r}: the component argument {clash[0]!r} would be both "
                           "a parameter and an artifact; rename the parameter")
    return args


def _artifact_class(name: str, artifact_types: Mapping[str, str]) -> str:
    """The KFP artifact class of variable ``name``; a registered model's is ``Model``
    (``render_module`` puts it in ``artifact_types``)."""
    kind = artifact_types.get(name, "Artifact")
    return kind if kind in ARTIFACT_CLASSES else "Artifact"


def decorator(plan: Plan, image: str, packages: str | None) -> str:
    """``@dsl.component(...)`` with the base image, the packages constant and pip settings."""
    lines = [f"base_image={image}"]
    lines += [f"packages_to_install={packages}"] if packages else []
    if plan.settings.pip_index_urls:
        lines.append(f"pip_index_urls={PIP_INDEX_URLS}")
    if plan.settings.pip_trusted_hosts:
        lines.append(f"pip_trusted_hosts={PIP_TRUSTED_HOSTS}")
    return wrapped("@dsl.component(", lines, ")", 0) + "\n"


def render_component(plan: Plan, step: Step, artifact_types: Mapping[str, str], packages: str,
                     sources: Mapping[int, str]) -> str:
    """Source of the ``@dsl.component`` function for ``step``.

    Parameters
    ----------
    packages:
        The name of the module constant listing what the step installs.
    sources:
        Each cell's plain Python by index (``cell_code.python_sources``).

    Raises
    ------
    CompileError
        The component would not fit in one command-line argument (see
        ``cell_code.check_argument_size``), or two arguments clash.
    """
    parameters = {p.name: p for p in plan.parameters}
    loops = frozenset(s.name for s in plan.steps if s.loop)
    returns = loop_lists(plan).get(step.name)
    exit_step = step.name == plan.settings.on_exit
    args = wrapped(f"def {step.name}(", signature(step, parameters, artifact_types, loops, exit_step),
                   ") -> list:" if returns else "):", 0)
    image = repr(step.settings.image) if step.settings.image else "BASE_IMAGE"
    control = ([f"loop=({step.loop.variable!r}, {LOOP_ITEM})"] if step.loop else []) \
        + ([f"returns={returns!r}"] if returns else []) \
        + ([wrapped("scalars={", [f"{n!r}: {SCALAR_PREFIX}{n}" for n in step.scalars], "}", 8)]
           if step.scalars else []) \
        + ([f"final_status={FINAL_STATUS}",
            wrapped("run_steps=[", [repr(s.name) for s in plan.steps if s is not step], "]", 8)]
           if exit_step else [])
    source = (
        decorator(plan, image, packages)
        + f"{args}\n"
        + (_exit_loader(plan, sources) if exit_step else LOADER)
        + ("    return run_step(\n" if returns else "    run_step(\n")
        + "".join(f"        {argument},\n"
                  for argument in (*_run_step_arguments(step, parameters, sources), *control))
        + "    )\n"
    )
    check_argument_size(f"component of step {step.name!r}", source, step.cells)
    check_parameter_sizes(step.name, {n: kfp_value(parameters[n], parameters[n].value)
                                      for n in step.parameters})
    return source


def _run_step_arguments(step: Step, parameters: Mapping[str, Parameter],
                        sources: Mapping[int, str]) -> list[str]:
    """The keyword arguments of ``runtime.bundle.run_step``; empty ones left out."""
    found = [f"step={step.name!r}", step_cells(step.cells, sources, " " * 8)]
    imports = [f"({cell.index}, {string_literal(_label(cell))}, {string_literal(statement)})"
               for cell, statement in step.imports]
    for keyword, opening, items, closing in (
            ("imports", "[", imports, "]"),
            ("parameters", "{", [f"{n!r}: {n}" for n in step.parameters], "}"),
            ("json_parameters", "[", [repr(n) for n in _json_names(step, parameters)], "]"),
            ("inputs", "{", [f"{i.name!r}: in_{i.name}" for i in step.inputs], "}"),
            ("outputs", "{", [f"{n!r}: out_{n}" for n in step.outputs], "}"),
            ("metrics", "{", [f"{literal(m.key)}: {literal(m.expression)}" for m in step.metrics],
             "}")):
        if items:
            found.append(wrapped(f"{keyword}={opening}", items, closing, 8))
    found += [f"metrics_artifact={METRICS_ARTIFACT}"] if step.metrics else []
    if step.registrations:
        found.append(wrapped("registrations=[", [repr(_registration(r)) for r in step.registrations],
                             "]", 8))
        found += [f"model_registry={REGISTRY_PARAMETER}",
                  f"run={{'id': {RUN_ID_ARGUMENT}, 'name': {RUN_NAME_ARGUMENT}}}"]
    return found


def _registration(registration: Registration) -> dict[str, str]:
    """``runtime.registration.register``'s description of one ``--register``: unset fields left out."""
    return {key: value for key, value in asdict(registration).items() if value is not None}


def _cells(plan: Plan) -> list[Cell]:
    """Every cell a step's code names: the prelude, the steps' cells, the replayed imports'."""
    return [*plan.prelude, *(c for step in plan.steps for c in step.cells),
            *(cell for step in plan.steps for cell, _ in step.imports)]


def _label(cell: Cell) -> str:
    """How a cell is named after its index in tracebacks: ``step train``, ``imports``."""
    kind = cell.annotation.kind
    return f"step {cell.annotation.name}" if kind == "step" else kind


def render_runtime_component(plan: Plan, sources: Mapping[int, str]) -> str:
    """Source of the ``kale_runtime`` component: the runtime and the prelude, for every step.

    ``sources`` holds each cell's plain Python by index (``cell_code.python_sources``).

    Raises
    ------
    CompileError
        The imports and functions cells are too large for one command-line
        argument, even compressed.
    """
    source = (decorator(plan, "BASE_IMAGE", None)
              + runtime_component_function(os.path.basename(plan.notebook),
                                           prelude_cells(plan.prelude, sources, " " * 12),
                                           places(_cells(plan))))
    check_argument_size("step runtime component (with the imports and functions cells)", source,
                        plan.prelude)
    return source


def _exit_loader(plan: Plan, sources: Mapping[int, str]) -> str:
    """The ``--on-exit`` step's start: it writes the runtime bundle itself (``embedded_loader``)."""
    return embedded_loader(os.path.basename(plan.notebook),
                           prelude_cells(plan.prelude, sources, " " * 12), places(_cells(plan)))


def _json_names(step: Step, parameters: Mapping[str, Parameter]) -> list[str]:
    return [name for name in step.parameters if parameters[name].type in JSON_TYPES]
