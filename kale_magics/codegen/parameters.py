"""How notebook parameters become KFP pipeline parameters.

KFP stores list and dict parameters as protobuf ``Value``s, whose numbers are
doubles, so ``[1, 2]`` would reach the step as ``[1.0, 2.0]``. List and dict
parameters therefore travel as JSON text (a KFP ``STRING``) and the step
runtime decodes them: the value arrives exactly as written in the notebook.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from kale_magics.model import Parameter, Plan

#: Parameter types passed as JSON text.
JSON_TYPES = frozenset({"list", "dict"})


def kfp_type(parameter: Parameter) -> str:
    """The annotation of ``parameter`` in the generated pipeline and components."""
    return "str" if parameter.type in JSON_TYPES else parameter.type


def kfp_value(parameter: Parameter, value: Any) -> Any:
    """``value`` as KFP carries it: JSON text for lists and dicts, else unchanged."""
    return json.dumps(value, sort_keys=True) if parameter.type in JSON_TYPES else value


def kfp_arguments(plan: Plan, values: Mapping[str, Any]) -> dict[str, Any]:
    """Typed parameter values by name -> the arguments a KFP run of ``plan`` takes."""
    parameters = {p.name: p for p in plan.parameters}
    return {name: kfp_value(parameters[name], value) for name, value in values.items()}
