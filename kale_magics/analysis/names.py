"""Which names a piece of notebook code reads and which it binds.

A pipeline step is made of one or more notebook cells. To pass variables
between steps we need, for the code of a step,

* the names it *reads* before binding them itself (they must come from an
  earlier step), and
* the names it *binds* at module level (it may produce them for later steps).

The analysis uses the :mod:`ast` module only. Execution order is approximated
by statement order and the analysis is flow-insensitive: a binding anywhere
earlier in the code counts, even inside an ``if`` branch.

Function bodies are not executed when they are defined, so the free variables
of a function (or lambda) are *deferred reads*: they count as reads only if
the code never binds that name at module level, before or after the ``def``.

Builtins (``print``, ``len``, ``get_ipython``...) are reported like any other
name; the caller filters them.

What a step needs beyond its plain reads is reported too, so it can see what
the notebook sees: the globals each function (or class) it defines reads when
called (a caller of that function reads them too: pass ``callees``); names
read through IPython's expansion of ``$name`` and ``{expression}`` in ``!cmd``
and magic lines (*soft reads*: passed when a step has them, else the shell
leaves the text as it is); names it binds only on some paths (``if``, loops);
and names bound by a plain import statement, which a later step replays
instead of receiving the module as data.
"""

from __future__ import annotations

import ast
import collections
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kale_magics.analysis.changes import Call, Changes, Slot, changed_by_call
from kale_magics.runtime.shell import NO_VAR_EXPAND, DollarFormatter

__all__ = ["NameUse", "python_source", "scan", "scan_blocks", "scan_trees"]


@dataclass(frozen=True)
class NameUse:
    """Names used by a piece of code.

    Attributes
    ----------
    reads : tuple of str
        Names read before the code binds them, in order of first read.
    writes : tuple of str
        Names bound at module level, in order of first binding.
    imports : tuple of str
        Top-level module names imported anywhere in the code (``"sklearn"``
        for ``import sklearn.ensemble as ens``, ``"os"`` for
        ``from os import path``), in order, without duplicates. Relative
        imports are excluded.
    soft_reads : tuple of str
        Names read only through the globals of a called function
        (``callees``) or through ``$name`` / ``{expression}`` in a shell
        command or magic line, not in :attr:`reads`: passed to the code when an
        earlier step has them; without them the code behaves as the notebook
        would without them.
    conditional : tuple of str
        Names in :attr:`writes` that some path through the code leaves unbound
        (bound only in an ``if`` branch, a loop, a ``try`` body, ...).
    globals_of : mapping of str to tuple of str
        For each name bound at module level, the module globals read by the
        functions of the statement that bound it last (a ``def``'s body, a
        class's methods, a lambda): what calling it reads. Names bound to
        plain values are absent.
    imported : mapping of str to tuple of str
        Names whose last binding is a top-level import statement, with the
        statements that give the name its value (``("import email.mime.text",)``
        for ``email``): a later step replays them.
    classes : tuple of str
        Names bound by a top-level ``class`` statement, sorted.
    aliases : mapping of str to str
        ``{"params": "cfg"}`` for a last binding ``params = cfg`` at the top
        level: after it both names are one object.
    changed_in_place : tuple of str
        Names in :attr:`writes` only changed in place (``cfg["lr"] = 2``),
        never bound to a new object: every other name of that object changes too.
    maybe_changed : tuple of str
        Names not in :attr:`writes` whose method is called as a statement at the
        top level (``model.fit(X, y)``, ``items.append(x)``), or whose method is
        one that changes its object wherever it is called (``d.setdefault(k, [])``,
        ``lst.pop()``): it may change the object in place.
    changes_of : mapping of str to Changes
        For each name bound at module level to a function, a class or an instance of
        a class, what calling it (or its methods) changes besides its result
        (:class:`~kale_magics.analysis.changes.Changes`); absent when nothing.
    derived : mapping of str to str
        ``{"view": "arr"}`` for a last binding ``view = arr[1:]`` (or ``arr.T``,
        ``arr.reshape(...)``) at the top level: the value may share memory with ``arr``
        (a numpy view), so a change in place through one may change the other.
    functions : tuple of str
        Names whose last top-level binding is a ``def``, sorted.
    via_functions : tuple of str
        Names in :attr:`writes` bound only inside functions (``global total; total = 10``),
        never by the code's own top-level statements: defining the function does not bind
        them, calling it does (:attr:`changed_by_calls`).
    changed_by_calls : tuple of str
        Names that the code's calls of notebook functions change:
        globals they rebind or change in place (``bump()`` with ``global counter``),
        transitively, and names passed to a parameter they change in place
        (``add(items)`` with ``def add(lst): lst.append(1)``), or the function itself
        when it changes a default value of a parameter (``def f(x, acc=[])``); also names
        changed through a value derived from them (``view += 1`` after ``view = arr[1:]``).
    """

    reads: tuple[str, ...]
    writes: tuple[str, ...]
    imports: tuple[str, ...]
    soft_reads: tuple[str, ...] = ()
    conditional: tuple[str, ...] = ()
    globals_of: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    imported: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    classes: tuple[str, ...] = ()
    aliases: Mapping[str, str] = field(default_factory=dict)
    changed_in_place: tuple[str, ...] = ()
    maybe_changed: tuple[str, ...] = ()
    changes_of: Mapping[str, Changes] = field(default_factory=dict)
    changed_by_calls: tuple[str, ...] = ()
    derived: Mapping[str, str] = field(default_factory=dict)
    functions: tuple[str, ...] = ()
    via_functions: tuple[str, ...] = ()


# --------------------------------------------------------------------------
# IPython source -> plain Python
# --------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)  # pure; a compile reads each cell twice, a recompile again
def python_source(cell_source: str) -> str:
    """Turn the IPython source of a cell into plain Python.

    Uses IPython's own ``TransformerManager().transform_cell``, so ``!ls``
    becomes ``get_ipython().system('ls')``, ``%time f()`` becomes
    ``get_ipython().run_line_magic('time', 'f()')``, ``x = !ls`` becomes
    ``x = get_ipython().getoutput('ls')`` and a ``%%bash`` cell becomes one
    ``get_ipython().run_cell_magic(...)`` call.

    Parameters
    ----------
    cell_source : str
        The source of one notebook cell, possibly using IPython syntax.

    Returns
    -------
    str
        Plain Python source, ending with a newline. Line numbers are kept:
        the result has as many lines as the input and every remaining line of
        code stays on its line. IPython drops leading blank lines and joins a
        backslash-continued ``!cmd \\`` onto one line; both are compensated
        with blank lines. A cell magic (``%%bash``) becomes a single call
        followed by blank lines.

    Notes
    -----
    Magic arguments become string literals, so the names they mention are
    invisible to :func:`scan`: ``%time f(x)`` turns into
    ``get_ipython().run_line_magic('time', 'f(x)')`` whose only read is
    ``get_ipython``; neither ``f`` nor ``x`` is reported. The same holds for
    the body of a cell magic such as ``%%time``.

    This function never raises: if IPython fails on the cell, the cell is
    returned unchanged (so that :func:`scan` reports the syntax error with
    the right line number).
    """
    lines = cell_source.splitlines(keepends=True)
    leading = 0
    while leading < len(lines) and lines[leading].isspace():
        leading += 1
    body = "".join(lines[leading:])
    if not body:
        return "\n" * len(lines)
    try:
        out = _transformer_manager().transform_cell(body)
    except Exception:  # noqa: BLE001 - IPython must never break the analysis
        out = body if body.endswith("\n") else body + "\n"
    out = "\n" * leading + out
    missing = len(lines) - len(out.splitlines())
    return out + "\n" * missing if missing > 0 else out


@functools.lru_cache(maxsize=1)
def _transformer_manager() -> Any:
    """Return a shared IPython TransformerManager that keeps line numbers."""
    from IPython.core.inputtransformer2 import TransformerManager

    manager = TransformerManager()
    manager.token_transformers = [
        _line_preserving(cls) for cls in manager.token_transformers
    ]
    return manager


def _line_preserving(cls: type) -> type:
    """Subclass an IPython token transformer so it never removes lines.

    A transformer replaces lines ``start..end`` (a backslash-continued
    ``!cmd``, for instance) by one line; blank lines are inserted after it to
    keep the following code on its original line numbers.
    """

    class LinePreserving(cls):  # type: ignore[misc, valid-type]
        def transform(self, lines: list[str]) -> list[str]:
            new_lines = super().transform(lines)
            missing = len(lines) - len(new_lines)
            if missing > 0:
                at = self.start_line + 1
                new_lines[at:at] = ["\n"] * missing
            return new_lines

    LinePreserving.__name__ = LinePreserving.__qualname__ = cls.__name__
    return LinePreserving


# --------------------------------------------------------------------------
# Name analysis
# --------------------------------------------------------------------------


#: What a called notebook function reads, by function name (``NameUse.globals_of`` of its producer).
Callees = Mapping[str, Sequence[str]]
#: The public names ``from MODULE import *`` binds, or None when they cannot be known.
StarNames = Callable[[str], Sequence[str] | None]


def scan(source: str) -> NameUse:
    """Analyse plain Python source.

    Parameters
    ----------
    source : str
        Plain Python (use :func:`python_source` first for IPython syntax).

    Returns
    -------
    NameUse
        The names the code reads, binds and the modules it imports.

    Raises
    ------
    SyntaxError
        The error raised by :func:`ast.parse`, with its ``lineno``, if the
        code is not valid Python.
    """
    return scan_blocks([source])


def scan_blocks(sources: Sequence[str], callees: Callees | None = None,
                star_names: StarNames | None = None,
                changers: Mapping[str, Changes] | None = None) -> NameUse:
    """Analyse blocks of plain Python run one after the other in one namespace.

    A name bound in block 1 and read in block 2 is not a read; deferred reads
    (free variables of functions) are resolved against the module-level
    bindings of all blocks.

    Parameters
    ----------
    sources : sequence of str
        Plain Python blocks, e.g. the cells of one pipeline step, in order.
    callees : mapping of str to sequence of str, optional
        Globals read by functions defined elsewhere (earlier steps, the
        functions cell), by name: code that reads such a name (and does not
        bind it first) soft-reads these globals, transitively.
    star_names : callable, optional
        ``star_names(module)`` gives the names ``from module import *`` binds
        (None when unknown); without it a star import binds nothing.
    changers : mapping of str to Changes, optional
        What functions defined elsewhere change when called, by name
        (:attr:`NameUse.changes_of` of their producers): gives
        :attr:`NameUse.changed_by_calls`.

    Returns
    -------
    NameUse
        The names the blocks read, bind and the modules they import.

    Raises
    ------
    SyntaxError
        The error raised by :func:`ast.parse` on the first invalid block; its
        ``lineno`` is relative to that block.
    """
    return scan_trees([_parse(source) for source in sources], callees, star_names, changers)


def scan_trees(trees: Sequence[ast.Module], callees: Callees | None = None,
               star_names: StarNames | None = None,
               changers: Mapping[str, Changes] | None = None) -> NameUse:
    """Like :func:`scan_blocks`, for blocks already parsed with :func:`ast.parse`."""
    visitor = _NameVisitor(callees or {}, star_names, changers or {})
    definite: set[str] = set()
    for tree in trees:
        visitor.visit(tree)
        definite = _definite(tree.body, definite)
    return visitor.result(definite)


def _parse(source: str) -> ast.Module:
    """Parse source, turning the ValueError for NUL bytes into SyntaxError."""
    try:
        return ast.parse(source)
    except ValueError as error:  # Python < 3.12: "source code ... null bytes"
        raise SyntaxError(str(error)) from error


#: Magics whose argument (line magic) or body (cell magic) is code run in the user namespace.
_CODE_MAGICS = {"run_line_magic": ("time",), "run_cell_magic": ("time", "capture")}


def _exec_code(node: ast.Call) -> list[ast.Module]:
    """The parsed code of ``exec("z = 5")`` (a constant string, no namespace given)."""
    if not (isinstance(node.func, ast.Name) and node.func.id == "exec" and len(node.args) == 1
            and not node.keywords and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)):
        return []
    try:
        return [ast.parse(node.args[0].value)]
    except SyntaxError:
        return []


def _magic_code(node: ast.Call) -> list[ast.Module]:
    """The parsed code of ``get_ipython().run_line_magic('time', 'CODE')`` and similar calls.

    IPython's transformer turns ``%time y = f(x)`` into such a call, so the
    code is a string the plain AST cannot see; it runs in the caller's
    namespace, so its names count as the caller's.
    """
    func = node.func
    if not (isinstance(func, ast.Attribute) and func.attr in _CODE_MAGICS
            and isinstance(func.value, ast.Call) and getattr(func.value.func, "id", "") == "get_ipython"
            and node.args and isinstance(node.args[0], ast.Constant)
            and node.args[0].value in _CODE_MAGICS[func.attr]):
        return []
    code = node.args[-1]
    if not isinstance(code, ast.Constant) or not isinstance(code.value, str):
        return []
    try:
        return [ast.parse(code.value)]
    except SyntaxError:  # it fails when it runs, with the user's own traceback
        return []


def _ipython_call(node: ast.Call) -> str:
    """``"system"`` for ``get_ipython().system(...)`` and likewise, else ""."""
    func = node.func
    if (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Call)
            and getattr(func.value.func, "id", "") == "get_ipython"):
        return func.attr
    return ""


def _constant_args(node: ast.Call) -> list[str | None]:
    return [a.value if isinstance(a, ast.Constant) and isinstance(a.value, str) else None
            for a in node.args]


def _expanded(node: ast.Call) -> list[ast.expr]:
    """The expressions IPython's ``var_expand`` evaluates in a ``!cmd`` or a magic's line."""
    method, args = _ipython_call(node), _constant_args(node)
    if method in ("system", "getoutput") and args:
        text = args[0]
    elif method in ("run_line_magic", "run_cell_magic") and len(args) >= 2 \
            and args[0] not in NO_VAR_EXPAND:
        text = args[1]
    else:
        return []
    expressions = []
    try:
        fields = [f for _, f, _, _ in DollarFormatter().parse(text or "") if f]
    except ValueError:  # unbalanced braces: IPython leaves the text as it is
        return []
    for field_name in fields:
        try:
            expressions.append(ast.parse(field_name, mode="eval").body)
        except SyntaxError:
            continue
    return expressions


def _captured_name(node: ast.Call) -> str | None:
    """``out`` for ``%%capture out`` (``get_ipython().run_cell_magic('capture', 'out', ...)``)."""
    args = _constant_args(node)
    if _ipython_call(node) != "run_cell_magic" or len(args) < 2 or args[0] != "capture":
        return None
    words = [w for w in (args[1] or "").split() if not w.startswith("-")]
    return words[0] if words and words[0].isidentifier() else None


def _targets(node: ast.AST) -> set[str]:
    """Names an assignment target binds: ``a`` and ``b`` for ``a, *b = ...``."""
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}


def _definite(body: Sequence[ast.stmt], bound: set[str]) -> set[str]:
    """Names bound at module level on every path through ``body`` (given ``bound`` before it).

    Conservative: a name bound only in a loop, in one branch, in a ``try``
    body that may fail before it, or by a ``:=`` is not definite.
    """
    bound = set(bound)
    for node in body:
        bound |= _definite_one(node, bound)
        if isinstance(node, ast.Delete):
            bound -= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return bound


def _definite_one(node: ast.stmt, bound: set[str]) -> set[str]:
    if isinstance(node, ast.Assign):
        return set().union(*(_targets(t) for t in node.targets))
    if isinstance(node, (ast.AnnAssign, ast.AugAssign)):
        return _targets(node.target) if getattr(node, "value", None) is not None else set()
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).partition(".")[0] for a in node.names if a.name != "*"}
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, ast.If):
        return _definite(node.body, bound) & _definite(node.orelse, bound)
    if isinstance(node, (ast.With, ast.AsyncWith)):
        items = set().union(*(_targets(i.optional_vars) for i in node.items if i.optional_vars))
        return items | _definite(node.body, bound)
    if isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
        ends = [_definite(node.body + node.orelse, bound),
                *(_definite(h.body, bound) for h in node.handlers)]  # type: ignore[attr-defined]
        return set.intersection(*ends) | _definite(node.finalbody, bound)  # type: ignore[attr-defined]
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        return {n for n in [_captured_name(node.value)] if n}
    return set()


#: Methods called as statements only to show or save something (``df.head()`` as a cell's last
#: line): calling them does not make the object "maybe changed in place".
_READ_ONLY = frozenset({
    "head", "tail", "describe", "info", "plot", "hist", "show", "display", "print", "summary",
    "to_csv", "to_parquet", "to_json", "to_pickle", "to_excel", "to_feather", "savefig", "save",
    "predict", "predict_proba", "score", "transform", "evaluate", "copy", "count", "mean", "sum",
    "min", "max", "std", "value_counts", "nunique", "isna", "isnull", "corr", "keys", "values",
    "items", "get", "join", "format", "startswith", "endswith", "split", "strip", "read",
    "exists", "is_file", "is_dir", "log", "debug", "warning", "error", "write_text",
    "write_bytes"})

#: Methods that change their object wherever they are called, even inside an expression
#: (``d.setdefault(k, []).append(x)``, ``last = stack.pop()``).
_MUTATORS = frozenset({
    "append", "extend", "insert", "pop", "popitem", "remove", "clear", "update", "setdefault",
    "add", "discard", "sort", "reverse", "appendleft", "extendleft", "popleft", "rotate",
    "fill", "resize", "put", "put_nowait", "send", "fit", "partial_fit", "fit_transform",
    "shuffle", "__setitem__", "__delitem__", "__next__", "throw",
    # drawing from a random generator advances its state
    "random", "integers", "normal", "uniform", "choice", "choices", "permutation",
    "standard_normal", "randint", "randn", "rand", "gauss", "getrandbits", "randrange",
    "exponential", "poisson", "binomial", "lognormal", "multivariate_normal", "bytes"})

#: Functions that change the object given as their first argument (by their last name part).
_ARGUMENT_MUTATORS = frozenset({
    "next", "shuffle", "heappush", "heappop", "heapify", "heapreplace", "heappushpop", "insort",
    "insort_left", "insort_right", "copyto", "place", "putmask", "fill_diagonal", "setattr",
    "delattr"})

#: Methods whose result may share memory with their object (numpy views).
_VIEW_METHODS = frozenset({"view", "reshape", "ravel", "transpose", "squeeze", "swapaxes",
                           "flatten_view", "expand_dims", "moveaxis"})


def _derived_from(value: ast.expr) -> str | None:
    """``arr`` for ``arr[1:]``, ``arr.T``, ``arr.reshape(2, 2)``, ``df["a"]``: the name whose
    value the result may share memory with; None for anything else."""
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) \
            and value.func.attr in _VIEW_METHODS:
        value = value.func.value
    if isinstance(value, (ast.Subscript, ast.Attribute)):
        return _base_name(value)
    return None


_MODULE = "module"
_FUNCTION = "function"
_CLASS = "class"
_COMPREHENSION = "comprehension"


@dataclass(eq=False)
class _Scope:
    """One scope of the scope stack.

    ``pending`` is only used by function scopes: the names read in the
    function (or in scopes nested in it) that are resolved when the function
    ends, since any binding in a function makes a name local to it.
    """

    kind: str
    bound: set[str] = field(default_factory=set)
    declared_global: set[str] = field(default_factory=set)
    declared_nonlocal: set[str] = field(default_factory=set)
    pending: list[str] = field(default_factory=list)
    params: tuple[str, ...] = ()
    positional: int = 0
    defaults: set[str] = field(default_factory=set)
    changed: list[str] = field(default_factory=list)  # names whose objects the body changes
    global_changes: set[str] = field(default_factory=set)  # `global x; x = ...`
    calls: list[tuple[str, dict[Slot, str]]] = field(default_factory=list)
    nested: list[Changes] = field(default_factory=list)  # of methods (class scopes)
    self_changing: set[str] = field(default_factory=set)  # methods changing their instance


def _call_base(node: ast.expr) -> str | None:
    """``d`` for ``d.setdefault(k, [])`` or ``d["a"].items``: the name a chain starts from."""
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def _is_globals(node: ast.expr) -> bool:
    """``globals()``."""
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == "globals" and not node.args and not node.keywords)


def _passed(node: ast.Call) -> dict[Slot, str]:
    """The name (or the base name of a part) given in each argument slot of a call."""
    passed: dict[Slot, str] = {}
    for index, argument in enumerate(node.args):
        if isinstance(argument, ast.Starred):
            break
        base = _base_name(argument)
        if base is not None:
            passed[index] = base
    for keyword in node.keywords:
        base = _base_name(keyword.value) if keyword.arg else None
        if base is not None:
            passed[keyword.arg] = base  # type: ignore[index]
    return passed


def _base_name(node: ast.expr) -> str | None:
    """Return ``df`` for ``df.loc[0, "a"]``, None if the base is no name."""
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _parameters(args: ast.arguments) -> Iterable[ast.arg]:
    """Yield every parameter of a function or lambda."""
    yield from args.posonlyargs
    yield from args.args
    if args.vararg is not None:
        yield args.vararg
    yield from args.kwonlyargs
    if args.kwarg is not None:
        yield args.kwarg


class _NameVisitor(ast.NodeVisitor):
    """Walk module code, keeping an explicit stack of scopes."""

    def __init__(self, callees: Callees, star_names: StarNames | None,
                 changers: Mapping[str, Changes]) -> None:
        self._module = _Scope(_MODULE)
        self._stack: list[_Scope] = [self._module]
        self._writes: dict[str, None] = {}
        self._imports: dict[str, None] = {}
        self._events: list[tuple[str, bool]] = []  # (name, deferred)
        self._soft_events: list[tuple[str, bool]] = []
        self._soft = False  # reading through IPython's expansion of a command line
        self._lazy_annotations = False  # from __future__ import annotations
        self._callees = callees
        self._star_names = star_names
        self._statement: ast.stmt | None = None  # the top-level statement being visited
        self._statement_bound: list[str] = []
        self._globals_of: dict[str, tuple[str, ...]] = {}
        self._imported: dict[str, tuple[str, ...]] = {}
        self._classes: set[str] = set()
        self._aliases: dict[str, str] = {}
        self._mutated: set[str] = set()  # changed in place (`cfg["lr"] = 2`)
        self._plain: set[str] = set()  # bound by a plain binding
        self._method_called: dict[str, None] = {}
        self._changers = changers
        self._changes_of: dict[str, Changes] = {}
        self._changed_calls: dict[str, None] = {}
        self._derived: dict[str, str] = {}  # `view = arr[1:]`
        self._functions: set[str] = set()
        self._via_functions: set[str] = set()  # bound with `global` in a function
        self._at_top: set[str] = set()  # bound by a top-level statement

    def result(self, definite: set[str]) -> NameUse:
        """Resolve deferred reads against all module bindings."""
        reads: dict[str, None] = {}
        for name, deferred in self._events:
            if not (deferred and name in self._module.bound):
                reads.setdefault(name)
        soft = dict.fromkeys(name for name, deferred in self._soft_events
                             if not (deferred and name in self._module.bound) and name not in reads)
        return NameUse(tuple(reads), tuple(self._writes), tuple(self._imports), tuple(soft),
                       tuple(n for n in self._writes if n not in definite),
                       dict(self._globals_of), dict(self._imported), tuple(sorted(self._classes)),
                       dict(self._aliases), tuple(n for n in self._writes
                                                  if n in self._mutated and n not in self._plain),
                       tuple(n for n in self._method_called if n not in self._writes),
                       dict(self._changes_of), self._changed_by_calls(),
                       dict(self._derived), tuple(sorted(self._functions)),
                       tuple(n for n in self._writes
                             if n in self._via_functions and n not in self._at_top))

    def _changed_by_calls(self) -> tuple[str, ...]:
        """:attr:`NameUse.changed_by_calls`, with the names values changed in place came from."""
        changed = dict(self._changed_calls)
        touched = [*self._mutated, *self._method_called, *self._changed_calls]
        for name in touched:
            source = self._derived.get(name)
            if source is not None:
                changed.setdefault(source)
        return tuple(changed)

    def visit_Module(self, node: ast.Module) -> None:
        """Visit each top-level statement, noting what the functions it binds read when called."""
        for statement in node.body:
            self._statement, self._statement_bound = statement, []
            start = len(self._events)
            self.visit(statement)
            deferred = tuple(dict.fromkeys(n for n, d in self._events[start:] if d))
            deferred += self._instance_of(statement)
            self._note_changes(statement)
            for name in self._statement_bound:
                self._globals_of[name] = deferred
                if not deferred:
                    del self._globals_of[name]
        self._statement = None

    # -- reads and bindings ------------------------------------------------

    def _read(self, name: str) -> None:
        self._lookup(name, len(self._stack) - 1, deferred=False, see_class=True)

    def _lookup(self, name: str, index: int, *, deferred: bool, see_class: bool) -> None:
        """Resolve a read of ``name`` from scope ``index`` outwards.

        Class scopes are only visible to code directly in their body, never
        to nested functions, comprehensions or classes.
        """
        for i in range(index, -1, -1):
            scope = self._stack[i]
            if scope.kind == _CLASS and not (see_class and i == index):
                continue
            if scope.kind == _MODULE or name in scope.declared_global:
                deferred = deferred or scope.kind == _FUNCTION
                break
            if scope.kind == _FUNCTION:
                scope.pending.append(name)
                return
            if name in scope.bound:
                return
        self._module_read(name, deferred)

    def _module_read(self, name: str, deferred: bool) -> None:
        if deferred or name not in self._module.bound:
            (self._soft_events if self._soft else self._events).append((name, deferred))
            self._callee_reads(name, deferred)

    def _instance_of(self, statement: ast.stmt) -> tuple[str, ...]:
        """``m = Meter()`` or ``h = make()``: what ``m``'s methods (or the function ``make``
        returns) read when called is what the class's methods (or ``make``) read."""
        value = getattr(statement, "value", None)
        if not (isinstance(statement, ast.Assign) and isinstance(value, ast.Call)
                and isinstance(value.func, ast.Name)):
            return ()
        maker = value.func.id
        if maker in self._globals_of:
            return self._globals_of[maker]
        return tuple(self._callees.get(maker, ())) if maker not in self._module.bound else ()

    def _note_changes(self, statement: ast.stmt) -> None:
        """Keep :attr:`NameUse.changes_of` for what ``statement`` bound: a function or class
        (recorded when its body ends), an instance ``m = Meter()``, else nothing."""
        value = getattr(statement, "value", None)
        instance = None
        if (isinstance(statement, ast.Assign) and isinstance(value, ast.Call)
                and isinstance(value.func, ast.Name)):
            maker = self._changes_of.get(value.func.id) or self._changers.get(value.func.id)
            instance = maker if maker is not None and maker.of_class else None
        defined = statement.name if isinstance(
            statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else None
        for name in self._statement_bound:
            if instance is not None:
                self._changes_of[name] = instance
            elif name != defined:
                self._changes_of.pop(name, None)

    def _function_scope(self) -> _Scope | None:
        """The innermost function scope the code being visited is in, None at module level."""
        return next((s for s in reversed(self._stack) if s.kind == _FUNCTION), None)

    def _changed(self, base: str) -> None:
        """The object named ``base`` is changed in place here (in a function: by the function)."""
        function = self._function_scope()
        if function is not None:
            function.changed.append(base)
        else:
            self._method_called.setdefault(base)

    def _global_assigned(self, name: str) -> None:
        """``globals()["name"] = ...``: at module level a binding, in a function a change."""
        function = self._function_scope()
        if function is not None:
            function.global_changes.add(name)
        else:
            self._bind(name, 0)

    def _note_call(self, node: ast.Call) -> None:
        """A call of a notebook function: what it changes, here or in the enclosing function."""
        func = node.func
        if isinstance(func, ast.Name):
            callee, passed = func.id, _passed(node)
        elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            callee, passed = func.value.id, {}  # a method of an instance or class
        else:
            callee, passed = "", {}
        if isinstance(func, ast.Attribute):
            if _is_globals(func.value) and func.attr in ("update", "setdefault"):
                for keyword in node.keywords:
                    if keyword.arg:
                        self._global_assigned(keyword.arg)
                key = node.args[0] if func.attr == "setdefault" and node.args else None
                if isinstance(key, ast.Constant) and isinstance(key.value, str):
                    self._global_assigned(key.value)
            elif func.attr in _MUTATORS:
                base = _call_base(func.value)
                if base is not None:
                    self._changed(base)
        last = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
        changed = [node.args[0]] if last in _ARGUMENT_MUTATORS and node.args else []
        changed += [k.value for k in node.keywords if k.arg == "out"]  # np.add(a, 1, out=a)
        for argument in changed:
            base = _base_name(argument)
            if base is not None:
                self._changed(base)
        if not callee:
            return
        function = self._function_scope()
        if function is not None:
            function.calls.append((callee, passed))
            return
        if callee not in self._changes_of and (callee not in self._changers
                                               or callee in self._module.bound):
            return  # unknown, or rebound here to something that changes nothing
        table = collections.ChainMap(self._changes_of, self._changers)
        maker = table.get(callee)
        if maker is not None and isinstance(func, ast.Attribute) \
                and func.attr in maker.self_changing:
            self._changed(callee)  # `acc.push(5)` where push changes `self`
        for name in changed_by_call(table, callee, passed):
            self._changed_calls.setdefault(name)

    def _callee_reads(self, name: str, deferred: bool) -> None:
        """Reading a function defined elsewhere soft-reads the globals it reads, transitively."""
        if name in self._module.bound and not deferred:
            return
        seen, todo = {name}, list(self._callees.get(name, ()))
        while todo:
            glob = todo.pop(0)
            if glob in seen:
                continue
            seen.add(glob)
            if deferred or glob not in self._module.bound:
                self._soft_events.append((glob, deferred))
                todo.extend(self._callees.get(glob, ()))

    def _bind(self, name: str, index: int = -1) -> None:
        scope = self._stack[index]
        if scope is not self._module and name in scope.declared_global:
            scope.global_changes.add(name)
            self._via_functions.add(name)
        elif scope is self._module:
            self._at_top.add(name)
        if scope is self._module or name in scope.declared_global:
            self._module.bound.add(name)
            self._writes.setdefault(name)
            self._statement_bound.append(name)
            self._imported.pop(name, None)
            self._aliases.pop(name, None)
            self._derived.pop(name, None)
            self._functions.discard(name)
            self._plain.add(name)
        elif name not in scope.declared_nonlocal:
            scope.bound.add(name)

    def _bind_base(self, target: ast.expr) -> None:
        """``df["a"] = 1`` at module level modifies, hence binds, ``df``."""
        base = _base_name(target)
        if (base is None and isinstance(target, ast.Subscript) and _is_globals(target.value)
                and isinstance(target.slice, ast.Constant) and isinstance(target.slice.value, str)):
            self._global_assigned(target.slice.value)  # globals()["x"] = ...
            return
        function = self._function_scope()
        if base is not None and function is not None:
            function.changed.append(base)
        elif base is not None and self._stack[-1] is self._module:
            plain, derived = base in self._plain, self._derived.get(base)
            self._bind(base)
            if derived is not None:  # a change in place keeps what the value was made from
                self._derived[base] = derived
            self._mutated.add(base)
            if not plain:
                self._plain.discard(base)

    def _annotations_evaluated(self) -> bool:
        return not self._lazy_annotations

    # -- names, assignments ------------------------------------------------

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self._read(node.id)
        elif isinstance(node.ctx, ast.Store):
            self._bind(node.id)
        else:  # del x: x must exist, and is changed
            self._read(node.id)
            self._bind(node.id)

    def _visit_accessor(self, node: ast.Attribute | ast.Subscript) -> None:
        self.generic_visit(node)
        if not isinstance(node.ctx, ast.Load):
            self._bind_base(node)

    visit_Attribute = _visit_accessor
    visit_Subscript = _visit_accessor

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            self.visit(target)
        if (node is self._statement and isinstance(node.value, ast.Name)
                and all(isinstance(t, ast.Name) for t in node.targets)):
            for target in node.targets:  # `params = cfg`: one object under two names
                self._aliases[target.id] = node.value.id  # type: ignore[union-attr]
        elif (node is self._statement and len(node.targets) > 1
              and all(isinstance(t, ast.Name) for t in node.targets)):
            for target in node.targets[1:]:  # `x = y = []`: one object under two names
                self._aliases[target.id] = node.targets[0].id  # type: ignore[union-attr]
        source = _derived_from(node.value)
        if (node is self._statement and source is not None
                and all(isinstance(t, ast.Name) for t in node.targets)):
            for target in node.targets:  # `view = arr[1:]`: may share memory with `arr`
                self._derived[target.id] = source  # type: ignore[union-attr]

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if isinstance(node.target, ast.Name):
            self._read(node.target.id)
            self.visit(node.value)
            plain, derived = node.target.id in self._plain, self._derived.get(node.target.id)
            self._bind(node.target.id)
            if self._stack[-1] is self._module:  # `items += [2]` changes a list in place
                self._mutated.add(node.target.id)
                if derived is not None:
                    self._derived[node.target.id] = derived
                if not plain:
                    self._plain.discard(node.target.id)
            function = self._function_scope()
            if function is not None and self._stack[-1] is function:  # `lst += [1]` changes lst
                function.changed.append(node.target.id)
        else:
            self.generic_visit(node.target)
            self.visit(node.value)
            self._bind_base(node.target)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
        if not isinstance(node.target, ast.Name):
            self.generic_visit(node.target)
        if self._annotations_evaluated() and self._stack[-1].kind != _FUNCTION:
            self.visit(node.annotation)
        if node.value is None:
            return
        if isinstance(node.target, ast.Name):
            self._bind(node.target.id)
        else:
            self._bind_base(node.target)

    def visit_Call(self, node: ast.Call) -> None:
        """Also analyse the code that ``%time``/``%%time``/``%%capture`` run in this namespace,
        the expressions IPython expands in a command or magic line, and ``%%capture NAME``."""
        self.generic_visit(node)
        self._note_call(node)
        for tree in [*_magic_code(node), *_exec_code(node)]:
            for statement in tree.body:
                self.visit(statement)
        soft, self._soft = self._soft, True
        for expression in _expanded(node):
            self.visit(expression)
        self._soft = soft
        captured = _captured_name(node)
        if captured:
            self._bind(captured)

    def visit_Expr(self, node: ast.Expr) -> None:
        """``model.fit(X, y)`` as a statement: its result is dropped, so it may change ``model``."""
        self.generic_visit(node)
        call = node.value
        if (self._stack[-1] in (self._module, self._function_scope()) and isinstance(call, ast.Call)
                and isinstance(call.func, ast.Attribute) and call.func.attr not in _READ_ONLY):
            base = _base_name(call.func.value)
            if base is not None:
                self._changed(base)
        elif (self._stack[-1] is self._module and isinstance(call, ast.Call)
              and isinstance(call.func, ast.Name) and call.func.id not in self._functions):
            self._method_called.setdefault(call.func.id)  # `tick()`: a closure may change itself

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        index = len(self._stack) - 1
        while self._stack[index].kind == _COMPREHENSION:
            index -= 1
        self._bind(node.target.id, index)

    # -- statements ---------------------------------------------------------

    def visit_For(self, node: ast.For | ast.AsyncFor) -> None:
        self.visit(node.iter)
        self.visit(node.target)
        source = _call_base(node.iter)
        if self._stack[-1] is self._module and isinstance(node.target, ast.Name) and source:
            self._derived[node.target.id] = source  # `for row in rows`: each row is a part of rows
        for stmt in node.body + node.orelse:
            self.visit(stmt)

    visit_AsyncFor = visit_For

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.type is not None:
            self.visit(node.type)
        if node.name:
            self._bind(node.name)
        for stmt in node.body:
            self.visit(stmt)

    def visit_Global(self, node: ast.Global) -> None:
        self._stack[-1].declared_global.update(node.names)

    def visit_Nonlocal(self, node: ast.Nonlocal) -> None:
        self._stack[-1].declared_nonlocal.update(node.names)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            top = alias.name.partition(".")[0]
            self._imports.setdefault(top)
            name = alias.asname or top
            earlier = self._imported.get(name, ())
            self._bind(name)
            if node is self._statement:  # `import a.b` then `import a.c`: `a` needs both
                plain = alias.asname is None and all(" as " not in e for e in earlier)
                self._imported[name] = (*(earlier if plain else ()),
                                        ast.unparse(ast.Import(names=[alias])))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        replayable = node is self._statement and node.level == 0 and node.module != "__future__"
        if node.level == 0 and node.module:
            self._imports.setdefault(node.module.partition(".")[0])
            if node.module == "__future__":
                names = {alias.name for alias in node.names}
                self._lazy_annotations |= "annotations" in names
        for alias in node.names:
            if alias.name == "*":
                self._star_import(node, replayable)
                continue
            self._bind(alias.asname or alias.name)
            if replayable:
                self._imported[alias.asname or alias.name] = (ast.unparse(ast.ImportFrom(
                    module=node.module, names=[alias], level=0)),)

    def _star_import(self, node: ast.ImportFrom, replayable: bool) -> None:
        """``from X import *`` binds the public names of X, when ``star_names`` knows them."""
        names = self._star_names(node.module) if self._star_names and node.module else None
        for name in names or ():
            self._bind(name)
            if replayable:
                self._imported[name] = (f"from {node.module} import {name}",)

    # -- match patterns -----------------------------------------------------

    def visit_MatchAs(self, node: ast.MatchAs) -> None:
        if node.pattern is not None:
            self.visit(node.pattern)
        if node.name:
            self._bind(node.name)

    def visit_MatchStar(self, node: ast.MatchStar) -> None:
        if node.name:
            self._bind(node.name)

    def visit_MatchMapping(self, node: ast.MatchMapping) -> None:
        for child in [*node.keys, *node.patterns]:
            self.visit(child)
        if node.rest:
            self._bind(node.rest)

    # -- functions and classes ----------------------------------------------

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for decorator in node.decorator_list:
            self.visit(decorator)
        self._visit_signature(node.args, node.returns)
        self._bind(node.name)
        changes = self._visit_function_body(node.args, node.body)
        outer = self._stack[-1]
        if outer is self._module:
            self._functions.add(node.name)
            self._changes_of.pop(node.name, None)
            if changes:
                self._changes_of[node.name] = changes
        elif outer.kind == _CLASS:  # a method: the class's instances change what it changes
            outer.nested.append(changes)
            if changes.params and changes.params[0] in changes.mutated:
                outer.self_changing.add(node.name)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._visit_signature(node.args, None)
        self._visit_function_body(node.args, [node.body])

    def _visit_signature(self, args: ast.arguments, returns: ast.expr | None) -> None:
        """Defaults and annotations are evaluated when the function is defined."""
        for default in [*args.defaults, *args.kw_defaults]:
            if default is not None:
                self.visit(default)
        if not self._annotations_evaluated():
            return
        annotations = [param.annotation for param in _parameters(args)]
        for annotation in [*annotations, returns]:
            if annotation is not None:
                self.visit(annotation)

    def _visit_function_body(self, args: ast.arguments, body: list[Any]) -> Changes:
        """Visit a function's body; return what calling it changes."""
        params = tuple(param.arg for param in _parameters(args))
        positional = [*args.posonlyargs, *args.args]
        defaults = {p.arg for p in positional[len(positional) - len(args.defaults):]
                    if args.defaults} | {p.arg for p, d in zip(args.kwonlyargs, args.kw_defaults)
                                         if d is not None}
        scope = _Scope(_FUNCTION, bound=set(params), params=params, positional=len(positional),
                       defaults=defaults)
        self._stack.append(scope)
        for node in body:
            self.visit(node)
        self._stack.pop()
        parent = len(self._stack) - 1
        for name in dict.fromkeys(scope.pending):
            if name in scope.declared_global:
                self._module_read(name, deferred=True)
            elif name not in scope.bound:
                self._lookup(name, parent, deferred=True, see_class=False)
        changes = _function_changes(scope)
        outer = self._stack[parent]
        if outer.kind != _CLASS and self._function_scope() is not None:
            # a nested function may be called by its parent: its changes are the parent's
            into = self._function_scope()
            into.changed.extend(changes.globals)  # type: ignore[union-attr]
            into.calls.extend((c.callee, {s: n for s, n, p in c.passed if not p})  # type: ignore[union-attr]
                              for c in changes.calls)
        return changes

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        keywords = [keyword.value for keyword in node.keywords]
        for expr in [*node.decorator_list, *node.bases, *keywords]:
            self.visit(expr)
        scope = _Scope(_CLASS)
        self._stack.append(scope)
        for stmt in node.body:
            self.visit(stmt)
        self._stack.pop()
        self._bind(node.name)
        if self._stack[-1] is self._module:
            self._classes.add(node.name)
            changes = Changes(of_class=True, self_changing=frozenset(scope.self_changing))
            for method in scope.nested:
                changes = changes.merged(method)
            self._changes_of.pop(node.name, None)
            if changes:
                self._changes_of[node.name] = changes

    # -- comprehensions -----------------------------------------------------

    def _visit_comprehension(
        self, generators: list[ast.comprehension], *elements: ast.expr
    ) -> None:
        """The first iterable is evaluated outside; the rest in a new scope."""
        self.visit(generators[0].iter)
        self._stack.append(_Scope(_COMPREHENSION))
        for i, generator in enumerate(generators):
            if i:
                self.visit(generator.iter)
            self.visit(generator.target)
            for condition in generator.ifs:
                self.visit(condition)
        for element in elements:
            self.visit(element)
        self._stack.pop()

    def visit_ListComp(self, node: ast.ListComp) -> None:
        self._visit_comprehension(node.generators, node.elt)

    def visit_SetComp(self, node: ast.SetComp) -> None:
        self._visit_comprehension(node.generators, node.elt)

    def visit_GeneratorExp(self, node: ast.GeneratorExp) -> None:
        self._visit_comprehension(node.generators, node.elt)

    def visit_DictComp(self, node: ast.DictComp) -> None:
        self._visit_comprehension(node.generators, node.key, node.value)


def _function_changes(scope: _Scope) -> Changes:
    """What calling the function whose body was ``scope`` changes (see :class:`Changes`)."""
    def where(name: str) -> str:
        if name in scope.params:
            return "parameter"
        if name in scope.declared_global:
            return "global"
        if name in scope.bound or name in scope.declared_nonlocal:
            return "local"
        return "global"

    changed_globals = set(scope.global_changes)
    mutated = set()
    for name in scope.changed:
        kind = where(name)
        if kind == "parameter":
            mutated.add(name)
        elif kind == "global":
            changed_globals.add(name)
    calls = []
    for callee, passed in scope.calls:
        if where(callee) != "global":
            continue
        kept = tuple((slot, name, where(name) == "parameter") for slot, name in passed.items()
                     if where(name) != "local")
        calls.append(Call(callee, kept))
    return Changes(scope.params, scope.positional, frozenset(changed_globals), frozenset(mutated),
                   tuple(dict.fromkeys(calls)), defaults=frozenset(scope.defaults))
