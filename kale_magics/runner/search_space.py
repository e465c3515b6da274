"""The search space of a parameter sweep: which values each pipeline parameter takes.

A sweep names each parameter it varies with ``NAME=SPEC`` (``kale-magics sweep``, ``%kale sweep``):

- ``NAME=v1,v2,...``: these values (one value: fixed for every trial). Each value is a Python
  literal of the parameter's declared type in ``%%kale parameters`` (``5``, ``0.1``, ``True``,
  ``[1, 2]``, ``{"a": 1}``); a ``str`` parameter also takes bare text (``NAME=gini,entropy``).
  Commas inside brackets or quotes do not split.
- ``NAME=lo:hi``: uniform between ``lo`` and ``hi`` (both included), only with ``--random N``;
  an ``int`` parameter draws integers, a ``float`` one floats.
- ``NAME=lo:hi:log``: log-uniform (``lo > 0``), as Katib's ``distribution: logUniform`` and
  Optuna's ``suggest_float(..., log=True)``; an ``int`` parameter rounds to an integer.

:meth:`SearchSpace.grid` gives every combination (the first parameter varies slowest, as
:func:`itertools.product`); :meth:`SearchSpace.sample` gives ``n`` random picks, the same for the
same seed (:class:`random.Random`). Every value is checked as KFP carries it
(:func:`~kale_magics.codegen.parameters.value_problem`) before anything runs.
"""

from __future__ import annotations

import ast
import itertools
import math
import random
import re
from dataclasses import dataclass
from typing import Any, Sequence

from kale_magics.codegen.parameters import MAX_EXACT_INT, value_problem
from kale_magics.errors import KaleError
from kale_magics.model import Parameter

#: More trials than this is refused (a grid grows as the product of its value counts).
MAX_TRIALS = 1000
_RANGE = re.compile(r"^\s*(?P<lo>[^:]+?)\s*:\s*(?P<hi>[^:]+?)\s*(?::\s*(?P<log>log)\s*)?$")
_BOOL_WORDS = {"true": True, "false": False}
_EXAMPLES = {"int": "{0}=1,2,3 or {0}=1:100", "float": "{0}=0.1,0.5 or {0}=0.001:1:log",
             "bool": "{0}=True,False", "str": "{0}=gini,entropy", "list": "'{0}=[1, 2],[3]'",
             "dict": "'{0}={{\"a\": 1}},{{\"a\": 2}}'"}


@dataclass(frozen=True)
class Axis:
    """How one parameter varies.

    Attributes
    ----------
    name:
        The pipeline parameter.
    values:
        The values to take (typed as declared); empty for a range.
    low, high:
        A range's ends (typed as declared), None for a list of values.
    log:
        The range is log-uniform.
    """

    name: str
    values: tuple[Any, ...] = ()
    low: Any = None
    high: Any = None
    log: bool = False

    @property
    def is_range(self) -> bool:
        """True for ``lo:hi`` and ``lo:hi:log``."""
        return self.low is not None

    def draw(self, rng: random.Random) -> Any:
        """One random value: a uniform pick of the values, or a draw from the range."""
        if not self.is_range:
            return rng.choice(self.values)
        if self.log:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
            return min(max(round(value), self.low), self.high) if isinstance(self.low, int) \
                else value
        if isinstance(self.low, int):
            return rng.randint(self.low, self.high)
        return rng.uniform(self.low, self.high)


@dataclass(frozen=True)
class SearchSpace:
    """The parameters a sweep varies, in the order given."""

    axes: tuple[Axis, ...]

    def grid(self) -> list[dict[str, Any]]:
        """Every combination of the axes' values (``{name: value}`` per trial).

        Raises
        ------
        KaleError
            An axis is a range (ranges need random picks: ``--random N``), or the grid has
            more than :data:`MAX_TRIALS` combinations.
        """
        ranges = [a.name for a in self.axes if a.is_range]
        if ranges:
            raise KaleError(f"{', '.join(ranges)} {'is a range' if len(ranges) == 1 else 'are ranges'}"
                            f"; ranges need random picks: add --random N (and --seed S to repeat them)"
                            ", or list values NAME=v1,v2")
        size = math.prod(len(a.values) for a in self.axes)
        if size > MAX_TRIALS:
            raise KaleError(f"the grid has {size} trials, more than {MAX_TRIALS}; give fewer "
                            "values, or take --random N picks of them")
        return [dict(zip([a.name for a in self.axes], combination))
                for combination in itertools.product(*(a.values for a in self.axes))]

    def sample(self, count: int, seed: int) -> list[dict[str, Any]]:
        """``count`` random picks, each axis drawn independently; the same for the same ``seed``.

        Raises
        ------
        KaleError
            ``count`` is below 1 or above :data:`MAX_TRIALS`.
        """
        if not 1 <= count <= MAX_TRIALS:
            raise KaleError(f"--random {count}: give the number of trials, 1 to {MAX_TRIALS}")
        rng = random.Random(seed)
        return [{a.name: a.draw(rng) for a in self.axes} for _ in range(count)]


def parse_space(parameters: Sequence[Parameter], specs: Sequence[str]) -> SearchSpace:
    """Parse ``NAME=SPEC`` texts into a search space, typing values from ``parameters``.

    Parameters
    ----------
    parameters:
        The pipeline's parameters (``Plan.parameters``), whose types the values must have.
    specs:
        ``["N_ESTIMATORS=10,50,100", "LR=0.001:0.1:log"]``.

    Raises
    ------
    KaleError
        No spec, a spec without ``=``, a name given twice, an unknown parameter, a value that is
        not a literal of the parameter's type (or that KFP cannot carry), or a bad range; one line
        naming the parameter and the fix.
    """
    if not specs:
        raise KaleError("name the parameters to sweep: NAME=v1,v2 (or NAME=lo:hi with --random N)")
    declared = {p.name: p for p in parameters}
    axes: list[Axis] = []
    for spec in specs:
        name, sep, text = spec.partition("=")
        name = name.strip()
        if not sep or not name or not text.strip():
            raise KaleError(f"{spec!r} is not NAME=VALUES; for example N_ESTIMATORS=10,50,100")
        if name not in declared:
            raise KaleError(f"unknown parameter {name!r}; the pipeline's parameters (%%kale "
                            f"parameters) are: {', '.join(declared) or 'none'}")
        if any(a.name == name for a in axes):
            raise KaleError(f"parameter {name!r} is given twice; give its values once: "
                            f"{name}=v1,v2")
        axes.append(_axis(declared[name], text))
    return SearchSpace(tuple(axes))


def _axis(parameter: Parameter, text: str) -> Axis:
    found = _RANGE.match(text) if parameter.type in ("int", "float") else None
    if found:
        low, high = (typed_value(parameter, found[end]) for end in ("lo", "hi"))
        if not low < high:
            raise KaleError(f"range {parameter.name}={text}: the low end must be below the high "
                            f"end; for example {parameter.name}=1:10")
        if found["log"] and low <= 0:
            raise KaleError(f"log range {parameter.name}={text}: both ends must be above 0; for "
                            f"example {parameter.name}=0.001:1:log")
        return Axis(parameter.name, low=low, high=high, log=bool(found["log"]))
    return Axis(parameter.name, values=tuple(typed_value(parameter, item)
                                             for item in split_values(text)))


def split_values(text: str) -> list[str]:
    """Split ``v1,v2,...`` at the commas outside brackets and quotes (each value stripped).

    Raises
    ------
    KaleError
        An empty value (``1,,2``) or an unclosed quote or bracket.
    """
    items, depth, quote, start = [], 0, "", 0
    for index, char in enumerate(text):
        if quote:
            if char == quote and text[index - 1] != "\\":
                quote = ""
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(text[start:index].strip())
            start = index + 1
    items.append(text[start:].strip())
    if quote or depth:
        raise KaleError(f"values {text!r} have an unclosed quote or bracket; quote the whole "
                        "NAME=VALUES in the shell, e.g. 'SIZES=[1, 2],[3]'")
    if not all(items):
        raise KaleError(f"values {text!r} hold an empty value; separate values with single commas")
    return items


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return _NOT_A_LITERAL


_NOT_A_LITERAL = object()


def typed_value(parameter: Parameter, text: str) -> Any:
    """``text`` as a value of ``parameter``'s declared type (a Python literal; a ``str``
    parameter also takes bare text, a ``bool`` one also ``true``/``false``; an ``int`` is
    accepted for a ``float``).

    Raises
    ------
    KaleError
        The text is not such a literal, or KFP cannot carry the value unchanged.
    """
    kind, value = parameter.type, _literal(text)
    if kind == "str" and not isinstance(value, str):
        value = text
    elif kind == "bool" and text.strip().lower() in _BOOL_WORDS:
        value = _BOOL_WORDS[text.strip().lower()]
    elif kind == "float" and type(value) is int:
        value = float(value)
    if type(value).__name__ != kind or (kind == "int" and abs(value) > MAX_EXACT_INT):
        raise KaleError(f"parameter {parameter.name!r} is {kind}, but {text.strip()!r} is not "
                        f"{'an' if kind == 'int' else 'a'} {kind} literal; for example "
                        f"{_EXAMPLES[kind].format(parameter.name)}")
    problem = value_problem(parameter, value)
    if problem:
        raise KaleError(f"parameter {parameter.name!r}: {problem}")
    return value
