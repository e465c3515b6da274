"""An adversarial suite for the first promise: small notebooks, each a different way a value can
change or be shared between cells, run with nbclient and as a local pipeline.

    python -m tests.faithful_suite            # every case; the counts go to docs/reliability.md
    python -m tests.faithful_suite NAME ...   # some cases

Each case is classified:

* ``same``: every step printed what its cells printed in the kernel;
* ``warned``: a compile warning names the case's subject (what differs), whether or not the
  prints differ;
* ``refused``: the compile stopped with an error naming the subject;
* ``SILENT``: the prints differ and the compile said nothing about it (a broken promise);
* ``FAILED``: the pipeline run failed without a compile-time word (also a broken promise).

A case passes unless it is SILENT or FAILED.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kale_magics.errors import KaleError
from tests.equivalence import compare, notebook_of


@dataclass(frozen=True)
class Case:
    """One notebook: its cells (after the extension's load) and what a warning must name."""

    name: str
    cells: tuple[str, ...]
    subject: str


def _case(name: str, subject: str, *cells: str) -> Case:
    return Case(name, cells, subject)


CASES = (
    _case("numpy_view_changed_later", "`view`",
          "%%kale step a\nimport numpy as np\narr = np.zeros(3)\nview = arr[:2]",
          "%%kale step b\nview[0] = 5", "%%kale step c\nprint('arr', arr.tolist())"),
    _case("numpy_view_in_one_step", "`arr`",
          "%%kale step a\nimport numpy as np\narr = np.zeros(3)",
          "%%kale step b\nview = arr[1:]\nview += 1", "%%kale step c\nprint('arr', arr.tolist())"),
    _case("pandas_inplace", "`df`",
          "%%kale step a\nimport pandas as pd\ndf = pd.DataFrame({'a': [1, None], 'b': [3, 4]})\n"
          "frame = df",
          "%%kale step b\ndf.fillna(0, inplace=True)\ndf.drop(columns='b', inplace=True)",
          "%%kale step c\nprint('df', df.to_dict('list'), frame.shape)"),
    _case("dict_setdefault", "`groups`", "%%kale step a\ngroups = {}",
          "%%kale step b\ngroups.setdefault('x', []).append(1)",
          "%%kale step c\nprint('groups', groups)"),
    _case("del_item", "`d`", "%%kale step a\nd = {'a': 1, 'b': 2}", "%%kale step b\ndel d['a']",
          "%%kale step c\nprint('d', d)"),
    _case("setattr_call", "`obj`",
          "%%kale step a\nclass Obj:\n    pass\nobj = Obj()\nobj.v = 1",
          "%%kale step b\nsetattr(obj, 'v', 2)", "%%kale step c\nprint('v', obj.v)"),
    _case("random_seed_elsewhere", "random seeds",
          "%%kale step a\nimport random\nrandom.seed(3)\nx = 1",
          "%%kale step b\nprint('draw', random.random())"),
    _case("rng_drawn_across_steps", "`rng`",
          "%%kale step a\nimport numpy as np\nrng = np.random.default_rng(0)",
          "%%kale step b\nfirst = rng.random()", "%%kale step c\nprint('again', rng.random() == first)"),
    _case("writefile_module_state", "`mymod`",
          "%%kale step a\n%%writefile mymod.py\nCOUNT = 0\ndef inc():\n    global COUNT\n    COUNT += 1",
          "%%kale step b\nimport mymod\nmymod.inc()\nmymod.LABEL = 'set'",
          "%%kale step c\nprint('count', mymod.COUNT, getattr(mymod, 'LABEL', None))"),
    _case("iterator_consumed", "`it`", "%%kale step a\nit = iter([1, 2, 3])",
          "%%kale step b\nfirst = next(it)", "%%kale step c\nprint('rest', list(it), first)"),
    _case("generator_across_steps", "`gen`", "%%kale step a\ngen = (i * i for i in range(3))",
          "%%kale step b\nprint('gen', list(gen))"),
    _case("closures_over_loop_variable", "`fs`",
          "%%kale step a\nfs = []\nfor i in range(3):\n    fs.append(lambda: i)\n"
          "gs = [lambda k=k: k for k in range(3)]",
          "%%kale step b\nprint('fs', [f() for f in fs], [g() for g in gs])"),
    _case("class_attribute_changed", "`Cfg`",
          "%%kale step a\nclass Cfg:\n    rate = 1\ninst = Cfg()", "%%kale step b\nCfg.rate = 5",
          "%%kale step c\nprint('rate', Cfg.rate, inst.rate)"),
    _case("augmented_alias", "`alias`", "%%kale step a\nitems = [1]\nalias = items",
          "%%kale step b\nitems += [2]", "%%kale step c\nprint('alias', alias)"),
    _case("mutable_default_argument", "`collect`",
          "%%kale step a\ndef collect(x, acc=[]):\n    acc.append(x)\n    return acc",
          "%%kale step b\ncollect(1)", "%%kale step c\nprint('acc', collect(2))"),
    _case("closure_counter", "`tick`",
          "%%kale step a\ndef make():\n    n = [0]\n    def inc():\n        n[0] += 1\n"
          "        return n[0]\n    return inc\ntick = make()",
          "%%kale step b\ntick()", "%%kale step c\nprint('tick', tick())"),
    _case("method_changes_self_in_expression", "`acc`",
          "%%kale step a\nclass Acc:\n    def __init__(self):\n        self.total = 0\n"
          "    def push(self, v):\n        self.total += v\n        return self.total\nacc = Acc()",
          "%%kale step b\nnow = acc.push(5)", "%%kale step c\nprint('total', acc.total, now)"),
    _case("numpy_out_argument", "`arr`",
          "%%kale step a\nimport numpy as np\narr = np.ones(2)",
          "%%kale step b\nnp.add(arr, 1, out=arr)", "%%kale step c\nprint('arr', arr.tolist())"),
    _case("shuffle_function", "`deck`", "%%kale step a\nimport random\ndeck = list(range(5))",
          "%%kale step b\nrandom.Random(1).shuffle(deck)\nimport heapq\nheap = [3, 1]\n"
          "heapq.heapify(heap)", "%%kale step c\nprint('deck', deck)"),
    _case("heap_changed_by_function", "`heap`", "%%kale step a\nheap = [3, 1, 2]",
          "%%kale step b\nimport heapq\nheapq.heapify(heap)", "%%kale step c\nprint('heap', heap)"),
    _case("globals_update_opaque", "globals",
          "%%kale step a\nw = 0", "%%kale step b\nglobals().update({'w': 1})",
          "%%kale step c\nprint('w', w)"),
    _case("exec_assigns", "`z`", "%%kale step a\nz = 0", "%%kale step b\nexec('z = 5')",
          "%%kale step c\nprint('z', z)"),
    _case("shared_parts_in_one_value", "`pair`",
          "%%kale step a\ninner = [1]\npair = [inner, inner]", "%%kale step b\npair[0].append(2)",
          "%%kale step c\nprint('pair', pair)"),
    _case("slice_assignment", "`nums`", "%%kale step a\nnums = [1, 2, 3]",
          "%%kale step b\nnums[:] = [0]", "%%kale step c\nprint('nums', nums)"),
    _case("function_writes_global", "`counter`",
          "%%kale functions\ndef bump():\n    global counter\n    counter += 1\n"
          "def bump_twice():\n    bump()\n    bump()",
          "%%kale step a\ncounter = 0", "%%kale step b\nbump_twice()",
          "%%kale step c\nprint('counter', counter)"),
    _case("function_mutates_argument", "`items`",
          "%%kale functions\ndef add(lst, value=1):\n    lst.append(value)",
          "%%kale step a\nitems = []", "%%kale step b\nadd(items)\nadd(lst=items, value=2)",
          "%%kale step c\nprint('items', items)"),
    _case("chained_assignment", "`y`", "%%kale step a\nx = y = []", "%%kale step b\nx.append(1)",
          "%%kale step c\nprint('y', y)"),
    _case("loop_item_mutation", "`rows`", "%%kale step a\nrows = [[1], [2]]",
          "%%kale step b\nfor row in rows:\n    row.append(0)", "%%kale step c\nprint('rows', rows)"),
    _case("list_sort_in_expression", "`xs`", "%%kale step a\nxs = [3, 1]",
          "%%kale step b\nlast = xs.pop()", "%%kale step c\nprint('xs', xs, last)"),
)


def classify(case: Case, folder: Path) -> tuple[str, str]:
    """Run ``case`` both ways in ``folder``: its class and a detail for the table."""
    path = notebook_of(folder, *case.cells)
    try:
        result = compare(path)
    except KaleError as error:
        kind = "refused" if case.subject in error.message else "REFUSED-OTHER"
        return kind, error.message[:200]
    warned = [w for w in result.warnings if case.subject in w]
    if warned:
        return "warned", warned[0][:200]
    if result.status.state != "SUCCEEDED":
        return "FAILED", str(result.status.error)[:200]
    if result.same_prints():
        return "same", ""
    return "SILENT", "; ".join(result.differences())[:200]


def main(names: list[str]) -> int:
    """Run the cases named (all by default); print one line each and the counts."""
    chosen = [c for c in CASES if not names or c.name in names]
    counts: dict[str, int] = {}
    for case in chosen:
        start = time.monotonic()
        with tempfile.TemporaryDirectory() as folder:
            kind, detail = classify(case, Path(folder))
        counts[kind] = counts.get(kind, 0) + 1
        print(f"{case.name:34} {kind:8} {time.monotonic() - start:5.1f}s {detail}", flush=True)
    passed = sum(n for k, n in counts.items() if k in ("same", "warned", "refused"))
    print(f"{len(chosen)} cases: {passed} pass, {len(chosen) - passed} fail; {counts}")
    return 0 if passed == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
