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
import math
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


def value_problem(parameter: Parameter, value: Any) -> str | None:
    """Why KFP cannot carry ``value`` for ``parameter`` unchanged, or None when it can.

    KFP carries a float parameter as a JSON number (protobuf ``Value``), which
    cannot be infinite or NaN (``json_format.SerializeToJsonError``); list and
    dict parameters travel as JSON text (see :func:`kfp_value`), which has no
    bytes, tuples, sets, complex numbers or non-string keys, so they would fail
    or arrive changed. Text must be Unicode (no lone surrogates).

    Returns
    -------
    str or None
        ``"inf is not a finite number ..."``: the reason and what to do.
    """
    if parameter.type == "float" and isinstance(value, float) and not math.isfinite(value):
        return (f"{value!r} is not a finite number, and KFP carries float parameters as JSON "
                "numbers; use a finite value (or a string parameter and float() in the step)")
    if parameter.type == "str" and isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "the text holds a lone surrogate, which is not Unicode; remove it"
    if parameter.type in JSON_TYPES:
        try:
            same = _same(json.loads(kfp_value(parameter, value)), value)
        except (TypeError, ValueError):
            same = False
        if not same:
            return ("it holds values JSON cannot carry unchanged (bytes, tuples, sets, complex "
                    "numbers, non-string keys or lone surrogates); use lists, dicts with string "
                    "keys, numbers, strings, booleans and None")
    return None


def _same(decoded: Any, value: Any) -> bool:
    """True when ``decoded`` equals ``value`` with the same types all the way down (NaN == NaN)."""
    if type(decoded) is not type(value):
        return False
    if isinstance(value, float) and math.isnan(value):
        return math.isnan(decoded)
    if isinstance(value, list):
        return len(decoded) == len(value) and all(map(_same, decoded, value))
    if isinstance(value, dict):
        return (all(isinstance(k, str) for k in value) and decoded.keys() == value.keys()
                and all(_same(decoded[k], value[k]) for k in value))
    return bool(decoded == value)
