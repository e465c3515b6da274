"""How notebook parameters become KFP pipeline parameters.

KFP stores list and dict parameters as protobuf ``Value``s, whose numbers are
doubles, so ``[1, 2]`` would reach the step as ``[1.0, 2.0]``. List and dict
parameters therefore travel as JSON text (a KFP ``STRING``) and the step
runtime decodes them: the value arrives exactly as written in the notebook.

KFP replaces placeholders such as ``{{$.pipeline_task_name}}`` in parameter
values (``kfp.local.placeholder_utils.resolve_self_references_in_executor_input``),
so a str value that holds one travels escaped (``runtime.step.escape_text``) and
JSON text has its ``{{`` and ``/kfp-workspace`` written with JSON escapes.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from kale_magics.model import Parameter, Plan
from kale_magics.runtime.step import escape_text

#: Parameter types passed as JSON text.
JSON_TYPES = frozenset({"list", "dict"})


def kfp_type(parameter: Parameter) -> str:
    """The annotation of ``parameter`` in the generated pipeline and components."""
    return "str" if parameter.type in JSON_TYPES else parameter.type


def kfp_value(parameter: Parameter, value: Any) -> Any:
    """``value`` as KFP carries it: JSON text for lists and dicts, escaped text for a str that
    holds KFP placeholder syntax, else unchanged."""
    if parameter.type in JSON_TYPES:
        # in JSON text `{{` and `/` occur only inside strings, where JSON escapes keep their meaning
        text = json.dumps(value, sort_keys=True)
        return text.replace("{{", "{\\u007b").replace("/kfp-workspace", "\\u002fkfp-workspace")
    return escape_text(value) if isinstance(value, str) else value


def kfp_arguments(plan: Plan, values: Mapping[str, Any]) -> dict[str, Any]:
    """Typed parameter values by name -> the arguments a KFP run of ``plan`` takes."""
    parameters = {p.name: p for p in plan.parameters}
    return {name: kfp_value(parameters[name], value) for name, value in values.items()}
