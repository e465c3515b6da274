"""What a pickled value carries between steps: data travels, code is rebound, handles are refused.

This module runs inside a pipeline step (embedded like the other runtime
modules), so it imports only the standard library at the top; cloudpickle and
dill are imported inside functions. :mod:`kale_magics.runtime.marshal` calls it
for its ``cloudpickle`` and ``dill`` formats.

The rules, each making a step see what the notebook sees:

* **Functions and classes defined in the notebook resolve their globals in the
  step that uses them.** cloudpickle saves a ``__main__`` function with a copy
  of the globals it references, taken when it is saved
  (``cloudpickle.cloudpickle._function_getstate``); in the notebook a function
  reads its globals when it is called. On load, :class:`StepUnpickler` makes
  the function's globals the loading step's namespace (its ``_make_function``
  gets that dict), and the saved copy only fills the names the namespace
  lacks (``_function_setstate`` is given only those). Class methods are
  functions, so they follow.
* **The prelude's functions and classes travel by reference.** Every step runs
  the imports and functions cells first, so an instance of a class the
  functions cell defines is loaded as an instance of the loading step's own
  class of that name (``isinstance`` holds, as in the notebook), not of a copy.
* **Modules are not data.** A module (also inside a container) is saved as a
  reference that imports it again, with the submodules the saving step had
  loaded under it (``email.mime.text`` for ``email``); cloudpickle's own
  ``subimport`` would import only the top package.
* **Handles are refused**: open files, sockets, database connections, held
  locks, processes (a free lock, as many objects hold one, travels as a new one). dill would save an open file by name and mode and reopen it on
  load, truncating a file opened for writing; cloudpickle saves a file opened
  for reading as its contents. Either way the next step gets something else
  than the notebook's object, so :class:`Refused` is raised instead.
"""

from __future__ import annotations

import io
import pickle
import sys
import types
from typing import IO, Any, Callable, Mapping

#: Modules whose connection, cursor, engine, client, session and pool objects are handles.
_DATABASE_MODULES = frozenset({
    "sqlite3", "psycopg2", "psycopg", "pymysql", "MySQLdb", "mysql", "pyodbc", "cx_Oracle",
    "oracledb", "sqlalchemy", "pymongo", "duckdb", "snowflake", "clickhouse_driver", "cassandra",
    "paramiko"})
_DATABASE_WORDS = ("Connection", "Cursor", "Engine", "Client", "Session", "Pool")
#: (module, class name) of other handles, with what they are.
_HANDLES = {("socket", "socket"): "a socket", ("subprocess", "Popen"): "a running process",
            ("mmap", "mmap"): "a memory map", ("tempfile", "_TemporaryFileWrapper"): "an open file",
            ("select", "epoll"): "a selector", ("select", "poll"): "a selector"}
_IN_MEMORY_FILES = (io.StringIO, io.BytesIO)
_CLOUDPICKLE = "cloudpickle.cloudpickle"
_HERE = __name__


class Refused(Exception):
    """A value holds something that must not travel between steps (a handle).

    Parameters
    ----------
    message:
        What the value holds and how to fix it, without the variable's name
        (the caller adds it).
    """


def handle_kind(obj: object) -> str | None:
    """What kind of handle ``obj`` is (``"an open file"``, ``"a socket"``, ...), or None.

    Handles are objects bound to the process that made them: open files (not
    ``StringIO`` / ``BytesIO``), sockets, held locks, running processes, memory maps,
    selectors, and the connection, cursor, engine, client, session and pool
    objects of database client libraries.
    """
    if isinstance(obj, io.IOBase) and not isinstance(obj, _IN_MEMORY_FILES):
        return "an open file"
    for cls in type(obj).__mro__:
        module = (getattr(cls, "__module__", "") or "").split(".")[0]
        if module in ("_thread", "threading") and "lock" in cls.__name__.lower():
            return "a held lock" if _held(obj) else None
        if (module, cls.__name__) in _HANDLES:
            return _HANDLES[module, cls.__name__]
        if module in _DATABASE_MODULES and any(word in cls.__name__ for word in _DATABASE_WORDS):
            return "a connection"
    return None


def _held(lock: Any) -> bool:
    """Whether ``lock`` is acquired (a free lock travels as a new free lock, as dill saves it)."""
    locked = getattr(lock, "locked", None)
    if callable(locked):
        return bool(locked())
    return repr(lock).startswith("<locked")


def _refusal(obj: object, kind: str) -> Refused:
    cls = type(obj)
    name = getattr(obj, "name", None)
    detail = f" on {name!r}" if isinstance(name, (str, int)) and kind == "an open file" else ""
    return Refused(f"it is (or holds) {kind} ({cls.__module__}.{cls.__qualname__}{detail}), which "
                   "belongs to the process that opened it and cannot travel to another step; pass "
                   "what opens it (a path, a URL, settings) and open it again in the step that "
                   "uses it")


def import_module(name: str, submodules: tuple[str, ...] = ()) -> types.ModuleType:
    """Import ``name`` and ``submodules`` (full dotted names) and return module ``name``."""
    import importlib

    for submodule in submodules:
        try:
            importlib.import_module(submodule)
        except ImportError:
            pass  # the saving step had it loaded; using it fails as the notebook would
    return importlib.import_module(name)


def _loaded_submodules(module: types.ModuleType) -> tuple[str, ...]:
    """Submodules of ``module`` that are loaded and reachable as its attributes, sorted."""
    prefix = module.__name__ + "."
    found = []
    for name, sub in list(sys.modules.items()):
        if not name.startswith(prefix) or sub is None:
            continue
        owner: Any = module
        for part in name[len(prefix):].split("."):
            owner = getattr(owner, part, None)
        if owner is sub:
            found.append(name)
    return tuple(sorted(found))


def _importable(module: types.ModuleType) -> bool:
    spec = getattr(module, "__spec__", None)
    return sys.modules.get(module.__name__) is module and spec is not None


def prelude_object(name: str) -> Any:
    """The prelude's function or class ``name``, outside a step: the kernel's ``__main__``'s."""
    return getattr(sys.modules["__main__"], name)


def _reduce(obj: object, prelude: Mapping[int, str]) -> Any:
    """The reduction this module imposes on ``obj``, or NotImplemented to let the pickler decide."""
    if id(obj) in prelude:
        return prelude_object, (prelude[id(obj)],)
    if isinstance(obj, types.ModuleType):
        if _importable(obj):
            return import_module, (obj.__name__, _loaded_submodules(obj))
        return NotImplemented
    kind = handle_kind(obj)
    if kind is not None:
        raise _refusal(obj, kind)
    return NotImplemented


def prelude_ids(prelude: Mapping[str, Any]) -> dict[int, str]:
    """``id -> name`` of the functions and classes among ``prelude`` (the names the prelude bound)."""
    return {id(value): name for name, value in prelude.items()
            if isinstance(value, (type, types.FunctionType))
            and getattr(value, "__module__", None) == "__main__"}


def dump(value: object, file: IO[bytes], buffer_callback: Callable[[Any], Any] | None = None,
         prelude: Mapping[str, Any] | None = None) -> None:
    """Pickle ``value`` to ``file`` with cloudpickle (protocol 5) under the rules above.

    Parameters
    ----------
    value:
        The value to save.
    file:
        A binary file open for writing.
    buffer_callback:
        Pickle's out-of-band buffer callback (see :func:`pickle.dump`).
    prelude:
        The names the step's imports and functions cells bound, with their
        values: those functions and classes are saved by reference.

    Raises
    ------
    Refused
        ``value`` is or holds a handle.
    pickle.PicklingError, TypeError, ...
        What cloudpickle raises for a value it cannot save.
    """
    import cloudpickle

    ids = prelude_ids(prelude or {})

    class StepPickler(cloudpickle.Pickler):
        def reducer_override(self, obj: Any) -> Any:
            reduced = _reduce(obj, ids)
            return super().reducer_override(obj) if reduced is NotImplemented else reduced

    StepPickler(file, protocol=5, buffer_callback=buffer_callback).dump(value)


def dump_dill(value: object, file: IO[bytes], prelude: Mapping[str, Any] | None = None) -> None:
    """Pickle ``value`` with dill (protocol 5) under the same rules; raises :class:`Refused`."""
    import dill

    ids = prelude_ids(prelude or {})

    class StepDillPickler(dill.Pickler):  # type: ignore[misc, name-defined]
        def reducer_override(self, obj: Any) -> Any:
            return _reduce(obj, ids)

    StepDillPickler(file, protocol=5).dump(value)


class _Rebinding:
    """The ``find_class`` of an unpickler that loads into a step (see the module's rules).

    Attributes
    ----------
    namespace:
        The loading step's namespace, or None to load as plain pickle does.
    prelude:
        The names the loading step's prelude bound (for prelude references).
    """

    namespace: dict[str, Any] | None
    prelude: Mapping[str, Any]

    def find_class(self, module: str, name: str) -> Any:
        special = self._special(module, name) if self.namespace is not None else None
        return special or super().find_class(module, name)  # type: ignore[misc]

    def _special(self, module: str, name: str) -> Callable[..., Any] | None:
        return {(_HERE, "prelude_object"): self._prelude_object,
                (_CLOUDPICKLE, "_make_function"): self._make_function,
                (_CLOUDPICKLE, "_function_setstate"): self._function_setstate,
                ("dill._dill", "_create_function"): self._create_dill_function,
                }.get((module, name))

    def _prelude_object(self, name: str) -> Any:
        return self.prelude[name] if name in self.prelude else prelude_object(name)

    def _globals(self, saved: dict[str, Any] | None) -> dict[str, Any] | None:
        """The step's namespace for a function saved from ``__main__``, else its own globals."""
        main = saved is not None and saved.get("__name__") == "__main__"
        return self.namespace if main else saved

    def _make_function(self, code: types.CodeType, saved: dict[str, Any], *args: Any) -> Any:
        from cloudpickle import cloudpickle as cp

        return cp._make_function(code, self._globals(saved), *args)

    def _function_setstate(self, function: types.FunctionType, state: Any) -> None:
        """cloudpickle's setstate, where the saved globals only fill names the step lacks."""
        from cloudpickle import cloudpickle as cp

        namespace = self.namespace
        if function.__globals__ is namespace:
            attributes, slots = state
            saved = slots.get("__globals__", {})
            state = (attributes, {**slots, "__globals__": {
                k: v for k, v in saved.items() if k not in namespace}})
        cp._function_setstate(function, state)

    def _create_dill_function(self, code: types.CodeType, saved: dict[str, Any] | None,
                              *args: Any) -> Any:
        import dill

        return dill._dill._create_function(code, self._globals(saved), *args)


class StepUnpickler(_Rebinding, pickle.Unpickler):
    """Unpickle a cloudpickle pickle into a step (see :func:`load`)."""

    def __init__(self, file: IO[bytes], namespace: dict[str, Any] | None,
                 prelude: Mapping[str, Any] | None = None, buffers: Any = None) -> None:
        super().__init__(file, buffers=buffers)
        self.namespace, self.prelude = namespace, prelude or {}


def load(file: IO[bytes], namespace: dict[str, Any] | None = None,
         prelude: Mapping[str, Any] | None = None, buffers: Any = None) -> Any:
    """Unpickle a cloudpickle pickle from ``file`` into the step ``namespace``.

    Parameters
    ----------
    file:
        A binary file open for reading.
    namespace:
        The loading step's namespace: functions and classes defined in the
        notebook resolve their globals there. None loads as :func:`pickle.load`.
    prelude:
        The names the loading step's imports and functions cells bound.
    buffers:
        Out-of-band buffers (see :func:`pickle.load`).
    """
    return StepUnpickler(file, namespace, prelude, buffers).load()


def load_dill(file: IO[bytes], namespace: dict[str, Any] | None = None,
              prelude: Mapping[str, Any] | None = None) -> Any:
    """Unpickle a dill pickle from ``file`` into the step ``namespace`` (see :func:`load`)."""
    import dill

    class StepDillUnpickler(_Rebinding, dill.Unpickler):  # type: ignore[misc, name-defined]
        pass

    unpickler = StepDillUnpickler(file)
    unpickler.namespace, unpickler.prelude = namespace, prelude or {}
    return unpickler.load()
