"""Render a :class:`~kale_magics.model.Plan` as a readable KFP DSL module.

The module has, in order: a header; constants (the base image, each distinct
list of packages the steps install); one ``@dsl.component`` per step, which
imports the step runtime from its ``kale_runtime`` input and runs; the
``kale_runtime`` component, which carries the step runtime (compressed) and the
notebook's imports and functions cells once for the whole pipeline (see
``codegen.embedding``); and the ``@dsl.pipeline`` function wiring the tasks.
The same plan always renders the same text.
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from typing import Any, Mapping

from kale_magics import __version__
from kale_magics.analysis.names import scan_blocks
from kale_magics.codegen.cell_code import python_sources
from kale_magics.codegen.components import (PIP_INDEX_URLS, PIP_TRUSTED_HOSTS, REGISTRY_PARAMETER,
                                             RUN_ID_ARGUMENT, RUN_NAME_ARGUMENT, render_component,
                                             render_runtime_component)
from kale_magics.codegen.control import (ITEMS_SOURCE, LOOP_ITEM, condition_component,
                                         condition_groups, condition_lines, loop_item,
                                         loop_opening, uses_items_component)
from kale_magics.codegen.layout import wrapped
from kale_magics.codegen.embedding import RUNTIME_COMPONENT, RUNTIME_INPUT
from kale_magics.codegen.naming import check_names, task_variable
from kale_magics.codegen.packages import (installed_packages, step_packages, with_overrides,
                                          with_producers)
from kale_magics.codegen.parameters import kfp_type, kfp_value
from kale_magics.codegen.settings import settings_lines, uses_kubernetes
from kale_magics.model import Plan, Step, StepSettings


def default_image() -> str:
    """The stock Python image matching this interpreter's minor version, e.g. ``python:3.11``."""
    return f"python:{sys.version_info.major}.{sys.version_info.minor}"


@dataclass(frozen=True)
class RenderedModule:
    """The generated DSL module and what the compile learned while writing it.

    Attributes
    ----------
    source:
        The module's text.
    packages:
        Pinned requirements each step installs on the cluster, by step name.
    warnings:
        Imports no installed distribution provides.
    """

    source: str
    packages: dict[str, list[str]]
    warnings: list[str]


def render_module(plan: Plan, artifact_types: Mapping[str, str] | None = None) -> RenderedModule:
    """Render the DSL module for ``plan``.

    Parameters
    ----------
    plan:
        The analysed pipeline.
    artifact_types:
        Optional KFP artifact class per passed variable (``"Dataset"``,
        ``"Model"`` or ``"Artifact"``, the default), as the notebook's saved step records give them.

    Raises
    ------
    CompileError
        A component would not fit in one command-line argument (a cell too
        large even compressed), two component arguments clash, names would clash
        in the module or in KFP, or parameter values KFP cannot carry (see
        :func:`~kale_magics.codegen.naming.check_names`).
    """
    check_names(plan, kubernetes=uses_kubernetes(plan.steps))
    types = dict(artifact_types or {})
    types.update({r.variable: "Model" for step in plan.steps for r in step.registrations})
    sources = python_sources((*plan.prelude, *(c for step in plan.steps for c in step.cells)))
    imports = {index: _imports(source) for index, source in sources.items()}
    prelude = [m for c in plan.prelude for m in imports[c.index]]
    packages, unknown, installed = {}, [], installed_packages()
    for step in plan.steps:  # plan order: producers come first
        modules = prelude + [m for c in step.cells for m in imports[c.index]]
        derived, missing = step_packages(modules, installed)
        producers = sorted({i.producer for i in step.inputs})
        derived = with_producers(derived, (packages[p] for p in producers))
        if step.registrations:  # the step registers with the model-registry client
            derived = with_overrides(derived, registry_requirement(installed))
        packages[step.name] = with_overrides(derived, step.settings.packages)
        unknown += [m for m in missing if m not in unknown]
    warnings = [f"no installed package provides module {m!r}; install it here, or name its "
                "package with --packages" for m in unknown]
    constants = package_constants(plan, packages)
    parts = [
        _header(plan),
        _constants(plan, packages, constants),
        *(render_component(plan, step, types, constants[step.name], sources)
          for step in plan.steps),
        render_runtime_component(plan, sources),
        *([ITEMS_SOURCE] if uses_items_component(plan) else []),
        *(condition_component(plan, group) for group in condition_groups(plan)),
        _pipeline_function(plan),
    ]
    return RenderedModule("\n\n".join(parts), packages, warnings)


def registry_requirement(installed: Any) -> list[str]:
    """``["model-registry==X"]``, pinned to the version installed here, or unpinned."""
    pinned, _ = step_packages(["model_registry"], installed)
    return pinned or ["model-registry"]


@functools.lru_cache(maxsize=4096)  # pure; a recompile meets the same cells again
def _imports(source: str) -> tuple[str, ...]:
    """Top-level modules a cell's plain Python imports."""
    return tuple(scan_blocks([source]).imports)


def package_constants(plan: Plan, packages: Mapping[str, list[str]]) -> dict[str, str]:
    """The module constant naming each step's packages: ``{"load": "PACKAGES", "train": ...}``.

    Steps installing the same list share one constant: the first list (in step
    order) is ``PACKAGES``, another is named after its first step
    (``PACKAGES_TRAIN``), so the DSL does not repeat a list per step.
    """
    names: dict[tuple[str, ...], str] = {}
    for step in plan.steps:
        key = tuple(packages[step.name])
        names.setdefault(key, f"PACKAGES_{step.name.upper()}" if names else "PACKAGES")
    return {step.name: names[tuple(packages[step.name])] for step in plan.steps}


def _constants(plan: Plan, packages: Mapping[str, list[str]], names: Mapping[str, str]) -> str:
    lines = [f"BASE_IMAGE = {(plan.settings.image or default_image())!r}\n"]
    for name, values in ((PIP_INDEX_URLS, plan.settings.pip_index_urls),
                         (PIP_TRUSTED_HOSTS, plan.settings.pip_trusted_hosts)):
        if values:
            lines.append(wrapped(f"{name} = [", [repr(v) for v in values], "]", 0) + "\n")
    lines.append("#: What the steps pip-install on a cluster, pinned to the versions installed where "
                 "this was compiled.\n")
    lists = {name: packages[step] for step, name in names.items()}
    lines += [wrapped(f"{name} = [", [repr(p) for p in values], "]", 0) + "\n"
              for name, values in lists.items()]
    return "".join(lines)


def _header(plan: Plan) -> str:
    """The module docstring and imports. No user text goes into the docstring: the notebook's
    file name (any characters, quotes and backslashes included) is the ``NOTEBOOK`` literal."""
    notebook = os.path.basename(plan.notebook) or "a notebook"
    return (
        f'"""KFP pipeline generated by kale-magics {__version__} from the notebook NOTEBOOK.\n\n'
        "Do not edit: change the notebook and compile again. Each step is one lightweight\n"
        "component that runs the notebook's imports and functions cells, then the step's cells,\n"
        "through the kale-magics step runtime, which the first task (`kale_runtime`) writes as an\n"
        "artifact every step imports.\n"
        '"""\n'
        "from kfp import dsl\n"
        + ("from kfp import kubernetes\n" if uses_kubernetes(_all_tasks(plan)) else "")
        + "from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output\n"
        + ("from typing import List\n" if any(s.loop for s in plan.steps) else "") + "\n"
        f"NOTEBOOK = {notebook!r}\n"
    )


def _runtime_task(plan: Plan) -> Step:
    """The ``kale_runtime`` task as a step without cells, with the pipeline's default settings
    that decide where and how any pod starts (environment, secrets, node selectors, tolerations,
    labels, annotations, retries), not the resources, volumes or timeout the steps run with."""
    d = plan.settings.step_defaults
    settings = StepSettings(retries=d.retries, backoff_s=d.backoff_s, env=d.env, secrets=d.secrets,
                            node_selector=d.node_selector, tolerations=d.tolerations,
                            labels=d.labels, annotations=d.annotations)
    return Step(name=RUNTIME_COMPONENT, cells=(), settings=settings)


def _all_tasks(plan: Plan) -> tuple[Step, ...]:
    return (_runtime_task(plan), *plan.steps)


def _pipeline_function(plan: Plan) -> str:
    params = "".join(f"    {p.name}: {kfp_type(p)} = {kfp_value(p, p.value)!r},\n"
                     for p in plan.parameters)
    if any(step.registrations for step in plan.steps):
        params += f"    {REGISTRY_PARAMETER}: str = {plan.settings.model_registry or ''!r},\n"
    description = plan.settings.description
    decorator = f"@dsl.pipeline(name={plan.name!r}"
    decorator += f", description={description!r})" if description else ")"
    runtime = _runtime_task(plan)
    lines = [f"{task_variable(RUNTIME_COMPONENT)} = {RUNTIME_COMPONENT}()", *settings_lines(runtime)]
    body = "".join(f"    {line}\n" for line in lines)
    loops = {s.name for s in plan.steps if s.loop}
    groups = {s.name: g for g in condition_groups(plan) for s in g.steps}
    indent, exit_step = 4, plan.settings.on_exit
    if exit_step:  # made first, it runs last: dsl.ExitHandler around every other step
        body += _task_lines(plan.step(exit_step), loops, indent, exit_step=True)
        body += f"    with dsl.ExitHandler({task_variable(exit_step)}, name={plan.name!r}):\n"
        indent = 8
    for step in plan.steps:
        group = groups.get(step.name)
        if step.name == exit_step:
            continue
        if group is None:
            body += _step_block(step, loops, indent)
        elif step is group.steps[-1]:  # the group goes where its last step stands
            body += "".join(f"{' ' * indent}{line}\n" for line in condition_lines(group, indent))
            body += "".join(_step_block(member, loops, indent + 4) for member in group.steps)
    return f"{decorator}\ndef pipeline(\n{params}):\n{body}"


def _step_block(step: Step, loops: set[str], indent: int) -> str:
    """The statements making ``step``'s task at column ``indent``, inside its
    ``dsl.ParallelFor`` for a ``--for`` step."""
    lines = []
    if step.loop is not None:
        lines += [" " * indent + line + "\n" for line in loop_opening(step)]
        indent += 4
    return "".join(lines) + _task_lines(step, loops, indent)


def _task_lines(step: Step, loops: set[str], indent: int, exit_step: bool = False) -> str:
    args = [] if exit_step else [f"{RUNTIME_INPUT}={task_variable(RUNTIME_COMPONENT)}.output"]
    args += [f"{name}={name}" for name in step.parameters]
    if step.loop is not None:
        args.append(f"{LOOP_ITEM}={loop_item(step)}")
    for i in step.inputs:
        output = f"{task_variable(i.producer)}.outputs[{'out_' + i.name!r}]"
        args.append(f"in_{i.name}=" + (f"dsl.Collected({output})" if i.producer in loops else output))
    if step.registrations:
        args += [f"{REGISTRY_PARAMETER}={REGISTRY_PARAMETER}",
                 f"{RUN_ID_ARGUMENT}=dsl.PIPELINE_JOB_ID_PLACEHOLDER",
                 f"{RUN_NAME_ARGUMENT}=dsl.PIPELINE_JOB_NAME_PLACEHOLDER"]
    lines = [wrapped(f"{task_variable(step.name)} = {step.name}(", args, ")", indent)]
    if step.after:
        lines.append(wrapped(f"{task_variable(step.name)}.after(",
                             [task_variable(a) for a in step.after], ")", indent))
    return "".join(f"{' ' * indent}{line}\n" for line in (*lines, *settings_lines(step)))
