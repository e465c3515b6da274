"""The names the generated DSL module and KFP derive from a plan, and the clashes refused.

Step names are checked one by one by the grammar (``notebook.annotations``);
what only shows with the whole plan is checked here, before anything is
rendered, so the KFP compiler never meets a name it rejects or a module whose
names shadow each other:

- a step named like another step's task variable (``a`` and ``a_task``: the
  pipeline function binds ``a_task = a(...)``, hiding the step ``a_task``);
- a step named like another step's KFP driver (``prep`` and ``prep_driver``:
  KFP's Argo workflow runs ``<task>-driver`` beside each task, and the
  server's ``task_details`` list both under those names);
- a parameter default KFP cannot carry unchanged (``inf``, a tuple in a list, ...);
- a parameter that the pipeline function would confuse with one of its own
  names (a step, a task variable, ``kubernetes``, the ``kale_runtime``
  component), or a component with the names it loads the runtime with
  (``sys``, ``run_step``), or that KFP rejects: KFP
  accepts ``^[A-Za-z][A-Za-z0-9_-]*`` only (``kfp.dsl.pipeline_channel.
  PipelineChannel.__init__``, KFP 2.17), and a Python argument allows no ``-``;
- a variable passed between steps whose artifact name (``in_<name>``,
  ``out_<name>``) KFP rejects: any non-ASCII letter.

Each error names the clash and a name that would work.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Iterable

from kale_magics.codegen.registration_arguments import REGISTRATION_ARGUMENTS
from kale_magics.codegen.embedding import LOADER_NAMES, RUNTIME_COMPONENT
from kale_magics.codegen.parameters import value_problem
from kale_magics.errors import CompileError
from kale_magics.model import Plan

#: What KFP accepts as a parameter or artifact name that is also a Python argument.
KFP_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
#: Suffix of the pipeline function's variable holding a step's task.
TASK_SUFFIX = "_task"
#: Suffix KFP's Argo workflow gives the driver node of each task (``<task>-driver``).
DRIVER_SUFFIX = "_driver"


def task_variable(step: str) -> str:
    """The pipeline function's variable for the task of ``step``: ``train`` -> ``train_task``."""
    return step + TASK_SUFFIX


def check_names(plan: Plan, kubernetes: bool) -> None:
    """Refuse a plan whose names would clash in the generated module or in KFP.

    Parameters
    ----------
    plan:
        The plan about to be rendered.
    kubernetes:
        True when the pipeline function calls ``kfp.kubernetes`` (some step has a timeout,
        a secret, a volume, ...).

    Raises
    ------
    CompileError
        The first clash found; the message names both sides and a valid alternative.
    """
    steps = [s.name for s in plan.steps]
    _check_steps(steps)
    _check_parameters(plan, steps, kubernetes)
    passed = {name for s in plan.steps for name in (*s.outputs, *(i.name for i in s.inputs))}
    for name in sorted(passed):
        if not KFP_NAME.fullmatch(f"in_{name}"):
            raise CompileError(
                f"variable `{name}` is passed between steps as the KFP artifacts `in_{name}` and "
                f"`out_{name}`, and KFP names hold only ASCII letters, digits and _; rename the "
                f"variable (for example `{_ascii(name)}`)")


def _check_steps(steps: list[str]) -> None:
    names = set(steps)
    for step in steps:
        for suffix, why in ((TASK_SUFFIX, "the generated pipeline function calls the task of "
                             "step {base!r} `{step}`"),
                            (DRIVER_SUFFIX, "on a KFP server each task {base!r} has a driver named "
                             "'{base}-driver', the KFP name of step {step!r} too")):
            base = step[:-len(suffix)]
            if step.endswith(suffix) and base in names:
                raise CompileError(
                    f"steps {base!r} and {step!r} clash: {why.format(base=base, step=step)}; "
                    f"rename step {step!r} (for example {_free(step, names, '_step')!r})")


def _check_parameters(plan: Plan, steps: list[str], kubernetes: bool) -> None:
    taken = {**{s: f"step {s!r}" for s in steps},
             **{task_variable(s): f"the task variable of step {s!r}" for s in steps}}
    if kubernetes:
        taken["kubernetes"] = "the kfp.kubernetes module"
    taken.update({RUNTIME_COMPONENT: "the step runtime's component",
                  task_variable(RUNTIME_COMPONENT): "the task variable of the step runtime",
                  **{name: "a name each step's component uses to load the step runtime"
                     for name in LOADER_NAMES},
                  **{name: "an argument of the steps that register models"
                     for name in REGISTRATION_ARGUMENTS}})
    for parameter in plan.parameters:
        name = parameter.name
        problem = value_problem(parameter, parameter.value)
        if problem:
            raise CompileError(f"parameter `{name}` = {parameter.value!r:.60}: {problem}")
        if not KFP_NAME.fullmatch(name):
            raise CompileError(
                f"parameter `{name}`: KFP parameter names start with an ASCII letter and hold only "
                f"ASCII letters, digits and _; rename it (for example `{_ascii(name)}`)")
        if name in taken:
            raise CompileError(
                f"parameter `{name}` has the name of {taken[name]}, which the generated pipeline "
                f"function uses; rename the parameter (for example "
                f"`{_free(name, [*taken, *(p.name for p in plan.parameters)], '_value')}`)")


def _ascii(name: str) -> str:
    """An ASCII name close to ``name``, starting with a letter: ``_α`` -> ``a``."""
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    folded = re.sub(r"[^A-Za-z0-9_]", "", folded).lstrip("_0123456789")
    return folded or "value"


def _free(name: str, taken: Iterable[str], suffix: str) -> str:
    """``name + suffix``, numbered until it is not in ``taken``."""
    used, candidate, number = set(taken), name + suffix, 2
    while candidate in used or candidate.endswith((TASK_SUFFIX, DRIVER_SUFFIX)):
        candidate, number = f"{name}{suffix}{number}", number + 1
    return candidate
