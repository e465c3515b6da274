"""The ``%kale`` / ``%%kale`` IPython magics.

``%%kale KIND ...`` annotates a cell and runs its body exactly as if the magic
line were not there (IPython's ``%%time`` in ``IPython/core/magics/execution.py``
is the model: the body is transformed, compiled under a filename whose lines
are the cell's own, and the value of a final expression is returned so IPython
displays it as ``Out``). A malformed line raises ``UsageError`` and the body is
not run. ``%kale pipeline ...`` records pipeline settings.
"""

from __future__ import annotations

import ast
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class

from kale_magics.errors import KaleError
from kale_magics.notebook.annotations import (
    PIPELINE_PARSER,
    STEP_PARSER,
    parse_cell_line,
    parse_pipeline_line,
)

_HELP = f"""Annotate notebook cells as a Kubeflow Pipelines v2 pipeline.

Cell magic (first line of a cell; the cell still runs as usual)::

    %%kale imports | functions | parameters | metrics | skip
{STEP_PARSER.format_help()}
Line magic::

{PIPELINE_PARSER.format_help()}
Compile and run from a terminal: ``kale-magics run NOTEBOOK.ipynb``.
"""


def _usage_error(error: Exception) -> UsageError:
    return UsageError(f"{type(error).__name__}: {error}")


@magics_class
class KaleMagics(Magics):
    """The ``kale`` magic, usable as a line and a cell magic."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.annotations: dict[str, Any] = {}
        self.settings: Any = None

    @line_cell_magic
    def kale(self, line: str, cell: str | None = None) -> Any:
        if cell is None:
            return self._line(line)
        try:
            annotation = parse_cell_line(line)
        except KaleError as error:
            raise _usage_error(error) from None
        key = str(getattr(self.shell, "parent_header", {}).get("metadata", {}).get("cellId")
                  or self.shell.execution_count)
        self.annotations[key] = annotation
        return self._run_body(cell)

    def _line(self, line: str) -> Any:
        action, _, rest = line.strip().partition(" ")
        if action != "pipeline":
            raise UsageError(f"unknown action {action!r}: use `%kale pipeline --name NAME ...`; "
                             "compile and run with `kale-magics run NOTEBOOK.ipynb`")
        try:
            settings = parse_pipeline_line(rest)
        except KaleError as error:
            raise _usage_error(error) from None
        self.settings = settings if self.settings is None else self.settings.merged(settings)
        return None

    def _run_body(self, cell: str) -> Any:
        """Run ``cell`` in the user namespace; return the last expression's value."""
        shell = self.shell
        source = "\n" + cell  # keep the cell's own line numbers in tracebacks
        lines = source.splitlines(keepends=True)
        blank = next((i for i, line in enumerate(lines) if line.strip()), len(lines))
        # IPython drops leading blank lines when transforming; put them back
        transformed = "\n" * blank + shell.transform_cell(source)
        filename = shell.compile.cache(source, shell.execution_count)
        tree = shell.transform_ast(shell.compile.ast_parse(transformed, filename=filename))
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(shell.compile(tree, filename, "exec"), shell.user_ns)
        if last is not None:
            return eval(shell.compile(last, filename, "eval"), shell.user_ns)
        return None


KaleMagics.kale.__doc__ = _HELP


def load_ipython_extension(ipython: Any) -> None:
    """Register :class:`KaleMagics`; loading twice replaces the first registration."""
    ipython.register_magics(KaleMagics)


def unload_ipython_extension(ipython: Any) -> None:
    """Remove the ``kale`` line and cell magics."""
    for kind in ("line", "cell"):
        ipython.magics_manager.magics[kind].pop("kale", None)
