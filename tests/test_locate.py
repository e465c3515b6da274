"""Finding the notebook a kernel runs: the fallback chain."""

from __future__ import annotations

from pathlib import Path

import pytest

from kale_magics.errors import NotebookError
from kale_magics.notebook.locate import locate_notebook


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    names = {}
    for name in ("explicit", "vscode", "server", "session", "dunder"):
        path = tmp_path / f"{name}.ipynb"
        path.write_text("{}")
        names[name] = str(path)
    return names


def test_order_of_the_chain(files) -> None:
    ns = {"__vsc_ipynb_file__": files["vscode"], "__session__": files["dunder"]}
    env = {"JPY_SESSION_NAME": files["session"]}
    server = lambda: files["server"]  # noqa: E731
    assert locate_notebook(files["explicit"], ns, env, server) == files["explicit"]
    assert locate_notebook(None, ns, env, server) == files["vscode"]
    assert locate_notebook(None, {"__session__": files["dunder"]}, env, server) == files["server"]
    assert locate_notebook(None, {"__session__": files["dunder"]}, env, lambda: None) == files["session"]
    assert locate_notebook(None, {"__session__": files["dunder"]}, {}, lambda: None) == files["dunder"]


def test_stale_names_are_skipped(files, tmp_path) -> None:
    env = {"JPY_SESSION_NAME": str(tmp_path / "renamed-away.ipynb")}
    assert locate_notebook(None, {"__session__": files["dunder"]}, env, lambda: None) == files["dunder"]


def test_nothing_found_says_pass_notebook(tmp_path) -> None:
    with pytest.raises(NotebookError, match="nbclient and papermill do not say.*--notebook"):
        locate_notebook(None, {}, {}, lambda: None)
    with pytest.raises(NotebookError, match="check the --notebook path"):
        locate_notebook(str(tmp_path / "missing.ipynb"), {}, {}, lambda: None)
