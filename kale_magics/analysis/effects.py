"""What a cell's code does besides binding names: the effects a pipeline cannot carry between steps.

Each pipeline step runs in its own process, so some things a notebook cell does
stay in the step that does them, while in the notebook every later cell sees
them. This module finds them in a cell's code (plain Python from
``names.python_source``), by the dotted name of what is called or assigned,
with import aliases resolved (``np.random.seed`` is ``numpy.random.seed``):

* process state: environment variables (``os.environ[...] =``, ``%env``),
  the working directory (``os.chdir``, ``%cd``), random seeds, ``sys.path``,
  library options (``pd.set_option``, ``warnings.filterwarnings``, ...);
* magics a step skips (anything but the ones ``runtime.shell`` runs);
* reads of files and other outside state (``open``, ``pd.read_csv``, ``!cmd``),
  which make a cached step's result stale when the files change;
* names bound to handles (``fh = open(...)``, ``conn = sqlite3.connect(...)``)
  and generators, which cannot be passed to another step;
* the state of imported modules (``mymod.LABEL = 1``, a call of a function of a
  module the notebook writes with ``%%writefile`` that rebinds its globals):
  a later step imports the module again, without the change;
* assignments the name analysis cannot see (``globals().update(d)``,
  ``globals()[name] = v``, ``exec(code)``).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from kale_magics.runtime.shell import CELL_MAGICS, LINE_MAGICS

_ENV, _CWD, _SEED, _PATH, _OPTIONS = ("environment variables", "the working directory",
                                      "random seeds", "sys.path", "library settings")

#: Calls that change process state, by dotted name (a prefix ending in "." matches a family).
_STATE_CALLS = {
    "os.putenv": _ENV, "os.unsetenv": _ENV, "os.environ.update": _ENV, "os.environ.setdefault": _ENV,
    "os.environ.pop": _ENV, "os.environ.clear": _ENV, "os.environ.__setitem__": _ENV,
    "os.chdir": _CWD, "os.umask": _OPTIONS,
    "random.seed": _SEED, "random.setstate": _SEED, "numpy.random.seed": _SEED,
    "numpy.random.set_state": _SEED, "torch.manual_seed": _SEED, "torch.cuda.manual_seed": _SEED,
    "torch.cuda.manual_seed_all": _SEED, "tensorflow.random.set_seed": _SEED,
    "tensorflow.keras.utils.set_random_seed": _SEED, "keras.utils.set_random_seed": _SEED,
    "transformers.set_seed": _SEED, "lightning.seed_everything": _SEED,
    "pytorch_lightning.seed_everything": _SEED,
    "sys.path.append": _PATH, "sys.path.insert": _PATH, "sys.path.extend": _PATH,
    "sys.path.remove": _PATH, "site.addsitedir": _PATH,
    "pandas.set_option": _OPTIONS, "pandas.reset_option": _OPTIONS, "numpy.set_printoptions": _OPTIONS,
    "numpy.seterr": _OPTIONS, "matplotlib.use": _OPTIONS, "matplotlib.rc": _OPTIONS,
    "matplotlib.rcParams.update": _OPTIONS, "matplotlib.pyplot.rc": _OPTIONS,
    "matplotlib.pyplot.style.use": _OPTIONS, "matplotlib.style.use": _OPTIONS,
    "seaborn.set": _OPTIONS, "seaborn.set_theme": _OPTIONS, "seaborn.set_style": _OPTIONS,
    "sklearn.set_config": _OPTIONS, "torch.set_default_dtype": _OPTIONS,
    "torch.set_num_threads": _OPTIONS, "torch.set_grad_enabled": _OPTIONS,
    "warnings.filterwarnings": _OPTIONS, "warnings.simplefilter": _OPTIONS,
    "warnings.resetwarnings": _OPTIONS, "logging.basicConfig": _OPTIONS, "logging.disable": _OPTIONS,
    "logging.getLogger().setLevel": _OPTIONS, "locale.setlocale": _OPTIONS,
    "socket.setdefaulttimeout": _OPTIONS, "sys.setrecursionlimit": _OPTIONS, "time.tzset": _OPTIONS,
    "decimal.setcontext": _OPTIONS,
}
#: Assignment targets (and their items and attributes) that are process state.
_STATE_TARGETS = {"os.environ": _ENV, "sys.path": _PATH, "pandas.options": _OPTIONS,
                  "matplotlib.rcParams": _OPTIONS, "matplotlib.pyplot.rcParams": _OPTIONS,
                  "decimal.getcontext()": _OPTIONS}
#: Magics that change process state in a step.
_STATE_MAGICS = {"env": _ENV, "set_env": _ENV, "cd": _CWD}

#: Calls whose result is a handle, with what it is.
_HANDLE_CALLS = {
    "open": "an open file", "io.open": "an open file", "codecs.open": "an open file",
    "gzip.open": "an open file", "bz2.open": "an open file", "lzma.open": "an open file",
    "tarfile.open": "an open file", "zipfile.ZipFile": "an open file", "os.fdopen": "an open file",
    "tempfile.TemporaryFile": "an open file", "tempfile.NamedTemporaryFile": "an open file",
    "socket.socket": "a socket", "socket.create_connection": "a socket",
    "urllib.request.urlopen": "an open connection", "subprocess.Popen": "a running process",
    "sqlite3.connect": "a database connection", "psycopg2.connect": "a database connection",
    "psycopg.connect": "a database connection", "pymysql.connect": "a database connection",
    "MySQLdb.connect": "a database connection", "pyodbc.connect": "a database connection",
    "duckdb.connect": "a database connection", "sqlalchemy.create_engine": "a database engine",
}
#: Last parts of dotted call names that read files or other outside state.
_READ_CALLS = frozenset({
    "open", "load", "loadtxt", "genfromtxt", "fromfile", "read_text", "read_bytes", "listdir",
    "scandir", "walk", "glob", "iglob", "rglob", "iterdir", "urlopen", "imread", "memmap",
    "load_dataset", "load_workbook", "connect", "system", "getoutput"})
_READ_PREFIXES = ("read_", "fetch_")


@dataclass(frozen=True)
class Effect:
    """One thing a cell does: what (``"random.seed(...)"``), its kind and the line (1-based)."""

    what: str
    kind: str
    line: int


@dataclass(frozen=True)
class Effects:
    """What a cell's code does besides binding names.

    Attributes
    ----------
    state:
        Changes of process state; ``kind`` is what changes (``"random seeds"``).
    skipped_magics:
        Magics a pipeline step skips, as written (``"%matplotlib inline"``).
    reads_outside:
        Calls that read files or other outside state (``"pandas.read_csv(...)"``).
    handles:
        Names bound at the top level of the cell to a handle or a generator, with what it is.
    opaque:
        Assignments of variables the name analysis cannot see (``globals().update(d)``).
    """

    state: tuple[Effect, ...] = ()
    skipped_magics: tuple[Effect, ...] = ()
    reads_outside: tuple[Effect, ...] = ()
    handles: Mapping[str, Effect] = field(default_factory=dict)
    opaque: tuple[Effect, ...] = ()


@dataclass(frozen=True)
class NotebookFacts:
    """What the whole notebook defines that the effects of one cell depend on.

    Attributes
    ----------
    aliases:
        Import aliases (:func:`import_aliases`).
    local_modules:
        Modules the notebook writes with ``%%writefile NAME.py`` -> the functions in them
        that rebind the module's globals (``global COUNT``).
    generators:
        Top-level functions of the notebook that are generators (their body yields).
    """

    aliases: Mapping[str, str] = field(default_factory=dict)
    local_modules: Mapping[str, frozenset[str]] = field(default_factory=dict)
    generators: frozenset[str] = frozenset()


def notebook_facts(trees: Iterable[ast.Module]) -> NotebookFacts:
    """The :class:`NotebookFacts` of the cells parsed as ``trees``."""
    trees = list(trees)
    modules: dict[str, frozenset[str]] = {}
    generators = set()
    for tree in trees:
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _yields(node):
                generators.add(node.name)
            elif isinstance(node, ast.Expr):  # `%%writefile` is one call statement
                written = _written_module(node.value)
                if written is not None:
                    modules[written[0]] = written[1]
    return NotebookFacts(import_aliases(trees), modules, frozenset(generators))


def _yields(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Whether ``function``'s own body (not a nested function's) yields."""
    todo = list(function.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Yield, ast.YieldFrom)):
            return True
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            todo.extend(ast.iter_child_nodes(node))
    return False


def _written_module(node: ast.AST) -> tuple[str, frozenset[str]] | None:
    """``("mymod", {"inc"})`` for ``%%writefile mymod.py`` holding ``def inc(): global COUNT``."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "run_cell_magic" and len(node.args) == 3
            and all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in node.args)
            and node.args[0].value == "writefile"):  # type: ignore[attr-defined]
        return None
    words = node.args[1].value.split()  # type: ignore[attr-defined]
    path = words[-1] if words else ""
    if not path.endswith(".py"):
        return None
    try:
        body = ast.parse(node.args[2].value)  # type: ignore[attr-defined]
    except SyntaxError:
        return None
    changing = frozenset(n.name for n in body.body if isinstance(n, ast.FunctionDef)
                         and any(isinstance(g, ast.Global) for g in ast.walk(n)))
    return path.replace("\\", "/").rsplit("/", 1)[-1][:-3], changing


def import_aliases(trees: Iterable[ast.Module]) -> dict[str, str]:
    """Names bound by import statements anywhere in ``trees`` -> the dotted name they stand for.

    ``import numpy as np`` gives ``np -> numpy``; ``from os import environ`` gives
    ``environ -> os.environ``. The last binding of a name wins.
    """
    aliases: dict[str, str] = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    aliases[alias.asname or alias.name.partition(".")[0]] = (
                        alias.name if alias.asname else alias.name.partition(".")[0])
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    if alias.name != "*":
                        aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return aliases


def dotted(node: ast.AST, aliases: Mapping[str, str]) -> str:
    """``numpy.random.seed`` for ``np.random.seed`` (``f()`` for a call), "" when not a name chain."""
    if isinstance(node, ast.Name):
        return aliases.get(node.id, node.id)
    if isinstance(node, ast.Attribute):
        base = dotted(node.value, aliases)
        return f"{base}.{node.attr}" if base else ""
    if isinstance(node, ast.Call):
        base = dotted(node.func, aliases)
        return f"{base}()" if base else ""
    if isinstance(node, ast.Subscript):
        return dotted(node.value, aliases)
    return ""


def cell_effects(tree: ast.Module, facts: NotebookFacts | Mapping[str, str]) -> Effects:
    """The effects of one cell's code (see :class:`Effects`); ``facts`` may be the import
    aliases alone."""
    if not isinstance(facts, NotebookFacts):
        facts = NotebookFacts(aliases=facts)
    aliases = facts.aliases
    state, magics, reads, opaque = [], [], [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = dotted(node.func, aliases)
            opaque.extend(_opaque_call(node, name))
            module, _, function = name.rpartition(".")
            if function in facts.local_modules.get(module, ()):
                state.append(Effect(f"{name}(...)", f"the state of module `{module}`", node.lineno))
            magic = _magic(node)
            if magic is not None:
                kind, text = magic
                if kind == "line" and text.split()[0] in _STATE_MAGICS:
                    state.append(Effect(f"%{text}", _STATE_MAGICS[text.split()[0]], node.lineno))
                if _skipped(kind, text):
                    magics.append(Effect(("%" if kind == "line" else "%%") + text, "magic",
                                         node.lineno))
            elif name in _STATE_CALLS:
                state.append(Effect(f"{name}(...)", _STATE_CALLS[name], node.lineno))
            if _reads_outside(name, magic):
                reads.append(Effect(f"{name}(...)" if magic is None else "a shell command",
                                    "read", node.lineno))
        for target in _assigned(node):
            base = dotted(target, aliases)
            kind = next((k for prefix, k in _STATE_TARGETS.items()
                         if base == prefix or base.startswith(prefix + ".")), None)
            if kind is None and isinstance(target, ast.Attribute):
                kind = _module_state(target, aliases)
            if kind is not None:
                state.append(Effect(f"{ast.unparse(target)} = ...", kind, node.lineno))
            if (isinstance(target, ast.Subscript) and _namespace_call(target.value)
                    and not (isinstance(target.slice, ast.Constant)
                             and isinstance(target.slice.value, str))):
                opaque.append(Effect(f"{ast.unparse(target)} = ...", "opaque", node.lineno))
    def by_line(found: list[Effect]) -> tuple[Effect, ...]:
        return tuple(sorted(found, key=lambda e: e.line))

    return Effects(by_line(state), by_line(magics), by_line(reads),
                   _handles(tree, aliases, facts.generators), by_line(opaque))


def _namespace_call(node: ast.expr) -> bool:
    """``globals()``, ``vars()`` or ``locals()`` (at the top level, the module's namespace)."""
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args
            and node.func.id in ("globals", "vars", "locals"))


def _opaque_call(node: ast.Call, name: str) -> list[Effect]:
    """``globals().update(d)``, ``exec(code)``, ``setattr(sys.modules[__name__], ...)``."""
    func = node.func
    if isinstance(func, ast.Attribute) and _namespace_call(func.value) \
            and func.attr in ("update", "setdefault", "__setitem__", "pop", "clear") \
            and (node.args or func.attr != "update"):
        if not (func.attr == "setdefault" and node.args and isinstance(node.args[0], ast.Constant)):
            return [Effect(f"{ast.unparse(func)}(...)", "opaque", node.lineno)]
    if name == "exec" and not (len(node.args) == 1 and isinstance(node.args[0], ast.Constant)):
        return [Effect("exec(...)", "opaque", node.lineno)]
    if name in ("setattr", "delattr") and node.args \
            and ast.unparse(node.args[0]).startswith("sys.modules"):
        return [Effect(f"{name}({ast.unparse(node.args[0])}, ...)", "opaque", node.lineno)]
    return []


def _module_state(target: ast.Attribute, aliases: Mapping[str, str]) -> str | None:
    """``the state of module `mymod``` for ``mymod.LABEL = 1`` (``mymod`` an imported name)."""
    node: ast.expr = target
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    if isinstance(node, ast.Name) and node.id in aliases:
        return f"the state of module `{aliases[node.id].partition('.')[0]}`"
    return None


def _assigned(node: ast.AST) -> list[ast.expr]:
    """Targets ``node`` assigns or deletes that are items or attributes (``os.environ["A"]``)."""
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        targets = [node.target]
    elif isinstance(node, ast.Delete):
        targets = node.targets
    else:
        return []
    return [t for t in targets if isinstance(t, (ast.Subscript, ast.Attribute))
            or (isinstance(t, ast.Name) and isinstance(node, ast.AugAssign))]


def _magic(node: ast.Call) -> tuple[str, str] | None:
    """``("line", "env A=1")`` for ``get_ipython().run_line_magic('env', 'A=1')``, likewise
    ``("cell", "bash")``, else None."""
    func = node.func
    if not (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Call)
            and getattr(func.value.func, "id", "") == "get_ipython"):
        return None
    args = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    if func.attr in ("system", "getoutput"):
        return "shell", args[0] if args else ""
    if func.attr in ("run_line_magic", "run_cell_magic") and len(args) >= 2:
        return ("line" if func.attr == "run_line_magic" else "cell"), f"{args[0]} {args[1]}".strip()
    return None


def _skipped(kind: str, text: str) -> bool:
    name = text.split()[0] if text.split() else ""
    if name == "kale" or text.startswith("load_ext kale_magics"):
        return False
    return (kind == "line" and name not in LINE_MAGICS) or (kind == "cell" and name not in CELL_MAGICS)


def _reads_outside(name: str, magic: tuple[str, str] | None) -> bool:
    if magic is not None:
        return magic[0] == "shell" or (magic[0] == "cell" and magic[1].split()[0] in
                                       ("bash", "sh", "script"))
    last = name.rsplit(".", 1)[-1]
    return last in _READ_CALLS or last.startswith(_READ_PREFIXES) or name.startswith("requests.")


def _handles(tree: ast.Module, aliases: Mapping[str, str],
             generators: frozenset[str] = frozenset()) -> dict[str, Effect]:
    """Top-level names whose last binding in ``tree`` is a handle (``fh = open(p)``) or a
    generator (``gen = (x for x in xs)``, a call of a generator function of the notebook)."""
    found: dict[str, Effect] = {}
    for node in tree.body:
        pairs: list[tuple[ast.expr, ast.expr | None]] = []
        if isinstance(node, ast.Assign):
            pairs = [(t, node.value) for t in node.targets]
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            pairs = [(i.optional_vars, i.context_expr) for i in node.items if i.optional_vars]
        for target, value in pairs:
            kind = _handle_kind(value, aliases)
            if isinstance(value, ast.GeneratorExp) or (
                    isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
                    and value.func.id in generators):
                kind = "a generator"
            for name in (n.id for n in ast.walk(target) if isinstance(n, ast.Name)):
                if kind is None or not isinstance(target, ast.Name):
                    found.pop(name, None)
                else:
                    found[name] = Effect(f"{ast.unparse(value)[:60]}", kind, node.lineno)
    return found


def _handle_kind(value: ast.expr | None, aliases: Mapping[str, str]) -> str | None:
    if not isinstance(value, ast.Call):
        return None
    name = dotted(value.func, aliases)
    if name in _HANDLE_CALLS:
        return _HANDLE_CALLS[name]
    last = name.rsplit(".", 1)[-1]
    if last == "cursor()" or last == "cursor":
        return "a database cursor"
    if last == "open" and name != "open":
        return "an open file"
    return None
