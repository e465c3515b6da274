"""Packages a step installs on the cluster, pinned to the compiling environment.

Modules the code imports are mapped to distributions (as
``importlib.metadata.packages_distributions()`` does) and pinned to the version
installed here (``scikit-learn==1.9.1``); standard library modules
(``sys.stdlib_module_names``) are left out, so ``import random`` never becomes
a PyPI package (Kale's fault). A local run installs none of them.
"""

from __future__ import annotations

import ast
import csv
import functools
import os
import sys
from importlib import metadata
from typing import Iterable

from kale_magics.model import requirement_name

#: Distributions the step runtime itself needs on the cluster.
RUNTIME_DISTRIBUTIONS = ("cloudpickle", "dill")
#: Extra distributions the runtime needs when a module is used (DataFrames travel as Arrow).
RUNTIME_EXTRAS = {"pandas": ("pyarrow",)}
#: Provided by KFP's own install in every lightweight component.
PROVIDED = frozenset({"kfp"})


class InstalledPackages:
    """A snapshot of the compiling environment's distributions: who provides which module.

    Built like ``importlib.metadata.packages_distributions()`` (a distribution's
    ``top_level.txt``, else the top-level names of the ``.py`` files in its file
    list) but from the ``RECORD`` text directly: the stdlib function makes a
    path object per installed file and parses every ``METADATA``, 230 ms here
    against about 15 ms. Use :func:`installed_packages` to share a snapshot.
    """

    def __init__(self) -> None:
        self._owners: dict[str, list[metadata.Distribution]] = {}
        for dist in metadata.distributions():
            for module in _top_level_names(dist):
                self._owners.setdefault(module, []).append(dist)
        self._versions: dict[str, str | None] = {}
        self._plugins: dict[str, set[str]] | None = None

    def owner(self, module: str) -> str | None:
        """The name of the first distribution providing top-level ``module``, or None."""
        dists = self._owners.get(module)
        return dists[0].metadata["Name"] if dists else None

    def version(self, distribution: str) -> str | None:
        """The installed version of ``distribution``, or None."""
        if distribution not in self._versions:
            try:
                self._versions[distribution] = metadata.version(distribution)
            except metadata.PackageNotFoundError:
                self._versions[distribution] = None
        return self._versions[distribution]

    def marshal_plugins(self, module: str) -> list[str]:
        """Distributions declaring a ``kale_magics.marshal`` entry point (a marshal backend, see
        ``runtime/backends.py``) for a type of top-level ``module``: a step using ``module``
        needs them to save or load such values."""
        if self._plugins is None:
            self._plugins = {}
            for entry in metadata.entry_points(group="kale_magics.marshal"):
                if entry.dist is not None:
                    self._plugins.setdefault(entry.name.split(".")[0], set()).add(entry.dist.name)
        return sorted(self._plugins.get(module, ()))

    def pin(self, distribution: str) -> str:
        """``name==version`` when installed, else the bare name."""
        version = self.version(distribution)
        return f"{distribution}=={version}" if version else distribution


def installed_packages() -> InstalledPackages:
    """The snapshot of the current environment, reused while ``sys.path`` and its folders'
    modification times are unchanged (installing or upgrading a distribution adds or renames
    an entry in its ``site-packages`` folder), so a warm kernel reads it once."""
    return _snapshot(tuple((entry, _mtime_ns(entry)) for entry in sys.path))


@functools.lru_cache(maxsize=1)
def _snapshot(environment: tuple[tuple[str, int | None], ...]) -> InstalledPackages:
    """The snapshot for one state of the environment (a memo of a pure function of its key)."""
    return InstalledPackages()


def _mtime_ns(path: str) -> int | None:
    try:
        return os.stat(path or ".").st_mtime_ns
    except OSError:
        return None


def _top_level_names(dist: metadata.Distribution) -> set[str]:
    """Top-level modules of ``dist``: ``top_level.txt``, else inferred from its ``.py`` files,
    as ``importlib.metadata`` does (Python 3.11 ``_top_level_declared``/``_top_level_inferred``)."""
    declared = (dist.read_text("top_level.txt") or "").split()
    if declared:
        return set(declared)
    record = dist.read_text("RECORD")
    paths = ([row[0] for row in csv.reader(record.splitlines()) if row] if record is not None
             else [str(f) for f in dist.files or ()])
    names = set()
    for path in paths:
        if path.endswith(".py"):
            first, nested, _ = path.partition("/")
            names.add(first if nested else path[:-3])
    return names


def step_packages(modules: Iterable[str], installed: InstalledPackages) -> tuple[list[str], list[str]]:
    """Pinned requirements for code importing ``modules``.

    Parameters
    ----------
    modules:
        Top-level module names the code imports (``"sklearn"``, ``"os"``).
    installed:
        The compiling environment (see :class:`InstalledPackages`).

    Returns
    -------
    tuple of (list of str, list of str)
        Sorted ``name==version`` requirements, and the modules no installed
        distribution provides (a warning for the user).
    """
    wanted = set(RUNTIME_DISTRIBUTIONS)
    unknown: list[str] = []
    for module in dict.fromkeys(modules):
        if module in sys.stdlib_module_names or module in sys.builtin_module_names:
            continue
        wanted.update(installed.marshal_plugins(module))
        owner = installed.owner(module)
        if owner is None:
            unknown.append(module)
            continue
        wanted.add(owner)
        wanted.update(RUNTIME_EXTRAS.get(module, ()))
    return sorted(installed.pin(d) for d in wanted - PROVIDED), unknown


@functools.lru_cache(maxsize=4096)  # pure; a second run meets the same cells again
def sure_imports(source: str) -> tuple[str, ...]:
    """Top-level modules that plain Python ``source`` imports whenever it runs to its end.

    Only ``import``/``from ... import`` statements at the top level of the code (or in the
    body of a top-level ``with``) count, absolute imports only, in order, without
    duplicates; an import in a function, a class, a branch, a loop or a ``try`` (``try:
    import ujson`` / ``except ImportError``) may never run, so a module missing there is
    not a reason to refuse a run. ``()`` for code that does not parse.
    """
    try:
        body = ast.parse(source).body
    except (SyntaxError, ValueError):
        return ()
    found: dict[str, None] = {}
    while body:
        node, *body = body
        if isinstance(node, (ast.With, ast.AsyncWith)):
            body = [*node.body, *body]
        elif isinstance(node, ast.Import):
            found.update(dict.fromkeys(a.name.partition(".")[0] for a in node.names))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.setdefault(node.module.partition(".")[0])
    return tuple(m for m in found if m != "__future__")


def with_producers(own: Iterable[str], producers: Iterable[Iterable[str]]) -> list[str]:
    """A consumer step's requirements: ``own`` plus every requirement of the steps producing its
    inputs that ``own`` does not name, sorted by name.

    Loading a received value needs what made it: an Arrow DataFrame needs pandas and pyarrow,
    an ``.npy`` array numpy, a pickled estimator its library. The value's type is not known
    statically, but it can only be built from what its producer's code imports, so the
    consumer installs everything its producers install (conservative: a producer importing
    torch that passes an ``int`` makes its consumer install torch too). Pass producers'
    final lists (what they inherited included), so values passed along a chain of steps are
    covered. The consumer's own pin of a distribution wins, then the first producer's.

    Parameters
    ----------
    own:
        The consumer's requirements, from its imports.
    producers:
        The requirements of each step producing one of its inputs.
    """
    chosen = {requirement_name(r): r for r in own}
    for requirements in producers:
        for requirement in requirements:
            chosen.setdefault(requirement_name(requirement), requirement)
    return [chosen[name] for name in sorted(chosen)]


def with_overrides(derived: Iterable[str], overrides: Iterable[str]) -> list[str]:
    """``derived`` requirements with ``overrides`` (``--packages``) added or replacing the same
    distribution, sorted by name."""
    chosen = {requirement_name(r): r for r in derived}
    chosen.update({requirement_name(r): r for r in overrides})
    return [chosen[name] for name in sorted(chosen)]
