"""Typed errors raised by the kale-magics core.

Every error carries the data a front end needs to explain it (the cell, the
step, the option) and a message that names the problem and the fix. Front ends
turn them into what their user sees: an IPython ``UsageError`` in a magic, one
line and a non-zero exit code in the CLI.

The shape follows nbclient's ``CellExecutionError``: the exception holds its
fields as attributes, and ``str(error)`` is the complete user-facing message.
Every message is one line and is passed through
:func:`~kale_magics.redaction.redact_urls`, so no error shows the password of a
URL (``http://user:password@host``).
"""

from __future__ import annotations

from kale_magics.model import cell_place
from kale_magics.redaction import redact_urls


class KaleError(Exception):
    """Base class of every error kale-magics raises on purpose.

    Parameters
    ----------
    message:
        The complete user-facing message: what is wrong and how to fix it. It is
        made one line (line breaks, e.g. from a library's error text, become
        spaces) and the userinfo of URLs in it is replaced by ``***``.
    """

    def __init__(self, message: str) -> None:
        message = redact_urls(" ".join(message.splitlines()))
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class AnnotationError(KaleError):
    """A ``%%kale`` or ``%kale`` line is malformed.

    Parameters
    ----------
    message:
        What is wrong with the line and how to fix it.
    line:
        The offending magic line, as written.
    cell:
        The notebook cell's index (0-based position in the cell list) when known, else
        None; the message names it as people see it (``cell 10`` for index 9, see
        :func:`~kale_magics.model.cell_place`).
    """

    def __init__(self, message: str, line: str = "", cell: int | None = None) -> None:
        where = f"{cell_place(cell)}: " if cell is not None else ""
        super().__init__(f"{where}{message}")
        self.line = line
        self.cell = cell


class NotebookError(KaleError):
    """The notebook file cannot be read (missing, not JSON, wrong nbformat)."""


class AnalysisError(KaleError):
    """The notebook's annotations do not describe a valid pipeline.

    Raised at compile time for a name no earlier step provides, a cycle, an
    unknown ``--after`` step, duplicate step names or a non-literal parameters
    cell. The message names the cell (index and first line) and the fix.
    """


class CompileError(KaleError):
    """Code generation or the KFP compiler failed on a valid analysis."""


class RunError(KaleError):
    """A pipeline run could not be started or its result could not be read."""


class KfpConnectionError(RunError):
    """The KFP server cannot be reached, or stopped answering while a run was watched.

    The message names the URL, the reason (refused, timed out, HTTP 503, ...)
    and what to check; it never contains credentials.
    """


class KfpAuthError(RunError):
    """The KFP server refused the request for lack of valid credentials (HTTP 401 or 403).

    The message says which credentials were used (never their value) and what
    to set: ``KF_PIPELINES_TOKEN`` / ``--token`` or session cookies.
    """
