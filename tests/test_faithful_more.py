"""The first promise, beyond issue 13's list: what notebook functions change when a step calls
them, and the adversarial suite (``tests/faithful_suite.py``) of ways a value changes between cells.

Each notebook runs top to bottom with nbclient and as a local pipeline (``tests/equivalence.py``);
cases are batched into few notebooks (a comparison costs a kernel and a local run).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kale_magics import api
from tests.equivalence import Equivalence, compare, notebook_of

pytestmark = pytest.mark.integration

#: Functions that change globals or their arguments, called in a later step than the one
#: that made the values they change.
CHANGERS = """%%kale functions
def bump():
    global counter
    counter += 1
def bump_twice():
    bump()
    bump()
def init():
    global total
    total = 10
def set_flag():
    globals()['flag'] = 'on'
def add(lst, value=1):
    lst.append(value)
def add_via(target):
    add(target, 2)
def put(d, key):
    d[key] = len(d)
def grow(lst):
    lst += [9]
def forget(d, key):
    del d[key]
def rename(obj):
    obj.name = 'renamed'
class Logger:
    def log(self, message):
        LOG.append(message)
class Box:
    name = 'box'"""


@pytest.fixture(scope="module")
def changed_by_calls(tmp_path_factory: pytest.TempPathFactory) -> Equivalence:
    return compare(notebook_of(
        tmp_path_factory.mktemp("calls"), CHANGERS,
        "%%kale step make\ncounter = 0\nitems = []\ncfg = {'inner': []}\nLOG = []\n"
        "logger = Logger()\nseen = {'old': 1}\nbox = Box()\ndef bump_by(n):\n"
        "    global counter\n    counter += n",
        "%%kale step call\nbump_twice()\nbump_by(5)\ninit()\nset_flag()\nadd(items)\n"
        "add_via(target=items)\nput(seen, key='k')\nforget(seen, 'old')\nadd(cfg['inner'], 3)\n"
        "grow(items)\nlogger.log('hi')\nrename(box)",
        "%%kale step show\nprint('counter', counter, 'total', total, 'flag', flag)\n"
        "print('items', items, 'seen', seen, 'cfg', cfg)\nprint('log', LOG, 'box', box.name)"))


def test_globals_changed_by_called_functions_travel(changed_by_calls: Equivalence) -> None:
    """`bump()` (global counter), transitively (`bump_twice`), a function defined in a step,
    a function creating a global, `globals()['flag'] = ...`, a method appending to a global."""
    result = changed_by_calls
    assert result.same_prints(), result.explain()
    assert result.notebook["show"][0] == "counter 7 total 10 flag on"
    producers = {i.name: i.producer for i in result.plan.step("show").inputs}
    assert all(producers[name] == "call" for name in ("counter", "total", "flag", "LOG"))


def test_arguments_changed_by_called_functions_travel(changed_by_calls: Equivalence) -> None:
    """`add(items)`, through another function and a keyword, `d[key] =`, `del d[key]`, a part
    of a value (`cfg['inner']`), `lst += [...]`, an attribute of an instance."""
    result = changed_by_calls
    assert result.notebook["show"][1] == "items [1, 2, 9] seen {'k': 1} cfg {'inner': [3]}"
    assert result.notebook["show"][2] == "log ['hi'] box renamed"
    producers = {i.name: i.producer for i in result.plan.step("show").inputs}
    assert all(producers[name] == "call" for name in ("items", "seen", "cfg", "box"))
