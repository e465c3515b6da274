"""A stand-in for IPython's shell inside a pipeline step.

At compile time IPython syntax in a cell is turned into plain Python by
IPython's own ``TransformerManager`` (``!ls`` becomes
``get_ipython().system('ls')``). A step runs on a stock Python image without
IPython, so the step's namespace gets :class:`StepShell` as ``get_ipython()``:
shell commands run faithfully, the magics in :data:`LINE_MAGICS` and
:data:`CELL_MAGICS` run as IPython runs them (``%env``, ``%set_env`` and ``%cd``
change the step's environment and working directory; ``$name`` and
``{expression}`` in a command or a magic's line are expanded as IPython's
``var_expand`` does), and other magics (``%matplotlib``, ``%load_ext``,
``%pip``, ...) are skipped with a logged notice; the compile lists them as
warnings.

Imports only the standard library: this module runs inside pipeline steps.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import string
import subprocess
import sys
import time
from typing import Any, Callable, Iterator

_SHELL_CELL_MAGICS = {"bash": ["bash"], "sh": ["sh"], "script": None}
#: Line magics a step runs (any other is skipped with a notice).
LINE_MAGICS = frozenset({"time", "sx", "system", "env", "set_env", "cd", "pwd"})
#: Cell magics a step runs (any other is skipped with a notice).
CELL_MAGICS = frozenset({"time", "capture", "writefile", *_SHELL_CELL_MAGICS})
#: Magics whose line IPython does not expand (``@no_var_expand``).
NO_VAR_EXPAND = frozenset({"time", "timeit", "kale"})


class DollarFormatter(string.Formatter):
    """IPython's ``var_expand`` formatter (``IPython.utils.text.DollarFormatter``): ``{expression}``
    is evaluated, ``$name`` and ``$name.attr`` are replaced, ``$$`` stays ``$``."""

    _dollar = re.compile(r"(.*?)\$(\$?[\w\.]+)(?=([^']*'[^']*')*[^']*$)")

    def vformat(self, format_string: str, args: Any, kwargs: Any) -> str:
        result = []
        for literal, field, spec, conversion in self.parse(format_string):
            result.append(literal)
            if field is not None:
                value = eval(":".join([field, spec]) if spec else field, dict(kwargs))
                result.append(self.format_field(self.convert_field(value, conversion), ""))
        return "".join(result)

    def parse(self, format_string: str) -> Iterator[tuple[str, Any, Any, Any]]:
        for literal, field, spec, conversion in super().parse(format_string):
            text, start = "", 0
            for match in self._dollar.finditer(literal):
                before, name = match.group(1, 2)
                if name.startswith("$"):
                    text += before + name
                else:
                    yield text + before, name, "", None
                    text = ""
                start = match.end()
            yield text + literal[start:], field, spec, conversion


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

    def var_expand(self, cmd: str, depth: int = 0) -> str:
        """``cmd`` with ``$name`` and ``{expression}`` replaced from the step's namespace, as
        IPython's ``InteractiveShell.var_expand`` does (unchanged when anything fails)."""
        try:
            return DollarFormatter().vformat(cmd, (), self.user_ns)
        except Exception:  # IPython leaves the command as it is
            return cmd

    def system(self, cmd: str) -> int:
        """Run ``cmd`` in a shell (``!cmd``); its output goes to the step log."""
        cmd = self.var_expand(cmd)
        sys.stdout.flush()
        sys.stderr.flush()
        code = subprocess.call(cmd, shell=True, stdout=sys.stdout.fileno()
                               if _has_fileno(sys.stdout) else None)
        self.user_ns["_exit_code"] = code
        return code

    def getoutput(self, cmd: str, split: bool = True, depth: int = 0) -> Any:
        """Run ``cmd`` and return its output lines (``x = !cmd``)."""
        result = subprocess.run(self.var_expand(cmd), shell=True, capture_output=True, text=True)
        out = result.stdout + result.stderr
        return out.splitlines() if split else out

    def run_line_magic(self, name: str, line: str, _stack_depth: int = 1) -> Any:
        """Run ``%name line`` as IPython does for :data:`LINE_MAGICS`; skip others with a notice."""
        if name not in NO_VAR_EXPAND:
            line = self.var_expand(line)
        if name == "time":
            return self._timed(line, "eval" if _is_expression(line) else "exec")
        if name in ("sx", "system"):
            return self.getoutput(line)
        if name in ("env", "set_env", "cd", "pwd"):
            return getattr(self, f"_{name}")(line)
        _notice(f"%{name} {line}".rstrip())
        return None

    def run_cell_magic(self, name: str, line: str, cell: str) -> Any:
        """Run ``%%name line`` with body ``cell``; cell magics not in :data:`CELL_MAGICS` are
        skipped with a notice."""
        if name not in NO_VAR_EXPAND:
            line = self.var_expand(line)
        if name == "time":
            return self._timed(cell, "exec")
        if name == "capture":
            return self._capture(line, cell)
        if name == "writefile":
            mode = "a" if line.split()[:1] in (["-a"], ["--append"]) else "w"
            path = os.path.expanduser(line.split(maxsplit=1 if mode == "w" else 2)[-1].strip("\"'"))
            print(f"{'Appending to' if mode == 'a' else 'Writing'} {path}")
            with open(path, mode, encoding="utf-8") as f:
                f.write(cell)
            return None
        if name in _SHELL_CELL_MAGICS:
            command = _SHELL_CELL_MAGICS[name] or line.split()[:1]
            sys.stdout.flush()
            return subprocess.run(command, input=cell, text=True).returncode
        _notice(f"%%{name} {line}".rstrip())
        return None

    # -- IPython's osm magics (IPython/core/magics/osm.py): environment and directory ---------

    def _env(self, line: str) -> Any:
        """``%env``: all variables, ``%env NAME`` its value, ``%env NAME=VALUE`` sets it."""
        if not line.strip():
            return {k: "<hidden>" if any(s in k.lower() for s in ("key", "token", "secret")) else v
                    for k, v in os.environ.items()}
        if len(line.split("=" if "=" in line else " ")) == 1:
            if line.strip() not in os.environ:
                raise KeyError(f"Environment does not have key: {line.strip()}")
            return os.environ[line.strip()]
        return self._set_env(line)

    def _set_env(self, line: str) -> None:
        """``%set_env NAME=VALUE`` or ``%set_env NAME VALUE``."""
        bits = line.split("=" if "=" in line else " ", 1)
        if not line.strip() or len(bits) < 2:
            raise ValueError("usage is 'set_env var=val'")
        name, value = bits[0].strip(), bits[1].strip()
        if re.match(r".*\s.*", name):
            raise ValueError(f"refusing to set env var with whitespace: '{value}'")
        os.environ[name] = value
        print(f"env: {name}={value}")

    def _cd(self, line: str) -> None:
        """``%cd [-q] [DIR]``: change the working directory (home without DIR, ``-`` back)."""
        words = line.split()
        quiet = "-q" in words
        target = " ".join(w for w in words if w not in ("-q", "-b")).strip("\"'")
        if target == "-":
            target = self._previous_dir
        self._previous_dir = os.getcwd()
        try:
            os.chdir(os.path.expanduser(target) if target else os.path.expanduser("~"))
        except OSError as error:
            print(error)
            return
        if not quiet:
            print(os.getcwd())

    _previous_dir = ""

    def _pwd(self, line: str) -> str:
        return os.getcwd()

    def _capture(self, line: str, cell: str) -> Any:
        """``%%capture [--no-stdout] [--no-stderr] [NAME]``: run the body, keeping its output."""
        words = line.split()
        captured = CapturedIO()
        out = captured._stdout if "--no-stdout" not in words else sys.stdout
        err = captured._stderr if "--no-stderr" not in words else sys.stderr
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            self._exec(cell)
        names = [w for w in words if not w.startswith("-")]
        if names:
            self.user_ns[names[0]] = captured
        return None

    def _timed(self, code: str, mode: str) -> Any:
        start = time.perf_counter()
        result = eval(compile(code, self.filename, mode), self.user_ns)
        print(f"Wall time: {time.perf_counter() - start:.3f} s")
        return result

    def _exec(self, code: str) -> None:
        exec(compile(code, self.filename, "exec"), self.user_ns)


class CapturedIO:
    """What ``%%capture NAME`` keeps (IPython's ``utils.capture.CapturedIO``): ``stdout``,
    ``stderr``, ``outputs`` (always empty in a step) and ``show()``."""

    def __init__(self) -> None:
        self._stdout, self._stderr = io.StringIO(), io.StringIO()
        self.outputs: list[Any] = []

    @property
    def stdout(self) -> str:
        return self._stdout.getvalue()

    @property
    def stderr(self) -> str:
        return self._stderr.getvalue()

    def show(self) -> None:
        """Write the captured output again."""
        sys.stdout.write(self.stdout)
        sys.stderr.write(self.stderr)

    __call__ = show


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
