"""Packages a step installs on the cluster, pinned to the compiling environment.

Modules the code imports are mapped to distributions with
``importlib.metadata.packages_distributions()`` and pinned to the version
installed here (``scikit-learn==1.9.1``); standard library modules
(``sys.stdlib_module_names``) are left out, so ``import random`` never becomes
a PyPI package (Kale's fault). A local run installs none of them.
"""

from __future__ import annotations

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
    """A snapshot of the compiling environment's distributions, taken once per compile.

    ``importlib.metadata.packages_distributions()`` reads every installed
    distribution's file list (about 0.5 s here), so it is read once and shared
    by all steps; versions are looked up once each.
    """

    def __init__(self) -> None:
        self.owners = metadata.packages_distributions()
        self._versions: dict[str, str | None] = {}

    def version(self, distribution: str) -> str | None:
        """The installed version of ``distribution``, or None."""
        if distribution not in self._versions:
            try:
                self._versions[distribution] = metadata.version(distribution)
            except metadata.PackageNotFoundError:
                self._versions[distribution] = None
        return self._versions[distribution]

    def pin(self, distribution: str) -> str:
        """``name==version`` when installed, else the bare name."""
        version = self.version(distribution)
        return f"{distribution}=={version}" if version else distribution


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
        if module not in installed.owners:
            unknown.append(module)
            continue
        wanted.update(installed.owners[module][:1])
        for extra in RUNTIME_EXTRAS.get(module, ()):
            wanted.add(extra)
    return sorted(installed.pin(d) for d in wanted - PROVIDED), unknown


def with_overrides(derived: Iterable[str], overrides: Iterable[str]) -> list[str]:
    """``derived`` requirements with ``overrides`` (``--packages``) added or replacing the same
    distribution, sorted by name."""
    chosen = {requirement_name(r): r for r in derived}
    chosen.update({requirement_name(r): r for r in overrides})
    return [chosen[name] for name in sorted(chosen)]
