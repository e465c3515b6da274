"""Pipeline parameters from ``%%kale parameters`` cells: literal assignments only."""

from __future__ import annotations

import ast
from typing import Any, Sequence

from kale_magics.analysis.names import python_source
from kale_magics.errors import AnalysisError
from kale_magics.model import Cell, Parameter

#: KFP carries int parameters as doubles: larger integers would change on the way.
MAX_EXACT_INT = 2**53

#: Python literal types and the parameter type each becomes (bool before int).
_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "bool"), (int, "int"), (float, "float"), (str, "str"), (list, "list"), (dict, "dict"),
)


def read_parameters(cells: Sequence[Cell]) -> tuple[Parameter, ...]:
    """Read the parameters of every ``parameters`` cell, in notebook order.

    Each statement must assign a literal (int, float incl. negative, str, bool,
    list or dict of literals, as ``ast.literal_eval`` accepts) to one name. A
    later assignment to the same name replaces the earlier one, as running the
    notebook would.

    Raises
    ------
    AnalysisError
        A statement that is not a literal assignment, a ``None`` or tuple value,
        or a dict with non-string keys; the message names the cell and line.
    """
    found: dict[str, Parameter] = {}
    for cell in cells:
        for node in _statements(cell):
            name, value = _assignment(cell, node)
            found[name] = Parameter(name=name, value=value, type=_type_of(cell, node, name, value))
    return tuple(found.values())


def _statements(cell: Cell) -> list[ast.stmt]:
    try:
        return ast.parse(python_source(cell.source)).body
    except SyntaxError as error:
        raise AnalysisError(f"{cell.describe()}: SyntaxError in the parameters cell at line "
                            f"{error.lineno}: {error.msg}; fix the cell") from None


def _assignment(cell: Cell, node: ast.stmt) -> tuple[str, Any]:
    target = None
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        target = node.targets[0]
    elif isinstance(node, ast.AnnAssign) and node.value is not None:
        target = node.target
    if not isinstance(target, ast.Name):
        raise _not_literal(cell, node, "only `NAME = literal` assignments belong here")
    try:
        return target.id, ast.literal_eval(node.value)  # type: ignore[union-attr]
    except ValueError:
        raise _not_literal(cell, node, f"the value of `{target.id}` is not a literal") from None


def _type_of(cell: Cell, node: ast.stmt, name: str, value: Any) -> str:
    for python_type, kind in _TYPES:
        if isinstance(value, python_type):
            if kind == "dict" and not all(isinstance(k, str) for k in value):
                raise _not_literal(cell, node, f"dict parameter `{name}` needs string keys")
            if kind == "int" and abs(value) > MAX_EXACT_INT:
                raise _not_literal(cell, node, f"`{name}` is larger than 2**53, which KFP cannot "
                                               "pass exactly; make it a string")
            return kind
    raise _not_literal(cell, node, f"`{name}` is {type(value).__name__}; parameters are "
                                   "int, float, str, bool, list or dict")


def _not_literal(cell: Cell, node: ast.stmt, why: str) -> AnalysisError:
    line = cell.source.splitlines()[node.lineno - 1].strip() if node.lineno else ""
    return AnalysisError(
        f"{cell.describe()}, line {node.lineno} `{line}`: {why}. A parameters cell holds only "
        "literal assignments such as `N_ESTIMATORS = 100` or `NAME = \"x\"`; move computed "
        "values into a step or the functions cell")
