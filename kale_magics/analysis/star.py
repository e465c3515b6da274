"""The names ``from MODULE import *`` binds, read from the installed module.

The analysis must know that ``from math import *`` binds ``sqrt``. The names
are the module's ``__all__``, else its public attributes, as Python's import
system defines (``Python reference, the import statement``). They are read by
importing the module in a separate Python process (``sys.executable``, the
notebook's folder as working directory, as the kernel has it): importing runs
the module's own top-level code, but never the notebook's, and the process
that compiles (a kernel, the CLI) is left as it was.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field

_PROBE = ("import importlib, json, sys\n"
          "module = importlib.import_module(sys.argv[1])\n"
          "names = getattr(module, '__all__', None)\n"
          "if names is None:\n"
          "    names = [n for n in vars(module) if not n.startswith('_')]\n"
          "print(json.dumps(sorted({str(n) for n in names})))\n")
#: Seconds the import of one module may take.
TIMEOUT_S = 120


@dataclass
class StarImports:
    """Resolves star imports for one compile, each module once.

    Parameters
    ----------
    folder:
        The working directory of the probing process (the notebook's folder).

    Attributes
    ----------
    warnings:
        One per module whose names could not be read.
    """

    folder: str
    warnings: list[str] = field(default_factory=list)
    _known: dict[str, tuple[str, ...] | None] = field(default_factory=dict)

    def __call__(self, module: str) -> tuple[str, ...] | None:
        """The names ``from module import *`` binds, or None (with a warning) when unknown."""
        if module not in self._known:
            self._known[module] = self._probe(module)
        return self._known[module]

    def _probe(self, module: str) -> tuple[str, ...] | None:
        try:
            done = subprocess.run([sys.executable, "-c", _PROBE, module], cwd=self.folder or None,
                                  capture_output=True, text=True, timeout=TIMEOUT_S)
            if done.returncode == 0:
                return tuple(json.loads(done.stdout.strip().splitlines()[-1]))
            reason = (done.stderr.strip().splitlines() or ["it failed"])[-1]
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired) as error:
            reason = f"{type(error).__name__}: {error}"
        self.warnings.append(f"`from {module} import *`: cannot read the names it binds ({reason}); "
                             "steps reading them are reported as reading unassigned names: "
                             f"install {module!r} here, or import the names one by one")
        return None
