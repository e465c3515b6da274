"""The one facade of kale-magics: every front end (magics, CLI, widget) calls these.

Each function reads, analyses, compiles or runs by delegating to the core
(``notebook``, ``analysis``, ``codegen``, ``runner``) and raises only
:class:`~kale_magics.errors.KaleError` subclasses on bad input.
"""

from __future__ import annotations

import ast
import json
import os
from typing import Any, Mapping

from kale_magics.analysis.parameters import MAX_EXACT_INT
from kale_magics.analysis.plan import build_plan
from kale_magics.codegen.compile import CompiledPipeline, compile_plan
from kale_magics.codegen.parameters import kfp_arguments
from kale_magics.errors import KaleError
from kale_magics.model import Plan
from kale_magics.notebook.reader import read_notebook
from kale_magics.runner import local
from kale_magics.runner.status import RunHooks, RunStatus

__all__ = ["CompiledPipeline", "KaleError", "RunHooks", "RunStatus", "coerce_arguments", "compile_notebook",
           "default_output_dir", "read_plan", "run_local"]


def read_plan(notebook: str | os.PathLike[str]) -> Plan:
    """Read and analyse ``notebook`` (an .ipynb path) into a pipeline plan.

    Raises
    ------
    NotebookError, AnnotationError, AnalysisError
        The file cannot be read, an annotation is malformed, or the steps do
        not form a valid pipeline; the message names the cell and the fix.
    """
    annotated = read_notebook(notebook)
    return build_plan(annotated.cells, annotated.settings, annotated.path)


def default_output_dir(notebook: str | os.PathLike[str]) -> str:
    """``.kale/`` next to the notebook: where compiled files go by default."""
    return os.path.join(os.path.dirname(os.path.abspath(notebook)), ".kale")


def compile_notebook(notebook: str | os.PathLike[str], output_dir: str | None = None,
                     artifact_types: Mapping[str, str] | None = None) -> CompiledPipeline:
    """Compile ``notebook`` to ``<output_dir>/<pipeline>.py`` (KFP DSL) and ``.yaml`` (KFP IR).

    Parameters
    ----------
    notebook:
        Path of the annotated .ipynb file. It is only read.
    output_dir:
        Folder for the generated files; default ``.kale/`` next to the notebook.
    artifact_types:
        KFP artifact class per passed variable (``"Dataset"``, ``"Model"``,
        ``"Artifact"``); default ``Artifact`` for all.

    Raises
    ------
    NotebookError, AnnotationError, AnalysisError, CompileError
    """
    plan = read_plan(notebook)
    return compile_plan(plan, output_dir or default_output_dir(notebook), artifact_types)


def coerce_arguments(plan: Plan, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Type pipeline arguments given as text (``--param N=5``) from the parameters' defaults.

    Values that are not strings are passed through. A ``str`` parameter takes
    the text as it is; ``bool`` accepts true/false/1/0/yes/no; ``list`` and
    ``dict`` accept JSON or a Python literal.

    Raises
    ------
    KaleError
        An unknown parameter name or a value of the wrong type.
    """
    types = {p.name: p.type for p in plan.parameters}
    result: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in types:
            known = ", ".join(types) or "none"
            raise KaleError(f"unknown parameter {name!r}; the pipeline's parameters are: {known}")
        result[name] = _coerce(name, types[name], value) if isinstance(value, str) else value
    return result


def _coerce(name: str, kind: str, text: str) -> Any:
    try:
        if kind == "str":
            return text
        if kind == "bool":
            return {"true": True, "1": True, "yes": True,
                    "false": False, "0": False, "no": False}[text.strip().lower()]
        if kind == "int":
            value = int(text)
            if abs(value) > MAX_EXACT_INT:
                raise ValueError(text)
            return value
        if kind == "float":
            return float(text)
        value = _structured(text)
        if type(value).__name__ != kind:
            raise ValueError(kind)
        return value
    except (KeyError, ValueError, SyntaxError):
        raise KaleError(f"parameter {name!r} is {kind}, but {text!r} is not a valid {kind}; "
                        f"for example {_EXAMPLES[kind]}") from None


_EXAMPLES = {"bool": "--param NAME=true", "int": "--param NAME=5", "float": "--param NAME=0.5",
             "list": "--param 'NAME=[1, 2]'", "dict": "--param 'NAME={\"a\": 1}'",
             "str": "--param NAME=text"}


def _structured(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return ast.literal_eval(text)


def run_local(notebook_or_compiled: str | os.PathLike[str] | CompiledPipeline,
              arguments: Mapping[str, Any] | None = None, pipeline_root: str | None = None,
              hooks: RunHooks | None = None, output_dir: str | None = None) -> RunStatus:
    """Compile (when given a notebook) and run the pipeline locally with kfp.local.

    Parameters
    ----------
    notebook_or_compiled:
        An .ipynb path, or the result of :func:`compile_notebook`.
    arguments:
        Parameter values by name; strings are typed with :func:`coerce_arguments`.
    pipeline_root:
        Folder for the run's artifacts; default ``.kale/local_runs`` next to the notebook.
    hooks:
        Subscribers to step and run state changes.
    output_dir:
        Where to compile a notebook to; default ``.kale/`` next to it.

    Returns
    -------
    RunStatus
        Final per-step state, durations, outputs and metrics. A failing step
        gives state ``FAILED``; it does not raise.

    Raises
    ------
    KaleError
        The notebook does not compile, or the arguments are wrong.
    """
    compiled = (notebook_or_compiled if isinstance(notebook_or_compiled, CompiledPipeline)
                else compile_notebook(notebook_or_compiled, output_dir))
    typed = coerce_arguments(compiled.plan, arguments or {})
    return local.run_local(compiled, kfp_arguments(compiled.plan, typed),
                           pipeline_root=pipeline_root, hooks=hooks)
