"""A stand-in for IPython's shell inside a pipeline step.

At compile time IPython syntax in a cell is turned into plain Python by
IPython's own ``TransformerManager`` (``!ls`` becomes
``get_ipython().system('ls')``). A step runs on a stock Python image without
IPython, so the step's namespace gets :class:`StepShell` as ``get_ipython()``:
shell commands run faithfully, ``%time``/``%%time``/``%%capture``/``%%writefile``
and ``%%bash`` work, and notebook-only magics (``%matplotlib``,
``%load_ext``, ``%kale``, ...) are skipped with a logged notice.

Imports only the standard library: this module runs inside pipeline steps.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any, Callable

_SHELL_CELL_MAGICS = {"bash": ["bash"], "sh": ["sh"], "script": None}


class StepShell:
    """The ``get_ipython()`` of a pipeline step.

    Parameters
    ----------
    namespace:
        The step's namespace, where ``%time`` statements and cell bodies run.
    filename:
        Filename for code compiled from magics, so tracebacks name the cell.
    """

    def __init__(self, namespace: dict[str, Any], filename: str = "<step>") -> None:
        self.user_ns = namespace
        self.filename = filename

    def system(self, cmd: str) -> int:
        """Run ``cmd`` in a shell (``!cmd``); its output goes to the step log."""
        sys.stdout.flush()
        sys.stderr.flush()
        code = subprocess.call(cmd, shell=True, stdout=sys.stdout.fileno()
                               if _has_fileno(sys.stdout) else None)
        self.user_ns["_exit_code"] = code
        return code

    def getoutput(self, cmd: str, split: bool = True, depth: int = 0) -> Any:
        """Run ``cmd`` and return its output lines (``x = !cmd``)."""
        result = subprocess.run(cmd, shell=True, capture_output=True, text=True)
        out = result.stdout + result.stderr
        return out.splitlines() if split else out

    def run_line_magic(self, name: str, line: str, _stack_depth: int = 1) -> Any:
        """Run ``%name line``: ``time`` is timed; other magics are skipped with a notice."""
        if name == "time":
            return self._timed(line, "eval" if _is_expression(line) else "exec")
        if name in ("sx", "system"):
            return self.getoutput(line)
        _notice(f"%{name} {line}".rstrip())
        return None

    def run_cell_magic(self, name: str, line: str, cell: str) -> Any:
        """Run ``%%name line`` with body ``cell``; unknown cell magics are skipped."""
        if name == "time":
            return self._timed(cell, "exec")
        if name == "capture":
            return self._exec(cell)
        if name == "writefile":
            mode = "a" if line.split()[:1] == ["-a"] else "w"
            with open(line.split()[-1], mode, encoding="utf-8") as f:
                f.write(cell)
            return None
        if name in _SHELL_CELL_MAGICS:
            command = _SHELL_CELL_MAGICS[name] or line.split()[:1]
            return subprocess.run(command, input=cell, text=True).returncode
        _notice(f"%%{name} {line}".rstrip())
        return None

    def _timed(self, code: str, mode: str) -> Any:
        start = time.perf_counter()
        result = eval(compile(code, self.filename, mode), self.user_ns)
        print(f"Wall time: {time.perf_counter() - start:.3f} s")
        return result

    def _exec(self, code: str) -> None:
        exec(compile(code, self.filename, "exec"), self.user_ns)


def display(*objects: Any, **kwargs: Any) -> None:
    """IPython's ``display`` in a step: print each object's repr to the step log."""
    for obj in objects:
        print(repr(obj))


def _has_fileno(stream: Any) -> bool:
    try:
        stream.fileno()
        return True
    except (AttributeError, OSError, ValueError):
        return False


def _is_expression(code: str) -> bool:
    try:
        compile(code, "<time>", "eval")
        return True
    except SyntaxError:
        return False


def _notice(magic: str) -> None:
    print(f"[kale-magics] skipped notebook-only magic in the pipeline step: {magic}",
          file=sys.stderr)


def install(namespace: dict[str, Any], filename: str) -> Callable[[], StepShell]:
    """Put ``get_ipython`` and ``display`` into ``namespace``; return ``get_ipython``."""
    shell = StepShell(namespace, filename)
    namespace.setdefault("display", display)
    namespace["get_ipython"] = lambda: shell
    return namespace["get_ipython"]
