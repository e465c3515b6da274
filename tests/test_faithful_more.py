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
        "    global counter\n    counter += n\ndef init_late():\n    global late\n    late = 3",
        "%%kale step call\nbump_twice()\nbump_by(5)\ninit()\nset_flag()\nadd(items)\n"
        "add_via(target=items)\nput(seen, key='k')\nforget(seen, 'old')\nadd(cfg['inner'], 3)\n"
        "grow(items)\nlogger.log('hi')\nrename(box)\ninit_late()",
        "%%kale step show\nprint('counter', counter, 'total', total, 'flag', flag)\n"
        "print('items', items, 'seen', seen, 'cfg', cfg)\nprint('log', LOG, 'box', box.name, late)"))


def test_globals_changed_by_called_functions_travel(changed_by_calls: Equivalence) -> None:
    """`bump()` (global counter), transitively (`bump_twice`), a function defined in a step,
    a function creating a global (also one defined in an earlier step: defining it binds
    nothing), `globals()['flag'] = ...`, a method appending to a global."""
    result = changed_by_calls
    assert result.same_prints(), result.explain()
    assert result.notebook["show"][0] == "counter 7 total 10 flag on"
    producers = {i.name: i.producer for i in result.plan.step("show").inputs}
    assert all(producers[name] == "call" for name in ("counter", "total", "flag", "LOG", "late"))


def test_arguments_changed_by_called_functions_travel(changed_by_calls: Equivalence) -> None:
    """`add(items)`, through another function and a keyword, `d[key] =`, `del d[key]`, a part
    of a value (`cfg['inner']`), `lst += [...]`, an attribute of an instance."""
    result = changed_by_calls
    assert result.notebook["show"][1] == "items [1, 2, 9] seen {'k': 1} cfg {'inner': [3]}"
    assert result.notebook["show"][2] == "log ['hi'] box renamed 3"
    producers = {i.name: i.producer for i in result.plan.step("show").inputs}
    assert all(producers[name] == "call" for name in ("items", "seen", "cfg", "box"))


# -- the adversarial suite's fixed cases, in one notebook ---------------------------------------

MADE = """%%kale step make
import heapq
import random
import numpy as np
arr = np.zeros(3)
rng = np.random.default_rng(0)
it = iter([1, 2, 3])
items = [1]
alias = items
def collect(x, acc=[]):
    acc.append(x)
    return acc
def make_counter():
    n = [0]
    def inc():
        n[0] += 1
        return n[0]
    return inc
tick = make_counter()
class Acc:
    def __init__(self):
        self.total = 0
    def push(self, v):
        self.total += v
        return self.total
acc = Acc()
ones = np.ones(2)
deck = list(range(5))
heap = [3, 1, 2]
z = 0
x = y = []
rows = [[1], [2]]
groups = {}
class Obj:
    pass
obj = Obj()
xs = [3, 1]"""

CHANGED = """%%kale step change
view = arr[1:]
view += 1
first = rng.random()
head = next(it)
items += [2]
collect(1)
tick()
now = acc.push(5)
np.add(ones, 1, out=ones)
random.Random(1).shuffle(deck)
heapq.heapify(heap)
exec('z = 5')
x.append(1)
for row in rows:
    row.append(0)
groups.setdefault('k', []).append(1)
setattr(obj, 'v', 2)
last = xs.pop()"""

SHOWN = """%%kale step show
print('arr', arr.tolist(), 'rng', rng.random() == first, 'it', list(it))
print('alias', alias, 'acc', collect(2), 'tick', tick(), 'total', acc.total)
print('ones', ones.tolist(), 'deck', deck, 'heap', heap, 'z', z)
print('y', y, 'rows', rows, 'groups', groups, 'v', obj.v, 'xs', xs)"""


def test_values_changed_in_place_in_many_ways_travel(tmp_path: Path) -> None:
    """Through a view made in the same step, a random generator drawn from, an iterator
    advanced by `next`, `+=` on a name with an alias, a mutable default, a closure, a method
    changing `self` inside an expression, `out=`, `shuffle`/`heapify`, `exec` of a constant,
    `x = y = []`, loop items, `setdefault(...).append`, `setattr`, `pop()` in an expression."""
    result = compare(notebook_of(tmp_path, MADE, CHANGED, SHOWN))
    assert result.same_prints(), result.explain()
    assert result.notebook["show"] == [
        "arr [0.0, 1.0, 1.0] rng False it [2, 3]", "alias [1, 2] acc [1, 2] tick 2 total 5",
        "ones [2.0, 2.0] deck [2, 3, 4, 0, 1] heap [1, 3, 2] z 5",
        "y [1] rows [[1, 0], [2, 0]] groups {'k': [1]} v 2 xs [3]"]
    assert not result.warnings, result.warnings


# -- what cannot travel is said at compile time ------------------------------------------------


def test_view_changed_in_a_later_step_is_a_warning(notebook) -> None:
    plan = api.read_plan(notebook("%%kale step a\nimport numpy as np\narr = np.zeros(3)\n"
                                  "view = arr[:2]", "%%kale step b\nview[0] = 5",
                                  "%%kale step c\nprint(arr)"))
    warning = next(w for w in plan.warnings if "made from `arr`" in w)
    assert warning.startswith("cell 2 ('view[0] = 5'): step 'b' changes `view` in place")
    assert "step 'a' (cell 1" in warning and "make `view` from `arr` again in step 'b'" in warning
    quiet = api.read_plan(notebook("%%kale step a\nimport numpy as np\narr = np.zeros(3)\n"
                                   "view = arr[:2]", "%%kale step b\nview[0] = 5",
                                   "%%kale step c\nprint(view)", name="quiet"))
    assert not [w for w in quiet.warnings if "made from" in w]  # nothing reads `arr` later


def test_module_state_class_attributes_and_opaque_assignments_are_warnings(notebook) -> None:
    plan = api.read_plan(notebook(
        "%%kale step a\n%%writefile mymod.py\nCOUNT = 0\ndef inc():\n    global COUNT\n"
        "    COUNT += 1\ndef pure():\n    return 1",
        "%%kale step b\nimport mymod\nclass Cfg:\n    rate = 1\nmymod.pure()\nw = 0",
        "%%kale step c\nmymod.inc()\nmymod.LABEL = 'x'\nCfg.rate = 5\nglobals().update({'w': 1})\n"
        "exec(compile('v = 1', 'f', 'exec'))",
        "%%kale step d\nprint(mymod.COUNT, Cfg.rate, w)"))
    module = next(w for w in plan.warnings if "the state of module `mymod`" in w)
    assert module.startswith("cell 3 (") and "`mymod.inc(...)` (line 2)" in module
    assert "`mymod.LABEL = ...` (line 3)" in module and "pure" not in module
    assert "'d' (cell 4" in module
    cls = next(w for w in plan.warnings if "changes the class `Cfg`" in w)
    assert cls.startswith("cell 3 (") and "set it where `Cfg` is defined" in cls
    opaque = next(w for w in plan.warnings if "cannot see" in w)
    assert "`globals().update(...)` (line 5)" in opaque and "`exec(...)` (line 6)" in opaque
    assert "add `--outputs NAME`" in opaque


def test_generator_passed_to_a_later_step_is_refused(notebook) -> None:
    from kale_magics.errors import AnalysisError

    for made in ("gen = (i for i in range(3))", "def count():\n    yield 1\ngen = count()"):
        with pytest.raises(AnalysisError) as info:
            api.read_plan(notebook(f"%%kale step a\n{made}", "%%kale step b\nprint(list(gen))"))
        message = str(info.value)
        assert message.startswith("cell 1 (") and "`gen` a generator" in message
        assert "make a list of it (`gen = list(...)`)" in message and "\n" not in message


def test_opaque_assignment_in_the_functions_cell_is_a_warning(notebook) -> None:
    plan = api.read_plan(notebook(
        "%%kale functions\ndef register(name, value):\n    globals()[name] = value",
        "%%kale step a\nregister('w', 1)", "%%kale step b\nprint(1)"))
    warning = next(w for w in plan.warnings if "cannot see" in w)
    assert warning.startswith("cell 1 (") and "the functions cell" in warning
    assert "`globals()[name] = ...` (line 3)" in warning and "`--outputs NAME`" in warning


def test_what_a_call_changes_is_resolved_transitively_and_at_call_time() -> None:
    """`f` calls `g` defined after it; a recursive function; a keyword; a part of a value; a
    function rebound to a plain value no longer changes anything."""
    from kale_magics.analysis.names import scan, scan_blocks

    defined = scan("def f(lst, *, extra=None):\n    g(lst)\n    if extra is not None:\n"
                   "        g(extra)\ndef g(v):\n    v.append(1)\n    g(v)\n"
                   "def h():\n    global n\n    n = 1\n    return k()\ndef k():\n    return h()")
    use = scan_blocks(["f(items, extra=cfg['part'])\nh()\nf(fresh)\nfresh = []"],
                      changers=defined.changes_of)
    assert set(use.changed_by_calls) == {"items", "cfg", "n", "fresh"}
    assert "n" not in use.writes  # calling `h` changes `n`; the linker passes it on
    rebound = scan_blocks(["f = 1\nf(items)"], changers=defined.changes_of)
    assert rebound.changed_by_calls == ()
