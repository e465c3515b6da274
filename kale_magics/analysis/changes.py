"""What calling a notebook function changes besides returning its result.

In the kernel, ``bump()`` with ``def bump(): global counter; counter += 1``
changes ``counter``, and ``add(items)`` with ``def add(lst): lst.append(1)``
changes ``items``: the step that *calls* such a function changes those names,
so a later step that reads them must get them from the calling step.

:class:`Changes` records, per function (or class, or instance of a class whose
methods do so), what its body changes directly and which functions it calls
with what; :func:`changed_by_call` resolves a call transitively (``f`` calls
``g``, which writes a global).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

#: Where an argument goes: its position (0-based) or its keyword.
Slot = int | str


@dataclass(frozen=True)
class Call:
    """A call made inside a function body.

    Attributes
    ----------
    callee:
        The global name called (``g`` for ``g(x)``; ``model`` for ``model.fit(x)``).
    passed:
        ``(slot, name, is_parameter)`` for each argument that is (a part of) a name:
        ``is_parameter`` says whether ``name`` is a parameter of the calling function
        (else it is a global).
    """

    callee: str
    passed: tuple[tuple[Slot, str, bool], ...] = ()


@dataclass(frozen=True)
class Changes:
    """What calling one function changes directly.

    Attributes
    ----------
    params:
        Every parameter name, positional ones first, in order.
    positional:
        How many of :attr:`params` can be given by position.
    globals:
        Module globals the body rebinds (``global x; x = ...``, ``globals()['x'] = ...``) or
        changes in place (``CACHE[k] = v``, ``LOG.append(x)``).
    mutated:
        Parameters the body changes in place (``lst.append(1)``, ``d[k] = v``,
        ``obj.attr = v``, ``lst += [1]``, ``del d[k]``).
    calls:
        Calls the body makes that may change more (resolved by :func:`changed_by_call`).
    defaults:
        Parameters with a default value: changing one in place changes the function itself
        (``def f(x, acc=[]): acc.append(x)``).
    self_changing:
        For a class: its methods that change their instance (``self.total += v``).
    of_class:
        True for a class (the union of its methods' changes): its instances change the same.
    """

    params: tuple[str, ...] = ()
    positional: int = 0
    globals: frozenset[str] = frozenset()
    mutated: frozenset[str] = frozenset()
    calls: tuple[Call, ...] = ()
    defaults: frozenset[str] = frozenset()
    self_changing: frozenset[str] = frozenset()
    of_class: bool = False

    def __bool__(self) -> bool:
        return bool(self.globals or self.mutated or self.calls or self.self_changing)

    def merged(self, other: "Changes") -> "Changes":
        """The changes of both (a class: all its methods), without parameters."""
        return Changes(globals=self.globals | other.globals,
                       calls=tuple(dict.fromkeys((*self.calls, *other.calls))),
                       self_changing=self.self_changing | other.self_changing, of_class=True)

    def parameter(self, slot: Slot) -> str | None:
        """The parameter an argument in ``slot`` binds, None when none does."""
        if isinstance(slot, int):
            return self.params[slot] if slot < self.positional else None
        return slot if slot in self.params else None


def changed_by_call(table: Mapping[str, Changes], callee: str, passed: Mapping[Slot, str],
                    seen: frozenset[str] = frozenset()) -> set[str]:
    """The names a call ``callee(...)`` changes, as the caller names them.

    Parameters
    ----------
    table:
        What each known function changes directly, by name.
    callee:
        The name called.
    passed:
        The caller's name given in each argument slot (``{0: "items"}`` for ``add(items)``).

    Returns
    -------
    set of str
        Globals the call changes, transitively, the passed names whose objects it changes
        in place, and ``callee`` itself when it changes a default value it was not given.
        Empty for an unknown callee; a recursive call is followed once.
    """
    changes = table.get(callee)
    if changes is None or callee in seen:
        return set()
    seen = seen | {callee}
    found = set(changes.globals)
    bound: dict[str, str] = {}
    for slot, name in passed.items():
        parameter = changes.parameter(slot)
        if parameter is not None:
            bound[parameter] = name
            if parameter in changes.mutated:
                found.add(name)
    if (changes.mutated & changes.defaults) - set(bound):
        found.add(callee)  # a default value changed: the function carries it
    for call in changes.calls:
        inner = {slot: bound[name] if is_parameter else name
                 for slot, name, is_parameter in call.passed
                 if not is_parameter or name in bound}
        found |= changed_by_call(table, call.callee, inner, seen)
    return found
