"""Tests for kale_magics.analysis.names."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import kale_magics
from kale_magics.analysis.names import NameUse, python_source, scan, scan_blocks


def _scan(code: str) -> NameUse:
    return scan(textwrap.dedent(code))


# (id, code, expected reads, expected writes)
CASES = [
    # assignments
    ("rhs-before-target", "x = x + 1", ["x"], ["x"]),
    ("bound-then-read", "x = 1\ny = x", [], ["x", "y"]),
    ("read-order", "c = b + a + b", ["b", "a"], ["c"]),
    ("augmented", "total += step", ["total", "step"], ["total"]),
    ("augmented-after-binding", "total = 0\ntotal += 1", [], ["total"]),
    ("annotated-with-value", "x: int = y", ["y", "int"], ["x"]),
    ("annotated-bare", "x: Dim", ["Dim"], []),
    ("annotation-string-ignored", "x: 'Dim' = 1", [], ["x"]),
    ("tuple-unpacking", "a, (b, *c) = d", ["d"], ["a", "b", "c"]),
    ("list-unpacking", "[a, b] = a", ["a"], ["a", "b"]),
    ("chained", "a = b = c", ["c"], ["a", "b"]),
    ("subscript-assign", 'df["a"] = 1', ["df"], ["df"]),
    ("subscript-assign-reads-index", "d[k] = v", ["v", "d", "k"], ["d"]),
    ("attribute-assign", "obj.x = 1", ["obj"], ["obj"]),
    ("nested-accessor-assign", "df.loc[0, col] = 1", ["df", "col"], ["df"]),
    ("accessor-assign-on-call", "make().x = 1", ["make"], []),
    ("subscript-augassign", 'df["a"] += 1', ["df"], ["df"]),
    ("annotated-attribute-bare", "obj.x: int", ["obj", "int"], []),
    ("attribute-read-base-only", "y = np.array(a).T", ["np", "a"], ["y"]),
    ("keyword-names-not-read", "f(axis=1, key=k)", ["f", "k"], []),
    # del
    ("del-name", "del x", ["x"], ["x"]),
    ("del-bound-name", "x = 1\ndel x", [], ["x"]),
    ("del-subscript", 'del df["a"]', ["df"], ["df"]),
    # loops, with, except, walrus
    ("for", "for i in items:\n    total = i", ["items"], ["i", "total"]),
    ("for-over-itself", "for x in x:\n    pass", ["x"], ["x"]),
    ("for-else", "for i in a:\n    pass\nelse:\n    y = i", ["a"], ["i", "y"]),
    ("async-for", "async def f():\n    pass\nasync for i in aiter_:\n    pass", ["aiter_"], ["f", "i"]),
    ("with", "with open(p) as fh, lock:\n    data = fh.read()", ["open", "p", "lock"], ["fh", "data"]),
    ("with-tuple-target", "with ctx() as (a, b):\n    pass", ["ctx"], ["a", "b"]),
    ("except-as", "try:\n    run()\nexcept Err as e:\n    log(e)", ["run", "Err", "log"], ["e"]),
    ("try-all-branches", "try:\n    a = 1\nexcept E:\n    b = a\nelse:\n    c = 1\nfinally:\n    d = c", ["E"], ["a", "b", "c", "d"]),
    ("while", "while n:\n    n = n - 1", ["n"], ["n"]),
    ("walrus", "if (n := len(a)) > 1:\n    y = n", ["len", "a"], ["n", "y"]),
    ("walrus-in-comprehension", "ys = [last := v for v in vs]\nz = last", ["vs"], ["last", "ys", "z"]),
    # conditional bindings are flow-insensitive
    ("conditional-binding", "if c:\n    x = 1\nprint(x)", ["c", "print"], ["x"]),
    ("binding-in-else", "if c:\n    pass\nelse:\n    x = 1\ny = x", ["c"], ["x", "y"]),
    # comprehensions
    ("comprehension-own-scope", "ys = [i * k for i in xs if i]", ["xs", "k"], ["ys"]),
    ("comprehension-shadows-module-name", "i = 0\nys = [i for i in xs]\nz = i", ["xs"], ["i", "ys", "z"]),
    ("comprehension-var-not-module-binding", "ys = [i for i in xs]\nz = i", ["xs", "i"], ["ys", "z"]),
    ("comprehension-first-iterable-outside", "x = [x for x in x]", ["x"], ["x"]),
    ("comprehension-nested-generators", "p = [(a, b) for a in A for b in a if b > t]", ["A", "t"], ["p"]),
    ("dict-comprehension", "d = {k: v for k, v in pairs}", ["pairs"], ["d"]),
    ("set-and-generator", "s = {a for a in A}\ng = sum(b for b in B)", ["A", "sum", "B"], ["s", "g"]),
    # match
    (
        "match",
        "match cmd:\n"
        "    case Point(x=px, y=0) | [px, *rest]:\n"
        "        r = px\n"
        "    case {'k': v, **others}:\n"
        "        r = v\n"
        "    case Color.RED as c if c:\n"
        "        r = c\n"
        "    case _:\n"
        "        r = None",
        ["cmd", "Point", "Color"],
        ["px", "rest", "r", "v", "others", "c"],
    ),
]


@pytest.mark.parametrize(
    ("code", "reads", "writes"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_rules(code: str, reads: list[str], writes: list[str]) -> None:
    result = scan(code)
    assert result.reads == tuple(reads)
    assert result.writes == tuple(writes)


# ---------------------------------------------------------------- imports


@pytest.mark.parametrize(
    ("code", "writes", "imports"),
    [
        ("import os", ["os"], ["os"]),
        ("import os.path", ["os"], ["os"]),
        ("import sklearn.ensemble as ens", ["ens"], ["sklearn"]),
        ("import numpy as np, pandas", ["np", "pandas"], ["numpy", "pandas"]),
        ("from os import path", ["path"], ["os"]),
        ("from os.path import join as j", ["j"], ["os"]),
        ("from m import *", [], ["m"]),
        ("from . import sibling", ["sibling"], []),
        ("from ..pkg.mod import thing", ["thing"], []),
        ("import os\nimport os.path\nfrom os import sep", ["os", "sep"], ["os"]),
        ("def f():\n    import json\n    return json", ["f"], ["json"]),
    ],
)
def test_imports(code: str, writes: list[str], imports: list[str]) -> None:
    result = scan(code)
    assert result.reads == ()
    assert result.writes == tuple(writes)
    assert result.imports == tuple(imports)


def test_import_binds_before_use() -> None:
    assert _scan("import numpy as np\na = np.zeros(n)").reads == ("n",)


# ---------------------------------------------------------------- functions


def test_def_reads_decorators_defaults_and_annotations() -> None:
    result = _scan(
        """
        @register(app)
        def f(a: A, b=default, *args: V, c=kw_default, **kw) -> R:
            return a, b, c, args, kw
        """
    )
    assert result.reads == ("register", "app", "default", "kw_default", "A", "V", "R")
    assert result.writes == ("f",)


def test_future_annotations_are_not_read() -> None:
    result = _scan(
        """
        from __future__ import annotations
        def f(a: A) -> R:
            pass
        x: T = 1
        """
    )
    assert result.reads == ()


def test_function_reading_global_defined_after_it_is_not_a_read() -> None:
    result = _scan(
        """
        def f():
            return helper() + CONST
        def helper():
            return 1
        CONST = 2
        """
    )
    assert result.reads == ()
    assert result.writes == ("f", "helper", "CONST")


def test_function_reading_undefined_global_is_a_read() -> None:
    result = _scan(
        """
        def f(a):
            return model.predict(a)
        """
    )
    assert result.reads == ("model",)


def test_deferred_read_keeps_position_in_read_order() -> None:
    result = _scan(
        """
        a = first
        def f():
            return middle
        b = last
        """
    )
    assert result.reads == ("first", "middle", "last")


def test_function_locals_and_params_are_not_reads() -> None:
    result = _scan(
        """
        def f(a, /, b, *args, c, **kw):
            total = a + b + c
            for item in args:
                total += item
            return total, kw
        """
    )
    assert result.reads == ()


def test_local_read_before_assignment_is_local() -> None:
    # Any binding in a function makes the name local (flow-insensitive).
    assert _scan("def f():\n    print(x)\n    x = 1").reads == ("print",)


def test_subscript_assignment_in_function_is_a_read_not_a_binding() -> None:
    result = _scan('def f():\n    df["a"] = 1')
    assert result.reads == ("df",)
    assert result.writes == ("f",)


def test_closure_over_enclosing_function_local() -> None:
    result = _scan(
        """
        def outer():
            factor = 2
            def inner(v):
                return v * factor * scale
            return inner
        """
    )
    assert result.reads == ("scale",)
    assert result.writes == ("outer",)


def test_nonlocal_name_resolves_in_enclosing_function() -> None:
    result = _scan(
        """
        def outer():
            count = 0
            def inc():
                nonlocal count
                count += 1
            return inc
        """
    )
    assert result.reads == ()


def test_nested_function_free_name_bound_at_module_level() -> None:
    result = _scan(
        """
        def outer():
            def inner():
                return table
            return inner
        table = {}
        """
    )
    assert result.reads == ()


def test_lambda() -> None:
    result = _scan("key = lambda row, n=width: row[col] * n + offset\noffset = 1")
    assert result.reads == ("width", "col")
    assert result.writes == ("key", "offset")


def test_lambda_inside_comprehension() -> None:
    result = _scan("fs = [lambda: i * k for i in r]")
    assert result.reads == ("r", "k")


def test_class_inside_function() -> None:
    result = _scan(
        """
        def f():
            a = 1
            class C:
                b = a + z
                def m(self):
                    return b
            return C
        """
    )
    # a is f's local; z and b (the class attribute, invisible in m) are free.
    assert result.reads == ("z", "b")


def test_comprehension_inside_function() -> None:
    result = _scan(
        """
        def f(xs):
            m = 2
            return [x * m * k for x in xs if (seen := x)], seen
        """
    )
    assert result.reads == ("k",)


def test_global_in_function() -> None:
    result = _scan(
        """
        def setup():
            global config, counter
            config = load(path)
            counter += 1
            return other
        print(config)
        """
    )
    assert result.writes == ("setup", "config", "counter")
    # load, path and other are free and never bound; config and counter are
    # bound by the function.
    assert result.reads == ("load", "path", "other", "print")


def test_global_read_not_bound_anywhere_is_a_read() -> None:
    result = _scan("def f():\n    global g\n    return g")
    assert result.reads == ("g",)
    assert result.writes == ("f",)


def test_recursive_function() -> None:
    assert _scan("def fact(n):\n    return n * fact(n - 1)").reads == ()


# ---------------------------------------------------------------- classes


def test_class_body_reads_and_bindings() -> None:
    result = _scan(
        """
        @dataclass
        class Model(Base, metaclass=Meta):
            rate = default_rate
            size: int = rate * 2
            def fit(self, data):
                return data * rate
        """
    )
    # rate is class-level, not visible in the method: it is a free name of
    # fit, never bound at module level, hence a (deferred) read.
    assert result.reads == ("dataclass", "Base", "Meta", "default_rate", "int", "rate")
    assert result.writes == ("Model",)


def test_method_reading_module_name() -> None:
    result = _scan(
        """
        class A:
            def m(self):
                return helper(A)
        def helper(x):
            return x
        """
    )
    assert result.reads == ()
    assert result.writes == ("A", "helper")


def test_class_names_not_visible_in_class_comprehension() -> None:
    result = _scan(
        """
        class A:
            n = 3
            items = [n for _ in range(n)]
        """
    )
    # range(n) is the first iterable, evaluated in the class body; the
    # element's n is not the class attribute.
    assert result.reads == ("range", "n")


# ---------------------------------------------------------------- scan_blocks


def test_scan_blocks_binding_in_earlier_block() -> None:
    result = scan_blocks(["import pandas as pd\ndf = pd.read_csv(path)", "y = df.mean()\nz = w"])
    assert result.reads == ("path", "w")
    assert result.writes == ("pd", "df", "y", "z")
    assert result.imports == ("pandas",)


def test_scan_blocks_read_before_later_block_binding() -> None:
    result = scan_blocks(["a = b", "b = 1"])
    assert result.reads == ("b",)
    assert result.writes == ("a", "b")


def test_scan_blocks_resolves_deferred_reads_across_blocks() -> None:
    result = scan_blocks(["def f():\n    return g() + h", "def g():\n    return 1"])
    assert result.reads == ("h",)


def test_scan_blocks_empty() -> None:
    assert scan_blocks([]) == NameUse((), (), ())
    assert scan("") == NameUse((), (), ())


# ---------------------------------------------------------------- errors


def test_syntax_error_carries_lineno() -> None:
    with pytest.raises(SyntaxError) as info:
        scan("a = 1\nb = 2\nc = (\n")
    assert info.value.lineno == 3
    with pytest.raises(SyntaxError) as info:
        scan("x = 1\ndef f(:\n    pass")
    assert info.value.lineno == 2


def test_syntax_error_in_scan_blocks() -> None:
    with pytest.raises(SyntaxError) as info:
        scan_blocks(["x = 1", "y = 2\nz = = 3"])
    assert info.value.lineno == 2


def test_null_byte_is_a_syntax_error() -> None:
    with pytest.raises(SyntaxError):
        scan("x = 1\x00")


# ---------------------------------------------------------------- python_source


def test_python_source_shell_command() -> None:
    code = python_source("!ls")
    assert code.strip() == "get_ipython().system('ls')"
    assert scan(code).reads == ("get_ipython",)


def test_time_magic_code_is_analysed() -> None:
    code = python_source("%time y = f(x)")
    assert code.strip() == "get_ipython().run_line_magic('time', 'y = f(x)')"
    # %time runs its code in the user namespace, so its names are the cell's
    use = scan(code)
    assert use.reads == ("get_ipython", "f", "x") and use.writes == ("y",)
    cell = scan(python_source("%%time\nz = w + 1"))
    assert cell.reads == ("get_ipython", "w") and cell.writes == ("z",)


def test_other_magics_hide_their_arguments() -> None:
    code = python_source("%timeit f(x)\n%matplotlib inline")
    # these arguments are strings the magic interprets: f and x are not seen as reads
    assert scan(code).reads == ("get_ipython",)


def test_python_source_system_assign() -> None:
    code = python_source("files = !ls")
    assert code.strip() == "files = get_ipython().getoutput('ls')"
    assert scan(code) == NameUse(("get_ipython",), ("files",), ())


def test_python_source_matplotlib_inline() -> None:
    code = python_source("%matplotlib inline")
    assert code.strip() == "get_ipython().run_line_magic('matplotlib', 'inline')"


def test_python_source_cell_magic() -> None:
    cell = "%%bash\necho $HOME\nls data"
    code = python_source(cell)
    assert code.startswith("get_ipython().run_cell_magic('bash', '', ")
    assert len(code.splitlines()) == 3
    assert scan(code).reads == ("get_ipython",)


def test_python_source_preserves_line_numbers() -> None:
    cell = "a = 1\n\n!ls -l\nb = a\nc = missing"
    code = python_source(cell)
    lines = code.splitlines()
    assert len(lines) == len(cell.splitlines())
    assert lines[2] == "get_ipython().system('ls -l')"
    assert lines[3] == "b = a"
    assert lines[4] == "c = missing"


def test_python_source_preserves_leading_blank_lines() -> None:
    code = python_source("\n  \n!ls\nx = 1")
    assert code.splitlines()[2:] == ["get_ipython().system('ls')", "x = 1"]


def test_python_source_preserves_lines_after_continued_command() -> None:
    code = python_source("!ls \\\n  -l\nx = 1\n%time f(\\\n 1)\ny = 2")
    lines = code.splitlines()
    assert len(lines) == 6
    assert lines[2] == "x = 1"
    assert lines[5] == "y = 2"


def test_python_source_keeps_syntax_error_lineno() -> None:
    code = python_source("!ls\nx = 1\ny = (\n")
    with pytest.raises(SyntaxError) as info:
        scan(code)
    assert info.value.lineno == 3


@pytest.mark.parametrize("cell", ["", "\n\n", "%", "!", "?", "x = (\n!ls", "s = '''\n", "\x00"])
def test_python_source_never_raises(cell: str) -> None:
    assert isinstance(python_source(cell), str)


def test_plain_python_unchanged() -> None:
    cell = "def f(x):\n    return x\n\ny = f(1)\n"
    assert python_source(cell) == cell


def test_import_is_light() -> None:
    code = (
        "import sys, kale_magics.analysis.names\n"
        "bad = [m for m in ('IPython', 'kfp') if m in sys.modules]\n"
        "assert not bad, bad"
    )
    root = Path(kale_magics.__file__).resolve().parent.parent
    path = os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
