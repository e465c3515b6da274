"""How notebook parameters become KFP pipeline parameters.

KFP stores list and dict parameters as protobuf ``Value``s, whose numbers are
doubles, so ``[1, 2]`` would reach the step as ``[1.0, 2.0]``. List and dict
parameters therefore travel as JSON text (a KFP ``STRING``) and the step
runtime decodes them: the value arrives exactly as written in the notebook.

KFP replaces placeholders such as ``{{$.pipeline_task_name}}`` in parameter
values (``kfp.local.placeholder_utils.resolve_self_references_in_executor_input``),
so a str value that holds one travels escaped (``runtime.step.escape_text``) and
JSON text has its ``{{`` and ``/kfp-workspace`` written with JSON escapes.

Arguments of a run (``--param NAME=VALUE``, a panel's fields) are typed here
from the parameters' defaults (:func:`run_arguments`).
"""

from __future__ import annotations

import ast
import json
import math
import shlex
from typing import Any, Mapping

from kale_magics.analysis.parameters import MAX_EXACT_INT
from kale_magics.errors import KaleError
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


def parse_param(text: str) -> tuple[str, str]:
    """Split ``--param NAME=VALUE`` text into ``(NAME, VALUE)``.

    Raises
    ------
    KaleError
        The text has no ``=`` or no name.
    """
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise KaleError(f"--param {text!r} is not NAME=VALUE; for example --param N_ESTIMATORS=50")
    return name.strip(), value


def coerce_arguments(plan: Plan, raw: Mapping[str, Any], *, fields: bool = False) -> dict[str, Any]:
    """Type pipeline arguments given as text (``--param N=5``) from the parameters' defaults.

    Values that are not strings are passed through. A ``str`` parameter takes
    the text as it is; ``bool`` accepts true/false/1/0/yes/no; ``list`` and
    ``dict`` accept JSON or a Python literal; ``int`` must fit KFP's doubles; a
    value KFP cannot carry unchanged is refused (:func:`value_problem`).

    Parameters
    ----------
    plan:
        The plan whose parameters type the values.
    raw:
        Values by parameter name: text, or already typed values.
    fields:
        The values come from a form's fields (the deploy panel): a message's example
        is what to type in the field (``[1, 2]``), not ``--param 'NAME=[1, 2]'``.

    Raises
    ------
    KaleError
        An unknown parameter name, a value of the wrong type, or one KFP cannot carry.
    """
    parameters = {p.name: p for p in plan.parameters}
    result: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in parameters:
            known = ", ".join(parameters) or "none"
            raise KaleError(f"unknown parameter {name!r}; the pipeline's parameters are: {known}")
        kind = parameters[name].type
        result[name] = _coerce(name, kind, value, fields) if isinstance(value, str) else value
        problem = value_problem(parameters[name], result[name])
        if problem:
            raise KaleError(f"parameter {name!r}: {problem}; for example "
                            f"{_example(name, kind, fields)}")
    return result


def run_arguments(plan: Plan, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Arguments given as text or values -> typed (:func:`coerce_arguments`), as KFP carries them.

    Raises
    ------
    KaleError
        An unknown parameter name or a value of the wrong type.
    """
    return kfp_arguments(plan, coerce_arguments(plan, raw))


def _coerce(name: str, kind: str, text: str, fields: bool = False) -> Any:
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
                        f"for example {_example(name, kind, fields)}") from None


#: A valid value of each parameter type, as typed in a field (JSON for lists and dicts).
_EXAMPLES = {"bool": "true", "int": "5", "float": "0.5", "list": "[1, 2]", "dict": '{"a": 1}',
             "str": "text"}


def _example(name: str, kind: str, fields: bool) -> str:
    """A valid value of ``kind``: as typed in a form's field (``[1, 2]``), or as the
    command-line option (``--param 'N=[1, 2]'``), quoted for a shell where needed."""
    value = _EXAMPLES[kind]
    if fields:
        return value
    return f"--param {shlex.quote(f'{name}={value}')}"


def _structured(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return ast.literal_eval(text)


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
