"""Find the .ipynb file a kernel is running, for the magics and the widget.

The fallback chain, first answer wins:

1. an explicit path (``--notebook PATH`` on an action, or ``%kale pipeline --notebook PATH``);
2. VS Code's ``__vsc_ipynb_file__`` in the user namespace;
3. ``ipynbname``, which asks the running Jupyter server and so follows renames;
4. ``JPY_SESSION_NAME`` (set by jupyter-server for its kernels) or ``__session__``
   (stale after a rename, hence last).

nbclient and papermill set none of these, so there the user passes ``--notebook``.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

from kale_magics.errors import NotebookError


def _ipynbname() -> str | None:
    try:
        import ipynbname

        return str(ipynbname.path())
    except Exception:  # not in a Jupyter server's kernel, no server reachable, ...
        return None


def locate_notebook(explicit: str | None, user_ns: Mapping[str, Any],
                    environ: Mapping[str, str] = os.environ,
                    ask_server: Callable[[], str | None] = _ipynbname) -> str:
    """Return the path of the notebook this kernel runs.

    Parameters
    ----------
    explicit:
        A path the user gave, or None.
    user_ns:
        The kernel's user namespace (VS Code and ``__session__`` live there).
    environ:
        The process environment (``JPY_SESSION_NAME``).
    ask_server:
        Asks the Jupyter server (``ipynbname``); injectable for tests.

    Raises
    ------
    NotebookError
        No source names an existing .ipynb file; the message says to pass ``--notebook``.
    """
    candidates: list[Callable[[], Any]] = [
        lambda: explicit,
        lambda: user_ns.get("__vsc_ipynb_file__"),
        ask_server,
        lambda: environ.get("JPY_SESSION_NAME"),
        lambda: user_ns.get("__session__"),
    ]
    for candidate in candidates:
        path = candidate()
        if path and str(path).endswith(".ipynb") and os.path.isfile(path):
            return os.path.abspath(path)
        if path and candidate is candidates[0]:
            raise NotebookError(f"notebook not found: {path}; check the --notebook path")
    raise NotebookError("cannot tell which notebook this kernel runs (nbclient and papermill do "
                        "not say); pass it: `%kale pipeline --notebook PATH.ipynb` or "
                        "`--notebook PATH.ipynb` on the action")
