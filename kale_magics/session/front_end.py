"""What the kernel knows about the front end showing it, and what that means for the panel.

VS Code's Jupyter extension names the notebook in the user namespace (``__vsc_ipynb_file__``);
with ipywidgets 8.1.9 it renders no widget at all (microsoft/vscode-jupyter issue 17504,
found with VS Code's Jupyter extension in 2026; 8.1.8 renders), so the deploy panel would be
an empty output with no word why.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any, Mapping

#: The user-namespace name VS Code's Jupyter extension sets to the notebook's path.
VSCODE_NOTEBOOK_NAME = "__vsc_ipynb_file__"
#: ipywidgets versions VS Code's Jupyter extension renders nothing with.
VSCODE_BLANK_IPYWIDGETS = frozenset({"8.1.9"})
#: The version to install instead.
VSCODE_GOOD_IPYWIDGETS = "8.1.8"


def installed_ipywidgets() -> str | None:
    """The installed ipywidgets version, None when it is not installed."""
    try:
        return metadata.version("ipywidgets")
    except metadata.PackageNotFoundError:
        return None


def widget_notices(namespace: Mapping[str, Any], ipywidgets_version: str | None) -> list[str]:
    """One line for each reason the panel may not render in this front end, with its fix.

    Parameters
    ----------
    namespace:
        The user namespace (VS Code is told by :data:`VSCODE_NOTEBOOK_NAME` in it).
    ipywidgets_version:
        The installed ipywidgets version (:func:`installed_ipywidgets`).
    """
    if VSCODE_NOTEBOOK_NAME in namespace and ipywidgets_version in VSCODE_BLANK_IPYWIDGETS:
        return [f"VS Code's Jupyter extension shows no widgets with ipywidgets "
                f"{ipywidgets_version} (microsoft/vscode-jupyter#17504), so the panel below may "
                f"stay empty: run `pip install ipywidgets=={VSCODE_GOOD_IPYWIDGETS}` in this "
                "kernel's environment and restart the kernel"]
    return []
